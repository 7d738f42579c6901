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

Held events. A peer may hold events of an origin above its watermark that no node will ever
push here (their origin lost them with its data, or its link to this node was replaced). So a
heartbeat of protocol 2 also carries, per origin with held events, a summary of them
(`held.held_summary`), and where a peer shows the same watermark as this node but a
different summary, the peer has a *held lead*: the pull (`POST /counter/state` asking for held
events) brings them, and adopting merges them. It ends when this node's summary equals the
peer's (this node holds exactly what the peer showed: equal sets at equal watermarks) or its
watermark passes the peer's (then the peer is behind, and the roles swap). A held lead waits
`settle` like any other, restarted whenever this node's watermark or summary for the origin
moves (pushes are arriving). Where this node holds more than the peer, the pull brings nothing
new; the peer pulls from this node in turn and the summaries meet, so the nodes converge on the
union of what each holds.

Rules kept here:

* A peer's digest replaces what was known of its leads: origins it no longer leads on are
  forgotten, a lead seen again with the own watermark unchanged keeps its start.
* A lead on this node's own origin is pulled at once: no push of it can be on its way here, and
  it means a peer holds events of this origin that this node lost (a restored backup, a cloned
  disk), which the node must learn before it reuses their sequence numbers.
* An origin this node retired (retirement.py) is no lead, at whatever watermark a peer shows it:
  a peer that has not retired it yet carries it until it adopts this node's base, and adopting
  refuses a retired origin's prefix and events (beyond its final watermark too: a node that
  came back after it was retired), so a pull of it brings nothing. A lead seen before the origin
  was retired is dropped, like one reached.
* Each origin is pulled from one peer at a time: the one showing the highest watermark.
* After a pull (whatever its outcome) the origin's wait starts again, so a failing peer is
  asked at most once per `settle` seconds.
