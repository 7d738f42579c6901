"""Membership's I/O: the joins, heartbeats, leaves and forgets a node sends and answers, carried
out over the transport by the decisions of membership.py and the peer store (peers.py).

Owns: what a join, heartbeat or leave carries (in the protocol the peer speaks); a peer's
request and a peer's reply (`contact_from`, `contact_to`) and what is learned from either
(second-hand ids become candidates; digests and held summaries go to anti-entropy); the steps
the node's membership and cleanup loops call (`heartbeat_once`, `rejoin_once`, `sweep`);
forgetting a member and passing it on; the goodbye at shutdown; and the warnings about failed
contacts, a WARNING per (peer, cause) at once and then with backoff, afresh after a success.

Rule kept here: the replication links always match the listing of peers; every change to the
listing is followed by `sync_links`.

No loop or thread of its own: the node's loops call the steps and contacts run in the node's
pools (contacts.py). It logs as `dcounter.node`, the name operators filter the node's lines by.
"""

from __future__ import annotations

import logging
import threading
from typing import Callable

from dcounter import membership
from dcounter.antientropy import AntiEntropy
from dcounter.config import Config
from dcounter.contacts import Contacts, Kind
from dcounter.counter import Counter
from dcounter.errors import BadRequest, Conflict, NotFound, PeerRefused, PeerUnreachable
from dcounter.membership import (Contact, backoff_warnings, contact_from, contact_to, in_words,
                                 join_reply_peers)
from dcounter.peers import PeerStore
from dcounter.protocol import PeerProtocols
from dcounter.replication import Replicator
from dcounter.transport import Transport, describe_failure, failure_kind

log = logging.getLogger("dcounter.node")


