"""The recent past for the status page: increments per second and the replication delay over
the last ten minutes, one sample per `interval` seconds in a bounded ring (pure).

Theory of operation: the node calls `observe(now, ...)` from a loop with the cumulative totals
it already keeps for /metrics (increments acknowledged here, events applied from peers, and the
per-bucket counts of the replication delay histogram). A sample is the difference between two
observations: rates divided by the time that really passed, and the delay's 99th percentile
estimated from the buckets that filled meanwhile (linear within a bucket, as Prometheus's
`histogram_quantile` does). An observation that comes before the current slot is over only
waits; one that comes late (the loop runs less often than `interval`, or the process was
paused) fills every slot it covers with the same average, so the ring always spans
`interval * size` seconds. Memory is bounded by `size`; nothing here reads a clock or spawns a
thread.
"""

from __future__ import annotations

import collections
import math

INTERVAL = 5.0  # seconds per sample
SIZE = 120      # samples kept: ten minutes at the default interval


def quantile(q: float, bounds, counts) -> float | None:
    """The q-quantile of observations counted per bucket (`counts` has one more entry than
    `bounds`, the +Inf bucket); None when there are none. In the +Inf bucket it is the highest
    finite bound, since nothing better is known."""
    total = sum(counts)
    if total <= 0:
        return None
    rank = q * total
    below = 0.0
    lower = 0.0
    for upper, count in zip(bounds, counts):
        if count and below + count >= rank:
            return lower + (upper - lower) * (rank - below) / count
        below += count
        lower = upper
    return float(bounds[-1]) if bounds else None


class History:
    def __init__(self, bounds=(), interval: float = INTERVAL, size: int = SIZE):
        if interval <= 0 or size < 1:
            raise ValueError("interval must be positive and size at least 1")
        self.bounds = tuple(bounds)  # upper bounds (seconds) of the delay histogram's buckets
        self.interval = interval
        self.size = size
        self._local = collections.deque(maxlen=size)       # increments acknowledged here, /s
        self._replicated = collections.deque(maxlen=size)  # events applied from peers, /s
        self._delay_p99 = collections.deque(maxlen=size)   # milliseconds, None: nothing sent
        self._slot_start: float | None = None  # when the slot being filled began
        self._base_time = 0.0                  # when the totals below were read
        self._base: tuple[float, float, tuple] = (0.0, 0.0, ())

    def observe(self, now: float, local_total: float, replicated_total: float,
                delay_counts=()) -> int:
        """Cumulative totals read at `now` (monotonic seconds); returns the samples added."""
        delay_counts = tuple(delay_counts)
        if self._slot_start is None or now < self._base_time:
            self._restart(now, local_total, replicated_total, delay_counts)
            return 0
        slots = math.floor((now - self._slot_start) / self.interval)
        if slots < 1:
            return 0
        elapsed = now - self._base_time
        base_local, base_replicated, base_counts = self._base
        if local_total < base_local or replicated_total < base_replicated:
            # Totals only grow; a smaller one means they were reset: start again from here.
            self._restart(now, local_total, replicated_total, delay_counts)
            return 0
        local_rate = (local_total - base_local) / elapsed if elapsed > 0 else 0.0
        replicated_rate = (replicated_total - base_replicated) / elapsed if elapsed > 0 else 0.0
        if len(base_counts) == len(delay_counts):
            added = [max(0, new - old) for new, old in zip(delay_counts, base_counts)]
        else:
            added = list(delay_counts)
        p99 = quantile(0.99, self.bounds, added) if len(added) == len(self.bounds) + 1 else None
        p99_ms = None if p99 is None else round(p99 * 1000, 1)
        for _ in range(min(slots, self.size)):
            self._local.append(round(local_rate, 2))
            self._replicated.append(round(replicated_rate, 2))
            self._delay_p99.append(p99_ms)
        self._slot_start += slots * self.interval
        self._base_time = now
        self._base = (local_total, replicated_total, delay_counts)
        return min(slots, self.size)

    def _restart(self, now, local_total, replicated_total, delay_counts) -> None:
        self._slot_start = now
        self._base_time = now
        self._base = (local_total, replicated_total, delay_counts)

    def to_dict(self) -> dict:
        """What /status shows, oldest sample first."""
        return {"interval": self.interval, "size": self.size,
                "increments_per_second": list(self._local),
                "replicated_per_second": list(self._replicated),
                "replication_delay_p99_ms": list(self._delay_p99)}
