"""Events, deduplication, totals and digests: the pure core of dcounter.

Theory of operation
-------------------
Every increment is an event `(origin, seq, counter, delta, key)`; its id is `"<origin>:<seq>"`.
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
the dict of records the counter keeps a heap of `(expires, tiebreak, key)` (lazy deletion: an
entry whose key is gone or was remembered again is skipped), so expiry and eviction look only at
the keys they remove, in expiry order, even when the wall clock jumps. A transaction walks the
committed heap without changing it (a best-first walk from the root), so an aborted transaction
leaves it as it was. Past `max_keys` the keys closest to expiry are forgotten early: a retry of
such a key counts again. No request and no replicated event is ever refused for it.

Retired origins
---------------
Every data directory (and every in-memory start) is a new origin, and the digest carries every
origin, so without a bound origins pile up. Each node therefore retires origins on its own, by
one rule, in the periodic sweep (`Txn.retire_origins`). An origin is retired when

* it is not this node's origin, nor the origin a listed peer announces as its own;
* its watermark has not moved, and its node has not been listed, for `origin_retire_after`
  seconds of wall time (`activity`: the watermark last seen and when it last changed, stored);
* it holds no out-of-order events, and every currently listed peer has shown it, in a digest,
  at this node's watermark (`note_digest`; a peer that showed it and later dropped it from its
  digest, having retired it, still counts). A node with no peers decides alone.

Retiring folds the origin's prefix into the compacted *base* (per-counter totals) and remembers
the origin's id and final watermark (the retired set), so later events of it are refused
(counted and logged, never failing the rest of a replicate batch) and its prefix is never
pulled again. Because every node saw the same watermark, the prefix folded in is the same on
every node, so two nodes that retired the same set hold the same base.

What peers exchange: the digest no longer carries retired origins but one entry
`RETIRED_ENTRY: len(retired set)`. A node that sees a larger count pulls that entry like an
origin; the snapshot carries the base and the retired set with watermarks, and the node adopts
it only if its own retired set is contained in it and it holds no event of the newly retired
origins beyond their final watermark (then it drops their live state: the base holds them).
A node that has not retired an origin still carries it, a node that has retired it never pulls
it, and a late joiner gets the whole base in one pull: nodes converge.
"""

from __future__ import annotations

import heapq
import itertools
import logging
import secrets
import threading
from dataclasses import dataclass
from typing import Callable

from dcounter import validation
from dcounter.errors import DcounterError, Unprocessable
from dcounter.validation import INT64_MAX, INT64_MIN

log = logging.getLogger(__name__)

WARN_INTERVAL = 60.0  # seconds of wall time between two warnings of the same kind
RETIRED_ENTRY = "_retired"  # the digest entry for the retired set (never a generated origin id)


def new_origin_id() -> str:
    return secrets.token_hex(8)


@dataclass(frozen=True)
class Event:
    origin: str
    seq: int
    counter: str
    delta: int
    key: str | None = None

    @property
    def id(self) -> str:
        return f"{self.origin}:{self.seq}"

    def to_wire(self) -> dict:
        wire = {"id": self.id, "counter": self.counter, "delta": self.delta}
        if self.key is not None:
            wire["key"] = self.key
        return wire


@dataclass(frozen=True)
class KeyRecord:
    """What a node remembers of an idempotency key. `count` is the count of the original
    response when the key was used at this node, None when it arrived with a replicated event."""
    event_id: str
    counter: str
    delta: int
    count: int | None
    expires: float  # wall-clock seconds


class OriginState:
    __slots__ = ("watermark", "prefix", "held")

    def __init__(self, watermark: int = 0, prefix: dict | None = None, held: dict | None = None):
        self.watermark = watermark
        self.prefix: dict[str, int] = prefix if prefix is not None else {}
        # seq -> (counter, delta, key)
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


