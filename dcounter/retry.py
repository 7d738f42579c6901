"""Backoff policy and the heapq schedule of due peer sends (pure).

`RetryPolicy.delay(attempt)` is `min(base * 2**(attempt-1), cap)`: 0.1, 0.2, 0.4 ... 6.4, 10, 10
with the defaults. `RetrySchedule` keeps, per handle, the attempt count and when it may be tried
next; the node's retry loop calls `pop_due(now)` and hands the due handles back to the senders.
A handle is any hashable: the replicator uses the link object itself, not the peer's name, so a
late outcome of a removed link can never reset or cancel the backoff of the peer's next link.
Heap entries are `(due, tiebreak, handle)`, so payloads are never compared. Cancelled or
rescheduled entries stay in the heap and are skipped when popped.
"""

import heapq
import itertools
import threading
from dataclasses import dataclass


@dataclass(frozen=True)
class RetryPolicy:
    base: float = 0.1  # seconds
    cap: float = 10.0  # seconds

    def delay(self, attempt: int) -> float:
        if attempt < 1:
            raise ValueError("attempt counts from 1")
        # 2**(attempt-1) grows without bound; stop doubling once past the cap.
        if attempt > 64:
            return self.cap
        return min(self.base * 2 ** (attempt - 1), self.cap)


class RetrySchedule:
    def __init__(self, policy: RetryPolicy):
        self.policy = policy
        self._lock = threading.Lock()
        self._heap: list[tuple[float, int, str]] = []
        self._tiebreak = itertools.count()
        self._attempts: dict[str, int] = {}
        self._due: dict[str, float] = {}

    def failed(self, peer: str, now: float) -> float:
        """Record a failed send; returns the delay until the peer is due again."""
        with self._lock:
            attempt = self._attempts.get(peer, 0) + 1
            self._attempts[peer] = attempt
            delay = self.policy.delay(attempt)
            due = now + delay
            self._due[peer] = due
            heapq.heappush(self._heap, (due, next(self._tiebreak), peer))
            return delay

    def succeeded(self, peer: str) -> None:
        """A success resets the backoff."""
        with self._lock:
            self._attempts.pop(peer, None)
            self._due.pop(peer, None)

    def forget(self, peer: str) -> None:
        self.succeeded(peer)

    def attempts(self, peer: str) -> int:
        with self._lock:
            return self._attempts.get(peer, 0)

    def is_waiting(self, peer: str) -> bool:
        with self._lock:
            return peer in self._due

    def pop_due(self, now: float) -> list[str]:
        """Peers whose retry time has come, in due order; each is returned once."""
        out = []
        with self._lock:
            while self._heap and self._heap[0][0] <= now:
                due, _, peer = heapq.heappop(self._heap)
                if self._due.get(peer) == due:
                    del self._due[peer]
                    out.append(peer)
        return out

    def next_due(self) -> float | None:
        with self._lock:
            while self._heap and self._due.get(self._heap[0][2]) != self._heap[0][0]:
                heapq.heappop(self._heap)
            return self._heap[0][0] if self._heap else None
