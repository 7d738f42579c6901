"""What a node says about itself: readiness (`GET /readyz`) and the status document (`GET
/status`, which the status page renders: statuspage.py, health.py).

Owns the readiness rule and the shape of the status dict; reads the node's parts and changes
nothing.
"""

from __future__ import annotations

from typing import Callable

from dcounter.antientropy import AntiEntropy
from dcounter.config import Config
from dcounter.counter import Counter
from dcounter.history import History
from dcounter.membership import members_view, summary
from dcounter.peers import PeerStore
from dcounter.replication import Replicator
from dcounter.store import Store


class NodeStatus:
    """`stopping()` says whether the node's stop has begun."""

    def __init__(self, *, node_id: str, config: Config, clock, store: Store | None,
                 counter: Counter, peers: PeerStore, replicator: Replicator,
                 anti_entropy: AntiEntropy, history: History, stopping: Callable[[], bool]):
        self.node_id = node_id
        self.config = config
        self.clock = clock
        self.store = store
        self.counter = counter
        self.peers = peers
        self.replicator = replicator
        self.anti_entropy = anti_entropy
        self.history = history
        self._stopping = stopping

    def readiness(self) -> tuple[bool, str]:
        """Ready: storage is open, and this node compared digests with a peer at least once (and
        pulled what it lacked), or knows no peer at all (neither alive nor to be joined)."""
        if self._stopping():
            return False, "shutting down"
        if self.store is not None and not self.store.is_open:
            return False, "store closed"
        if self.anti_entropy.caught_up():
            return True, "caught up with a peer at least once"
        now = self.clock.monotonic()
        if not self.peers.alive() and not self.peers.candidates(now):
            return True, "no peers known"
        return False, "no anti-entropy round with a peer yet"

    def suspect_after(self) -> float:
        """Seconds of silence after which a listed member shows as suspect."""
        return 1.5 * self.config.heartbeat_interval

    def status(self) -> dict:
        now = self.clock.monotonic()
        ready, reason = self.readiness()
        own, retired = self.counter.digest(), self.counter.retired_origins()
        members = members_view(self.peers.members(now, self.suspect_after()),
                               lambda peer: self.anti_entropy.covers(peer, own, retired),
                               self.replicator.backlogs())
        return {
            "node_id": self.node_id,
            "cluster": self.config.cluster,
            "origin": self.counter.local_origin,
            "durable": self.store is not None,
            "ready": {"ready": ready, "reason": reason},
            "counters": self.counter.counters(),
            "peers": {p: {"last_seen_seconds": round(age, 3)}
                      for p, age in self.peers.last_seen_ages(now).items()},
            "replication": self.replicator.backlogs(),
            "candidates": self.peers.candidates(now),
            "recent_contacts": [
                {"age_seconds": round(now - t, 3), "peer": p, "ok": ok, "detail": d}
                for t, p, ok, d in self.peers.recent_attempts()],
            "digest": self.counter.digest(),
            "history": self.history.to_dict(),
            "members": members,
            "summary": summary(members),
        }
