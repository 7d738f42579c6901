"""Membership: which peers are alive, when each was last heard from, and who to rejoin (pure).

Rules kept here:

* A peer is alive only after a direct successful contact (it reached us, or we reached it).
  Ids learned second-hand (from a join reply or a heartbeat's peer list) become *candidates*,
  which the node contacts; gossip alone never brings a dead node back.
* `expire(now)` removes peers silent for longer than the timeout; removed peers and the seeds
  stay candidates, retried with backoff, so membership heals after a partition by itself.
* A peer that leaves is dropped at once and is not retried unless it is a seed.
* This node's own ids (its advertised id and any alias that turned out to be itself) are never
  listed.
* Both tables are bounded, since without a cluster secret anyone can send a join with a made-up
  id: at most `max_peers` peers are listed (a new one past it raises `TooManyPeers`, a 503, and
  is not listed), and at most `max_candidates` (4 x max_peers by default) candidates are kept
  (the newest replaces the one that failed most; seeds are never dropped).
* A peer with a contact in flight (a join or a heartbeat the node has sent and not yet seen
  end) is not contacted again until that contact ends: `begin_contacts` claims, and
  `contact_finished` releases. Otherwise a peer slower than the loop would be contacted once
  per loop turn, and the contacts would pile up in the pool they share.
"""

import threading
from dataclasses import dataclass, field

from dcounter.errors import TooManyPeers
from dcounter.retry import RetryPolicy


@dataclass
class PeerInfo:
    last_seen: float          # monotonic seconds
    origin: str | None = None


@dataclass
class Candidate:
    next_try: float           # monotonic seconds
    attempts: int = 0
    last_error: str | None = None
    history: list = field(default_factory=list)


