"""What the simulator checks, and what it must know to check it: every client attempt and its
answer, which events (increments and resets) each attempt made and where, which keys each node
committed or received, and which acknowledged increments the README lets go.

The checks, run once the cluster has healed and settled (`unsettled` is None):

* `unsettled`: every node is up, shows the same counters and digest, lists every other node,
  and has nothing left to send or pull. Nodes may show different counters by exactly what the
  README lets retirement leave unreset (`unreset_parts`: a reset's cover of an origin that a
  node's base folded in with a nearer cover), and by nothing else;
* `Oracle.exact`: at each node, each counter is what the applied events and resets make, the
  sum over live origins of (the origin's total - the total of the furthest cover of it), read
  from the reset events, plus the base of the retired origins less the furthest cover of the
  base; a deleted name is hidden exactly while its count is 0;
* `Oracle.bounds`: each counter lies within Jepsen's bounds over the increments' possible parts
  (`_options`): acknowledged ones their delta, indeterminate ones 0 or their delta, covered ones
  (origin:seq at or below a reset's covered watermark of that origin; a cover of the base
  covers the retired origins the resetting node held, up to their final watermarks) 0 under an
  acknowledged reset and either under one whose answer was lost; a cover the base left
  unreset (above) covers nothing;
* `Oracle.committed`, as events commit: a key retried at the same node counts once (per key
  epoch: a wiped or restored node has lost its keys); with strict keys, also at a node the event
  and its key reached by replication;
* `Oracle.keys_once`: a key counted once in the whole cluster, when every node that routed it
  listed every member and no fault touched its home while the key was in use;
* `state_bounds`: held events within the gap cap, backlogs within their bound, origins and keys
  no more than were made.

An acknowledged increment counts as indeterminate ("lost") when the README lets it go: no node
holds it any more after a node lost its state (a wiped disk, a restored backup), or a restored
node made another event under its id (either may survive).
"""

from __future__ import annotations

import collections

from dcounter import keyhome
from dcounter.reset import further
from dcounter.retirement import RETIRED_ENTRY


class Attempt:
    """One request of a client. `kind`: increment, reset or delete. `state`: pending, new
    (acknowledged, counted), replayed (acknowledged, counted nothing), failed (definite),
    indeterminate. `event` is the (origin, seq) it made, wherever it was made; `view` the
    members the receiving node listed when it routed the increment (None: it never did);
    `sent`, `decided` and `done` the virtual times of sending, routing and the answer."""
    __slots__ = ("op", "node", "counter", "delta", "key", "tries", "kind", "state", "event",
                 "lost", "sent", "decided", "done", "view")

    def __init__(self, op, node, counter, delta, key, tries, kind="increment"):
        self.op, self.node, self.counter, self.delta, self.key = op, node, counter, delta, key
        self.tries = tries
        self.kind = kind
        self.state = "pending"
        self.event: tuple[str, int] | None = None
        self.lost = False
        self.sent = self.decided = self.done = None
        self.view: tuple[str, ...] | None = None


