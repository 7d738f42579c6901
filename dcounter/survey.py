"""The cluster survey behind `dcounter status` and `dcounter wait-converged`: ask a node, then
every node it lists (alive peers, members and rejoin candidates), then every node those list, and
judge what they answer.

The same counters and the same digest (which events each has seen) means they agree. A member is
missing, and so a disagreement, when it does not answer, when a node holds it as failed, when it
is not ready, or when it has not seen every event another node has (behind); a member that left
is shown, not counted. A rejoin candidate that no node holds as a member (an id heard
second-hand) and that does not answer is shown but not counted. `check_expected` makes fewer than
N members that answer a disagreement too (`--expect N`).

It asks through the Python client (`library.Client.call`, one request to one node) and prints
nothing: `display.format_survey` is its table.
"""

from __future__ import annotations

import concurrent.futures
from dataclasses import dataclass, field

from dcounter.connection import plain_address
from dcounter.library import Client, DcounterError

MAX_NODES = 64            # nodes a survey asks at most


@dataclass
class NodeView:
    node: str                      # its id, or the address asked when it did not answer
    address: str
    listed_alive: bool             # a member: the start node, or listed alive or as a (not
                                   # left) member by a node that answered; it counts
    status: dict | None = None
    error: str | None = None
    failed_at: list[str] = field(default_factory=list)  # nodes that hold it as failed
    behind: bool = False           # answered, but has not seen every event another one has
    left: bool = False             # every node that answered and knows it holds it as left

    @property
    def ready(self) -> bool:
        return bool(((self.status or {}).get("ready") or {}).get("ready", True))

    @property
    def state(self) -> str:
        """What the table's STATE column says."""
        if self.failed_at:
            return "failed"
        if not self.reachable:
            if self.left and not self.listed_alive:
                return "left"
            return "unreachable" if self.listed_alive else "unreachable-candidate"
        if not self.ready:
            return "not-ready"
        return "behind" if self.behind else "ok"

    @property
    def reachable(self) -> bool:
        return self.status is not None

    def counters(self) -> dict:
        return {k: v for k, v in (self.status or {}).get("counters", {}).items() if v != 0}

    def digest(self) -> dict:
        return {k: v for k, v in (self.status or {}).get("digest", {}).items() if v}

    def backlog(self) -> int:
        links = (self.status or {}).get("replication", {})
        return sum(int(link.get("backlog", 0)) for link in links.values())

    def to_json(self) -> dict:
        s = self.status or {}
        return {"node": self.node, "reachable": self.reachable, "member": self.listed_alive,
                "state": self.state, "failed_at": self.failed_at, "error": self.error,
                "cluster": s.get("cluster"),
                "counters": s.get("counters"), "peers": sorted(s.get("peers", {})),
                "candidates": sorted(s.get("candidates", {})),
                "backlog": self.backlog() if self.reachable else None,
                "ready": s.get("ready")}


@dataclass
class Survey:
    nodes: list[NodeView] = field(default_factory=list)
    problems: list[str] = field(default_factory=list)
    left: list[str] = field(default_factory=list)  # members that said goodbye: not missing

    @property
    def agree(self) -> bool:
        return not self.problems

    def to_json(self) -> dict:
        return {"agree": self.agree, "problems": self.problems, "left": self.left,
                "nodes": [n.to_json() for n in self.nodes]}


def _members(status: dict) -> dict[str, dict]:
    """A node's members view (GET /status "members"); {} from a node without one."""
    members = status.get("members")
    if not isinstance(members, dict):
        return {}
    return {peer: m for peer, m in members.items() if isinstance(m, dict)}


