"""Idempotency keys: what a node remembers of them, and the bound on how many.

A key travels with its event as data: it lets a node recognise a client's retry, never
suppresses a distinct replicated event. Keys are remembered for `key_ttl` seconds of wall time,
and at most `max_keys` of them. Besides the dict of records the counter keeps an `ExpiryIndex`
(expiry.py), so expiry and eviction look only at the keys they remove, in expiry order, even
when the wall clock jumps; a transaction walks it without changing it. Past `max_keys` the keys
closest to expiry are forgotten early: a retry of such a key counts again. No request and no
replicated event is ever refused for it.

`TxnKeys` (staging: remember, expire, evict) and `CounterKeys` (committed records, install, the
warning of early evictions) are the parts of `Txn` and `Counter` that do this; they use those
classes' state. Every staged change of a key goes through `Txn._stage_key`, which a savepoint
undoes. Pure: the wall time comes in as an argument.
"""

from __future__ import annotations

import logging
from dataclasses import dataclass

from dcounter.events import Items

log = logging.getLogger("dcounter.counter")  # the name its warnings have always carried

WARN_INTERVAL = 60.0  # seconds of wall time between two warnings of evicted keys


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


def describe_key(record: KeyRecord) -> str:
    """The request a key was used for, for the error of its reuse with another."""
    if record.kind is not None:
        return f"a {record.kind} of counter {record.counter!r}"
    if record.items is not None:
        return f"a bulk request of {len(record.items)} items"
    return f"counter {record.counter!r}, delta {record.delta}"


class TxnKeys:
    """Keys through the transaction's overlay, and the bound, mixed into `Txn`."""

    def key(self, key: str, now: float) -> KeyRecord | None:
        if key in self.keys_add:
            return self.keys_add[key]
        if key in self.keys_del:
            return None
        record = self._c._keys.get(key)
        if record is None or record.expires <= now:
            return None
        return record

    def _remember_key(self, key: str, record: KeyRecord) -> None:
        self._stage_key(key)
        self.keys_del.discard(key)
        self.keys_add[key] = record
        self.keys_now = record.expires - self._c.key_ttl
        self._enforce_key_cap()

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


class CounterKeys:
    """Committed keys, mixed into `Counter` (its lock guards them)."""

    def key(self, key: str, now: float) -> KeyRecord | None:
        with self._lock:
            record = self._keys.get(key)
            return record if record is not None and record.expires > now else None

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
    def _install_keys_locked(self, txn) -> None:
        for key in txn.keys_del:
            self._keys.pop(key, None)
        self._keys.update(txn.keys_add)
        self._key_index.install(self._keys, txn.keys_add)
        if txn.keys_evicted:
            self._note_evictions_locked(txn)

    def _note_evictions_locked(self, txn) -> None:
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
