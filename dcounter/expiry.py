"""`ExpiryIndex`: the idempotency keys in expiry order, so that expiry and eviction look only at
the keys they remove.

A heap of `(expires, tiebreak, key)` with lazy deletion: the dict of records (the counter's) is
the truth, and an entry whose key is gone, or was remembered again with another expiry, is
stale and skipped. Ordering by expiry rather than by insertion keeps it right when the wall
clock jumps. `in_order()` walks the heap without changing it (best-first from the root,
O(log k) per entry yielded), so a transaction that is aborted leaves the index as it was; only
`install` and `rebuild` change it. Pure: no clock, no threads, no lock (the owner's lock guards
it).
"""

from __future__ import annotations

import heapq
import itertools
from typing import Iterator, Mapping


class ExpiryIndex:
    def __init__(self):
        self._heap: list[tuple[float, int, str]] = []
        self._tiebreak = itertools.count()

    def rebuild(self, records: Mapping) -> None:
        """Index every record of `records` (key -> record with `.expires`)."""
        self._heap = [(record.expires, next(self._tiebreak), key)
                      for key, record in records.items()]
        heapq.heapify(self._heap)

    def in_order(self) -> Iterator[tuple[float, str]]:
        """`(expires, key)` of every entry, stale ones included, soonest first."""
        heap = self._heap
        if not heap:
            return
        frontier = [(heap[0], 0)]
        while frontier:
            entry, index = heapq.heappop(frontier)
            yield entry[0], entry[2]
            for child in (2 * index + 1, 2 * index + 2):
                if child < len(heap):
                    heapq.heappush(frontier, (heap[child], child))

    def install(self, records: Mapping, added: Mapping) -> None:
        """After `records` changed: index the `added` records and drop the stale entries at the
        top (forgotten keys expire first, so that is where they are), so the top is always a
        live key. Stale entries deeper down go when they reach the top; should they pile up
        (keys remembered again after wall clock jumps), the heap is rebuilt."""
        heap = self._heap
        for key, record in added.items():
            heapq.heappush(heap, (record.expires, next(self._tiebreak), key))
        while heap:
            expires, _tiebreak, key = heap[0]
            record = records.get(key)
            if record is not None and record.expires == expires:
                break
            heapq.heappop(heap)
        if len(heap) > 2 * len(records) + 1024:
            self.rebuild(records)

    def soonest(self) -> float | None:
        """The earliest expiry of a live key (after `install`), None when there is none."""
        return self._heap[0][0] if self._heap else None
