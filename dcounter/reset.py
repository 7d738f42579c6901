"""Resets and deletes: what a reset covers, how covers merge, and which names a delete hides.

Theory of operation
-------------------
A reset of counter C at a node is an event of that node's origin (it takes the next sequence
number like an increment) that carries, for every origin, the contiguous prefix it covers for C:
`covers = {origin: (watermark, that origin's total of C at that watermark)}`, as the resetting
node held them. The compacted base of retired origins (retirement.py) is covered like an origin
under the name `RETIRED_ENTRY`, its watermark being the number of retired origins.

Every node keeps, per (counter, origin), the furthest cover it has learned (*the cover*):
covers merge by the larger watermark, whatever order they arrive in, so concurrent resets
converge. A node shows for C

    base(C) + sum over origins o of (o's total of C) - sum over covered o of (covered total)

and keeps that value in the counter's totals incrementally: when a cover of o moves from
(w1, t1) to (w2, t2) the total of C changes by t1 - t2. Events of o above a cover's watermark
(made concurrently elsewhere, or held out of order here) are not covered and survive: add wins.
A node that has not yet received every event a cover counts shows less for a while, possibly
below zero; the value settles once it has them.

The rules this module keeps:

* A reset's covers merge into the node's covers when the reset *applies*, held (out of order) or
  contiguous: a merge by maximum needs no order. A held reset event is kept in its origin's held
  events, like an increment, only so that the watermark can pass over it.
* Anti-entropy: a prefix adopted from a peer may contain resets this node never received, so
  every state reply (`POST /counter/state`) carries the sender's covers and deleted names, and
  the puller merges them (`adopt_covers`) in the job that adopts the prefixes. Covers are facts
  about events that exist, so learning one early is the same as receiving its reset early.
* Retirement: when an origin retires, its part folds into the base minus its cover, and its
  covers are dropped; a cover of a retired origin arriving later is ignored (the base holds the
  cover it had). Adopting a peer's base drops the newly retired origins' covers the same way.
  The window this leaves: a reset reaching a node just after that node retired an origin the
  reset covers (idle for `origin_retire_after`) does not reset that origin's part there.
* Delete: a reset that also marks the name deleted (a tombstone; deletes merge by union). A
  deleted name whose count is 0 is hidden from the list of counters and does not count toward
  `max_counters`; an increment the delete did not cover makes the count non-zero and brings the
  name back. A tombstone counts toward `max_deleted` while it covers an origin that is not
  retired; a local delete past that bound is refused. Replicated resets are never refused.

`TxnResets` (staging) and `CounterResets` (committed state) are the parts of `Txn` and `Counter`
that do this; they use those classes' state. Every staged change here goes through
`_stage_cover` / `_stage_deleted`, which a savepoint undoes (`_reset_state`). Pure: no clock,
no threads, no sockets.
"""

from __future__ import annotations

from dataclasses import dataclass

from dcounter.errors import NotFound, Unprocessable
from dcounter.events import Event, LocalResult
from dcounter.keys import KeyRecord, describe_key
from dcounter.retirement import RETIRED_ENTRY as RETIRED  # the base's name in covers

Cover = tuple[int, int]  # (watermark, covered total)


def further(cover: Cover, than: Cover) -> bool:
    """Whether `cover` replaces `than`: a larger watermark, or at the same watermark a larger
    total. An origin's total at a watermark is one number, so the tie only ever breaks for the
    base (`RETIRED`), which two nodes can hold with the same count of different origins while
    they retire; breaking it the same way everywhere keeps nodes converging."""
    return cover > than


@dataclass(frozen=True)
class Reset:
    """What a reset event carries: the counter, per origin (sorted) the prefix it covers, and
    whether it is a delete."""
    counter: str
    covers: tuple[tuple[str, int, int], ...]  # (origin, watermark, covered total)
    delete: bool = False

    def wire(self) -> dict:
        return {"reset": self.counter,
                "covers": {origin: [w, total] for origin, w, total in self.covers},
                "delete": self.delete}


