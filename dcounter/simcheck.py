"""What the simulator checks, and what it must know to check it: every client attempt and its
answer, which keys each node committed or received, and which acknowledged increments the
README lets go.

The checks, run once the cluster has healed and settled (`unsettled` is None):

* `unsettled`: every node is up, shows the same counters and digest, lists every other node,
  and has nothing left to send or pull;
* `Oracle.bounds`: each counter lies within [A + indeterminate negative deltas, A + indeterminate
  positive deltas], A being the acknowledged deltas (Jepsen's counter check, both signs);
* `Oracle.committed`, as increments commit: a key retried at the same node counts once (per key
  epoch: a wiped or restored node has lost its keys); with strict keys, also at a node the event
  and its key reached by replication;
* `state_bounds`: held events within the gap cap, backlogs within their bound, origins and keys
  no more than were made.

An acknowledged increment counts as indeterminate ("lost") when the README lets it go: no node
holds it any more after a node lost its state (a wiped disk, a restored backup), or a restored
node acknowledged it under a sequence number its origin had already used.
"""

from __future__ import annotations

import collections


class Attempt:
    """One request of a client. `state`: pending, new (acknowledged, counted), replayed
    (acknowledged, counted nothing), failed (definite), indeterminate."""
    __slots__ = ("op", "node", "counter", "delta", "key", "tries", "state", "event", "lost")

    def __init__(self, op, node, counter, delta, key, tries):
        self.op, self.node, self.counter, self.delta, self.key = op, node, counter, delta, key
        self.tries = tries
        self.state = "pending"
        self.event: tuple[str, int] | None = None
        self.lost = False


class Oracle:
    def __init__(self, strict_keys: bool = False):
        self.strict_keys = strict_keys
        self.attempts: list[Attempt] = []
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

    def committed(self, node_id: str, attempt: Attempt, event) -> None:
        """A client's attempt made a new local event at `node_id`."""
        origin, seq = event.origin, event.seq
        attempt.event = (origin, seq)
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
        acked, low, high = (collections.Counter() for _ in range(3))
        for a in self.attempts:
            if a.state == "new" and not a.lost:
                acked[a.counter] += a.delta
            elif a.state == "indeterminate" or (a.state == "new" and a.lost):
                (low if a.delta < 0 else high)[a.counter] += a.delta
        problems = []
        for name in counters:
            value = values.get(name, 0)
            lo, hi = acked[name] + low[name], acked[name] + high[name]
            if not lo <= value <= hi:
                problems.append(f"counter {name} = {value}, outside [{lo}, {hi}] "
                                f"(acknowledged {acked[name]})")
        return problems


def _nonzero(values: dict[str, int]) -> dict[str, int]:
    return {k: v for k, v in values.items() if v}


def unsettled(nodes: dict, attempts: list[Attempt]) -> str | None:
    """None once the cluster has converged and nothing is in flight; else the first reason."""
    if any(a.state == "pending" for a in attempts):
        return "client requests still pending"
    first = next(iter(nodes.values()))
    if not first.up:
        return f"{first.node_id} is down"
    values = _nonzero(first.counter.counters())
    digest = first.counter.digest()
    for node in nodes.values():
        if not node.up:
            return f"{node.node_id} is down"
        others = sorted(n for n in nodes if n != node.node_id)
        if node.peers.alive() != others:
            return f"{node.node_id} lists {node.peers.alive()}, not {others}"
        shows = _nonzero(node.counter.counters())
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
