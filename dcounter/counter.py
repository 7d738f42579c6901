"""The counter: committed state of events, deduplication, totals and digests; the pure core.

Theory of operation
-------------------
Every increment is an event `(origin, seq, counter, delta, key)` (events.py); its id is
`"<origin>:<seq>"`. Per origin the counter keeps a watermark `w` and the per-counter totals of
every event with `seq <= w` (the *prefix*), plus the few events applied above `w` (*held*,
held.py). An event applies only if it is above `w` and not held; then `w` moves up over any run
that became contiguous, folding those events into the prefix. Memory is O(origins + counters +
gap), never O(events); an event more than `gap_cap` above `w` is deferred (not applied) and
anti-entropy brings it later as part of a prefix.

The rules this module keeps:

* All state changes go through a `Txn` (txn.py): the single writer stages changes (`local`,
  `remote`, `adopt`, ...), the store persists `txn` and only then `install(txn)` makes them
  visible. A transaction that is never installed leaves no trace and consumes no sequence number.
* Only one transaction is open at a time (the node's writer thread owns them); readers take the
  lock and never see half of an install.
* Idempotency keys travel with their events as data (keys.py). A key recognises a client's
  retry; it never suppresses a distinct replicated event.
* This module never sleeps, spawns threads, opens sockets or reads the clock: the wall time
  comes in as an argument.

This module holds the committed state (`Counter`: load, begin/install, reads, digests,
snapshots). Its other parts are mixed in from the module of their concern: keys.py (idempotency
keys and their bound), held.py (held events), retirement.py (idle origins folded into a
compacted base, and what peers exchange about it), reset.py (resets and deletes). The names
other modules import from here (`Event`, `Txn`, `KeyRecord`, ...) are re-exported.
"""

from __future__ import annotations

import secrets
import threading
from typing import Callable

from dcounter.events import MAX_ITEMS, BulkResult, Event, Items, LocalResult, RemoteResult
from dcounter.expiry import ExpiryIndex
from dcounter.held import CounterHeld, HeldSummary, held_event, held_parts
from dcounter.keys import CounterKeys, KeyRecord
from dcounter.reset import CounterResets
from dcounter.retirement import RETIRED_ENTRY, CounterRetirement
from dcounter.txn import Txn

# What other modules import from here, wherever it now lives.
__all__ = ["BulkResult", "Counter", "Event", "HeldSummary", "Items", "KeyRecord", "LocalResult",
           "MAX_ITEMS", "OriginState", "RETIRED_ENTRY", "RemoteResult", "Txn", "held_event",
           "held_parts", "new_origin_id"]


def new_origin_id() -> str:
    return secrets.token_hex(8)


class OriginState:
    __slots__ = ("watermark", "prefix", "held")

    def __init__(self, watermark: int = 0, prefix: dict | None = None, held: dict | None = None):
        self.watermark = watermark
        self.prefix: dict[str, int] = prefix if prefix is not None else {}
        # seq -> held entry (held.py): (counter, delta, key), or (None, items, key) for a bulk event
        self.held: dict[int, tuple[str, int, str | None]] = held if held is not None else {}


class Counter(CounterKeys, CounterHeld, CounterRetirement, CounterResets):
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