class TxnResets:
    """Staging of resets and deletes, mixed into `Txn`."""

    def _init_resets(self) -> None:
        self.cover_add: dict[tuple[str, str], Cover | None] = {}  # None: dropped
        self.deleted_add: set[str] = set()
        self.resets_applied = 0  # resets applied in this transaction (for the metric)

    def _reset_state(self) -> tuple:
        return dict(self.cover_add), set(self.deleted_add), self.resets_applied

    def _restore_resets(self, saved: tuple) -> None:
        cover_add, deleted_add, self.resets_applied = saved
        self.cover_add, self.deleted_add = dict(cover_add), set(deleted_add)

    # -- reads through the overlay -------------------------------------------------------------
    def cover(self, counter: str, origin: str) -> Cover | None:
        staged = self.cover_add.get((counter, origin), _MISSING)
        if staged is not _MISSING:
            return staged
        return self._c._cover.get(counter, {}).get(origin)

    def covers_of(self, counter: str) -> dict[str, Cover]:
        covers = dict(self._c._cover.get(counter, {}))
        for (name, origin), cover in self.cover_add.items():
            if name == counter:
                if cover is None:
                    covers.pop(origin, None)
                else:
                    covers[origin] = cover
        return covers

    def is_deleted(self, counter: str) -> bool:
        return counter in self.deleted_add or counter in self._c._deleted

    def hidden(self, counter: str) -> bool:
        return self.is_deleted(counter) and (self.total(counter) or 0) == 0

    def _hidden_count(self) -> int:
        return sum(1 for name in self._c._deleted | self.deleted_add if self.hidden(name))

    def _tombstones(self) -> int:
        """Deleted names whose tombstone still covers an origin that is not retired."""
        return sum(1 for name in self._c._deleted | self.deleted_add
                   if any(origin != RETIRED for origin in self.covers_of(name)))

    # -- staging --------------------------------------------------------------------------------
    def _stage_cover(self, counter: str, origin: str, cover: Cover | None) -> None:
        self.cover_add[(counter, origin)] = cover

    def _merge_reset(self, reset: Reset) -> None:
        """Merge a reset's covers into the node's (by the furthest watermark) and move the total
        by what the cover moved."""
        name = reset.counter
        for origin, w, total in reset.covers:
            self._merge_cover(name, origin, w, total)
        if reset.delete and not self.is_deleted(name):
            self.deleted_add.add(name)
            if self.total(name) is None:
                self._add_total(name, 0)
        self.resets_applied += 1

    def _merge_cover(self, name: str, origin: str, w: int, total: int) -> bool:
        if origin != RETIRED and self.is_retired(origin):
            return False  # folded into the base with the cover it had
        current = self.cover(name, origin)
        if current is not None and not further((w, total), current):
            return False
        self._stage_cover(name, origin, (w, total))
        self._add_total(name, (current[1] if current else 0) - total)
        return True

    def _apply_reset(self, origin: str, seq: int, reset: Reset, key: str | None) -> None:
        """Apply a reset event known to be new (above the watermark, not held)."""
        staged = self._staged(origin)
        if seq == staged.watermark + 1:
            staged.watermark = seq
            self._fold_contiguous(origin, staged)
        else:
            staged.held_del.discard(seq)
            staged.held_add[seq] = (None, (), key, reset)
        self._merge_reset(reset)

    def _covers_here(self, counter: str) -> tuple[tuple[str, int, int], ...]:
        """What a reset of `counter` made here covers: every origin's contiguous prefix that
        holds the counter, and the base."""
        covers = []
        origins = set(self._c._origins) | set(self.origins)
        for origin in sorted(origins):
            if origin in self.origins_dropped or self.is_retired(origin):
                continue
            w = self.watermark(origin)
            prefix = self._full_prefix(origin)
            if w > 0 and counter in prefix:
                covers.append((origin, w, prefix[counter]))
        base = self.base if self.base is not None else self._c._base
        retired = len(self._c._retired) + len(self.retired_add)
        if retired and counter in base:
            covers.append((RETIRED, retired, base[counter]))
        return tuple(sorted(covers))

    def local_reset(self, counter: str, delete: bool, key: str | None,
                    now: float) -> LocalResult:
        """Stage a reset (or a delete) of `counter` made here. Raises `NotFound` for a name this
        node does not know, `Unprocessable` when the key was used for another request or a
        delete would pass `max_deleted`; either way nothing is staged."""
        kind = "delete" if delete else "reset"
        if key is not None:
            record = self.key(key, now)
            if record is not None:
                if record.kind != kind or record.counter != counter:
                    raise Unprocessable("Idempotency-Key was already used with a different "
                                        f"request ({describe_key(record)})")
                count = record.count if record.count is not None else (self.total(counter) or 0)
                return LocalResult(counter, count, record.event_id, True, None)
        if self.total(counter) is None:
            raise NotFound(f"no counter {counter!r} at this node")
        if delete and not self.is_deleted(counter) \
                and self._tombstones() >= self._c.max_deleted:
            raise Unprocessable(f"too many deleted counters (at most {self._c.max_deleted} "
                                "tombstones; they are freed as the origins they cover retire)")
        reset = Reset(counter, self._covers_here(counter), delete)
        origin = self.local_origin
        seq = self.watermark(origin) + 1
        self._apply_reset(origin, seq, reset, key)
        event = Event(origin, seq, None, 0, key, None, reset)
        self.outbound.append(event)
        value = self.total(counter) or 0
        if key is not None:
            self._remember_key(key, KeyRecord(event.id, counter, 0, value,
                                              now + self._c.key_ttl, None, kind))
        return LocalResult(counter, value, event.id, False, event)

    def adopt_covers(self, covers: dict[str, dict[str, Cover]], deleted) -> int:
        """Merge the covers and deleted names of a peer's state reply (see the module
        docstring); returns how many covers moved."""
        moved = 0
        for name, per_origin in covers.items():
            for origin, (w, total) in per_origin.items():
                moved += self._merge_cover(name, origin, w, total)
        for name in deleted:
            if not self.is_deleted(name):
                self.deleted_add.add(name)
                if self.total(name) is None:
                    self._add_total(name, 0)
        return moved

    def _drop_covers(self, origin: str) -> dict[str, int]:
        """Stage dropping every cover of `origin` (it retires); returns counter -> the covered
        total that was subtracted from the counter."""
        dropped = {}
        names = {name for name, covers in self._c._cover.items() if origin in covers}
        names |= {name for (name, o) in self.cover_add if o == origin}
        for name in names:
            cover = self.cover(name, origin)
            if cover is not None:
                dropped[name] = cover[1]
                self._stage_cover(name, origin, None)
        return dropped


