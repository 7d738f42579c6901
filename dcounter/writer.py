"""The writer: the one place where the counter's state changes (group commit).

Request threads `submit(job)`; a job is a function `job(txn) -> result` that stages changes in
the counter's transaction. The writer thread takes every job waiting, runs them into one
transaction, commits it to the store, installs it in the counter, hands the new local events to
`on_commit`, and only then wakes the submitters.

The rules it keeps (the group's decisions are `commitgroup.GroupCommit`'s):

* A group is installed whole or fails whole. A commit that fails, for any reason, fails every
  job of the group (`StorageFailure`, 503) and changes nothing, not even a sequence number:
  no job of a group that was not installed is ever answered with success.
* A job that raises leaves nothing staged: each job runs after `txn.savepoint()` and a job that
  raises (a refusal or a bug) is rolled back to it and gets its exception; the other jobs of the
  group go on. No SQLite savepoint per job is needed: jobs only stage into the `Txn`, and the
  store writes the `Txn` after every job has run, as one SQLite transaction that commits or
  rolls back whole.
* Memory never disagrees with disk. A group committed to the store but not installed in memory
  (a bug, or memory exhausted) calls `on_fatal(reason)` once; the node logs the reason and the
  process exits with status 3 (see cli.py). Until then the writer refuses every job (503), so
  nothing is staged over a state that no longer matches the disk.

When no group is being committed, the submitting thread commits its job (with whatever is
queued) itself instead: handing it to an idle writer thread and being woken by it are two
thread switches, which on a busy machine cost more than the commit. Either way one group is
committed at a time (`_commit_lock`), and while one is, new jobs queue for the writer thread.

`StoreGate` is the store as the node gives it to the writer: the close at shutdown waits for no
commit and never runs under one.

Without a store (`--in-memory`) there is nothing to wait for: jobs run inline, serialised by a
lock, which saves two thread switches per request; the same savepoint and install rules hold.
"""

import logging
import queue
import threading
from typing import Callable

from dcounter.commitgroup import GroupCommit
from dcounter.commitgroup import fail as _fail
from dcounter.counter import Counter, Event, Txn
from dcounter.errors import StorageFailure, Unavailable

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
                 on_fatal: Callable[[str], None] | None = None,
                 max_group: int = 1024, observe_commit: Callable[[float, int], None] | None = None,
                 clock=None):
        self.counter = counter
        self.store = store
        self.on_commit = on_commit
        self.on_fatal = on_fatal or _log_fatal
        self.max_group = max_group
        self.observe_commit = observe_commit
        self.clock = clock
        self._queue: queue.SimpleQueue = queue.SimpleQueue()
        self._inline_lock = threading.Lock()
        self._submit_lock = threading.Lock()  # nothing is queued behind the stop marker
        self._commit_lock = threading.Lock()  # one group at a time, the writer's or a caller's
        self._thread: threading.Thread | None = None
        self._closed = False
        self._fatal: str | None = None  # why memory may disagree with disk; nothing commits
        self._group = GroupCommit()  # what goes in a group and what a failed write does

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
            return self._run_inline(fn)
        job = _Job(fn)
        with self._submit_lock:
            self._check_open()
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

    def _check_open(self) -> None:
        if self._fatal is not None:
            raise Unavailable("node is stopping after an internal error")
        if self._closed:
            raise Unavailable("node is shutting down")

    def _run_inline(self, fn):
        with self._inline_lock:
            self._check_open()
            txn = self.counter.begin()
            sp = txn.savepoint()
            try:
                result = fn(txn)
            except BaseException:
                txn.rollback_to(sp)
                self.counter.abort(txn)
                raise
            if not self._install(txn):
                raise Unavailable("node is stopping after an internal error")
        self._hand_over(txn.outbound)
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
        except BaseException as exc:  # never let the writer die; unreachable unless a bug
            log.exception("writer failed")
            self._stop_for(f"the writer failed ({exc!r}); whether its last group was installed "
                           "is unknown")
            _fail(group, Unavailable("node is stopping after an internal error"))
        finally:
            for job in group:
                if job.done.locked():
                    job.done.release()
        return not stop_after

    def _commit_group(self, group: list[_Job]) -> None:
        """Run, commit and install `group`, setting each job's result or error."""
        if self._fatal is not None:
            _fail(group, Unavailable("node is stopping after an internal error"))
            return
        started = 0.0

        def write(txn: Txn) -> None:
            nonlocal started
            started = self.clock.monotonic() if self.clock else 0.0
            self.store.write(txn)

        txn, failure = self._group.run(self.counter, group, write)
        if txn is None:
            log.error("%s; %d request(s) refused", failure.message, len(group))
            return
        if not self._install(txn):
            _fail(group, Unavailable("node is stopping after an internal error"))
            return
        if self.observe_commit and self.clock and not txn.empty():
            try:
                self.observe_commit(self.clock.monotonic() - started, len(group))
            except Exception:
                log.exception("observing a commit failed")
        self._hand_over(txn.outbound)

    def _install(self, txn: Txn) -> bool:
        """Make a committed `txn` visible. False (and the node stops) if that failed: the store
        holds what memory does not."""
        try:
            self.counter.install(txn)
        except BaseException as exc:
            self._stop_for(f"a committed group could not be installed in memory ({exc!r}); "
                           "stopping so that memory and disk cannot disagree")
            return False
        return True

    def _stop_for(self, reason: str) -> None:
        if self._fatal is not None:
            return
        self._fatal = reason
        try:
            self.on_fatal(reason)
        except Exception:
            log.exception("on_fatal failed")

    def _hand_over(self, events: list[Event]) -> None:
        """Committed and installed events go to replication; a failure here loses no event (it
        is in the prefix, which anti-entropy carries) and fails no request."""
        if not events:
            return
        try:
            self.on_commit(events)
        except Exception:
            log.exception("handing %d committed event(s) to replication failed; anti-entropy "
                          "will carry them", len(events))


def _log_fatal(reason: str) -> None:
    log.critical("%s", reason)


class StoreGate:
    """The store as the writer sees it. A write and the close at shutdown exclude each other,
    so the store is never closed under a running commit; a write after the close fails like a
    storage failure (nothing is acknowledged)."""

    def __init__(self, store):  # a store.Store
        self.store = store
        self._lock = threading.Lock()
        self._closed = False

    def write(self, txn) -> None:
        with self._lock:
            if self._closed:
                raise StorageFailure("storage closed: the node is shutting down")
            self.store.write(txn)

    def close(self) -> bool:
        """Checkpoint and close, unless a commit is running; returns whether it closed."""
        if not self._lock.acquire(blocking=False):
            return False
        try:
            if not self._closed:
                self._closed = True
                self.store.checkpoint()
                self.store.close()
            return True
        finally:
            self._lock.release()
