"""The simulated world under the simulator's nodes: virtual time, one event queue, a network of
directed links with faults, per-node clocks, and the seeded fault schedule.

Theory of operation
-------------------
`World` holds the virtual clock and a heap of callbacks `(time, order, fn, args)`; `run` pops
them in time order (ties in the order they were scheduled), so a run is a pure function of the
seed. Nothing here sleeps or reads a real clock, and nothing iterates a set of strings in hash
order. Every delivered message and every client answer is fed into a SHA-256 *trace hash*:
two runs of one seed must print the same hash.

`Network` carries messages between endpoints (the nodes' `receive`). Per message it may drop
(a blocked directed link, or loss), duplicate, and delay it by a latency plus jitter (which
reorders). What the messages mean is not its business.

`FaultPlan` draws the fault schedule from its own random stream and applies it through the
`Cluster` methods the simulator provides (crash, restart, pause, ...), then `heal()` undoes
everything still active. This module knows nothing of counters or membership.
"""

from __future__ import annotations

import hashlib
import heapq
import itertools
import random
from dataclasses import dataclass, field

NET_KINDS = ("partition", "oneway", "loss", "dup", "delay")
NODE_KINDS = ("crash", "wipe", "pause", "failcommit", "backup", "clockjump", "leave")
FAULT_KINDS = NET_KINDS + NODE_KINDS
# Not in the default mix (`--slow-links` adds it): a node whose answers lag, then leaves and
# comes back, so answers it gave before its goodbye arrive after its peers dropped it, and
# after a stale one listed it again.
EXTRA_KINDS = ("slowlink",)
# Faults of the network that can keep a node from hearing its peers' heartbeats.
_CUTS_OFF = {"partition", "oneway", "loss"}
# Faults that take a node away for a while: one at a time per node.
_TAKES_NODE = {"crash", "wipe", "pause", "backup", "leave", "slowlink"}


class StopRun(Exception):
    """Raised by a callback to end `World.run` early (the run reached its goal)."""


class World:
    """Virtual time and the event queue."""

    def __init__(self, trace=None):
        self.now = 0.0
        self._heap: list = []
        self._order = itertools.count()
        self._hash = hashlib.sha256()
        self.trace = trace  # callable(str) for a verbose run, or None
        self.steps = 0

    def at(self, when: float, fn, *args) -> None:
        heapq.heappush(self._heap, (when, next(self._order), fn, args))

    def after(self, delay: float, fn, *args) -> None:
        self.at(self.now + delay, fn, *args)

    def record(self, line: str) -> None:
        """Part of the trace: hashed, and printed in a verbose run."""
        self._hash.update(f"{self.now:.6f} {line}\n".encode())
        if self.trace is not None:
            self.trace(f"{self.now:10.4f} {line}")

    def trace_hash(self) -> str:
        return self._hash.hexdigest()[:16]

    def run(self, until: float) -> bool:
        """Run callbacks due up to `until`. Returns True when one raised StopRun."""
        heap = self._heap
        try:
            while heap and heap[0][0] <= until:
                when, _, fn, args = heapq.heappop(heap)
                self.now = when
                self.steps += 1
                fn(*args)
        except StopRun:
            return True
        self.now = max(self.now, until)
        return False


class NodeClock:
    """One node's clocks: monotonic is virtual time (it keeps running while the node is paused,
    as CLOCK_MONOTONIC does under SIGSTOP); wall time is virtual time plus an offset that a
    clock-jump fault moves."""

    def __init__(self, world: World, wall_offset: float = 1_700_000_000.0):
        self.world = world
        self.wall_offset = wall_offset

    def monotonic(self) -> float:
        return self.world.now

    def time(self) -> float:
        return self.world.now + self.wall_offset


