"""Membership decisions (pure): what a join or heartbeat (or its reply) carries and what is
learned from one, what a contact with a peer means for the listing, which links the listing
calls for, what a join reply lists, and when a refusal is worth a log line. No threads, sockets
or clock; the node (gossip.py) and the simulator (simnode.py) carry out what these return.

Rules kept here:

* A contact carries the sender's id, cluster, protocol and origin, and (but for a leave) its
  digest and listed peers, with the summaries of its held events where the protocol has them.
  From a contact a node learns: second-hand ids become candidates (listed only after a direct
  contact), the digest is noted (retirement.py), and origins where the sender is ahead, or shows
  other held events at this node's watermark, are leads for anti-entropy.

* A contact that carries this node's own origin, or comes from one of its own ids, is this
  node under another spelling: never listed (`Contact.SELF`).
* Replication links follow the listing: a link for every listed peer, none for another.
  `link_changes` says which to add and remove; the node calls it after every change to the
  listing, serialised, so the last call always sees the last change.
* A join reply lists the responder and the peers it lists, but not the joiner itself.
* A failure that repeats (a peer refusing our signature, a seed that cannot be reached, a
  certificate not trusted, another cluster) is logged with backoff per key, usually
  (peer, cause): at once, then after `first` seconds, then after twice as long each time, at
  most `cap` apart (`WarnEvery`). The key is cleared when the contact succeeds, so a problem
  that comes back is logged at once again.
* The members view (`members_view`, `summary`) says each member's state, and its last contact
  failure in words, never an exception class name.
"""

from __future__ import annotations

import enum
import threading

from dcounter import validation
from dcounter.errors import FAILURE_WORDS, failure_words
from dcounter.peers import Member, PeerStore, State
from dcounter.wire import decode_digest, decode_held_summaries, decode_peer_list


class Contact(enum.Enum):
    SELF = "self"    # this node under another id: not listed
    NEW = "new"      # listed now (for the first time, or again)
    KNOWN = "known"  # listed already; its last-seen time moved
    FULL = "full"    # reached, but not listed: --max-peers peers are listed already

    @property
    def relists(self) -> bool:
        """Whether the listing may have changed, so the links must follow it."""
        return self in (Contact.NEW, Contact.SELF)


def payload(node_id: str, cluster: str, protocol: int, counter, peers: PeerStore, *,
            digest: bool = True, held: bool = False) -> dict:
    """A join, heartbeat or leave in `protocol`, or the reply to one: the sender and, with
    `digest` (not for a leave), its digest and listed peers, and with `held` (protocol 2) the
    summaries of its held events when it holds any."""
    body = {"node_id": node_id, "cluster": cluster, "protocol": protocol,
            "origin": counter.local_origin}
    if digest:
        body["digest"] = counter.digest()
        body["peers"] = peers.alive()
        if held:
            summaries = counter.held_summaries()
            if summaries:
                body["held"] = {origin: list(summary) for origin, summary in summaries.items()}
    return body


def read_reply(reply: dict) -> tuple[str | None, dict[str, int], list[str], dict]:
    """A join's or heartbeat's reply (`payload`): (origin, digest, peers, held summaries).
    Raises BadRequest for a malformed one."""
    origin = reply.get("origin")
    if origin is not None:
        validation.origin(origin)
    digest = decode_digest(reply.get("digest", {}))
    peers = decode_peer_list(reply.get("peers", []))
    held = decode_held_summaries(reply["held"]) if "held" in reply else {}
    return origin, digest, peers, held


def learn(peers: PeerStore, counter, anti_entropy, source: str, digest: dict[str, int],
          heard: list[str], held: dict, now: float) -> tuple[list[str], list[str]]:
    """What a contact with `source` teaches: returns (the new candidates among the peers it
    listed, whom the node then contacts; the origins on which it leads, which anti-entropy
    pulls once they last)."""
    new = peers.add_candidates([p for p in heard if p != peers.self_id], now)
    counter.note_digest(source, digest)
    if peers.is_self(source):
        return new, []
    # Our held summaries matter only against events the peer holds (`held_leads`).
    return new, anti_entropy.observe(source, digest, counter.digest_reached(), now, held,
                                     counter.held_summaries() if held else {},
                                     retired=counter.retired_origins())


