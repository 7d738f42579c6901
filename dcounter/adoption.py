"""Adoption of pulled state: how a transaction takes what a peer's state reply brings.

Anti-entropy pulls an origin's prefix from a peer that shows it ahead (`POST /counter/state`).
The puller's writer adopts the answer in one job, under the counter's single transaction:

* `adopt` replaces the origin's prefix with the peer's, only if the peer's is still ahead here.
  Held events at or below the new watermark are dropped (the prefix contains them); those above
  stay and fold in when they become contiguous (held.py). A peer ahead for this node's own
  origin means a restored backup or a cloned disk: the node takes a fresh origin. The entry
  `RETIRED_ENTRY` brings a peer's compacted base and retired set instead, adopted by the rule
  of retirement.py (`_adopt_base`); a retired origin's prefix is never adopted.
* `adopt_held` merges the peer's held events of the origin, each like a replicated event.
* The covers and deleted names the reply carries merge by reset.py's rule (`adopt_covers`).

`TxnAdoption` is the part of `Txn` that does the first two; it uses that class's state. Pure:
no clock, no threads, no sockets.
"""

from __future__ import annotations

from dcounter.events import Event
from dcounter.held import held_parts
from dcounter.retirement import RETIRED_ENTRY


class TxnAdoption:
    """Adoption of a peer's prefixes and held events, mixed into `Txn`."""

    def adopt(self, origin: str, watermark: int, counters: dict[str, int],
              retired: dict | None = None) -> bool:
        """Replace an origin's prefix with a peer's, if the peer's is ahead. Held events at or
        below the new watermark are dropped (the prefix contains them); those above stay and
        fold in when they become contiguous. `RETIRED_ENTRY` adopts a peer's compacted base
        (`retired`: its retired set) instead; a retired origin is never adopted."""
        if origin == RETIRED_ENTRY:
            return self._adopt_base(watermark, counters, retired)
        if self.is_retired(origin):
            return False
        if origin == self.local_origin and watermark > self.watermark(origin):
            self.reorigin()
        if watermark <= self.watermark(origin):
            return False
        old_prefix = self._full_prefix(origin)
        held = self._all_held(origin)
        staged = self._staged(origin)
        for name in set(old_prefix) | set(counters):
            change = counters.get(name, 0) - old_prefix.get(name, 0)
            if change or (name in counters and self.total(name) is None):
                self._add_total(name, change)
        for seq, entry in held.items():
            if seq <= watermark:
                for name, delta in held_parts(entry):
                    self._add_total(name, -delta)
                staged.held_add.pop(seq, None)
                staged.held_del.add(seq)
        staged.prefix = dict(counters)
        staged.replace_prefix = True
        staged.watermark = watermark
        self._fold_contiguous(origin, staged)
        return True

    def adopt_held(self, origin: str, events: list[Event], now: float) -> int:
        """Merge a peer's held events of `origin` (a pull's answer, after `adopt` of its prefix):
        each applies like a replicated event (once, above the watermark, within the gap cap,
        its key remembered) and folds in when contiguous. Returns how many applied. A retired
        origin's are skipped, like its prefix."""
        if self.is_retired(origin):
            return 0
        return len(self.remote([e for e in events if e.origin == origin], now).applied)