class Network:
    """Directed links between named endpoints, with faults. Fault sources are keyed by the
    fault that set them, so overlapping faults undo cleanly."""

    def __init__(self, world: World, rng: random.Random, latency=(0.0005, 0.005)):
        self.world = world
        self.rng = rng
        self.latency = latency
        self.endpoints: dict = {}  # name -> receive(src, message)
        self._blocked: dict[tuple[str, str], int] = {}  # (src, dst) -> active blocks
        self._loss: dict[int, float] = {}
        self._dup: dict[int, float] = {}
        self._jitter: dict[int, float] = {}
        self.loss = self.dup = self.jitter = 0.0
        self.sent = self.dropped = 0

    # -- faults -----------------------------------------------------------------------------
    def block(self, pairs) -> None:
        for pair in pairs:
            self._blocked[pair] = self._blocked.get(pair, 0) + 1

    def unblock(self, pairs) -> None:
        for pair in pairs:
            left = self._blocked.get(pair, 0) - 1
            if left > 0:
                self._blocked[pair] = left
            else:
                self._blocked.pop(pair, None)

    def set_fault(self, kind: str, fault_id: int, value: float | None) -> None:
        table = {"loss": self._loss, "dup": self._dup, "delay": self._jitter}[kind]
        if value is None:
            table.pop(fault_id, None)
        else:
            table[fault_id] = value
        self.loss = max(self._loss.values(), default=0.0)
        self.dup = max(self._dup.values(), default=0.0)
        self.jitter = max(self._jitter.values(), default=0.0)

    def heal(self) -> None:
        self._blocked.clear()
        for kind in ("loss", "dup", "delay"):
            for fault_id in list({"loss": self._loss, "dup": self._dup,
                                  "delay": self._jitter}[kind]):
                self.set_fault(kind, fault_id, None)

    def is_blocked(self, src: str, dst: str) -> bool:
        return (src, dst) in self._blocked

    # -- carrying messages ------------------------------------------------------------------
    def delay(self) -> float:
        lo, hi = self.latency
        d = lo + self.rng.random() * (hi - lo)
        if self.jitter:
            d += self.rng.random() * self.jitter
        return d

    def send(self, src: str, dst: str, message) -> None:
        self.sent += 1
        rng = self.rng
        if (src, dst) in self._blocked or (self.loss and rng.random() < self.loss):
            self.dropped += 1
            return
        copies = 2 if self.dup and rng.random() < self.dup else 1
        for _ in range(copies):
            self.world.after(self.delay(), self._deliver, src, dst, message)

    def _deliver(self, src: str, dst: str, message) -> None:
        self.world.record(f"{src}>{dst} {message[0]} {message[1]}")
        self.endpoints[dst](src, message)


@dataclass
class Fault:
    kind: str
    start: float
    duration: float
    node: str | None = None
    detail: dict = field(default_factory=dict)

    def describe(self) -> str:
        where = f" {self.node}" if self.node else ""
        extra = "".join(f" {k}={v}" for k, v in sorted(self.detail.items())
                        if not isinstance(v, list))
        return f"{self.kind}{where} at {self.start:.1f}s for {self.duration:.1f}s{extra}"


