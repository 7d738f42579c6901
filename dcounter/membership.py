"""Membership decisions (pure): what a contact with a peer means for the listing, which links
the listing calls for, what a join reply lists, and when a refusal is worth a log line. No
threads, sockets or clock; the node carries out what these return.

Rules kept here:

* A contact that carries this node's own origin, or comes from one of its own ids, is this
  node under another spelling: never listed (`Contact.SELF`).
* Replication links follow the listing: a link for every listed peer, none for another.
  `link_changes` says which to add and remove; the node calls it after every change to the
  listing, serialised, so the last call always sees the last change.
* A join reply lists the responder and the peers it lists, but not the joiner itself.
* A peer that keeps refusing our signature is logged once per `every` seconds.
* The members view (`members_view`, `summary`) says each member's state, and its last contact
  failure in words, never an exception class name.
"""

import enum
import re

from dcounter.peers import Member, PeerStore, State


class Contact(enum.Enum):
    SELF = "self"    # this node under another id: not listed
    NEW = "new"      # listed now (for the first time, or again)
    KNOWN = "known"  # listed already; its last-seen time moved


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
    return Contact.NEW if peers.contact_succeeded(peer, now, origin) else Contact.KNOWN


def link_changes(listed, linked) -> tuple[list[str], list[str]]:
    """(links to add, links to remove) so that the links match the listing."""
    listed, linked = set(listed), set(linked)
    return sorted(listed - linked), sorted(linked - listed)


def join_reply_peers(self_id: str, alive: list[str], joiner: str) -> list[str]:
    return [self_id] + [peer for peer in alive if peer != joiner]


class WarnEvery:
    """Rate limit for a repeated warning, per key."""

    def __init__(self, every: float):
        self.every = every
        self._last: dict[str, float] = {}

    def due(self, key: str, now: float) -> bool:
        last = self._last.get(key)
        if last is not None and now - last < self.every:
            return False
        self._last[key] = now
        return True


# Exception class names a contact failure may be reported by, and what they mean to an operator.
_FAILURE_WORDS = {
    "ConnectTimeout": "no answer in time (connecting)",
    "ReadTimeout": "no answer in time",
    "Timeout": "no answer in time",
    "SSLError": "TLS failure: its certificate is not trusted here (set --tls-ca?)",
    "ProxyError": "could not connect through a proxy",
    "ConnectionError": "could not connect (refused, or the host is unreachable)",
    "ChunkedEncodingError": "the connection broke mid-answer",
    "ContentDecodingError": "an answer that could not be decoded",
}
_NODE_PREFIX = re.compile(r"^\[?[A-Za-z0-9.:_-]+\]?:\d+: ")


def in_words(detail: str | None) -> str | None:
    """A contact failure as an operator reads it: the peer's id (shown beside it anyway) and any
    exception class name turned into words; other text passes through."""
    if not detail:
        return None
    text = _NODE_PREFIX.sub("", detail.strip())
    return _FAILURE_WORDS.get(text, text)


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
