"""Anti-entropy decisions (pure): which origins to pull from which peer, and when, and when this
node counts as caught up. No threads, sockets or clock: time comes in as `now`.

Theory of operation. Every heartbeat, sent or answered, carries the sender's digest
`{origin: watermark}`. Where a peer shows an origin above this node's own watermark, the peer
has a *lead* on it. Most leads are events already on their way here by replication: pulling
them would race the pushes, which would then arrive as duplicates. So a lead is pulled only
once it has lasted `settle` seconds (a heartbeat interval) with this node's own watermark for
that origin unchanged: a push that arrives moves the watermark and starts the wait again, and a
lead the own watermark has reached is over. Pushes that were dropped (a backlog past its bound),
or events held above a gap, leave the watermark where it is, and are pulled.

Rules kept here:

* A peer's digest replaces what was known of its leads: origins it no longer leads on are
  forgotten, a lead seen again with the own watermark unchanged keeps its start.
* A lead on this node's own origin is pulled at once: no push of it can be on its way here, and
  it means a peer holds events of this origin that this node lost (a restored backup, a cloned
  disk), which the node must learn before it reuses their sequence numbers.
* Each origin is pulled from one peer at a time: the one showing the highest watermark.
* After a pull (whatever its outcome) the origin's wait starts again, so a failing peer is
  asked at most once per `settle` seconds.
* The last digest each peer showed is kept (`covers`: does it cover this node's own digest?),
  also after the peer is no longer listed, until `retain_digests` drops it with the member.
* Caught up (readiness): at least one comparison with a peer ended with nothing to pull, either
  because its digest showed no lead or because every lead it showed was reached or pulled.
"""

import threading
from dataclasses import dataclass
from typing import Mapping


@dataclass
class Lead:
    since: float   # monotonic seconds: when the wait for this lead (re)started
    own: int       # this node's watermark for the origin when the wait started
    theirs: int    # the highest watermark the peer has shown for it


class AntiEntropy:
    def __init__(self, settle: float):
        self.settle = settle
        self._lock = threading.Lock()
        self._leads: dict[str, dict[str, Lead]] = {}  # peer -> origin -> lead
        self._seen: dict[str, dict[str, int]] = {}  # peer -> the last digest it showed
        self.rounds = 0  # comparisons with a peer that ended with nothing to pull

    def observe(self, peer: str, digest: Mapping[str, int], own: Mapping[str, int],
                now: float) -> list[str]:
        """`peer` showed `digest`; `own` is this node's digest. Returns the origins it leads on."""
        with self._lock:
            self._seen[peer] = dict(digest)
            known = self._leads.get(peer, {})
            leads = {}
            for origin, theirs in digest.items():
                mine = own.get(origin, 0)
                if theirs <= mine:
                    continue
                lead = known.get(origin)
                if lead is None or lead.own != mine:
                    lead = Lead(since=now, own=mine, theirs=theirs)
                else:
                    lead.theirs = max(lead.theirs, theirs)
                leads[origin] = lead
            if leads:
                self._leads[peer] = leads
            else:
                self._leads.pop(peer, None)
                self.rounds += 1
            return sorted(leads)

    def waiting(self) -> bool:
        """Whether any lead is known (`due_pulls` has something to look at)."""
        with self._lock:
            return bool(self._leads)

    def due_pulls(self, own: Mapping[str, int], now: float,
                  local_origin: str | None = None) -> dict[str, list[str]]:
        """The pulls to make now: {peer: [origins]}. Leads the own watermark has reached are
        dropped; leads whose own watermark moved start their wait again; a lead on
        `local_origin` is due at once."""
        with self._lock:
            best: dict[str, tuple[int, str]] = {}  # origin -> (-theirs, peer): lowest wins
            for peer in sorted(self._leads):
                leads = self._leads[peer]
                for origin in sorted(leads):
                    lead = leads[origin]
                    mine = own.get(origin, 0)
                    if mine >= lead.theirs:
                        del leads[origin]
                    elif origin != local_origin and mine != lead.own:
                        lead.since, lead.own = now, mine
                    elif origin == local_origin or now - lead.since >= self.settle:
                        choice = (-lead.theirs, peer)
                        if origin not in best or choice < best[origin]:
                            best[origin] = choice
                if not leads:
                    del self._leads[peer]
                    self.rounds += 1  # every lead this peer showed was reached
            pulls: dict[str, list[str]] = {}
            for origin in sorted(best):
                pulls.setdefault(best[origin][1], []).append(origin)
            return pulls

    def pulled(self, peer: str, origins, own: Mapping[str, int], now: float,
               ok: bool) -> None:
        """A pull of `origins` from `peer` ended (`ok`: the peer answered). Leads reached are
        over; the others wait again before the next pull."""
        with self._lock:
            leads = self._leads.get(peer, {})
            for origin in origins:
                lead = leads.get(origin)
                if lead is None:
                    continue
                mine = own.get(origin, 0)
                if mine >= lead.theirs:
                    del leads[origin]
                else:
                    lead.since, lead.own = now, mine
            if ok:
                self.rounds += 1
            if peer in self._leads and not leads:
                del self._leads[peer]

    def next_due(self) -> float | None:
        """When the earliest lead's wait ends (monotonic seconds), None without leads. A lead
        whose own watermark moved meanwhile ends later; `due_pulls` will say so."""
        with self._lock:
            starts = [lead.since for leads in self._leads.values() for lead in leads.values()]
            return min(starts) + self.settle if starts else None

    def forget(self, peer: str) -> None:
        """`peer` is no longer listed: nothing is pulled from it."""
        with self._lock:
            self._leads.pop(peer, None)

    def covers(self, peer: str, own: Mapping[str, int]) -> bool | None:
        """Whether the last digest `peer` showed has every event of `own` (this node's digest):
        the peer is caught up with this node. None when it has shown none."""
        with self._lock:
            seen = self._seen.get(peer)
            if seen is None:
                return None
            return all(seen.get(origin, 0) >= mark for origin, mark in own.items())

    def retain_digests(self, peers) -> None:
        """Keep the last digests of `peers` only (the members still known)."""
        keep = set(peers)
        with self._lock:
            for peer in [p for p in self._seen if p not in keep]:
                del self._seen[peer]

    def caught_up(self) -> bool:
        with self._lock:
            return self.rounds > 0