class Txn:
    """A set of staged changes. Read through it, the counter looks as it will after install."""

    def __init__(self, counter: "Counter"):
        self._c = counter
        self.origins: dict[str, _Staged] = {}
        self.totals: dict[str, int] = {}
        self.keys_add: dict[str, KeyRecord] = {}
        self.keys_del: set[str] = set()
        self.local_origin = counter.local_origin
        self.reorigined_from: str | None = None
        self.outbound: list[Event] = []  # new local events, replicated after install
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

    # -- reads through the overlay -------------------------------------------------------
    def _committed(self, origin: str) -> OriginState | None:
        return self._c._origins.get(origin)

    def _staged(self, origin: str) -> _Staged:
        staged = self.origins.get(origin)
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
            self._fold(origin, nxt[0], nxt[1])

    def _apply(self, origin: str, seq: int, counter: str, delta: int, key: str | None) -> None:
        """Apply an event known to be new (above the watermark, not held)."""
        staged = self._staged(origin)
        if seq == staged.watermark + 1:
            self._fold(origin, counter, delta)
            staged.watermark = seq
            self._fold_contiguous(origin, staged)
        else:
            staged.held_del.discard(seq)
            staged.held_add[seq] = (counter, delta, key)
        self._add_total(counter, delta)

    def _remember_key(self, key: str, record: KeyRecord) -> None:
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
                if record.counter != counter or record.delta != delta:
                    raise Unprocessable("Idempotency-Key was already used with a different "
                                        f"request (counter {record.counter!r}, delta {record.delta})")
                count = record.count if record.count is not None else (self.total(counter) or 0)
                return LocalResult(counter, count, record.event_id, True, None)
        current = self.total(counter)
        if current is None and self._counter_count() >= self._c.max_counters:
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

    def _counter_count(self) -> int:
        new = sum(1 for name in self.totals if name not in self._c._totals)
        return len(self._c._totals) + new

    def remote(self, events: list[Event], now: float) -> RemoteResult:
        """Stage replicated events; duplicates and events beyond the gap cap are skipped."""
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
                continue
            if event.seq > w + self._c.gap_cap:
                deferred += 1
                continue
            self._apply(event.origin, event.seq, event.counter, event.delta, event.key)
            applied.append(event)
            if event.key is not None and self.key(event.key, now) is None:
                self._remember_key(event.key, KeyRecord(event.id, event.counter, event.delta,
                                                        None, now + self._c.key_ttl))
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
        for seq, (name, delta, _key) in held.items():
            if seq <= watermark:
                self._add_total(name, -delta)
                staged.held_add.pop(seq, None)
                staged.held_del.add(seq)
        staged.prefix = dict(counters)
        staged.replace_prefix = True
        staged.watermark = watermark
        self._fold_contiguous(origin, staged)
        return True

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
        for expires, _tiebreak, key in self._c._keys_by_expiry():
            if expires > now:
                break
            if self._committed_key(key, expires) is not None:
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
                self._key_walk = self._c._keys_by_expiry()
            evicted = None
            for expires, _tiebreak, key in self._key_walk:
                record = self._committed_key(key, expires)
                if record is not None:
                    self.keys_del.add(key)
                    evicted = record
                    break
            if evicted is None:  # every committed key is gone: drop the oldest staged one
                key, evicted = next(iter(self.keys_add.items()))
                del self.keys_add[key]
                if key in self._c._keys:
                    self.keys_del.add(key)
            self.keys_evicted += 1
            self.evicted_expires = evicted.expires

    def empty(self) -> bool:
        return not (self.origins or self.keys_add or self.keys_del or self.reorigined_from
                    or self.activity or self.retired_add or self.origins_dropped)

    # -- retired origins ---------------------------------------------------------------------------
    def is_retired(self, origin: str) -> bool:
        return origin in self.retired_add or origin in self._c._retired

    def _staged_base(self) -> dict[str, int]:
        if self.base is None:
            self.base = dict(self._c._base)
        return self.base

    def retire_origins(self, now: float, peers: list[str], live: set[str]) -> list[str]:
        """The periodic sweep: stamp origins whose watermark moved (or whose node is listed,
        `live`), and retire those idle for `origin_retire_after` that every listed peer in
        `peers` has shown at our watermark (see the module docstring). Returns the origins
        retired."""
        c = self._c
        retire_after = c.origin_retire_after
        retired = []
        for origin, state in c._origins.items():
            if origin in self.origins or origin in self.origins_dropped:
                continue  # changed in this transaction: not idle
            activity = self.activity.get(origin) or c._activity.get(origin)
            if activity is None or activity[0] != state.watermark:
                self.activity[origin] = (state.watermark, now)
                continue
            idle = now - activity[1]
            if origin in (self.local_origin, c.local_origin):
                continue
            if origin in live:  # its node is listed: alive however quiet, so keep it fresh
                if not 0 <= idle < retire_after / 64:
                    self.activity[origin] = (state.watermark, now)
                continue
            if idle < retire_after or state.held or state.watermark == 0:
                continue
            seen = c._seen.get(origin, {})
            if any(seen.get(peer) != state.watermark for peer in peers):
                continue
            base = self._staged_base()
            for name, total in state.prefix.items():
                base[name] = base.get(name, 0) + total
            self.retired_add[origin] = state.watermark
            self.origins_dropped.add(origin)
            retired.append(origin)
        return retired

    def _adopt_base(self, count: int, counters: dict[str, int], retired) -> bool:
        """Adopt a peer's base and retired set if they contain ours and lose no event this node
        holds; the newly retired origins' live state is dropped (the base holds it)."""
        c = self._c
        mine = {**c._retired, **self.retired_add}
        if count <= len(mine):
            return False
        problem = _check_retired_set(retired, count)
        if problem is None:
            if not mine.keys() <= retired.keys():
                problem = "it lacks origins this node retired"
            else:
                for origin, final in retired.items():
                    if origin in mine:
                        continue
                    if self.watermark(origin) > final or any(
                            seq > final for seq in self._all_held(origin)):
                        problem = f"this node holds events of {origin} beyond {final}"
                        break
        if problem is not None:
            log.warning("not adopting a peer's retired origins: %s", problem)
            self.base_refused = (len(mine), count)
            return False
        old_base = self._staged_base()
        for name in set(old_base) | set(counters):
            change = counters.get(name, 0) - old_base.get(name, 0)
            if change or (name in counters and self.total(name) is None):
                self._add_total(name, change)
        own = False
        for origin, final in retired.items():
            if origin in mine:
                continue
            own = own or origin == self.local_origin
            for name, total in self._full_prefix(origin).items():
                self._add_total(name, -total)
            for name, delta, _key in self._all_held(origin).values():
                self._add_total(name, -delta)
            self.origins.pop(origin, None)
            self.origins_dropped.add(origin)
            self.retired_add[origin] = final
        self.base = dict(counters)
        if own:  # peers refuse our origin's events from now on
            self.reorigin()
        return True