class Oracle:
    def __init__(self, strict_keys: bool = False, clock=lambda: 0.0):
        self.strict_keys = strict_keys
        self.clock = clock  # the virtual time, for when keyed events were made
        self.attempts: list[Attempt] = []
        # (attempt, its reset event, the retired origins its cover of the base covers with
        # their final watermarks, and what of each the base it covered had folded in as covered)
        self.resets: list[tuple[Attempt, object, dict[str, int], dict[str, int]]] = []
        self.made: collections.Counter = collections.Counter()  # event id -> times made
        self.key_events: dict[str, list[tuple[str, str, float]]] = collections.defaultdict(list)
        self.epoch: dict[str, int] = collections.defaultdict(int)  # node -> key epoch
        self.new_by_key: dict[tuple[str, int, str], str] = {}      # (node, epoch, key) -> event
        self.pushed: dict[tuple[str, int], set] = collections.defaultdict(set)
        self.issued: dict[str, int] = {}        # origin -> highest seq it committed
        self.reused_below: dict[str, int] = {}  # restored origin -> seqs it had already used
        self.violations: list[str] = []

    def keys_lost(self, node_id: str) -> None:
        self.epoch[node_id] += 1

    def restored(self, node_id: str, origin: str) -> None:
        self.keys_lost(node_id)
        self.reused_below[origin] = self.issued.get(origin, 0)

    def replicated(self, node_id: str, events) -> None:
        """Events (with their keys) that reached a node in a replicate call it committed."""
        pushed = self.pushed[(node_id, self.epoch[node_id])]
        for event in events:
            if event.key is not None:
                pushed.add(event.key)

    def committed(self, node_id: str, attempt: Attempt, event, retired=None,
                  base_covers=None) -> None:
        """A client's attempt made a new local event at `node_id`; for a reset, `retired` is
        the node's retired set (origin -> final watermark, in the order they retired) after
        the reset committed: a cover of the base covers its first origins, as many as the
        cover's watermark says; `base_covers` what the node's base folded in of each (its
        disk's `base_covers`)."""
        retired, base_covers = retired or {}, base_covers or {}
        origin, seq = event.origin, event.seq
        attempt.event = (origin, seq)
        self.made[event.id] += 1
        if event.reset is not None:
            base = dict(list(retired.items())[:_base_count(event)])
            name = event.reset.counter
            folded = {origin: base_covers.get(origin, {}).get(name, (0, 0))[1]
                      for origin in base}
            self.resets.append((attempt, event, base, folded))
        elif attempt.key is not None:
            self.key_events[attempt.key].append((node_id, event.id, self.clock()))
        if seq <= self.reused_below.get(origin, 0):
            attempt.lost = True  # the README's restored-backup window
        self.issued[origin] = max(self.issued.get(origin, 0), seq)
        if attempt.key is None:
            return
        epoch = self.epoch[node_id]
        where = (node_id, epoch, attempt.key)
        if where in self.new_by_key:
            self.violations.append(f"key {attempt.key} counted again at the same node {node_id} "
                                   f"({self.new_by_key[where]} then {event.id})")
        else:
            self.new_by_key[where] = event.id
        if self.strict_keys and attempt.key in self.pushed[(node_id, epoch)]:
            self.violations.append(f"key {attempt.key} reached {node_id} by replication but "
                                   f"counted again there as {event.id}")

    def state_lost(self, disks) -> None:
        """A node lost state: acknowledged increments no disk holds any more are let go (also
        those whose answer is still on its way)."""
        for attempt in self.attempts:
            if attempt.event is not None and not attempt.lost:
                origin, seq = attempt.event
                if not any(disk.holds(origin, seq) for disk in disks):
                    attempt.lost = True

    def bounds(self, values: dict[str, int], counters) -> list[str]:
        """Jepsen's counter check, both signs, with resets: every increment's part in the
        value is one of a few numbers (`_options`), and the value lies between the sums of the
        smallest and the largest. `values` as every reset would have left them (`shown`)."""
        definite, maybe = self._resets_by_outcome()
        low, high, acked = (collections.Counter() for _ in range(3))
        for a in self.attempts:
            if a.kind != "increment":
                continue
            reused = a.event is not None and self.made[f"{a.event[0]}:{a.event[1]}"] > 1
            options = _options(a, definite.get(a.counter, ()), maybe.get(a.counter, ()),
                               reused)
            low[a.counter] += min(options)
            high[a.counter] += max(options)
            if a.state == "new" and not a.lost:
                acked[a.counter] += a.delta
        problems = []
        for name in counters:
            value = values.get(name, 0)
            lo, hi = low[name], high[name]
            if not lo <= value <= hi:
                problems.append(f"counter {name} = {value}, outside [{lo}, {hi}] "
                                f"(acknowledged {acked[name]}, "
                                f"{len(definite.get(name, ()))} acknowledged reset(s))")
        return problems

    def _resets_by_outcome(self) -> tuple[dict, dict]:
        """Counter -> the {origin: covered watermark} of its resets that certainly apply
        (acknowledged, not lost), and of those that may (the answer was lost, or the README
        lets it go)."""
        definite, maybe = collections.defaultdict(list), collections.defaultdict(list)
        for attempt, event, base, _folded in self.resets:
            # A cover of the base covers every event of the origins it held: all of them up to
            # their final watermark (later ones are refused).
            covered = {**base, **{origin: w for origin, w, _total in event.reset.covers
                                  if origin != RETIRED_ENTRY}}
            certain = attempt.state == "new" and not attempt.lost and self.made[event.id] == 1
            (definite if certain else maybe)[event.reset.counter].append(covered)
        return definite, maybe

    def exact(self, nodes: dict, counters) -> list[str]:
        """Once converged: for the events and resets the nodes applied, every node shows per
        counter the sum over origins of (the origin's total - the total of the furthest cover
        of it), reading what each reset covered from the reset event; a deleted name is
        hidden exactly while its count is 0. A counter whose reset's id was made twice (a
        restored node re-used it) is left out: the checker cannot tell which one applied."""
        furthest, _, deleted, unclear = furthest_covers(self.resets, self.made, nodes)
        problems = []
        for name in counters:
            if name in unclear:
                continue
            for node in nodes.values():
                view = node.counter.read_view(name)
                expected = sum(prefix + sum(held.values()) for _w, prefix, held in view.values())
                # The base (`RETIRED_ENTRY`) holds the retired origins' parts less what covered
                # them when they retired: their covers are not subtracted again.
                expected -= sum(total for origin, (_w, total) in furthest[name].items()
                                if origin == RETIRED_ENTRY or not node.counter.is_retired(origin))
                shows = node.counter.count(name)
                if shows != expected:
                    problems.append(f"counter {name} = {shows} at {node.node_id}, but the "
                                    f"applied events less the furthest covers of the applied "
                                    f"resets make {expected}")
                    break
                listed = name in node.counter.counters()
                if name in deleted and listed == (shows == 0):
                    problems.append(f"deleted counter {name} = {shows} is "
                                    f"{'listed' if listed else 'hidden'} at {node.node_id}")
                    break
        return problems

    def shown(self, node, nodes: dict) -> dict[str, int]:
        """`node`'s counters less what retirement left unreset there (`unreset_parts`): what
        it would show had every reset applied to every origin it covers."""
        values = node.counter.counters()
        if any(other.disk.base_covers for other in nodes.values()):
            furthest, base_cover, _, _ = furthest_covers(self.resets, self.made, nodes)
            for name, part in unreset_parts(node, furthest, base_cover).items():
                values[name] = node.counter.count(name) - part
        return values

    def unreset(self, nodes: dict) -> int:
        """How many (node, counter) show something else than every reset would have left,
        because of the README's window (`unreset_parts`)."""
        furthest, base_cover, _, _ = furthest_covers(self.resets, self.made, nodes)
        return sum(1 for node in nodes.values()
                   for part in unreset_parts(node, furthest, base_cover).values() if part)

    def keys_once(self, members, faults, settle: float) -> tuple[list[str], int, int]:
        """The README's promise for keys, conservatively: a key whose every routing node listed
        every member, and whose home no fault touched (a node fault on it, a partition with it
        on one side, from the fault's start until `settle` seconds after it ended) between its
        first attempt and its last answer or commit, was counted once in the whole cluster.
        Returns the problems, the keys checked and the keys used by increments."""
        by_key = collections.defaultdict(list)
        for a in self.attempts:
            if a.kind == "increment" and a.key is not None:
                by_key[a.key].append(a)
        everyone = set(members)
        problems, checked = [], 0
        for key, attempts in by_key.items():
            if any(a.view is not None and set(a.view) | {a.node} != everyone for a in attempts):
                continue  # membership was not whole where the key was routed
            made = self.key_events.get(key, [])
            start = min(a.sent for a in attempts)
            end = max([a.done or a.sent for a in attempts] + [a.decided or a.sent for a in attempts]
                      + [when for _node, _event, when in made])
            home = keyhome.home(key, everyone)
            if any(_touches(fault, home, start, end, settle) for fault in faults):
                continue
            checked += 1
            if len(made) > 1:
                problems.append(f"key {key} counted {len(made)} times "
                                f"({', '.join(f'{event} at {node}' for node, event, _ in made)}) "
                                f"though every routing node listed every member and no fault "
                                f"touched its home {home} in [{start:.2f}, {end:.2f}]")
        return problems, checked, len(by_key)


