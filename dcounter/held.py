"""Held events: the events an origin applied above its watermark, out of order.

An event that arrives above `w + 1` applies at once (its totals move) but cannot join the
prefix yet: it is *held* (seq -> entry) until the events below it arrive, and then the
watermark moves over the run that became contiguous, folding the held events into the prefix
(`TxnHeld._fold_contiguous`). A prefix adopted from a peer drops the held events at or below its
watermark (adoption.py). A heartbeat summarises each origin's held seqs (`held_summary`), so that
a peer at the same watermark can tell whether it lacks some of them and pull them.

A held entry is a bare tuple, not an `Event`, to keep memory and the per-event path small; read
it through `held_parts` and `held_event`. `TxnHeld` (staging) and `CounterHeld` (committed reads)
are the parts of `Txn` and `Counter` that do this; they use those classes' state. Pure: no clock,
no threads, no sockets.
"""

from __future__ import annotations

import hashlib

from dcounter.events import Event, Items
from dcounter.validation import INT64_MAX

# A held event: (counter, delta, key), (None, items, key) for a bulk event, or
# (None, (), key, reset) for a reset event (reset.py).
HeldEntry = tuple


def held_parts(entry: HeldEntry) -> Items:
    """The (counter, delta) items of a held event."""
    return entry[1] if entry[0] is None else ((entry[0], entry[1]),)


def held_event(origin: str, seq: int, entry: HeldEntry) -> Event:
    """A held event as the event it was."""
    if len(entry) > 3 and entry[3] is not None:  # a reset event: its items are ()
        return Event(origin, seq, None, 0, entry[2], None, entry[3])
    if entry[0] is None:
        return Event(origin, seq, None, 0, entry[2], entry[1])
    return Event(origin, seq, entry[0], entry[1], entry[2])


# What a heartbeat says of an origin's held events: (how many, the highest seq, a fingerprint of
# the set of seqs). Two nodes at the same watermark hold the same events exactly when their
# summaries are equal (up to a 63-bit hash collision).
HeldSummary = tuple[int, int, int]


def held_summary(seqs) -> HeldSummary:
    ordered = sorted(seqs)
    digest = hashlib.blake2b(b"".join(seq.to_bytes(8, "big") for seq in ordered),
                             digest_size=8).digest()
    return len(ordered), ordered[-1], int.from_bytes(digest, "big") & INT64_MAX


class TxnHeld:
    """Held events through the transaction's overlay, mixed into `Txn`."""

    def _held(self, origin: str, seq: int):
        staged = self.origins.get(origin)
        if staged is not None:
            if seq in staged.held_add:
                return staged.held_add[seq]
            if seq in staged.held_del:
                return None
        committed = self._committed(origin)
        return committed.held.get(seq) if committed else None

    def _all_held(self, origin: str) -> dict[int, tuple]:
        committed = self._committed(origin)
        held = dict(committed.held) if committed else {}
        staged = self.origins.get(origin)
        if staged is not None:
            for seq in staged.held_del:
                held.pop(seq, None)
            held.update(staged.held_add)
        return held

    def _fold_contiguous(self, origin: str, staged) -> None:
        """Move the watermark over held events that became contiguous, folding them in."""
        while True:
            nxt = self._held(origin, staged.watermark + 1)
            if nxt is None:
                return
            staged.watermark += 1
            staged.held_add.pop(staged.watermark, None)
            staged.held_del.add(staged.watermark)
            for name, delta in held_parts(nxt):
                self._fold(origin, name, delta)


class CounterHeld:
    """Committed held events' reads, mixed into `Counter` (its lock guards them)."""

    def held_summaries(self) -> dict[str, HeldSummary]:
        """Per origin holding events above its watermark, their `held_summary`: what a heartbeat
        of protocol 2 carries, so that a peer at the same watermark can tell whether it lacks
        some of them."""
        with self._lock:
            return {origin: held_summary(state.held) for origin, state in self._origins.items()
                    if state.held}

    def held_total(self) -> int:
        with self._lock:
            return sum(len(state.held) for state in self._origins.values())
