"""The transaction: the single writer's staged changes, read through as the counter will look.

All state changes go through a `Txn`: the single writer stages changes (`local`, `remote`,
`adopt`, ...), the store persists the `Txn` and only then `Counter.install(txn)` (counter.py)
makes them visible. A transaction that is never installed leaves no trace and consumes no
sequence number. Staging is copy-on-write over the committed state: per origin a `_Staged`
(watermark, prefix changes, held events added and dropped), per counter its new total, per key
its new record or its removal. A savepoint records lazily what it needs to undo, so the writer
can roll one job back without touching the other jobs of its group.

This module holds the staging core: the overlay reads, applying an event (the per-event path:
`_apply`, `_apply_bulk`, `remote`), local increments and savepoints. The other parts of `Txn`
live with their concern and are mixed in: keys.py (idempotency keys and their bound), held.py
(events held above the watermark), adoption.py (a peer's prefixes), retirement.py (retired
origins and the base), reset.py (resets and deletes). Pure: the wall time comes in as an
argument; nothing here sleeps, spawns threads, opens sockets or reads the clock.
"""

from __future__ import annotations

from typing import TYPE_CHECKING

from dcounter.adoption import TxnAdoption
from dcounter.errors import Unprocessable
from dcounter.events import MAX_ITEMS, BulkResult, Event, Items, LocalResult, RemoteResult
from dcounter.held import TxnHeld
from dcounter.keys import KeyRecord, TxnKeys, describe_key
from dcounter.reset import TxnResets
from dcounter.retirement import TxnRetirement
from dcounter.validation import INT64_MAX, INT64_MIN

if TYPE_CHECKING:
    from dcounter.counter import Counter, OriginState


class _Staged:
    """Staged changes of one origin inside a transaction (copy-on-write over the committed
    state)."""
    __slots__ = ("watermark", "prefix", "replace_prefix", "held_add", "held_del")

    def __init__(self, watermark: int):
        self.watermark = watermark
        self.prefix: dict[str, int] = {}
        self.replace_prefix = False
        self.held_add: dict[int, tuple[str, int, str | None]] = {}
        self.held_del: set[int] = set()

    def copy(self) -> "_Staged":
        other = _Staged(self.watermark)
        other.prefix = dict(self.prefix)
        other.replace_prefix = self.replace_prefix
        other.held_add = dict(self.held_add)
        other.held_del = set(self.held_del)
        return other


_UNSTAGED = object()


class Savepoint:
    """A transaction as it was when `Txn.savepoint()` was called, recorded lazily: each staged
    origin, total and key is saved as it was just before its first change after the savepoint,
    so taking one costs nothing and rolling back costs what was staged since."""
    __slots__ = ("origins", "totals", "keys", "outbound", "local_origin", "reorigined_from",
                 "bounds", "resets")

    def __init__(self, txn: "Txn"):
        self.origins: dict[str, _Staged | None] = {}  # None: the origin was not staged
        self.totals: dict[str, object] = {}  # counter -> staged total or _UNSTAGED
        self.keys: dict[str, tuple[object, bool]] = {}  # key -> (staged record, in keys_del)
        self.outbound = len(txn.outbound)
        self.local_origin = txn.local_origin
        self.reorigined_from = txn.reorigined_from
        # The key bound's and origin retirement's staging, copied whole: it holds at most the
        # origins this transaction touched, and most jobs stage none of it.
        self.bounds = txn._bounds_state()
        self.resets = txn._reset_state()  # covers and tombstones staged (reset.py), likewise


