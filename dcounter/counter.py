"""Events, deduplication, totals and digests: the pure core of dcounter.

Theory of operation
-------------------
Every increment is an event `(origin, seq, counter, delta, key)`; its id is `"<origin>:<seq>"`.
A bulk event carries several `(counter, delta)` items instead of one counter and delta: it takes
one sequence number and applies whole or not at all, wherever it applies (see `Event.items`).
Per origin the counter keeps a watermark `w` and the per-counter totals of every event with
`seq <= w` (the *prefix*), plus the few events applied above `w` (*held*, seq -> event). An event
applies only if it is above `w` and not held; then `w` moves up over any run that became
contiguous, folding those events into the prefix. Memory is O(origins + counters + gap), never
O(events); an event more than `gap_cap` above `w` is deferred (not applied) and anti-entropy
brings it later as part of a prefix.

The rules this module keeps:

* All state changes go through a `Txn`: the single writer stages changes (`local`, `remote`,
  `adopt`, ...), the store persists `txn` and only then `install(txn)` makes them visible. A
  transaction that is never installed leaves no trace and consumes no sequence number.
* Only one transaction is open at a time (the node's writer thread owns them); readers take the
  lock and never see half of an install.
* Idempotency keys travel with their events as data. A key recognises a client's retry; it never
  suppresses a distinct replicated event.
* This module never sleeps, spawns threads, opens sockets or reads the clock: the wall time
  comes in as an argument.

Idempotency keys
----------------
Keys are remembered for `key_ttl` seconds of wall time, and at most `max_keys` of them. Besides
the dict of records the counter keeps an `ExpiryIndex` (expiry.py), so expiry and eviction look
only at the keys they remove, in expiry order, even when the wall clock jumps; a transaction
walks it without changing it. Past `max_keys` the keys closest to expiry are forgotten early: a
retry of such a key counts again. No request and no replicated event is ever refused for it.

Retired origins
---------------
Idle origins are folded into a compacted base and no longer carried in the digest; the rule and
what peers exchange about it are in retirement.py.
"""

from __future__ import annotations

import hashlib
import logging
import secrets
import threading
from dataclasses import dataclass
from typing import Callable

from dcounter.errors import Unprocessable
from dcounter.expiry import ExpiryIndex
from dcounter.reset import CounterResets, Reset, TxnResets, describe_key
from dcounter.retirement import RETIRED_ENTRY, CounterRetirement, TxnRetirement
from dcounter.validation import INT64_MAX, INT64_MIN

log = logging.getLogger(__name__)

WARN_INTERVAL = 60.0  # seconds of wall time between two warnings of evicted keys


def new_origin_id() -> str:
    return secrets.token_hex(8)


MAX_ITEMS = 1_000  # items in one bulk event (and one bulk request)

Items = tuple[tuple[str, int], ...]  # (counter, delta) per item, in request order


@dataclass(frozen=True)
class Event:
    """One increment. A bulk event has `items` (two or more), `counter` None and `delta` 0: read
    what it changes through `parts`. A single item is always a plain event (`Event.of`). A
    reset event (reset.py) has `reset`, `counter` None, `delta` 0 and no parts."""
    origin: str
    seq: int
    counter: str | None
    delta: int
    key: str | None = None
    items: Items | None = None
    reset: Reset | None = None

    @classmethod
    def of(cls, origin: str, seq: int, items: Items, key: str | None = None) -> "Event":
        if len(items) == 1:
            return cls(origin, seq, items[0][0], items[0][1], key)
        return cls(origin, seq, None, 0, key, tuple(items))

    @property
    def id(self) -> str:
        return f"{self.origin}:{self.seq}"

    @property
    def parts(self) -> Items:
        if self.reset is not None:
            return ()
        return self.items if self.items is not None else ((self.counter, self.delta),)

    def to_wire(self) -> dict:
        if self.reset is not None:  # protocol 2 only: see protocol.py
            wire = {"id": self.id, **self.reset.wire()}
        elif self.items is not None:  # protocol 2 only: see protocol.py
            wire = {"id": self.id, "items": [[name, delta] for name, delta in self.items]}
        else:
            wire = {"id": self.id, "counter": self.counter, "delta": self.delta}
        if self.key is not None:
            wire["key"] = self.key
        return wire


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


