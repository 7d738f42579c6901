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
"""

import enum

from dcounter.peers import PeerStore


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
