"""Contacts with peers, run in thread pools: the shell that carries out membership's calls
(heartbeats, joins, the goodbye) without letting them block a loop or die unheard.

Rules kept here:

* Heartbeats (and the goodbye) and joins run in pools of their own, so joins of unreachable
  candidates, each taking up to a request timeout, never delay heartbeats.
* Nobody reads a pool task's result, so every task logs its own failure, with the traceback,
  at ERROR, and the pool carries on.
* A loop waiting for the contacts it started waits at most `request_timeout + 1` seconds, and
  not at all once the node is stopping; the stop waits for them itself, within its deadline.
* Which peer may be contacted (one contact in flight per peer) is decided by `PeerStore`, not
  here.
"""

import concurrent.futures
import enum
import logging
import threading

log = logging.getLogger(__name__)

AWAIT_SLICE = 0.05  # seconds: how often a loop waiting for contacts checks for a stop


class Kind(enum.Enum):
    HEARTBEAT = "heartbeat"
    JOIN = "join"
    GOODBYE = "goodbye"


def run_logged(name: str, fn, args=()) -> None:
    try:
        fn(*args)
    except Exception:
        log.exception("%s task failed; continuing", name)


def run_within(name: str, fn, timeout: float) -> bool:
    """Run `fn` in a thread of its own for at most `timeout` seconds; False when it had not
    ended by then (it runs on as a daemon). How a step without a timeout of its own keeps to a
    deadline."""
    thread = threading.Thread(target=run_logged, args=(name, fn), name=f"stop-{name}",
                              daemon=True)
    thread.start()
    thread.join(max(0.0, timeout))
    return not thread.is_alive()


class Contacts:
    def __init__(self, stopping: threading.Event, request_timeout: float):
        self.stopping = stopping
        self.request_timeout = request_timeout
        heartbeats = concurrent.futures.ThreadPoolExecutor(max_workers=8,
                                                           thread_name_prefix="contact")
        joins = concurrent.futures.ThreadPoolExecutor(max_workers=4, thread_name_prefix="join")
        self._pools = {Kind.HEARTBEAT: heartbeats, Kind.GOODBYE: heartbeats, Kind.JOIN: joins}
        self._tasks: set[concurrent.futures.Future] = set()  # submitted, not done
        self._lock = threading.Lock()

    def submit(self, kind: Kind, fn, *args) -> concurrent.futures.Future:
        """Run `fn(*args)` in the pool for `kind`; after `shutdown` the contact is not made (a
        loop left behind by a stop's deadline may still ask) and the future comes back
        cancelled."""
        try:
            future = self._pools[kind].submit(run_logged, kind.value, fn, args)
        except RuntimeError:  # the pools are shut down
            future = concurrent.futures.Future()
            future.cancel()
            return future
        with self._lock:
            self._tasks.add(future)
        future.add_done_callback(self._done)
        return future

    def _done(self, future) -> None:
        with self._lock:
            self._tasks.discard(future)

    def wait(self, futures) -> None:
        """A loop waits for the contacts it started: at most request_timeout + 1 s, and no
        longer once the node is stopping."""
        pending = set(futures)
        for _ in range(int((self.request_timeout + 1) / AWAIT_SLICE) + 1):
            if not pending or self.stopping.is_set():
                return
            _, pending = concurrent.futures.wait(pending, timeout=AWAIT_SLICE)

    def wait_for(self, futures, timeout: float) -> None:
        """Wait for `futures` to end, at most `timeout` seconds, stopping or not."""
        concurrent.futures.wait(futures, timeout=max(0.0, timeout))

    def settle(self, timeout: float) -> None:
        """At shutdown: contacts not started yet are cancelled; those under way may end within
        `timeout` seconds."""
        with self._lock:
            tasks = list(self._tasks)
        for task in tasks:
            task.cancel()
        concurrent.futures.wait(tasks, timeout=max(0.0, timeout))

    def shutdown(self) -> None:
        for pool in set(self._pools.values()):
            pool.shutdown(wait=False, cancel_futures=True)