def _check_retired_set(retired, count: int) -> str | None:
    """Why a peer's retired set (origin -> final watermark) is malformed, or None."""
    if not isinstance(retired, dict) or len(retired) != count:
        return f"the retired set must be an object of {count} origins"
    for origin, final in retired.items():
        if not isinstance(origin, str) or not _is_origin(origin) or isinstance(final, bool) \
                or not isinstance(final, int) or not 1 <= final <= INT64_MAX:
            return "the retired set must map origin ids to watermarks"
    return None


def _is_origin(value: str) -> bool:
    try:
        validation.origin(value)
    except DcounterError:
        return False
    return True


class Counter:
    """Committed state: per-origin prefixes and held events, totals, idempotency keys."""

    def __init__(self, local_origin: str, *, max_counters: int = 10_000, gap_cap: int = 10_000,
                 key_ttl: float = 86_400.0, max_keys: int = 1_000_000,
                 origin_retire_after: float = 604_800.0,
                 new_origin: Callable[[], str] = new_origin_id):
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
        self._key_heap: list[tuple[float, int, str]] = []  # (expires, tiebreak, key), lazy
        self._key_tiebreak = itertools.count()
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

    # -- loading (before the node serves) ----------------------------------------------------
    def load(self, origins: dict[str, OriginState], keys: dict[str, KeyRecord],
             retired: dict[str, int] | None = None, base: dict[str, int] | None = None,
             activity: dict[str, tuple[int, float]] | None = None) -> None:
        with self._lock:
            self._origins = origins
            self._keys = keys
            self._rebuild_key_heap_locked()
            self._retired = dict(retired or {})
            self._base = dict(base or {})
            self._activity = dict(activity or {})
            totals: dict[str, int] = dict(self._base)
            for state in origins.values():
                for name, value in state.prefix.items():
                    totals[name] = totals.get(name, 0) + value
                for name, delta, _key in state.held.values():
                    totals[name] = totals.get(name, 0) + delta
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
            self._install_keys_locked(txn)
            self._install_retirement_locked(txn)
            self.local_origin = txn.local_origin
            self._txn_open = False

    # -- reads ---------------------------------------------------------------------------------
    def count(self, counter: str) -> int:
        with self._lock:
            return self._totals.get(counter, 0)

    def counters(self) -> dict[str, int]:
        with self._lock:
            return dict(self._totals)

    def counter_names(self) -> int:
        with self._lock:
            return len(self._totals)

    def digest(self) -> dict[str, int]:
        with self._lock:
            digest = {origin: state.watermark for origin, state in self._origins.items()
                      if state.watermark > 0}
            if self._retired:
                digest[RETIRED_ENTRY] = len(self._retired)
            return digest

    def watermark(self, origin: str) -> int:
        with self._lock:
            state = self._origins.get(origin)
            return state.watermark if state else 0

    def snapshot(self, origins: list[str]) -> dict[str, dict]:
        """The prefixes of the given origins, taken atomically, for anti-entropy."""
        with self._lock:
            out = {}
            for origin in origins:
                if origin == RETIRED_ENTRY and self._retired:
                    out[origin] = {"watermark": len(self._retired), "counters": dict(self._base),
                                   "retired": dict(self._retired)}
                state = self._origins.get(origin)
                if state is not None and state.watermark > 0:
                    out[origin] = {"watermark": state.watermark, "counters": dict(state.prefix)}
            return out

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
            if not self._key_heap:
                return 0.0
            return max(0.0, now - (self._key_heap[0][0] - self.key_ttl))

    # -- the idempotency key structure (the writer's side) --------------------------------------
    def _keys_by_expiry(self):
        """Yield the heap's entries in expiry order without changing it: a best-first walk from
        the root costs O(log k) per entry yielded. Only the writer calls it (nothing changes the
        heap while a transaction is open)."""
        heap = self._key_heap
        if not heap:
            return
        frontier = [(heap[0], 0)]
        while frontier:
            entry, index = heapq.heappop(frontier)
            yield entry
            for child in (2 * index + 1, 2 * index + 2):
                if child < len(heap):
                    heapq.heappush(frontier, (heap[child], child))

    def _rebuild_key_heap_locked(self) -> None:
        self._key_heap = [(record.expires, next(self._key_tiebreak), key)
                          for key, record in self._keys.items()]
        heapq.heapify(self._key_heap)

    def _install_keys_locked(self, txn: Txn) -> None:
        keys, heap = self._keys, self._key_heap
        for key in txn.keys_del:
            keys.pop(key, None)
        for key, record in txn.keys_add.items():
            keys[key] = record
            heapq.heappush(heap, (record.expires, next(self._key_tiebreak), key))
        # Entries of forgotten keys sit at the top (they expire first): drop them now, so the
        # top is always a live key. Entries of keys remembered anew go when they reach the top;
        # should they pile up (wall clock jumps), the heap is rebuilt.
        while heap:
            expires, _tiebreak, key = heap[0]
            record = keys.get(key)
            if record is not None and record.expires == expires:
                break
            heapq.heappop(heap)
        if len(heap) > 2 * len(keys) + 1024:
            self._rebuild_key_heap_locked()
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

    # -- retired origins -------------------------------------------------------------------------
    def note_digest(self, peer: str, digest: dict[str, int]) -> None:
        """Remember the watermark `peer` showed for each origin we hold (for retirement)."""
        with self._lock:
            for origin, watermark in digest.items():
                if origin in self._origins:
                    self._seen.setdefault(origin, {})[peer] = watermark

    def retired_count(self) -> int:
        with self._lock:
            return len(self._retired)

    def is_retired(self, origin: str) -> bool:
        with self._lock:
            return origin in self._retired

    def _install_retirement_locked(self, txn: Txn) -> None:
        for origin in txn.origins_dropped:
            self._origins.pop(origin, None)
            self._seen.pop(origin, None)
            self._activity.pop(origin, None)
        for origin, activity in txn.activity.items():
            if origin not in txn.origins_dropped:
                self._activity[origin] = activity
        if txn.retired_add:
            self._retired.update(txn.retired_add)
            log.info("retired %d origin(s) idle for %g s (%d retired in all; their totals are "
                     "kept in the base)", len(txn.retired_add), self.origin_retire_after,
                     len(self._retired))
        if txn.base is not None:
            self._base = txn.base
        if txn.base_refused is not None:
            self._base_refused = txn.base_refused
        if txn.retired_refused:
            self.retired_refused += txn.retired_refused
            self._refused_unwarned += txn.retired_refused
            now = txn.refused_now or 0.0
            last = self._refusal_warned
            if last is None or not 0 <= now - last < WARN_INTERVAL:
                log.warning("refused %d replicated event(s) of retired origins (an origin silent "
                            "for more than %g s came back; its new events are not counted)",
                            self._refused_unwarned, self.origin_retire_after)
                self._refusal_warned = now
                self._refused_unwarned = 0