def sweep(peers: PeerStore, anti_entropy, now: float) -> tuple[list[str], list[str]]:
    """The membership part of a cleanup: silent peers removed, long-gone members forgotten, and
    the last digests of members no longer known dropped. Returns (removed, forgotten); the links
    must then follow the listing (`sync_links`)."""
    gone = peers.expire(now)
    reaped = peers.reap(now)
    anti_entropy.retain_digests(peers.members(now, 0.0))
    return gone, reaped


def sync_links(peers: PeerStore, links, anti_entropy) -> tuple[list[str], list[str]]:
    """Make `links` (`peers()`, `add_peer`, `remove_peer`: the replicator) match the listing; a
    peer whose link goes is no lead for anti-entropy any more. Returns (added, removed)."""
    add, remove = link_changes(peers.alive(), links.peers())
    for peer in add:
        links.add_peer(peer)
    for peer in remove:
        links.remove_peer(peer)
        anti_entropy.forget(peer)
    return add, remove


def retire_idle_job(peers: PeerStore, now: float):
    """The writer job of a cleanup's origin retirement (retirement.py): the listed peers must
    each have shown an origin at this node's watermark, and their own origins are never idle."""
    listed = peers.alive()
    live = {peers.origin_of(peer) for peer in listed}
    return lambda txn: txn.retire_origins(now, listed, live)


def contact_from(peers: PeerStore, self_id: str, local_origin: str, sender: str,
                 origin: str | None, now: float) -> Contact:
    """`sender` reached this node directly (a join or a heartbeat)."""
    if origin is not None and origin == local_origin:
        peers.mark_self(sender)
        return Contact.SELF
    if sender == self_id or peers.is_self(sender):
        return Contact.SELF
    return Contact.NEW if peers.heard_from(sender, now, origin) else Contact.KNOWN


def contact_to(peers: PeerStore, local_origin: str, peer: str, origin: str | None,
               now: float) -> Contact:
    """This node reached `peer` (its join or heartbeat got a well-formed reply)."""
    if origin is not None and origin == local_origin:
        peers.mark_self(peer)
        return Contact.SELF
    if peers.contact_succeeded(peer, now, origin):
        return Contact.NEW
    if not peers.is_alive(peer) and len(peers.alive()) >= peers.max_peers:
        return Contact.FULL
    return Contact.KNOWN


def link_changes(listed, linked) -> tuple[list[str], list[str]]:
    """(links to add, links to remove) so that the links match the listing."""
    listed, linked = set(listed), set(linked)
    return sorted(listed - linked), sorted(linked - listed)


def join_reply_peers(self_id: str, alive: list[str], joiner: str) -> list[str]:
    return [self_id] + [peer for peer in alive if peer != joiner]