class Txn(TxnKeys, TxnHeld, TxnAdoption, TxnRetirement, TxnResets):
    """A set of staged changes. Read through it, the counter looks as it will after install.

    Every staging change goes through `_staged` (an origin), `_add_total` (a total) or
    `_stage_key` (a key), which record what a savepoint needs to undo it; `outbound` only grows
    and the local origin changes only in `reorigin`. `savepoint()` / `rollback_to(sp)` let the
    writer undo one job's changes without touching the other jobs of its group.
    """

    def __init__(self, counter: "Counter"):
        self._c = counter
        self.origins: dict[str, _Staged] = {}
        self.totals: dict[str, int] = {}
        self.keys_add: dict[str, KeyRecord] = {}
        self.keys_del: set[str] = set()
        self.local_origin = counter.local_origin
        self.reorigined_from: str | None = None
        self.outbound: list[Event] = []  # new local events, replicated after install
        self._savepoint: Savepoint | None = None
        # The idempotency key bound: committed keys oldest first (walked lazily), how many were
        # evicted early, and the wall time and expiry of the last one (for the warning, metric).
        self._key_walk = None
        self.keys_evicted = 0
        self.evicted_expires: float | None = None
        self.keys_now: float | None = None
        # Origin retirement: activity stamps, origins retired or dropped from the live state,
        # the new compacted base (None: unchanged), events of retired origins refused.
        self.activity: dict[str, tuple[int, float]] = {}
        self.retired_add: dict[str, int] = {}
        self.origins_dropped: set[str] = set()
        self.base: dict[str, int] | None = None
        self.base_refused: tuple[int, int] | None = None
        self.retired_refused = 0
        self.refused_now: float | None = None
        self._init_resets()

    # -- savepoints ---------------------------------------------------------------------------
    def savepoint(self) -> Savepoint:
        """Mark the staged state; `rollback_to` returns to it. One savepoint at a time: a new
        one replaces the previous."""
        self._savepoint = Savepoint(self)
        return self._savepoint

    def rollback_to(self, sp: Savepoint) -> None:
        """Undo everything staged since `sp` was taken; `sp` stays usable."""
        if sp is not self._savepoint:
            raise ValueError("only the latest savepoint can be rolled back to")
        for origin, saved in sp.origins.items():
            if saved is None:
                self.origins.pop(origin, None)
            else:
                self.origins[origin] = saved
        for name, total in sp.totals.items():
            if total is _UNSTAGED:
                self.totals.pop(name, None)
            else:
                self.totals[name] = total
        for key, (record, deleted) in sp.keys.items():
            if record is _UNSTAGED:
                self.keys_add.pop(key, None)
            else:
                self.keys_add[key] = record
            if deleted:
                self.keys_del.add(key)
            else:
                self.keys_del.discard(key)
        del self.outbound[sp.outbound:]
        self.local_origin, self.reorigined_from = sp.local_origin, sp.reorigined_from
        self._restore_bounds(sp.bounds)
        self._restore_resets(sp.resets)
        sp.origins, sp.totals, sp.keys = {}, {}, {}  # the state is sp's again: nothing to undo

    def _bounds_state(self) -> tuple:
        return (dict(self.activity), dict(self.retired_add), set(self.origins_dropped),
                None if self.base is None else dict(self.base), self.base_refused,
                self.retired_refused, self.refused_now, self.keys_evicted, self.evicted_expires,
                self.keys_now)

    def _restore_bounds(self, saved: tuple) -> None:
        (activity, retired_add, dropped, base, self.base_refused, self.retired_refused,
         self.refused_now, self.keys_evicted, self.evicted_expires, self.keys_now) = saved
        self.activity, self.retired_add, self.origins_dropped = (dict(activity), dict(retired_add),
                                                                 set(dropped))
        self.base = None if base is None else dict(base)
        self._key_walk = None  # the walk restarts; entries already forgotten are skipped

    def _stage_key(self, key: str) -> None:
        """Called before a key's staged record changes."""
        sp = self._savepoint
        if sp is not None and key not in sp.keys:
            sp.keys[key] = (self.keys_add.get(key, _UNSTAGED), key in self.keys_del)

    # -- reads through the overlay -------------------------------------------------------
    def _committed(self, origin: str) -> OriginState | None:
        return self._c._origins.get(origin)

    def _staged(self, origin: str) -> _Staged:
        """The origin's staged changes, for changing them."""
        staged = self.origins.get(origin)
        sp = self._savepoint
        if sp is not None and origin not in sp.origins:
            sp.origins[origin] = staged.copy() if staged is not None else None
        if staged is None:
            committed = self._committed(origin)
            staged = _Staged(committed.watermark if committed else 0)
            self.origins[origin] = staged
        return staged

    def watermark(self, origin: str) -> int:
        staged = self.origins.get(origin)
        if staged is not None:
            return staged.watermark
        committed = self._committed(origin)
        return committed.watermark if committed else 0

    def _prefix(self, origin: str, counter: str) -> int:
        staged = self.origins.get(origin)
        if staged is not None:
            if counter in staged.prefix:
                return staged.prefix[counter]
            if staged.replace_prefix:
                return 0
        committed = self._committed(origin)
        return committed.prefix.get(counter, 0) if committed else 0

    def _full_prefix(self, origin: str) -> dict[str, int]:
        staged = self.origins.get(origin)
        committed = self._committed(origin)
        if staged is not None and staged.replace_prefix:
            return dict(staged.prefix)
        prefix = dict(committed.prefix) if committed else {}
        if staged is not None:
            prefix.update(staged.prefix)
        return prefix

    def total(self, counter: str) -> int | None:
        if counter in self.totals:
            return self.totals[counter]
        return self._c._totals.get(counter)

    # -- staging --------------------------------------------------------------------------
    def _add_total(self, counter: str, delta: int) -> int:
        value = (self.total(counter) or 0) + delta
        sp = self._savepoint
        if sp is not None and counter not in sp.totals:
            sp.totals[counter] = self.totals.get(counter, _UNSTAGED)
        self.totals[counter] = value
        return value

    def _fold(self, origin: str, counter: str, delta: int) -> None:
        staged = self._staged(origin)
        staged.prefix[counter] = self._prefix(origin, counter) + delta

    def _apply(self, origin: str, seq: int, counter: str, delta: int, key: str | None) -> None:
        """Apply an event known to be new (above the watermark, not held)."""
        staged = self._staged(origin)
        if seq == staged.watermark + 1:
            # `_fold` inlined: `staged` is this origin's, already saved for the savepoint.
            staged.prefix[counter] = self._prefix(origin, counter) + delta
            staged.watermark = seq
            committed = self._c._origins.get(origin)
            if staged.held_add or (committed is not None and committed.held):
                self._fold_contiguous(origin, staged)  # else nothing is held to fold in
        else:
            staged.held_del.discard(seq)
            staged.held_add[seq] = (counter, delta, key)
        self._add_total(counter, delta)

    def _apply_bulk(self, origin: str, seq: int, items: Items, key: str | None) -> None:
        """Apply a bulk event known to be new: every item, or (held) none until it is."""
        # `_apply`'s twin, kept apart: one helper serving both (its items as a tuple) made the
        # per-event path of a replicated batch about a fifth slower.
        staged = self._staged(origin)
        sums: dict[str, int] = {}  # per counter: a request names few counters many times
        for name, delta in items:
            sums[name] = sums.get(name, 0) + delta
        if seq == staged.watermark + 1:
            for name, delta in sums.items():
                self._fold(origin, name, delta)
            staged.watermark = seq
            self._fold_contiguous(origin, staged)
        else:
            staged.held_del.discard(seq)
            staged.held_add[seq] = (None, items, key)
        for name, delta in sums.items():
            self._add_total(name, delta)

    def local(self, counter: str, delta: int, key: str | None, now: float) -> LocalResult:
        """Stage a local increment. Raises `Unprocessable` (and stages nothing) when the key was
        used for another request, the result leaves signed 64 bits, or the counter is one too
        many."""
        if key is not None:
            record = self.key(key, now)
            if record is not None:
                if record.parts != ((counter, delta),):
                    raise Unprocessable("Idempotency-Key was already used with a different "
                                        f"request ({describe_key(record)})")
                count = record.count if record.count is not None else (self.total(counter) or 0)
                return LocalResult(counter, count, record.event_id, True, None)
        current = self.total(counter)
        if (current is None or self.hidden(counter)) \
                and self._counter_count() >= self._c.max_counters:
            raise Unprocessable(f"too many counters (at most {self._c.max_counters})")
        value = (current or 0) + delta
        if not INT64_MIN <= value <= INT64_MAX:
            raise Unprocessable("the result would leave the signed 64-bit range")
        origin = self.local_origin
        seq = self.watermark(origin) + 1
        self._apply(origin, seq, counter, delta, key)
        event = Event(origin, seq, counter, delta, key)
        self.outbound.append(event)
        if key is not None:
            self._remember_key(key, KeyRecord(event.id, counter, delta, value,
                                              now + self._c.key_ttl))
        return LocalResult(counter, value, event.id, False, event)

    def local_many(self, items: Items, key: str | None, now: float) -> BulkResult:
        """Stage a bulk increment: one event, one sequence number, every item or none. Raises
        `Unprocessable` naming the item (and stages nothing) when the key was used for another
        request, an item's running result leaves signed 64 bits, or an item's counter is one
        too many. The results are each item's counter after the whole event."""
        items = tuple((name, delta) for name, delta in items)  # compared with a key's record
        if not 1 <= len(items) <= MAX_ITEMS:
            raise ValueError(f"a bulk event has 1 to {MAX_ITEMS} items")
        if key is not None:
            record = self.key(key, now)
            if record is not None:
                if record.parts != items:
                    raise Unprocessable("Idempotency-Key was already used with a different "
                                        f"request ({describe_key(record)})")
                return BulkResult(record.event_id,
                                  tuple((name, self.total(name) or 0) for name, _ in items),
                                  True, None)
        values: dict[str, int] = {}
        counters = self._counter_count()
        for index, (name, delta) in enumerate(items):
            value = values.get(name)
            if value is None:
                current = self.total(name)
                if current is None or self.hidden(name):
                    if counters >= self._c.max_counters:
                        raise Unprocessable(f"increments[{index}]: too many counters (at most "
                                            f"{self._c.max_counters})")
                    counters += 1
                value = current or 0
            value += delta
            if not INT64_MIN <= value <= INT64_MAX:
                raise Unprocessable(f"increments[{index}]: the result would leave the signed "
                                    "64-bit range")
            values[name] = value
        origin = self.local_origin
        event = Event.of(origin, self.watermark(origin) + 1, items, key)
        if event.items is None:
            self._apply(origin, event.seq, event.counter, event.delta, key)
        else:
            self._apply_bulk(origin, event.seq, event.items, key)
        self.outbound.append(event)
        if key is not None:
            count = values[event.counter] if event.items is None else None
            self._remember_key(key, KeyRecord(event.id, event.counter, event.delta, count,
                                              now + self._c.key_ttl, event.items))
        return BulkResult(event.id, tuple((name, values[name]) for name, _ in items), False,
                          event)

    def _counter_count(self) -> int:
        """Names shown: a deleted name while hidden does not count (reset.py)."""
        new = sum(1 for name in self.totals if name not in self._c._totals)
        hidden = self._hidden_count() if (self._c._deleted or self.deleted_add) else 0
        return len(self._c._totals) + new - hidden

    def remote(self, events: list[Event], now: float) -> RemoteResult:
        """Stage replicated events; duplicates and events beyond the gap cap are skipped. The key
        of every event is remembered, new or not: a duplicate may be an event this node learned
        inside a prefix, which carries no keys, and a client's retry must still find it."""
        applied, duplicates, deferred = [], 0, 0
        retired = self.retired_refused
        for event in events:
            if self.is_retired(event.origin):  # folded into the base: skipped like a duplicate
                duplicates += 1
                self.retired_refused += 1
                self.refused_now = now
                continue
            if event.origin == self.local_origin and event.seq > self.watermark(event.origin):
                self.reorigin()
            w = self.watermark(event.origin)
            if event.seq <= w or self._held(event.origin, event.seq) is not None:
                duplicates += 1
            elif event.seq > w + self._c.gap_cap:
                deferred += 1
            elif event.reset is not None:
                self._apply_reset(event.origin, event.seq, event.reset, event.key)
                applied.append(event)
            elif event.items is not None:
                self._apply_bulk(event.origin, event.seq, event.items, event.key)
                applied.append(event)
            else:
                self._apply(event.origin, event.seq, event.counter, event.delta, event.key)
                applied.append(event)
            if event.key is not None and self.key(event.key, now) is None:
                if event.reset is not None:
                    record = KeyRecord(event.id, event.reset.counter, 0, None,
                                       now + self._c.key_ttl, None,
                                       "delete" if event.reset.delete else "reset")
                else:
                    record = KeyRecord(event.id, event.counter, event.delta, None,
                                       now + self._c.key_ttl, event.items)
                self._remember_key(event.key, record)
        return RemoteResult(applied, duplicates, deferred, self.retired_refused - retired)

    def reorigin(self) -> None:
        """Take a fresh origin: a peer holds events of ours above our watermark (a restored
        backup or cloned disk), so our next sequence numbers would collide with them."""
        if self.reorigined_from is None:
            self.reorigined_from = self.local_origin
        self.local_origin = self._c._new_origin()

    def empty(self) -> bool:
        return not (self.origins or self.keys_add or self.keys_del or self.reorigined_from
                    or self.activity or self.retired_add or self.origins_dropped
                    or self.cover_add or self.deleted_add)