def _options(a: Attempt, definite, maybe, reused: bool = False) -> tuple[int, ...]:
    """What an increment may add to its counter's value: its delta, 0 when a reset covers it
    (its origin:seq at or below the reset's covered watermark of its origin) or it did not
    count, and -delta when it was let go (no node holds it) but a reset counted it among
    what it covers (the covered total is subtracted, the event is gone)."""
    d = a.delta
    state = a.state
    if state == "replayed" and a.event is not None:
        state = "new"  # a duplicated forward: its other copy's answer came first
    if state not in ("new", "indeterminate"):
        return (0,)
    if a.event is None:
        return (0, d)  # an indeterminate request that no node committed (or not yet seen)
    origin, seq = a.event
    covered = any(cover.get(origin, 0) >= seq for cover in definite)
    maybe_covered = any(cover.get(origin, 0) >= seq for cover in maybe)
    if a.lost or reused:  # two events under one id (a restored node): either may survive
        return (-d, 0, d) if covered or maybe_covered else (0, d)
    if covered:
        return (0,)
    options = (d,) if state == "new" else (0, d)
    return options + (0,) if maybe_covered else options


def _touches(fault, home: str, start: float, end: float, settle: float) -> bool:
    """Whether `fault` touched `home` at some time in [start, end]."""
    if fault.node is not None:
        touched = fault.node == home
    else:
        touched = any(home in pair for pair in fault.detail.get("pairs", ()))
    stop = fault.start + fault.duration + fault.detail.get("down", 0.0) + settle
    return touched and fault.start <= end and start <= stop


