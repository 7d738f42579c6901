"""The writer: the one place where the counter's state changes (group commit).

Request threads `submit(job)`; a job is a function `job(txn) -> result` that checks first and
stages only when it will succeed (so a job that raises leaves nothing in the transaction). The
writer thread takes every job waiting, runs them into one transaction, commits it to the store,
installs it in the counter, hands the new local events to `on_commit`, and only then wakes the
submitters. A failed commit fails every job of the group with `StorageFailure` and changes
nothing, not even a sequence number.

When no group is being committed, the submitting thread commits its job (with whatever is
queued) itself instead: handing it to an idle writer thread and being woken by it are two
thread switches, which on a busy machine cost more than the commit. Either way one group is
committed at a time (`_commit_lock`), and while one is, new jobs queue for the writer thread.

Without a store (`--in-memory`) there is nothing to wait for: jobs run inline, serialised by a
lock, which saves two thread switches per request.
"""

import logging
import queue
import threading
from typing import Callable

from dcounter.counter import Counter, Event, Txn
from dcounter.errors import DcounterError, StorageFailure, Unavailable

log = logging.getLogger(__name__)


class _Job:
    __slots__ = ("fn", "result", "error", "done")

    def __init__(self, fn):
        self.fn = fn
        self.result = None
        self.error: BaseException | None = None
        self.done = threading.Lock()
        self.done.acquire()


_STOP = object()


class Writer:
    def __init__(self, counter: Counter, store=None, *,
                 on_commit: Callable[[list[Event]], None] = lambda events: None,
                 max_group: int = 1024, observe_commit: Callable[[float, int], None] | None = None,
                 clock=None):
        self.counter = counter
        self.store = store
        self.on_commit = on_commit
        self.max_group = max_group
        self.observe_commit = observe_commit
        self.clock = clock
        self._queue: queue.SimpleQueue = queue.SimpleQueue()
        self._inline_lock = threading.Lock()
        self._submit_lock = threading.Lock()  # nothing is queued behind the stop marker
        self._commit_lock = threading.Lock()  # one group at a time, the writer's or a caller's
        self._thread: threading.Thread | None = None
        self._closed = False

    def start(self) -> None:
        if self.store is not None:
            self._thread = threading.Thread(target=self._run, name="writer", daemon=True)
            self._thread.start()

    def stop(self, timeout: float = 5.0) -> None:
        with self._submit_lock:
            self._closed = True
            if self._thread is not None:
                self._queue.put(_STOP)
        if self._thread is not None:
            self._thread.join(timeout)
        if self._commit_lock.acquire(timeout=timeout):  # a caller's group still committing
            self._commit_lock.release()

    def submit(self, fn: Callable[[Txn], object]):
        if self.store is None:
            if self._closed:
                raise Unavailable("node is shutting down")
            return self._run_inline(fn)
        job = _Job(fn)
        with self._submit_lock:
            if self._closed:
                raise Unavailable("node is shutting down")
            here = self._commit_lock.acquire(blocking=False)
            if not here:
                self._queue.put(job)
        if here:  # no group is being committed: commit this one in this thread
            try:
                self._commit_from(job, put_back_stop=True)
            finally:
                self._commit_lock.release()
        job.done.acquire()
        if job.error is not None:
            raise job.error
        return job.result

    def _run_inline(self, fn):
        with self._inline_lock:
            txn = self.counter.begin()
            try:
                result = fn(txn)
            except BaseException:
                self.counter.abort(txn)
                raise
            self.counter.install(txn)
            events = txn.outbound
        if events:
            self.on_commit(events)
        return result

    def _run(self) -> None:
        while True:
            first = self._queue.get()
            if first is _STOP:
                return
            with self._commit_lock:
                if not self._commit_from(first):
                    return

    def _commit_from(self, first: _Job, *, put_back_stop: bool = False) -> bool:
        """Commit `first` and the jobs queued behind it as one group, then wake their threads
        (the commit lock is held). False when the stop marker was reached; a request thread
        committing in place puts it back for the writer thread."""
        group = [first]
        stop_after = False
        while len(group) < self.max_group:
            try:
                job = self._queue.get_nowait()
            except queue.Empty:
                break
            if job is _STOP:
                stop_after = True
                if put_back_stop:
                    self._queue.put(_STOP)
                break
            group.append(job)
        try:
            self._commit_group(group)
        except BaseException as exc:  # never let the writer die silently
            log.exception("writer failed")
            self.counter.abort(None)
            for job in group:
                if job.error is None and job.result is None:
                    job.error = StorageFailure(f"storage failure: {exc}")
        finally:
            for job in group:
                if job.done.locked():
                    job.done.release()
        return not stop_after

    def _commit_group(self, group: list[_Job]) -> None:
        txn = self.counter.begin()
        for job in group:
            try:
                job.result = job.fn(txn)
            except DcounterError as exc:
                job.error = exc
        if not txn.empty():
            started = self.clock.monotonic() if self.clock else 0.0
            try:
                self.store.write(txn)
            except StorageFailure as exc:
                self.counter.abort(txn)
                log.error("%s; %d request(s) refused", exc.message, len(group))
                for job in group:
                    job.result, job.error = None, exc
                return
            if self.observe_commit and self.clock:
                self.observe_commit(self.clock.monotonic() - started, len(group))
        self.counter.install(txn)
        if txn.outbound:
            self.on_commit(txn.outbound)
