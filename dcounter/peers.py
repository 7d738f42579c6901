"""Membership: which peers are alive, when each was last heard from, and who to rejoin (pure).

Rules kept here:

* A peer is alive only after a direct successful contact (it reached us, or we reached it).
  Ids learned second-hand (from a join reply or a heartbeat's peer list) become *candidates*,
  which the node contacts; gossip alone never brings a dead node back.
* `expire(now)` removes peers silent for longer than the timeout; removed peers and the seeds
  stay candidates, retried with backoff, so membership heals after a partition by itself.
* A peer that leaves is dropped at once and is not retried unless it is a seed.
* Members that are not listed are remembered in a state of their own until they answer again
  (a direct contact lists them once more), are forgotten, or `reap_after` seconds pass: a peer
  removed for silence is *failed* (and stays a rejoin candidate), one that said goodbye is
  *left*. A seed that never answered counts as failed from the start: the node was told to
  expect it. `leave()` (a refusal: another cluster) drops a peer without any record.
* A forgotten id (`forget`) leaves every table and is not taken back from second-hand gossip
  for `reap_after` seconds (a bounded tombstone); a direct contact from it lists it again.
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

import enum
import threading
from dataclasses import dataclass, field

from dcounter.errors import TooManyPeers
from dcounter.retry import RetryPolicy


@dataclass
class PeerInfo:
    last_seen: float          # monotonic seconds
    origin: str | None = None


class State(enum.Enum):
    ALIVE = "alive"      # heard from within the suspect threshold
    SUSPECT = "suspect"  # listed, but silent for longer than the suspect threshold
    FAILED = "failed"    # removed for silence (or a seed never reached): missing
    LEFT = "left"        # said goodbye: not missing


@dataclass
class Gone:
    """A member that is not listed: failed or left."""
    state: State
    since: float              # monotonic seconds: when it entered the state (reaped from here)
    last_seen: float | None   # monotonic seconds of the last direct contact; None if never


@dataclass
class Member:
    """One row of the members view: `last_heard` in seconds ago (None: never)."""
    state: State
    last_heard: float | None
    error: str | None


@dataclass
class Candidate:
    next_try: float           # monotonic seconds
    attempts: int = 0
    last_error: str | None = None
    history: list = field(default_factory=list)


class PeerStore:
    def __init__(self, self_id: str, *, peer_timeout: float, policy: RetryPolicy,
                 seeds: tuple[str, ...] = (), max_peers: int = 64,
                 max_candidates: int | None = None, reap_after: float = 86_400.0,
                 now: float = 0.0):
        self.self_id = self_id
        self.reap_after = reap_after
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
        self._gone: dict[str, Gone] = {}     # failed and left members, until reaped
        self._forgotten: dict[str, float] = {}  # id -> when forgotten (monotonic)
        self.seeds = tuple(s for s in seeds if s != self_id)
        for seed in self.seeds:
            self._candidates[seed] = Candidate(next_try=float("-inf"))
            self._gone[seed] = Gone(State.FAILED, since=now, last_seen=None)
        self.attempt_log: list[tuple[float, str, bool, str]] = []  # (now, id, ok, detail)

    # -- identity ------------------------------------------------------------------------------
    def mark_self(self, node_id: str) -> None:
        """`node_id` turned out to be this node under another spelling."""
        with self._lock:
            self._self_ids.add(node_id)
            self._alive.pop(node_id, None)
            self._candidates.pop(node_id, None)
            self._gone.pop(node_id, None)

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
                self._gone.pop(node_id, None)
                self._forgotten.pop(node_id, None)
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
                info = self._alive.pop(nid)
                self._remember_locked(nid, Gone(State.FAILED, since=now,
                                                last_seen=info.last_seen))
                self._add_candidate_locked(nid, now)
            return sorted(gone)

    def leave(self, node_id: str) -> bool:
        """Drop the peer now, with no record of it (it refused us: another cluster); keep it as
        a candidate only if a seed."""
        with self._lock:
            return self._drop_locked(node_id)

    def _drop_locked(self, node_id: str) -> bool:
        was_alive = self._alive.pop(node_id, None) is not None
        if node_id in self.seeds:
            self._candidates[node_id] = Candidate(next_try=float("-inf"))
        else:
            self._candidates.pop(node_id, None)
        return was_alive

    def left(self, node_id: str, now: float) -> bool:
        """The peer said goodbye: drop it now (a candidate only if a seed) and keep it as *left*
        until reaped. Returns whether it was listed."""
        with self._lock:
            if node_id in self._self_ids:
                return False
            was_alive = self._drop_locked(node_id)
            if was_alive or node_id in self._gone:
                self._remember_locked(node_id, Gone(State.LEFT, since=now, last_seen=now))
            return was_alive

    def forget(self, node_id: str, now: float) -> bool:
        """An operator removed `node_id` for good: out of every table (a seed too), and not
        taken back from gossip for `reap_after` seconds. Returns whether it was known."""
        with self._lock:
            known = (node_id in self._alive or node_id in self._candidates
                     or node_id in self._gone)
            self._alive.pop(node_id, None)
            self._candidates.pop(node_id, None)
            self._gone.pop(node_id, None)
            if node_id not in self._self_ids:
                if len(self._forgotten) >= self.max_candidates:
                    del self._forgotten[min(self._forgotten, key=self._forgotten.get)]
                self._forgotten[node_id] = now
            return known

    def is_forgotten(self, node_id: str) -> bool:
        with self._lock:
            return node_id in self._forgotten

    def knows(self, node_id: str) -> bool:
        """Listed, remembered as failed or left, or a rejoin candidate."""
        with self._lock:
            return (node_id in self._alive or node_id in self._gone
                    or node_id in self._candidates)

    def _remember_locked(self, node_id: str, gone: Gone) -> None:
        if node_id not in self._gone and len(self._gone) >= self.max_candidates:
            # Bounded like the candidates: the record that has waited longest goes first.
            del self._gone[min(self._gone, key=lambda nid: self._gone[nid].since)]
        self._gone[node_id] = gone

    def reap(self, now: float) -> list[str]:
        """Forget failed and left members, and tombstones, older than `reap_after`. A reaped
        member stops being a rejoin candidate unless it is a seed."""
        with self._lock:
            reaped = sorted(nid for nid, gone in self._gone.items()
                            if now - gone.since > self.reap_after)
            for nid in reaped:
                del self._gone[nid]
                if nid not in self.seeds:
                    self._candidates.pop(nid, None)
            for nid in [nid for nid, at in self._forgotten.items()
                        if now - at > self.reap_after]:
                del self._forgotten[nid]
            return reaped

    def members(self, now: float, suspect_after: float) -> dict[str, Member]:
        """Every member but this node: listed ones alive or suspect (silent for longer than
        `suspect_after`), the others failed or left. The error is a candidate's last failure."""
        with self._lock:
            view = {}
            for nid, info in self._alive.items():
                age = max(0.0, now - info.last_seen)
                view[nid] = Member(State.SUSPECT if age > suspect_after else State.ALIVE,
                                   age, None)
            for nid, gone in self._gone.items():
                candidate = self._candidates.get(nid)
                view[nid] = Member(gone.state,
                                   None if gone.last_seen is None
                                   else max(0.0, now - gone.last_seen),
                                   candidate.last_error if candidate else None)
            return view

    def last_seen_ages(self, now: float) -> dict[str, float]:
        with self._lock:
            return {nid: max(0.0, now - info.last_seen) for nid, info in self._alive.items()}

    # -- candidates ----------------------------------------------------------------------------
    def _add_candidate_locked(self, node_id: str, now: float) -> bool:
        if node_id in self._self_ids or node_id in self._alive or node_id in self._candidates:
            return False
        if node_id in self._forgotten:  # an operator said it is gone for good
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