* The last digest each peer showed is kept (`covers`: does it cover this node's own digest?),
  also after the peer is no longer listed, until `retain_digests` drops it with the member. A
  retired origin is covered by a peer showing it at its final watermark or above (it has not
  retired it yet) or by the peer's count of retired origins.
* Caught up (readiness): at least one comparison with a peer ended with nothing to pull, either
  because its digest showed no lead or because every lead it showed was reached or pulled.
"""

import threading
from dataclasses import dataclass
from typing import Collection, Mapping

from dcounter.retirement import RETIRED_ENTRY

Summaries = Mapping[str, tuple]  # origin -> held summary (held.held_summary)


@dataclass
class Lead:
    since: float   # monotonic seconds: when the wait for this lead (re)started
    own: int       # this node's watermark for the origin when the wait started
    theirs: int    # the highest watermark the peer has shown for it
    held: tuple | None = None      # a held lead: the peer's summary of its held events
    own_held: tuple | None = None  # a held lead: this node's summary when the wait started

    def over(self, mine: int, mine_held) -> bool:
        """Reached: this node's watermark passed the peer's, or (a held lead) equals it with the
        same held events."""
        if self.held is None or mine != self.theirs:
            return mine >= self.theirs
        return mine_held == self.held

    def moved(self, mine: int, mine_held) -> bool:
        """This node's state for the origin changed since the wait started."""
        return mine != self.own or (self.held is not None and mine_held != self.own_held)


def held_leads(digest: Mapping[str, int], held: Summaries, own: Mapping[str, int],
               own_held: Summaries) -> list[str]:
    """The origins on which a peer (`digest`, `held`) shows the same watermark as this node
    (`own`, `own_held`) but other held events."""
    return sorted(origin for origin, summary in held.items()
                  if digest.get(origin, 0) == own.get(origin, 0)
                  and summary != own_held.get(origin))


class AntiEntropy:
    def __init__(self, settle: float):
        self.settle = settle
        self._lock = threading.Lock()
        self._leads: dict[str, dict[str, Lead]] = {}  # peer -> origin -> lead
        self._seen: dict[str, dict[str, int]] = {}  # peer -> the last digest it showed
        self.rounds = 0  # comparisons with a peer that ended with nothing to pull

    def observe(self, peer: str, digest: Mapping[str, int], own: Mapping[str, int],
                now: float, held: Summaries | None = None,
                own_held: Summaries | None = None, retired: Collection[str] = ()) -> list[str]:
        """`peer` showed `digest` and the summaries of its held events `held`; `own` and
        `own_held` are this node's, `retired` the origins it retired (never a lead). Returns
        the origins it leads on."""
        held, own_held = held or {}, own_held or {}
        with self._lock:
            self._seen[peer] = dict(digest)
            known = self._leads.get(peer, {})
            leads = {}
            for origin, theirs in digest.items():
                mine = own.get(origin, 0)
                if theirs <= mine or origin in retired:
                    continue
                lead = known.get(origin)
                if lead is None or lead.own != mine or lead.held is not None:
                    lead = Lead(since=now, own=mine, theirs=theirs)
                else:
                    lead.theirs = max(lead.theirs, theirs)
                leads[origin] = lead
            for origin in held_leads(digest, held, own, own_held):
                if origin in retired:
                    continue
                mine, mine_held = own.get(origin, 0), own_held.get(origin)
                lead = known.get(origin)
                if lead is None or lead.held is None or lead.moved(mine, mine_held):
                    lead = Lead(since=now, own=mine, theirs=mine, own_held=mine_held)
                lead.held = held[origin]
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
                  local_origin: str | None = None,
                  own_held: Summaries | None = None,
                  retired: Collection[str] = ()) -> dict[str, list[str]]:
        """The pulls to make now: {peer: [origins]}. Leads reached (`Lead.over`) or on an
        origin in `retired` (retired since it was seen) are dropped; leads whose own state
        moved start their wait again; a lead on `local_origin` is due at once."""
        own_held = own_held or {}
        with self._lock:
            best: dict[str, tuple[int, str]] = {}  # origin -> (-theirs, peer): lowest wins
            for peer in sorted(self._leads):
                leads = self._leads[peer]
                for origin in sorted(leads):
                    lead = leads[origin]
                    mine, mine_held = own.get(origin, 0), own_held.get(origin)
                    if lead.over(mine, mine_held) or origin in retired:
                        del leads[origin]
                    elif origin != local_origin and lead.moved(mine, mine_held):
                        lead.since, lead.own, lead.own_held = now, mine, mine_held
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
               ok: bool, own_held: Summaries | None = None) -> None:
        """A pull of `origins` from `peer` ended (`ok`: the peer answered). Leads reached are
        over; the others wait again before the next pull."""
        own_held = own_held or {}
        with self._lock:
            leads = self._leads.get(peer, {})
            for origin in origins:
                lead = leads.get(origin)
                if lead is None:
                    continue
                mine, mine_held = own.get(origin, 0), own_held.get(origin)
                if lead.over(mine, mine_held):
                    del leads[origin]
                else:
                    lead.since, lead.own, lead.own_held = now, mine, mine_held
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

    def covers(self, peer: str, own: Mapping[str, int],
               retired: Mapping[str, int] | None = None) -> bool | None:
        """Whether the last digest `peer` showed has every event of `own` (this node's digest)
        and of `retired` (the origins it retired, with their final watermarks): the peer is
        caught up with this node. None when it has shown none. The digest counts retired
        origins only (`RETIRED_ENTRY`): those the peer shows at their final watermark or above
        are covered one by one, and its count must cover the rest."""
        with self._lock:
            seen = self._seen.get(peer)
            if seen is None:
                return None
            shown = sum(1 for origin, final in (retired or {}).items()
                        if seen.get(origin, 0) >= final)
            return all(seen.get(origin, 0) >= (mark - shown if origin == RETIRED_ENTRY else mark)
                       for origin, mark in own.items())

    def retain_digests(self, peers) -> None:
        """Keep the last digests of `peers` only (the members still known)."""
        keep = set(peers)
        with self._lock:
            for peer in [p for p in self._seen if p not in keep]:
                del self._seen[peer]

    def caught_up(self) -> bool:
        with self._lock:
            return self.rounds > 0
