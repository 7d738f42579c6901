"""Where a keyed increment is decided: the home of its idempotency key.

Theory of operation. A key's retry counts once at the node that first took the key, because that
node remembers the key's answer; at another node it counts once only after the event reached it.
So every key gets a home among the live members, and a node that receives a keyed increment whose
home is another member forwards it there (`POST /counter/forward`) and relays the answer: the home
decides once, wherever the client sends its retries.

The home is chosen by rendezvous hashing (highest random weight) over the node's membership view,
the node itself plus the peers it lists: every member gets the weight
`SHA-256(key "\\n" member)` and the heaviest one is the home. It is a pure function of the key and
the view, so nodes that share a view agree on every home, and when a member joins or goes only
the keys whose home it is (or becomes) move. The hash is keyed by nothing secret and never
Python's `hash()`, which is salted per process.

The rules kept here (forwarding.py carries them out):

- Only keyed increments are forwarded, and a forwarded increment is never forwarded again: the
  home applies it even if its own view names another home, so a request crosses at most one link.
- A home that answers relays its answer (status and body, `Idempotent-Replayed` included); one
  that answers 404 or 405 for the forward route does not forward (it speaks an older protocol)
  and is left out of the view, and the home is chosen again without it.
- A home whose connection was refused before anything was sent cannot have counted: the node
  applies the increment itself. A home that may have received it and did not answer (a timeout,
  a reset after sending) leaves the outcome unknown: the node answers 503 and applies nothing;
  a retry with the same key finds the home's answer.

Imports nothing of the node.
"""

from __future__ import annotations

import enum
import hashlib
from collections.abc import Iterable

FORWARD_PATH = "/counter/forward"


def weight(key: str, member: str) -> int:
    """The member's weight for the key: the first 8 bytes of SHA-256 over key, a newline (never
    in a key or a node id, so no two pairs hash the same text) and the member's node id."""
    digest = hashlib.sha256(f"{key}\n{member}".encode()).digest()
    return int.from_bytes(digest[:8], "big")


def home(key: str, members: Iterable[str]) -> str:
    """The key's home among `members` (not empty): the heaviest, ties broken by the id."""
    choices = set(members)
    if not choices:
        raise ValueError("a key needs at least one member to live on")
    return max(choices, key=lambda member: (weight(key, member), member))


def forward_to(key: str | None, self_id: str, peers: Iterable[str], *, forwarded: bool = False,
               excluded: Iterable[str] = ()) -> str | None:
    """The member to forward a keyed increment to, or None to apply it here: when it has no key,
    was itself forwarded, or its home in the view (this node and `peers`, less `excluded`) is
    this node."""
    if key is None or forwarded:
        return None
    members = (set(peers) - set(excluded)) | {self_id}
    target = home(key, members)
    return None if target == self_id else target


class AfterRefusal(enum.Enum):
    """What a node does when the home answered the forward with an error status."""
    NOT_A_HOME = "not a home"  # 404/405: an older node without the route; choose again
    RELAY = "relay"            # the home's decision about the request: passed on as it is
    UNAVAILABLE = "unavailable"  # anything else: 503 to the client, retry with the same key


RELAYED_STATUSES = frozenset({400, 422, 503})


def after_refusal(status: int) -> AfterRefusal:
    """400 and 422 are the home's verdict on the request (a key reused with another delta, a
    count out of range) and 503 means it changed nothing: the client sees them as they are. A
    401 or 409 says something about the two nodes, not the request, and a 500 may or may not
    have counted: the client gets 503 and retries with the same key."""
    if status in (404, 405):
        return AfterRefusal.NOT_A_HOME
    if status in RELAYED_STATUSES:
        return AfterRefusal.RELAY
    return AfterRefusal.UNAVAILABLE