@dataclass(frozen=True)
class KeyRecord:
    """What a node remembers of an idempotency key. `count` is the count of the original
    response when the key was used at this node, None when it arrived with a replicated event."""
    event_id: str
    counter: str | None  # None for a bulk request (then `items`)
    delta: int
    count: int | None
    expires: float  # wall-clock seconds
    items: Items | None = None
    kind: str | None = None  # "reset" or "delete" for those requests (reset.py)

    @property
    def parts(self) -> Items:
        if self.kind is not None:
            return ()
        return self.items if self.items is not None else ((self.counter, self.delta),)


class OriginState:
    __slots__ = ("watermark", "prefix", "held")

    def __init__(self, watermark: int = 0, prefix: dict | None = None, held: dict | None = None):
        self.watermark = watermark
        self.prefix: dict[str, int] = prefix if prefix is not None else {}
        # seq -> (counter, delta, key), or (None, items, key) for a bulk event
        self.held: dict[int, tuple[str, int, str | None]] = held if held is not None else {}


@dataclass(frozen=True)
class LocalResult:
    counter: str
    count: int
    event_id: str
    replayed: bool
    event: Event | None  # the new event to replicate; None for a replay

    def payload(self) -> dict:
        return {"counter": self.counter, "count": self.count, "event_id": self.event_id}


@dataclass(frozen=True)
class BulkResult:
    event_id: str
    results: Items  # (counter, count after the event), in item order
    replayed: bool
    event: Event | None  # the new event to replicate; None for a replay

    def payload(self) -> dict:
        return {"event_id": self.event_id,
                "results": [{"counter": name, "count": count} for name, count in self.results]}


@dataclass
class RemoteResult:
    applied: list[Event]
    duplicates: int  # retired-origin events included: they are skipped the same way
    deferred: int
    retired: int = 0  # events of retired origins, refused


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