def survey(client: Client, start: str, timeout: float | None = None) -> Survey:
    """Ask `start` and, breadth first, every node listed by a node that answered."""
    views: dict[str, NodeView] = {}
    asked: set[str] = {start}
    wave = [(start, True)]
    pool = concurrent.futures.ThreadPoolExecutor(max_workers=16)
    try:
        while wave:
            futures = {pool.submit(client.call, "GET", address, "/status", timeout=timeout):
                       (address, alive) for address, alive in wave}
            answered = []
            for future in concurrent.futures.as_completed(futures):
                address, alive = futures[future]
                try:
                    status = future.result()
                except DcounterError as exc:
                    views[address] = NodeView(plain_address(address), address,
                                              alive, error=str(exc))
                    continue
                if not isinstance(status, dict) or not isinstance(status.get("node_id"), str):
                    views[address] = NodeView(address, address, alive,
                                              error=f"{address}: not a dcounter status")
                    continue
                node_id = status["node_id"]
                asked.add(node_id)
                views[address] = NodeView(node_id, address, alive, status=status)
                answered.append(status)
            listed: dict[str, bool] = {}
            for status in answered:
                for peer in status.get("peers", {}):
                    listed[peer] = True
                # A failed member is missing: asked, and counted, like a listed peer.
                for peer, member in _members(status).items():
                    if member.get("state") != "left":
                        listed[peer] = True
                for peer in status.get("candidates", {}):
                    listed.setdefault(peer, False)
            for view in views.values():  # a node asked as a candidate but listed alive later
                if view.node in listed and listed[view.node]:
                    view.listed_alive = True
            wave = [(peer, alive) for peer, alive in sorted(listed.items())
                    if peer not in asked][:max(0, MAX_NODES - len(asked))]
            asked.update(peer for peer, _ in wave)
    finally:
        pool.shutdown(wait=False, cancel_futures=True)
    result = Survey(nodes=sorted(views.values(), key=lambda v: v.node))
    _judge_members(result)
    result.problems = _disagreements(result.nodes)
    return result


def _judge_members(result: Survey) -> None:
    """Which members the nodes that answered hold as failed, and which as left (and by no one
    as alive or failed)."""
    reachable = [v for v in result.nodes if v.reachable]
    views = {v.node: v for v in result.nodes}
    states: dict[str, dict[str, str]] = {}  # member -> {node that holds it: its state}
    for view in reachable:
        for peer, member in _members(view.status).items():
            states.setdefault(peer, {})[view.node] = str(member.get("state"))
    for peer, held in sorted(states.items()):
        failed = sorted(node for node, state in held.items() if state == "failed")
        if failed and peer in views:
            views[peer].failed_at = failed
        if all(state == "left" for state in held.values()):
            result.left.append(peer)
            if peer in views:  # asked as a seed's rejoin candidate
                views[peer].left = True


def _disagreements(nodes: list[NodeView]) -> list[str]:
    problems = []
    for view in nodes:
        failed = f" (failed at {', '.join(view.failed_at)})" if view.failed_at else ""
        if not view.reachable and (view.listed_alive or view.failed_at):
            problems.append(f"{view.error}{failed}")
        elif view.reachable and view.failed_at:
            problems.append(f"{view.node}: answers, but is failed at "
                            f"{', '.join(view.failed_at)}")
        elif view.reachable and not view.ready:
            reason = (view.status.get("ready") or {}).get("reason") or "no reason given"
            problems.append(f"{view.node}: not ready ({reason})")
    reachable = [v for v in nodes if v.reachable]
    if not reachable:
        return problems or ["no node answered"]
    clusters = {v.status.get("cluster") for v in reachable}
    if len(clusters) > 1:
        problems.append("cluster names differ: " + ", ".join(
            f"{v.node}={v.status.get('cluster')!r}" for v in reachable))
    names = sorted(set().union(*(v.counters() for v in reachable)))
    for name in names:
        values = {v.node: v.counters().get(name, 0) for v in reachable}
        if len(set(values.values())) > 1:
            problems.append(f"{name}: " + ", ".join(f"{n}={c}" for n, c in values.items()))
    newest: dict[str, int] = {}
    for view in reachable:
        for origin, mark in view.digest().items():
            newest[origin] = max(newest.get(origin, 0), mark)
    for view in reachable:
        digest = view.digest()
        view.behind = any(digest.get(origin, 0) < mark for origin, mark in newest.items())
    behind = [v.node for v in reachable if v.behind]
    if behind:
        problems.append(f"not every node has seen the same events yet: {', '.join(behind)} "
                        f"behind")
    return problems


def check_expected(result: Survey, expect: int | None) -> None:
    """`--expect N`: fewer than N members (the node asked included) that answer and agree is a
    disagreement too."""
    if expect is None:
        return
    answered = sum(1 for v in result.nodes if v.reachable)
    if answered < expect:
        result.problems.append(f"expected {expect} member{'s' if expect != 1 else ''} to agree, "
                               f"{answered} answered")