class CounterResets:
    """Committed covers and tombstones, mixed into `Counter` (its lock guards them)."""

    def _init_resets(self, max_deleted: int) -> None:
        self.max_deleted = max_deleted
        self._cover: dict[str, dict[str, Cover]] = {}  # counter -> origin -> cover
        self._deleted: set[str] = set()
        self.resets_applied = 0  # resets applied since start (local and replicated)

    def _load_resets(self, covers: dict[str, dict[str, Cover]] | None,
                     deleted: set[str] | None) -> None:
        self._cover = {name: dict(per_origin) for name, per_origin in (covers or {}).items()}
        self._deleted = set(deleted or ())

    def _install_resets_locked(self, txn) -> None:
        for (name, origin), cover in txn.cover_add.items():
            if cover is None:
                per_origin = self._cover.get(name)
                if per_origin is not None:
                    per_origin.pop(origin, None)
                    if not per_origin:
                        del self._cover[name]
            else:
                self._cover.setdefault(name, {})[origin] = cover
        self._deleted |= txn.deleted_add
        self.resets_applied += txn.resets_applied

    def _hidden_locked(self, name: str) -> bool:
        return name in self._deleted and self._totals.get(name, 0) == 0

    def covers_wire(self) -> tuple[dict[str, dict[str, list[int]]], list[str]]:
        """The covers and deleted names, for a state reply."""
        with self._lock:
            return ({name: {origin: [w, total] for origin, (w, total) in per_origin.items()}
                     for name, per_origin in self._cover.items()}, sorted(self._deleted))

    def cover_view(self, counter: str) -> dict[str, Cover]:
        with self._lock:
            return dict(self._cover.get(counter, {}))

    def deleted_count(self) -> int:
        """Tombstones that count toward `max_deleted`."""
        with self._lock:
            return sum(1 for name in self._deleted
                       if any(origin != RETIRED for origin in self._cover.get(name, {})))


_MISSING = object()