class Txn(TxnRetirement, TxnResets):
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

    def key(self, key: str, now: float) -> KeyRecord | None:
        if key in self.keys_add:
            return self.keys_add[key]
        if key in self.keys_del:
            return None
        record = self._c._keys.get(key)
        if record is None or record.expires <= now:
            return None
        return record

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

    def _fold_contiguous(self, origin: str, staged: _Staged) -> None:
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

    def _remember_key(self, key: str, record: KeyRecord) -> None:
        self._stage_key(key)
        self.keys_del.discard(key)
        self.keys_add[key] = record
        self.keys_now = record.expires - self._c.key_ttl
        self._enforce_key_cap()

    def local(self, counter: str, delta: int, key: str | None, now: float) -> LocalResult:
        """Stage a local increment. Raises `Unprocessable` (and stages nothing) when the key was
        used for another request, the result leaves signed 64 bits, or the counter is one too
        many."""
        if key is not None:
            record = self.key(key, now)
            if record is not None:
                if record.parts != ((counter, delta),):
                    raise Unprocessable("Idempotency-Key was already used with a different "
                                        f"request ({_describe(record)})")
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
                                        f"request ({_describe(record)})")
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

    def reorigin(self) -> None:
        """Take a fresh origin: a peer holds events of ours above our watermark (a restored
        backup or cloned disk), so our next sequence numbers would collide with them."""
        if self.reorigined_from is None:
            self.reorigined_from = self.local_origin
        self.local_origin = self._c._new_origin()

    # -- the idempotency key bound ----------------------------------------------------------------
    def expire_keys(self, now: float) -> int:
        """Forget the keys expired at `now`, looking only at them; then apply `max_keys` (which
        may have been lowered since the keys were stored)."""
        expired = 0
        for expires, key in self._c._key_index.in_order():
            if expires > now:
                break
            if self._committed_key(key, expires) is not None:
                self._stage_key(key)
                self.keys_del.add(key)
                expired += 1
        self.keys_now = now
        self._enforce_key_cap()
        return expired

    def _committed_key(self, key: str, expires: float) -> KeyRecord | None:
        """The committed record a heap entry stands for, unless this transaction already
        forgot the key or remembered it anew."""
        if key in self.keys_del or key in self.keys_add:
            return None
        record = self._c._keys.get(key)
        return record if record is not None and record.expires == expires else None

    def _key_count(self) -> int:
        # Slightly high when a key is remembered again after it expired but before the sweep
        # forgot it: then one key more is evicted than needed.
        return len(self._c._keys) + len(self.keys_add) - len(self.keys_del)

    def _enforce_key_cap(self) -> None:
        while self._key_count() > self._c.max_keys:
            if self._key_walk is None:
                self._key_walk = self._c._key_index.in_order()
            evicted = None
            for expires, key in self._key_walk:
                record = self._committed_key(key, expires)
                if record is not None:
                    self._stage_key(key)
                    self.keys_del.add(key)
                    evicted = record
                    break
            if evicted is None:  # every committed key is gone: drop the oldest staged one
                if not self.keys_add:
                    return
                key, evicted = next(iter(self.keys_add.items()))
                self._stage_key(key)
                del self.keys_add[key]
                if key in self._c._keys:
                    self.keys_del.add(key)
            self.keys_evicted += 1
            self.evicted_expires = evicted.expires

    def empty(self) -> bool:
        return not (self.origins or self.keys_add or self.keys_del or self.reorigined_from
                    or self.activity or self.retired_add or self.origins_dropped
                    or self.cover_add or self.deleted_add)


_describe = describe_key