class Gossip:
    """One node's side of membership. `wake_membership` is called when there are new
    candidates to contact, `wake_pulls` when a peer shows a lead worth pulling."""

    def __init__(self, *, node_id: str, config: Config, clock, transport: Transport,
                 peers: PeerStore, counter: Counter, replicator: Replicator,
                 anti_entropy: AntiEntropy, protocols: PeerProtocols, contacts: Contacts,
                 wake_membership: Callable[[], None], wake_pulls: Callable[[], None]):
        self.node_id = node_id
        self.config = config
        self.clock = clock
        self.transport = transport
        self.peers = peers
        self.counter = counter
        self.replicator = replicator
        self.anti_entropy = anti_entropy
        self.protocols = protocols
        self.contacts = contacts
        self._wake_membership = wake_membership
        self._wake_pulls = wake_pulls
        self._links_lock = threading.Lock()  # serialises sync_links
        # A failed contact is a WARNING per (peer, cause): at once, then 1, 2, 4 ... minutes
        # apart, at most 10; a success with the peer starts it afresh.
        self._warnings = backoff_warnings()

    # -- what a contact carries -------------------------------------------------------------------
    def payload(self, include_digest: bool = True, peer: str | None = None,
                held: bool = False) -> dict:
        """A join, heartbeat or leave to `peer` (its protocol), or a reply (ours). The summaries
        of held events (`held`, protocol 2) go to a peer known to speak protocol 2 (a node of
        the previous release refuses a field it does not know), and in a reply when `held`:
        the request was of protocol 2."""
        protocol = self.protocols.for_requests(peer) if peer else self.config.protocol
        send_held = held if peer is None else self.protocols.for_events(peer) >= 2
        return membership.payload(self.node_id, self.config.cluster, protocol, self.counter,
                                  self.peers, digest=include_digest, held=send_held)

    def _speaks_held(self, protocol) -> bool:
        """Whether a request of `protocol` gets the held summaries in its reply."""
        return self.config.protocol >= 2 and isinstance(protocol, int) and protocol >= 2

    # -- the listing and the links ----------------------------------------------------------------
    def _contacted(self, peer: str, contact: Contact, reached_us: bool) -> Contact:
        """After a direct contact: a peer listed for the first time (or again) gets a link, an
        alias of this node loses any it had. A join is one line on each side: "peer X joined"
        where X reached us, "joined X" where we reached X."""
        if contact is Contact.NEW:
            log.info("peer %s joined" if reached_us else "joined %s", peer)
        if contact.relists:
            self.sync_links()
        return contact

    def sync_links(self) -> None:
        """Make the replication links match the listing: a link for every listed peer, none for
        another. Every change to the listing is followed by a call; calls are serialised and
        each reads the listing afresh, so whatever order changes and calls interleave in, the
        last call sees the last change and no peer stays listed without a link (or linked
        without being listed)."""
        with self._links_lock:
            membership.sync_links(self.peers, self.replicator, self.anti_entropy)

    def retain_digests(self) -> None:
        """The last digest of a member is kept while the member is known, no longer."""
        now = self.clock.monotonic()
        self.anti_entropy.retain_digests(self.peers.members(now, 0.0))

    def sweep(self) -> list[str]:
        """The membership part of a cleanup: remove silent peers, forget long-gone members;
        returns the peers removed."""
        gone, reaped = membership.sweep(self.peers, self.anti_entropy, self.clock.monotonic())
        for peer in gone:
            log.info("removed peer %s (silent for more than %.1fs); it counts as failed until "
                     "it answers again, leaves, is forgotten or --reap-after passes", peer,
                     self.config.peer_timeout)
        for peer in reaped:
            log.info("forgot member %s (failed or left more than --reap-after ago)", peer)
        self.sync_links()  # also after no change: the listing rules, whatever happened
        return gone

    # -- server side ------------------------------------------------------------------------------
    def _accept_contact(self, sender: str, origin: str | None) -> Contact:
        """A peer reached us directly."""
        return self._contacted(sender, contact_from(self.peers, self.node_id,
                                                    self.counter.local_origin, sender, origin,
                                                    self.clock.monotonic()),
                               reached_us=True)

    def on_join(self, sender, origin, digest, peers, protocol=None, held=None) -> dict:
        self.protocols.note_request(sender, protocol)
        self._accept_contact(sender, origin)
        self.learn(sender, digest, peers, held)
        reply = self.payload(held=self._speaks_held(protocol))
        reply["peers"] = join_reply_peers(self.node_id, self.peers.alive(), sender)
        return reply

    def on_heartbeat(self, sender, origin, digest, peers, protocol=None, held=None) -> dict:
        self.protocols.note_request(sender, protocol)
        self._accept_contact(sender, origin)
        self.learn(sender, digest, peers, held)
        return self.payload(held=self._speaks_held(protocol))

    def on_leave(self, sender, origin) -> bool:
        if self.peers.left(sender, self.clock.monotonic()):
            log.info("peer %s left", sender)
        self.sync_links()
        return True

    def forget(self, member: str, forwarded: bool) -> dict:
        """An operator removes `member` for good (`POST /nodes/forget`). The node refuses a
        member it lists (a running node would only join again) and, asked directly, one it does
        not know; it applies the rest, and when asked directly tells each peer it lists once
        (`forwarded`: not passed on again)."""
        if member == self.node_id or self.peers.is_self(member):
            raise BadRequest(f"{member} is the node asked; stop it, or ask another node to "
                             "forget it once it is down")
        if self.peers.is_alive(member):  # passed on too: a partition may hide it elsewhere
            raise Conflict(f"{member} is a live member of {self.node_id} (heard from within "
                           "--peer-timeout); stop it first, or let it leave")
        if not forwarded and not self.peers.knows(member) \
                and not self.peers.is_forgotten(member):
            raise NotFound(f"{member} is not a member this node knows")
        known = self.peers.forget(member, self.clock.monotonic())
        self.sync_links()
        self.retain_digests()
        if known:
            log.info("forgot member %s (%s)", member,
                     "told by a peer" if forwarded else "asked by an operator")
        told, not_told = [], {}
        if not forwarded:
            told, not_told = self._forward_forget(member)
        return {"forgotten": member, "known": known, "told": told, "not_told": not_told}

    def _forward_forget(self, member: str) -> tuple[list[str], dict[str, str]]:
        peers = [p for p in self.peers.alive() if p != member]
        if not peers:
            return [], {}
        payload = {"node_id": member, "forwarded": True}
        # Without a cluster secret the request is not signed; the client token, when there is
        # one, lets the peer accept it like an operator's request.
        headers = ({"Authorization": f"Bearer {self.config.client_token}"}
                   if self.config.client_token and not self.config.cluster_secret else None)
        results: dict[str, str | None] = {}

        def tell(peer):
            try:
                self.transport.post(peer, "/nodes/forget", payload,
                                    **({"headers": headers} if headers else {}))
                results[peer] = None
            except PeerUnreachable as exc:
                results[peer] = in_words(str(exc))
            except PeerRefused as exc:
                results[peer] = f"refused ({exc.status}): {exc.message}"

        threads = [threading.Thread(target=tell, args=(peer,), name="forget", daemon=True)
                   for peer in peers]
        for thread in threads:
            thread.start()
        for thread in threads:
            thread.join(self.config.request_timeout + 1)
        told = sorted(p for p in peers if p in results and results[p] is None)
        not_told = {p: results.get(p) or "no answer in time" for p in peers if p not in told}
        return told, not_told

    def learn(self, source: str, digest: dict[str, int], peers: list[str],
              held: dict | None = None) -> list[str]:
        """Peers, digest and held summaries heard from `source`: second-hand ids become
        candidates; origins where `source` is ahead, or shows other held events at our
        watermark, are leads, pulled once they last (antientropy.py)."""
        new, ahead = membership.learn(self.peers, self.counter, self.anti_entropy, source,
                                      digest, peers, held, self.clock.monotonic())
        if new:
            self._wake_membership()
        if ahead:
            self._wake_pulls()
        return ahead

    # -- client side (loop steps) -----------------------------------------------------------------
    def heartbeat_once(self) -> None:
        # A peer whose last heartbeat is still in flight is skipped: it is slow, and another
        # heartbeat would only queue behind the first one.
        peers = self.peers.begin_contacts(self.peers.alive())
        self.contacts.wait([self.contacts.submit(Kind.HEARTBEAT, self._heartbeat_peer, peer)
                            for peer in peers])

    def _heartbeat_peer(self, peer: str) -> None:
        try:
            self._heartbeat(peer)
        finally:
            self.peers.contact_finished(peer)

    def _heartbeat(self, peer: str) -> None:
        try:
            reply = self._post_membership(peer, "/nodes/heartbeat")
        except PeerUnreachable as exc:
            # One missed heartbeat is no news: a peer that stays silent is removed, and the
            # attempts to rejoin it say why it cannot be reached.
            log.debug("heartbeat to %s failed: %s", peer, describe_failure(exc))
            return
        except PeerRefused as exc:
            if exc.status == 409:
                self.warn_failure(peer, exc)  # and it is listed no more
                self.peers.leave(peer)
                self.sync_links()
            elif exc.status == 401:
                # Secrets that differ (a rotation half done) or clocks further apart than
                # --max-clock-skew.
                self.warn_failure(peer, exc)
            else:
                log.debug("heartbeat to %s refused: %s", peer, describe_failure(exc))
            return
        self.handle_reply(peer, reply)

    def warn_failure(self, peer: str, exc: Exception) -> None:
        """A WARNING naming `peer` and the cause of `exc` in words, at once and then with
        backoff per (peer, cause)."""
        skipped = self._warnings.check((peer, failure_kind(exc)), self.clock.monotonic())
        if skipped is None:
            return
        since = f" ({skipped} more failure(s) like it since the last warning)" if skipped else ""
        if isinstance(exc, PeerRefused):
            log.warning("peer %s %s%s", peer, describe_failure(exc), since)
        else:
            role = "seed" if peer in self.peers.seeds else "peer"
            log.warning("%s %s unreachable: %s%s", role, peer, describe_failure(exc), since)

    def _post_membership(self, peer: str, path: str) -> dict:
        """A join or heartbeat in the protocol `peer` speaks. Refused with 409 in a newer one,
        it is sent again at once in the oldest: a node of the previous release refuses any
        protocol but its own (protocol.py)."""
        payload = self.payload(peer=peer)
        try:
            return self.transport.post(peer, path, payload)
        except PeerRefused as exc:
            if exc.status != 409 or payload["protocol"] == 1:
                raise
        self.protocols.refused(peer)
        return self.transport.post(peer, path, self.payload(peer=peer))

    def handle_reply(self, peer: str, reply: dict) -> bool:
        """A successful direct contact with `peer`; `reply` is its membership payload."""
        try:
            origin, digest, peers, held = membership.read_reply(reply)
        except BadRequest as exc:
            log.warning("ignoring malformed reply from %s: %s", peer, exc.message)
            return False
        self.protocols.note_reply(peer, reply.get("protocol"))
        contact = self._contacted(peer, contact_to(self.peers, self.counter.local_origin, peer,
                                                   origin, self.clock.monotonic()),
                                  reached_us=False)
        if contact is Contact.SELF:
            log.info("%s is this node itself; not listing it as a peer", peer)
            return False
        if contact is Contact.FULL:
            if self._warnings.due((peer, "max-peers"), self.clock.monotonic()):
                log.warning("not listing %s: this node lists %d peers, the most --max-peers "
                            "allows (raise --max-peers on every node for a larger cluster)",
                            peer, len(self.peers.alive()))
        else:
            self._warnings.clear(lambda key: key[0] == peer)  # whatever was wrong, is not now
        self.learn(peer, digest, peers, held)
        return contact is not Contact.FULL

    def rejoin_once(self) -> list[str]:
        """Contact the due candidates; one whose contact is still in flight is not due."""
        due = self.peers.claim_due_candidates(self.clock.monotonic())
        if not due:
            return due
        self.contacts.wait([self.contacts.submit(Kind.JOIN, self.join_candidate, peer)
                            for peer in due])
        return due

    def join_candidate(self, peer: str) -> None:
        try:
            self._join(peer)
        except Exception:
            self.peers.contact_failed(peer, self.clock.monotonic(), "unexpected error")
            raise
        finally:
            self.peers.contact_finished(peer)

    def _join(self, peer: str) -> None:
        try:
            reply = self._post_membership(peer, "/nodes/join")
        except (PeerUnreachable, PeerRefused) as exc:
            delay = self.peers.contact_failed(peer, self.clock.monotonic(),
                                              describe_failure(exc))
            log.debug("join %s failed (%s); next attempt in %.1fs", peer,
                      describe_failure(exc), delay or 0)
            self.warn_failure(peer, exc)
            return
        self.handle_reply(peer, reply)  # logs "joined" when it lists the peer

    # -- leaving ----------------------------------------------------------------------------------
    def say_goodbye(self, timeout: float) -> None:
        """Tell every listed peer that this node leaves, within `timeout` seconds."""
        peers = self.peers.alive()
        if not peers:
            return
        timeout = min(self.config.request_timeout, timeout)
        if timeout <= 0:
            log.info("no time left to tell %d peer(s) that this node leaves", len(peers))
            return
        self.contacts.wait_for([self.contacts.submit(
            Kind.GOODBYE, self._post_quiet, peer, "/nodes/leave",
            self.payload(include_digest=False, peer=peer), timeout)
            for peer in peers], timeout)
        log.info("left the cluster (told %d peer(s))", len(peers))

    def _post_quiet(self, peer, path, payload, timeout):
        try:
            self.transport.post(peer, path, payload, timeout=timeout)
        except (PeerUnreachable, PeerRefused):
            pass
