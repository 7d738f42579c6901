"""Origin retirement: which origins a node folds into its compacted base, and how nodes agree.

Every data directory (and every in-memory start) is a new origin, and the digest carries every
origin, so without a bound origins pile up. Each node therefore retires origins on its own, by
one rule, in the periodic sweep (`Txn.retire_origins`). An origin is retired when

* it is not this node's origin, nor the origin a listed peer announces as its own;
* its watermark has not moved, and its node has not been listed, for `origin_retire_after`
  seconds of wall time (`activity`: the watermark last seen and when it last changed, stored);
* it holds no out-of-order events, and every currently listed peer has shown it, in a digest,
  at this node's watermark (`note_digest`; a peer that showed it and later dropped it from its
  digest, having retired it, still counts). A node with no peers decides alone.

Retiring folds the origin's prefix, minus what resets covered of it (reset.py), into the
compacted *base* (per-counter totals) and remembers
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

`TxnRetirement` (staging: the sweep, adopting a peer's base) and `CounterRetirement` (committed
state: digests seen, install) are the parts of `Txn` (txn.py) and `Counter` (counter.py) that do
this; they use those classes' state. Pure: the wall time
comes in as an argument, and nothing here sleeps, spawns threads or opens sockets.
"""

from __future__ import annotations

import logging
from typing import TYPE_CHECKING

from dcounter import validation
from dcounter.errors import NodeError
from dcounter.validation import INT64_MAX

if TYPE_CHECKING:
    from dcounter.txn import Txn

log = logging.getLogger(__name__)

WARN_INTERVAL = 60.0  # seconds of wall time between two warnings of refused events
RETIRED_ENTRY = "_retired"  # the digest entry for the retired set; never a generated origin id


def check_retired_set(retired, count: int) -> str | None:
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
    except NodeError:
        return False
    return True


class TxnRetirement:
    """Staging of origin retirement, mixed into `Txn`."""

    def is_retired(self, origin: str) -> bool:
        """Retired here or in this transaction; `RETIRED_ENTRY` is never a live origin."""
        return origin in self.retired_add or origin in self._c._retired or \
            origin == RETIRED_ENTRY

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
            # The base takes what the counter shows of the origin: its part minus its cover.
            for name, covered in self._drop_covers(origin).items():
                base[name] = base.get(name, 0) - covered
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
        problem = check_retired_set(retired, count)
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
            if isinstance(retired, dict) and self.local_origin in retired:
                # Our peers refuse this origin's events now (we were cut off, or restored from
                # an old backup, for longer than they wait): take a fresh one, so that new
                # increments count again everywhere.
                log.warning("peers retired this node's origin %s; new events use a fresh "
                            "origin", self.local_origin)
                self.reorigin()
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
            for entry in self._all_held(origin).values():
                # (counter, delta, key), or (None, items, key) for a bulk event (held.py),
                # or (None, (), key, reset) for a reset event (reset.py)
                for name, delta in (entry[1] if entry[0] is None else (entry[:2],)):
                    self._add_total(name, -delta)
            for name, covered in self._drop_covers(origin).items():  # the peer's base has it
                self._add_total(name, covered)
            self._staged(origin)  # saved for a savepoint before it is dropped
            self.origins.pop(origin, None)
            self.origins_dropped.add(origin)
            self.retired_add[origin] = final
        self.base = dict(counters)
        if own:  # peers refuse our origin's events from now on
            self.reorigin()
        return True


class CounterRetirement:
    """Committed retirement state, mixed into `Counter` (its lock guards it)."""

    def note_digest(self, peer: str, digest: dict[str, int]) -> None:
        """Remember the watermark `peer` showed for each origin we hold (for retirement)."""
        with self._lock:
            for origin, watermark in digest.items():
                if origin in self._origins:
                    self._seen.setdefault(origin, {})[peer] = watermark

    def retired_count(self) -> int:
        with self._lock:
            return len(self._retired)

    def digest_reached(self) -> dict[str, int]:
        """The digest anti-entropy compares peers' digests with: this node's, where a base it
        refused (`_adopt_base`) counts as reached while its own retired set is unchanged, for
        pulling it again would be refused again. A peer showing a larger count, or this node
        retiring more, makes it a lead again."""
        with self._lock:
            digest = self._digest_locked()
            refused = self._base_refused
            if refused is not None and refused[0] == len(self._retired) \
                    and refused[1] > digest.get(RETIRED_ENTRY, 0):
                digest[RETIRED_ENTRY] = refused[1]
            return digest

    def retired_origins(self) -> dict[str, int]:
        """The retired set: origin -> final watermark (anti-entropy never pulls them)."""
        with self._lock:
            return dict(self._retired)

    def is_retired(self, origin: str) -> bool:
        with self._lock:
            return origin in self._retired or origin == RETIRED_ENTRY

    def _install_retirement_locked(self, txn: "Txn") -> None:
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