class WarnEvery:
    """Rate limit for a repeated warning, per key: due at the first occurrence, then after
    `every` seconds, then after `every * factor`, `every * factor**2` ... at most `cap`
    apart (`factor=1` keeps the period fixed). `due` also says how many occurrences were
    passed over since the last warning, so the line can say so. Pure: `now` comes in.

    Keys may come from the network (a sender's address), so at most `max_keys` are held; past
    it the table starts afresh, which at worst logs a warning early."""

    def __init__(self, every: float, *, factor: float = 1.0, cap: float | None = None,
                 max_keys: int = 1024):
        if not every > 0 or not factor >= 1:
            raise ValueError("every must be positive and factor at least 1")
        self.every = every
        self.factor = factor
        self.cap = every if cap is None and factor == 1 else cap
        self.max_keys = max_keys
        # key -> [when last warned, gap until the next warning, occurrences passed over]
        self._state: dict = {}
        self._lock = threading.Lock()  # contacts run in a pool and warn concurrently

    def due(self, key, now: float) -> bool:
        return self.check(key, now) is not None

    def check(self, key, now: float) -> int | None:
        """None when the warning is not due; else how many occurrences were passed over since
        the last warning of `key` (0 the first time)."""
        with self._lock:
            return self._check_locked(key, now)

    def _check_locked(self, key, now: float) -> int | None:
        state = self._state.get(key)
        if state is None:
            if len(self._state) >= self.max_keys:
                self._state.clear()
            self._state[key] = [now, self.every, 0]
            return 0
        last, gap, skipped = state
        if now - last < gap:
            state[2] = skipped + 1
            return None
        grown = gap * self.factor
        state[:] = [now, grown if self.cap is None else min(grown, self.cap), 0]
        return skipped

    def clear(self, match) -> None:
        """Forget every key for which `match(key)` is true: the problem went away."""
        with self._lock:
            for key in [key for key in self._state if match(key)]:
                del self._state[key]


def backoff_warnings() -> WarnEvery:
    """The limiter for a node's repeated warnings: at once, then after 1, 2, 4, 8 minutes, then
    every 10 minutes while the cause lasts."""
    return WarnEvery(60.0, factor=2.0, cap=600.0)


# The members view words a read timeout more briefly than FAILURE_WORDS, as it always has
# (`dcounter forget` prints "not confirmed by X (no answer in time)"); every other failure reads
# as on the status page.
_CONTACT_WORDS = {**FAILURE_WORDS, "ReadTimeout": "no answer in time"}


def in_words(detail: str | None) -> str | None:
    """A contact failure as an operator reads it: without the peer's id (shown beside it anyway),
    an exception class name in words (`errors.failure_words`); other text passes through."""
    if not detail:
        return None
    return failure_words(detail.strip(), _CONTACT_WORDS)[1]


def members_view(members: dict[str, Member], covers, backlogs: dict[str, dict]) -> dict:
    """The "members" of GET /status: `covers(peer)` is whether its last digest covers this
    node's (None: none seen), `backlogs` the replicator's per-link status."""
    view = {}
    for peer in sorted(members):
        member = members[peer]
        link = backlogs.get(peer, {})
        error = in_words(member.error)
        if error is None and link.get("attempts"):
            error = f"replication failed {link['attempts']} time(s) in a row"
        view[peer] = {
            "state": member.state.value,
            "last_heard_seconds": None if member.last_heard is None
            else round(member.last_heard, 3),
            "caught_up": covers(peer),
            "backlog": int(link.get("backlog", 0)),
            "error": error,
        }
    return view


def summary(view: dict) -> str:
    """One line over the members view, counting this node: "3 of 3 members up, all caught up"."""
    states = [m["state"] for m in view.values()]
    up_members = [m for m in view.values() if m["state"] in (State.ALIVE.value,
                                                             State.SUSPECT.value)]
    total = 1 + sum(1 for s in states if s != State.LEFT.value)
    text = f"{1 + len(up_members)} of {total} member{'s' if total != 1 else ''} up"
    failed = sorted(p for p, m in view.items() if m["state"] == State.FAILED.value)
    if failed:
        text += f" ({', '.join(failed)} failed)"
    behind = sum(1 for m in up_members if m["caught_up"] is False)
    unknown = sum(1 for m in up_members if m["caught_up"] is None)
    if not behind and not unknown:
        text += ", all caught up"
    else:
        if behind:
            text += f", {behind} behind"
        if unknown:
            text += f", {unknown} not compared yet"
    suspect = states.count(State.SUSPECT.value)
    if suspect:
        text += f", {suspect} suspect"
    left = states.count(State.LEFT.value)
    if left:
        text += f", {left} left"
    return text