class FaultPlan:
    """A seeded schedule of faults inside [3 s, last_start], at least `min_faults` of them. A
    clock jump moves a node's wall clock by up to `max_jump` seconds either way.

    `cluster` provides: `crash(node, keep_disk)`, `restart(node, disk=None)`, `pause(node)`,
    `resume(node)`, `slow(node, lag)`, `fail_commits(node, on)`, `jump_wall(node, seconds)`, `backup(node)`
    (returns an opaque copy of its disk), `leave(node)`, and `heal()`.
    """

    def __init__(self, rng: random.Random, nodes: list[str], *, min_faults: int = 3,
                 max_faults: int = 6, last_start: float = 50.0, kinds=FAULT_KINDS,
                 max_jump: float = 3600.0):
        self.faults: list[Fault] = []
        busy: dict[str, list[tuple[float, float]]] = {n: [] for n in nodes}
        count = rng.randint(min_faults, max_faults)
        while len(self.faults) < count:
            kind = rng.choice(kinds)
            start = round(rng.uniform(3.0, last_start), 3)
            duration = round(rng.uniform(1.0, 12.0), 3)
            fault = Fault(kind, start, duration)
            if kind in NET_KINDS:
                self._net_detail(rng, fault, nodes)
            else:
                node = rng.choice(nodes)
                if kind in _TAKES_NODE:
                    end = start + duration + 4.0
                    if any(s < end and start < e for s, e in busy[node]):
                        continue  # that node is already taken then: draw again
                    busy[node].append((start, end))
                fault.node = node
                if kind == "clockjump":
                    # 5 s to an hour, scaled down to `max_jump` (the same draws either way).
                    scale = max_jump / 3600.0
                    fault.detail["jump"] = round(rng.choice((-1, 1)) * rng.uniform(5, 3600)
                                                 * scale, 3)
                elif kind in ("crash", "wipe", "backup", "leave", "slowlink"):
                    fault.detail["down"] = round(rng.uniform(0.5, 3.0), 3)
                if kind == "slowlink":
                    fault.detail["lag"] = round(rng.uniform(0.5, 1.9), 3)
            self.faults.append(fault)
        self.faults.sort(key=lambda f: (f.start, f.kind))

    @staticmethod
    def _net_detail(rng, fault: Fault, nodes: list[str]) -> None:
        if fault.kind in ("partition", "oneway"):
            side = sorted(rng.sample(nodes, rng.randint(1, len(nodes) - 1)))
            other = [n for n in nodes if n not in side]
            pairs = [(a, b) for a in side for b in other]
            if fault.kind == "partition":
                pairs += [(b, a) for a, b in pairs]
            fault.detail["side"] = ",".join(side)
            fault.detail["pairs"] = pairs
        elif fault.kind == "loss":
            fault.detail["p"] = round(rng.uniform(0.05, 0.5), 3)
        elif fault.kind == "dup":
            fault.detail["p"] = round(rng.uniform(0.05, 0.4), 3)
        else:
            fault.detail["jitter"] = round(rng.uniform(0.05, 1.5), 3)

    def end(self) -> float:
        return max((f.start + f.duration + f.detail.get("down", 0.0) for f in self.faults),
                   default=0.0)

    def longest_absence(self) -> float:
        """The longest stretch of virtual time for which faults that can silence a node cover
        one node without a gap: its own faults that take it away, and the network's (all
        but duplicates and delays). No node is away, or cut off from a peer, for longer."""
        longest = 0.0
        for node in {f.node for f in self.faults if f.node is not None} or {None}:
            spans = sorted((f.start, f.start + f.duration + f.detail.get("down", 0.0))
                           for f in self.faults
                           if f.node == node and f.kind in _TAKES_NODE
                           or f.node is None and f.kind in _CUTS_OFF)
            current = None
            for start, end in spans:
                if current is None or start > current[1]:
                    current = [start, end]
                else:
                    current[1] = max(current[1], end)
                longest = max(longest, current[1] - current[0])
        return longest

    def arm(self, world: World, net: Network, cluster) -> None:
        for index, fault in enumerate(self.faults):
            world.at(fault.start, self._begin, world, net, cluster, index, fault)

    def _begin(self, world, net, cluster, index, fault) -> None:
        world.record(f"fault {fault.describe()}")
        kind, node, stop = fault.kind, fault.node, fault.start + fault.duration
        if kind in ("partition", "oneway"):
            net.block(fault.detail["pairs"])
            world.at(stop, net.unblock, fault.detail["pairs"])
        elif kind in ("loss", "dup", "delay"):
            value = fault.detail.get("p", fault.detail.get("jitter"))
            net.set_fault(kind, index, value)
            world.at(stop, net.set_fault, kind, index, None)
        elif kind in ("crash", "wipe"):
            # The node runs until `stop`, then is down for `down` seconds.
            world.at(stop, cluster.crash, node, kind == "crash")
            world.at(stop + fault.detail["down"], cluster.restart, node)
        elif kind == "backup":
            copy = cluster.backup(node)
            world.at(stop, cluster.crash, node, True)
            world.at(stop + fault.detail["down"], cluster.restart, node, copy)
        elif kind == "leave":
            cluster.leave(node)
            world.at(stop + fault.detail["down"], cluster.restart, node)
        elif kind == "slowlink":
            cluster.slow(node, fault.detail["lag"])
            world.at(stop, cluster.slow, node, 0.0)
            world.at(stop, cluster.leave, node)
            world.at(stop + fault.detail["down"], cluster.restart, node)
        elif kind == "pause":
            cluster.pause(node)
            world.at(stop, cluster.resume, node)
        elif kind == "failcommit":
            cluster.fail_commits(node, True)
            world.at(stop, cluster.fail_commits, node, False)
        elif kind == "clockjump":
            cluster.jump_wall(node, fault.detail["jump"])