def furthest_covers(resets, made, nodes: dict) -> tuple[dict, dict, set, set]:
    """Of the reset events some node holds: per counter the furthest cover of each origin (and
    of the base, `RETIRED_ENTRY`); per counter, for the furthest cover of the base, the
    retired origins it covers and what the base it covered had folded in of each as covered;
    the deleted names; and the counters a reset id made twice leaves unclear."""
    furthest: dict[str, dict[str, tuple[int, int]]] = collections.defaultdict(dict)
    base_cover: dict[str, dict[str, int]] = {}
    deleted, unclear = set(), set()
    for _attempt, event, _base, folded in resets:
        reset = event.reset
        if made[event.id] > 1:
            unclear.add(reset.counter)
        if not any(node.disk.holds(event.origin, event.seq) for node in nodes.values()):
            continue
        deleted.update([reset.counter] if reset.delete else [])
        for origin, w, total in reset.covers:
            mine = furthest[reset.counter].get(origin)
            if mine is None or further((w, total), mine):
                furthest[reset.counter][origin] = (w, total)
                if origin == RETIRED_ENTRY:
                    base_cover[reset.counter] = folded
    return furthest, base_cover, deleted, unclear


def unreset_parts(node, furthest: dict, base_cover: dict) -> dict[str, int]:
    """Per counter, what `node` shows beyond what every reset would have left, because of the
    README's window: a reset reached a node only after that node retired an origin the reset
    covers, so its base folded the origin in with a nearer cover. Per retired origin in the
    node's base, that is the covered total the origin should have (the furthest cover's, or
    for an origin under the furthest cover of the base what the covered base had folded in)
    less the covered total the node's base folded in."""
    parts: dict[str, int] = collections.defaultdict(int)
    for origin, folded in node.disk.base_covers.items():
        for name in set(furthest) | set(base_cover):
            covered = base_cover.get(name, {})
            should = covered[origin] if origin in covered else \
                furthest.get(name, {}).get(origin, (0, 0))[1]
            parts[name] += should - folded.get(name, (0, 0))[1]
    return {name: part for name, part in parts.items() if part}


def _base_count(event) -> int:
    """How many retired origins a reset event's cover of the base covers (0: none)."""
    return max((w for origin, w, _total in event.reset.covers if origin == RETIRED_ENTRY),
               default=0)


def _nonzero(values: dict[str, int]) -> dict[str, int]:
    return {k: v for k, v in values.items() if v}


def unsettled(nodes: dict, attempts: list[Attempt], oracle: Oracle | None = None) -> str | None:
    """None once the cluster has converged and nothing is in flight; else the first reason.
    With the `oracle`, nodes may show different values by exactly what the README lets
    retirement leave unreset (`Oracle.shown`)."""
    if any(a.state == "pending" for a in attempts):
        return "client requests still pending"
    first = next(iter(nodes.values()))
    if not first.up:
        return f"{first.node_id} is down"

    def shown(node) -> dict[str, int]:
        return _nonzero(node.counter.counters() if oracle is None else oracle.shown(node, nodes))

    values = shown(first)
    digest = first.counter.digest()
    for node in nodes.values():
        if not node.up:
            return f"{node.node_id} is down"
        others = sorted(n for n in nodes if n != node.node_id)
        if node.peers.alive() != others:
            return f"{node.node_id} lists {node.peers.alive()}, not {others}"
        shows = shown(node)
        if shows != values:
            return f"{node.node_id} shows {shows}, {first.node_id} {values}"
        if node.counter.digest() != digest:
            return f"{node.node_id}'s digest differs from {first.node_id}'s"
        why = node.settled()
        if why:
            return why
    return None


def state_bounds(nodes: dict, origins: int, keys: int) -> list[str]:
    """Held events within the gap cap, backlogs within their bound, no more origins than were
    made and no more keys than clients used."""
    problems = []
    for node in nodes.values():
        cfg, counter = node.cfg, node.counter
        if counter.held_total() > cfg.gap_cap * counter.origin_count():
            problems.append(f"{node.node_id} holds {counter.held_total()} events")
        if counter.origin_count() > origins:
            problems.append(f"{node.node_id} knows {counter.origin_count()} origins, "
                            f"{origins} were made")
        if counter.key_count() > keys:
            problems.append(f"{node.node_id} keeps {counter.key_count()} keys, {keys} were used")
        if node.max_backlog_seen > cfg.max_backlog:
            problems.append(f"{node.node_id} had a backlog of {node.max_backlog_seen}")
    return problems