class Counter(CounterRetirement, CounterResets):
    """Committed state: per-origin prefixes and held events, totals, idempotency keys, covers
    of resets and tombstones of deletes."""

    def __init__(self, local_origin: str, *, max_counters: int = 10_000, gap_cap: int = 10_000,
                 key_ttl: float = 86_400.0, max_keys: int = 1_000_000,
                 origin_retire_after: float = 604_800.0,
                 new_origin: Callable[[], str] = new_origin_id, max_deleted: int = 10_000):
        self._lock = threading.Lock()
        self.local_origin = local_origin
        self.max_counters = max_counters
        self.gap_cap = gap_cap
        self.key_ttl = key_ttl
        self._new_origin = new_origin
        self._origins: dict[str, OriginState] = {}
        self._totals: dict[str, int] = {}
        self._keys: dict[str, KeyRecord] = {}
        self.max_keys = max_keys
        self._key_index = ExpiryIndex()  # the keys in expiry order; only the writer walks it
        self.keys_evicted = 0  # keys forgotten before their ttl because of max_keys
        self._eviction_warned: float | None = None  # wall time of the last warning
        self._evicted_unwarned = 0
        self.origin_retire_after = origin_retire_after
        self._retired: dict[str, int] = {}  # retired origin -> its final watermark
        self._base: dict[str, int] = {}  # per-counter totals of the retired origins
        self._activity: dict[str, tuple[int, float]] = {}  # origin -> (watermark, wall time)
        self._seen: dict[str, dict[str, int]] = {}  # origin -> {peer: watermark it showed}
        self._base_refused: tuple[int, int] | None = None  # (our count, offered count)
        self.retired_refused = 0  # events of retired origins refused since start
        self._refusal_warned: float | None = None
        self._refused_unwarned = 0
        self._txn_open = False
        self._init_resets(max_deleted)

    # -- loading (before the node serves) ----------------------------------------------------
    def load(self, origins: dict[str, OriginState], keys: dict[str, KeyRecord],
             retired: dict[str, int] | None = None, base: dict[str, int] | None = None,
             activity: dict[str, tuple[int, float]] | None = None,
             covers: dict[str, dict[str, tuple[int, int]]] | None = None,
             deleted: set[str] | None = None) -> None:
        with self._lock:
            self._load_resets(covers, deleted)
            self._origins = origins
            self._keys = keys
            self._key_index.rebuild(keys)
            self._retired = dict(retired or {})
            self._base = dict(base or {})
            self._activity = dict(activity or {})
            totals: dict[str, int] = dict(self._base)
            for state in origins.values():
                for name, value in state.prefix.items():
                    totals[name] = totals.get(name, 0) + value
                for entry in state.held.values():
                    for name, delta in held_parts(entry):
                        totals[name] = totals.get(name, 0) + delta
            for name, per_origin in self._cover.items():
                for _origin, (_w, total) in per_origin.items():
                    totals[name] = totals.get(name, 0) - total
            for name in self._deleted:
                totals.setdefault(name, 0)
            self._totals = totals

    # -- writes -------------------------------------------------------------------------------
    def begin(self) -> Txn:
        if self._txn_open:
            raise RuntimeError("a transaction is already open; only the writer may stage changes")
        self._txn_open = True
        return Txn(self)

    def abort(self, txn: Txn) -> None:
        self._txn_open = False

    def install(self, txn: Txn) -> None:
        with self._lock:
            for origin, staged in txn.origins.items():
                state = self._origins.get(origin)
                if state is None:
                    state = self._origins[origin] = OriginState()
                state.watermark = staged.watermark
                if staged.replace_prefix:
                    state.prefix = dict(staged.prefix)
                else:
                    state.prefix.update(staged.prefix)
                for seq in staged.held_del:
                    state.held.pop(seq, None)
                state.held.update(staged.held_add)
            self._totals.update(txn.totals)
            if txn.keys_add or txn.keys_del or txn.keys_evicted:
                self._install_keys_locked(txn)
            self._install_retirement_locked(txn)
            self._install_resets_locked(txn)
            self.local_origin = txn.local_origin
            self._txn_open = False

    # -- reads ---------------------------------------------------------------------------------
    def count(self, counter: str) -> int:
        with self._lock:
            return self._totals.get(counter, 0)

    def counters(self) -> dict[str, int]:
        """Every name shown: a deleted name is hidden while its count is 0 (reset.py)."""
        with self._lock:
            if not self._deleted:
                return dict(self._totals)
            return {name: value for name, value in self._totals.items()
                    if not self._hidden_locked(name)}

    def counter_names(self) -> int:
        with self._lock:
            return len(self._totals) - sum(1 for name in self._deleted
                                           if self._hidden_locked(name))

    def digest(self) -> dict[str, int]:
        with self._lock:
            return self._digest_locked()

    def _digest_locked(self) -> dict[str, int]:
        digest = {origin: state.watermark for origin, state in self._origins.items()
                  if state.watermark > 0}
        if self._retired:
            digest[RETIRED_ENTRY] = len(self._retired)
        return digest

    def watermark(self, origin: str) -> int:
        with self._lock:
            state = self._origins.get(origin)
            return state.watermark if state else 0

    def snapshot(self, origins: list[str], held: int = 0) -> dict[str, dict]:
        """The prefixes of the given origins, taken atomically, for anti-entropy. With `held`,
        each origin also carries up to that many of its held events, lowest seqs first, in
        their wire form (`"held"`), and an origin that has only held events is included with
        watermark 0."""
        with self._lock:
            out = {}
            for origin in origins:
                if origin == RETIRED_ENTRY and self._retired:
                    out[origin] = {"watermark": len(self._retired), "counters": dict(self._base),
                                   "retired": dict(self._retired)}
                state = self._origins.get(origin)
                if state is None or not (state.watermark > 0 or (held and state.held)):
                    continue
                out[origin] = {"watermark": state.watermark, "counters": dict(state.prefix)}
                if held and state.held:
                    out[origin]["held"] = [held_event(origin, seq, state.held[seq]).to_wire()
                                           for seq in sorted(state.held)[:held]]
            return out

    def held_summaries(self) -> dict[str, HeldSummary]:
        """Per origin holding events above its watermark, their `held_summary`: what a heartbeat
        of protocol 2 carries, so that a peer at the same watermark can tell whether it lacks
        some of them."""
        with self._lock:
            return {origin: held_summary(state.held) for origin, state in self._origins.items()
                    if state.held}

    def behind(self, digest: dict[str, int]) -> list[str]:
        """Origins for which `digest` (a peer's) is ahead of us."""
        with self._lock:
            behind = []
            for origin, w in digest.items():
                if origin == RETIRED_ENTRY:
                    if w > len(self._retired) and not (
                            self._base_refused is not None
                            and self._base_refused[0] == len(self._retired)
                            and w <= self._base_refused[1]):
                        behind.append(origin)
                elif origin not in self._retired and w > (
                        self._origins[origin].watermark if origin in self._origins else 0):
                    behind.append(origin)
            return behind

    def key(self, key: str, now: float) -> KeyRecord | None:
        with self._lock:
            record = self._keys.get(key)
            return record if record is not None and record.expires > now else None

    def held_total(self) -> int:
        with self._lock:
            return sum(len(state.held) for state in self._origins.values())

    def key_count(self) -> int:
        with self._lock:
            return len(self._keys)

    def key_retention(self, now: float) -> float:
        """Seconds since the oldest remembered key was made: about `key_ttl` while nothing is
        evicted, less when `max_keys` forgets keys early; 0 without keys."""
        with self._lock:
            soonest = self._key_index.soonest()
            return 0.0 if soonest is None else max(0.0, now - (soonest - self.key_ttl))

    # -- the idempotency key bound (the writer's side) -------------------------------------------
    def _install_keys_locked(self, txn: Txn) -> None:
        for key in txn.keys_del:
            self._keys.pop(key, None)
        self._keys.update(txn.keys_add)
        self._key_index.install(self._keys, txn.keys_add)
        if txn.keys_evicted:
            self._note_evictions_locked(txn)

    def _note_evictions_locked(self, txn: Txn) -> None:
        self.keys_evicted += txn.keys_evicted
        self._evicted_unwarned += txn.keys_evicted
        now = txn.keys_now if txn.keys_now is not None else 0.0
        last = self._eviction_warned
        if last is not None and 0 <= now - last < WARN_INTERVAL:
            return
        kept = now - (txn.evicted_expires - self.key_ttl)
        log.warning("%d idempotency key(s) forgotten before their %g s ttl to stay within "
                    "--max-keys %d: a key is now kept about %.0f s, and a client retry after "
                    "that counts again", self._evicted_unwarned, self.key_ttl, self.max_keys,
                    max(0.0, kept))
        self._eviction_warned = now
        self._evicted_unwarned = 0

    def origin_count(self) -> int:
        with self._lock:
            return len(self._origins)

    def read_view(self, counter: str) -> dict[str, tuple[int, int, dict[int, int]]]:
        """Per origin, for one counter: `(watermark, the prefix's total, {seq: delta} of the
        events held above the watermark)`, taken atomically. Read-only: what a read of the whole
        cluster (`clusterread.py`) merges with its peers' prefixes. The base of retired origins
        is the entry `RETIRED_ENTRY` (its watermark: how many origins it holds), as in a
        snapshot."""
        with self._lock:
            view = {origin: (state.watermark, state.prefix.get(counter, 0),
                             {seq: sum(delta for name, delta in held_parts(entry)
                                       if name == counter)
                              for seq, entry in state.held.items()
                              if any(name == counter for name, _ in held_parts(entry))})
                    for origin, state in self._origins.items()}
            if self._retired:
                view[RETIRED_ENTRY] = (len(self._retired), self._base.get(counter, 0), {})
            return view