class PeerStore:
    def __init__(self, self_id: str, *, peer_timeout: float, policy: RetryPolicy,
                 seeds: tuple[str, ...] = (), max_peers: int = 64,
                 max_candidates: int | None = None):
        self.self_id = self_id
        self.peer_timeout = peer_timeout
        self.policy = policy
        self.max_peers = max_peers
        # Room for every listed peer to expire into a candidate, and as many again learned
        # second-hand several times over.
        self.max_candidates = 4 * max_peers if max_candidates is None else max_candidates
        self._lock = threading.Lock()
        self._alive: dict[str, PeerInfo] = {}
        self._candidates: dict[str, Candidate] = {}
        self._self_ids = {self_id}
        self._in_flight: set[str] = set()  # peers with a contact under way
        self.seeds = tuple(s for s in seeds if s != self_id)
        for seed in self.seeds:
            self._candidates[seed] = Candidate(next_try=float("-inf"))
        self.attempt_log: list[tuple[float, str, bool, str]] = []  # (now, id, ok, detail)

    # -- identity ------------------------------------------------------------------------------
    def mark_self(self, node_id: str) -> None:
        """`node_id` turned out to be this node under another spelling."""
        with self._lock:
            self._self_ids.add(node_id)
            self._alive.pop(node_id, None)
            self._candidates.pop(node_id, None)

    def is_self(self, node_id: str) -> bool:
        with self._lock:
            return node_id in self._self_ids

    # -- liveness ------------------------------------------------------------------------------
    def heard_from(self, node_id: str, now: float, origin: str | None = None) -> bool:
        """A direct successful contact. Returns True when the peer is new (or back). Raises
        `TooManyPeers` for a new peer while `max_peers` are listed: nothing changes then (a
        candidate stays one)."""
        with self._lock:
            if node_id in self._self_ids:
                return False
            info = self._alive.get(node_id)
            if info is None:
                if len(self._alive) >= self.max_peers:
                    raise TooManyPeers(
                        f"this node lists {len(self._alive)} peers, the most --max-peers allows; "
                        f"{node_id} is not listed (raise --max-peers on every node for a larger "
                        f"cluster)")
                self._candidates.pop(node_id, None)
                self._alive[node_id] = PeerInfo(last_seen=now, origin=origin)
                return True
            self._candidates.pop(node_id, None)
            info.last_seen = max(info.last_seen, now)
            if origin is not None:
                info.origin = origin
            return False

    def refresh(self, node_id: str, now: float) -> bool:
        """Traffic with a peer we list (a replicate reply or request): it is still alive.
        Never adds a peer: a reply that arrives after the peer left or expired must not bring
        it back behind the membership protocol's back. Returns whether the peer is listed."""
        with self._lock:
            info = self._alive.get(node_id)
            if info is None:
                return False
            info.last_seen = max(info.last_seen, now)
            return True

    def alive(self) -> list[str]:
        with self._lock:
            return sorted(self._alive)

    def is_alive(self, node_id: str) -> bool:
        with self._lock:
            return node_id in self._alive

    def origin_of(self, node_id: str) -> str | None:
        with self._lock:
            info = self._alive.get(node_id)
            return info.origin if info else None

    def expire(self, now: float) -> list[str]:
        """Remove peers silent for longer than the timeout; they become rejoin candidates."""
        with self._lock:
            gone = [nid for nid, info in self._alive.items()
                    if now - info.last_seen > self.peer_timeout]
            for nid in gone:
                del self._alive[nid]
                self._add_candidate_locked(nid, now)
            return sorted(gone)

    def leave(self, node_id: str) -> bool:
        """The peer said it is leaving: drop it now; keep it as a candidate only if a seed."""
        with self._lock:
            was_alive = self._alive.pop(node_id, None) is not None
            if node_id in self.seeds:
                self._candidates[node_id] = Candidate(next_try=float("-inf"))
            else:
                self._candidates.pop(node_id, None)
            return was_alive

    def last_seen_ages(self, now: float) -> dict[str, float]:
        with self._lock:
            return {nid: max(0.0, now - info.last_seen) for nid, info in self._alive.items()}

    # -- candidates ----------------------------------------------------------------------------
    def _add_candidate_locked(self, node_id: str, now: float) -> bool:
        if node_id in self._self_ids or node_id in self._alive or node_id in self._candidates:
            return False
        if len(self._candidates) >= self.max_candidates:
            # Forget the non-seed candidate that has failed the longest.
            victims = [(c.attempts, nid) for nid, c in self._candidates.items()
                       if nid not in self.seeds]
            if not victims:
                return False
            del self._candidates[max(victims)[1]]
        self._candidates[node_id] = Candidate(next_try=now)
        return True

    def add_candidates(self, node_ids, now: float) -> list[str]:
        with self._lock:
            return [nid for nid in node_ids if self._add_candidate_locked(nid, now)]

    def due_candidates(self, now: float) -> list[str]:
        """Candidates whose next try is due and that have no contact in flight."""
        with self._lock:
            return sorted(nid for nid, c in self._candidates.items()
                          if c.next_try <= now and nid not in self._in_flight)

    # -- contacts in flight --------------------------------------------------------------------
    def begin_contacts(self, node_ids) -> list[str]:
        """Claim a contact with each of `node_ids` that has none in flight; returns those
        claimed (the caller contacts them and calls `contact_finished` for each)."""
        with self._lock:
            claimed = sorted(set(node_ids) - self._in_flight)
            self._in_flight.update(claimed)
            return claimed

    def claim_due_candidates(self, now: float) -> list[str]:
        """The due candidates, each claimed as a contact in flight."""
        with self._lock:
            due = sorted(nid for nid, c in self._candidates.items()
                         if c.next_try <= now and nid not in self._in_flight)
            self._in_flight.update(due)
            return due

    def contact_finished(self, node_id: str) -> None:
        with self._lock:
            self._in_flight.discard(node_id)

    def contacts_in_flight(self) -> list[str]:
        with self._lock:
            return sorted(self._in_flight)

    def contact_failed(self, node_id: str, now: float, detail: str = "") -> float | None:
        """A contact with a candidate failed: back off. Returns the delay, None if not a
        candidate."""
        with self._lock:
            self._log_locked(now, node_id, False, detail)
            candidate = self._candidates.get(node_id)
            if candidate is None:
                return None
            candidate.attempts += 1
            candidate.last_error = detail
            delay = self.policy.delay(candidate.attempts)
            candidate.next_try = now + delay
            return delay

    def contact_succeeded(self, node_id: str, now: float, origin: str | None = None) -> bool:
        """A contact we made succeeded. Returns True when the peer is new (or back); only those
        (joins and rejoins) go to the attempt log, routine heartbeats would drown them."""
        try:
            new = self.heard_from(node_id, now, origin)
        except TooManyPeers as exc:
            # Full: a candidate we reached is retried later, like one we could not reach.
            self.contact_failed(node_id, now, exc.message)
            return False
        if new:
            with self._lock:
                self._log_locked(now, node_id, True, "joined")
        return new

    def _log_locked(self, now, node_id, ok, detail):
        self.attempt_log.append((now, node_id, ok, detail))
        del self.attempt_log[:-20]

    def candidates(self, now: float) -> dict[str, dict]:
        """Each candidate's failed attempts so far, whether one is under way (`trying`; a
        contact with a peer that never answers lasts a whole request timeout) and, if not,
        how long until the next one (`next_try_in`, None while trying)."""
        with self._lock:
            return {nid: {"attempts": c.attempts, "trying": nid in self._in_flight,
                          "next_try_in": (None if nid in self._in_flight
                                          else max(0.0, c.next_try - now)),
                          "last_error": c.last_error}
                    for nid, c in self._candidates.items()}

    def recent_attempts(self) -> list[tuple[float, str, bool, str]]:
        with self._lock:
            return list(self.attempt_log)
