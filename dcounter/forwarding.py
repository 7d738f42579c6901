"""Forwarding a keyed increment to its key's home and relaying the answer: the I/O that carries
out keyhome.py's rules (which member is the home, what a refusal means).

Owns the forward call (`POST /counter/forward`), reading its answer, and turning each way it can
fail into what the client sees: applied here (the home refused the connection: nothing was
sent), the home's error relayed, or 503 with nothing applied (the outcome at the home is
unknown). Applying an increment here is updates.py's. It logs as `dcounter.node`, the name
operators filter the node's lines by.
"""

from __future__ import annotations

import logging
from typing import Callable

from dcounter import keyhome
from dcounter.counter import LocalResult
from dcounter.errors import BadRequest, PeerRefused, PeerUnreachable, Relayed, Unavailable
from dcounter.metrics import Metrics
from dcounter.peers import PeerStore
from dcounter.protocol import PeerProtocols
from dcounter.transport import Transport
from dcounter.wire import decode_forward_reply

log = logging.getLogger("dcounter.node")


class Forwarder:
    """`warn_failure(peer, exc)` reports a refusal that says something about the two nodes (a
    401: signatures that do not match), with the membership warnings' backoff."""

    def __init__(self, *, node_id: str, transport: Transport, peers: PeerStore,
                 protocols: PeerProtocols, metrics: Metrics,
                 warn_failure: Callable[[str, Exception], None]):
        self.node_id = node_id
        self.transport = transport
        self.peers = peers
        self.protocols = protocols
        self.metrics = metrics
        self._warn_failure = warn_failure

    def forward(self, counter: str, delta: int, key: str) -> tuple[LocalResult | None,
                                                                   str | None]:
        """Send a keyed increment to its key's home and relay the answer (keyhome.py). Returns
        (the home's answer, None), or (None, the home that refused the connection, if one did)
        when it is to be applied here. Raises `Relayed` for the home's error answer and
        `Unavailable` when the outcome at the home is unknown: nothing is applied here then."""
        excluded: set[str] = set()
        while True:
            # A peer of the previous protocol has no forward route: never a home.
            members = [peer for peer in self.peers.alive() if self.protocols.for_events(peer) >= 2]
            target = keyhome.forward_to(key, self.node_id, members, excluded=excluded)
            if target is None:
                return None, None
            payload = {"node_id": self.node_id, "counter": counter, "delta": delta, "key": key}
            try:
                reply = self.transport.post(target, keyhome.FORWARD_PATH, payload)
                answer = decode_forward_reply(reply)
            except PeerUnreachable as exc:
                if not exc.sent:  # nothing left: the home cannot have counted it
                    log.debug("the home of a key, %s, refused the connection (%s); applying "
                              "the increment here", target, exc)
                    return None, target
                raise Unavailable(f"the home of this idempotency key, {target}, did not answer "
                                  f"({exc}): the increment may have been counted there; retry "
                                  f"with the same key") from None
            except BadRequest as exc:
                log.warning("ignoring malformed forward reply from %s: %s", target, exc.message)
                raise Unavailable(f"the home of this idempotency key, {target}, gave an answer "
                                  f"this node cannot read: the increment may have been counted "
                                  f"there; retry with the same key") from None
            except PeerRefused as exc:
                action = keyhome.after_refusal(exc.status)
                if action is keyhome.AfterRefusal.NOT_A_HOME:
                    excluded.add(target)  # it does not forward: choose among the others
                    continue
                self.metrics.inc("dcounter_increments_forwarded_total")
                if exc.status == 401:
                    self._warn_failure(target, exc)
                if action is keyhome.AfterRefusal.RELAY:
                    raise Relayed(exc.status, exc.message) from None
                raise Unavailable(f"the home of this idempotency key, {target}, answered "
                                  f"{exc.status} ({exc.message}); retry with the same "
                                  f"key") from None
            self.metrics.inc("dcounter_increments_forwarded_total")
            name, count, event_id, replayed = answer
            return LocalResult(name, count, event_id, replayed, None), None
