"""Which protocol this node speaks to each peer, so that a rolling upgrade never splits a
cluster (pure; thread-safe).

Protocols:

* 1: joins, heartbeats, leaves, replicate batches of plain events, prefix pulls.
* 2: protocol 1, plus bulk events (several counters in one event, `Event.items`) and reset
  events (`Event.reset`, reset.py) in replicate batches, and the covers of resets in state
  replies. A reset is refused while any listed member speaks protocol 1 (updates.py): such a member
  could learn a reset's effect neither by push nor with a prefix.

The rule. A node speaks its own protocol (`PROTOCOL`, or `--protocol` to speak an older one)
and accepts a join, heartbeat or leave of any protocol from 1 up to it (another gets 409). Its
replies state its own protocol; its requests state the protocol it speaks to that peer: the
lower of its own and the peer's. It learns the peer's from the peer's replies (exactly: a peer
rolled back says so) and requests (which only raise it: a peer may speak low to us while it
takes us for older). An event the peer's protocol cannot express is not pushed to it; it
reaches the peer through anti-entropy, whose prefixes are the same in every protocol. A peer
that refuses a join or heartbeat with 409 is asked again at once with protocol 1 (a node of
the previous release refuses anything else). Until a peer's protocol is known, requests offer
ours and events go as protocol 1 would send them.
"""

from __future__ import annotations

import threading

from dcounter import PROTOCOL
from dcounter.counter import Event

OLDEST = 1  # the oldest protocol this release still speaks
MAX_REMEMBERED = 4096  # peers whose protocol is remembered; past it the record starts afresh


def accepted(own: int, offered) -> bool:
    """Whether a node speaking `own` accepts a join or heartbeat of protocol `offered`."""
    return OLDEST <= offered <= own


def expressible(event: Event, protocol: int) -> bool:
    """Whether `protocol` can carry `event` in a replicate batch."""
    return (event.items is None and event.reset is None) or protocol >= 2


class PeerProtocols:
    def __init__(self, own: int = PROTOCOL):
        self.own = own
        self._lock = threading.Lock()
        self._known: dict[str, int] = {}

    def note_reply(self, peer: str, protocol) -> None:
        """A reply states the peer's own protocol: it is what the peer speaks from now on (a
        peer rolled back to an older release says so in its replies)."""
        self._note(peer, protocol, lower=True)

    def note_request(self, peer: str, protocol) -> None:
        """A request states the protocol the peer chose to speak to us, which may be below its
        own while it takes us for older than we are: it only ever raises what we know."""
        self._note(peer, protocol, lower=False)

    def refused(self, peer: str) -> None:
        """`peer` refused our protocol (409): it may be of the previous release."""
        self._note(peer, OLDEST, lower=True)

    def _note(self, peer: str, protocol, lower: bool) -> None:
        # A value that is not an integer is ignored; a newer peer than us speaks ours to us.
        if isinstance(protocol, bool) or not isinstance(protocol, int) or protocol < OLDEST:
            return
        protocol = min(protocol, self.own)
        with self._lock:
            known = self._known.get(peer)
            if known is not None and not lower and protocol <= known:
                return
            if known is None and len(self._known) >= MAX_REMEMBERED:
                self._known.clear()
            self._known[peer] = protocol

    def known(self, peer: str) -> int | None:
        with self._lock:
            return self._known.get(peer)

    def for_requests(self, peer: str | None) -> int:
        """The protocol a join, heartbeat or leave to `peer` carries."""
        known = self.known(peer) if peer is not None else None
        return self.own if known is None else known

    def for_events(self, peer: str) -> int:
        """The protocol `peer`'s replicate batches are limited to."""
        known = self.known(peer)
        return OLDEST if known is None else known
