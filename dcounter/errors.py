"""The exception hierarchy. Raised inside, translated to HTTP status codes once, in the server.

`NodeError` subclasses carry the status a client sees (the node's errors; the Python client's
`dcounter.DcounterError` is another hierarchy, in connection.py); `PeerUnreachable` and
`PeerRefused` come from the transport and never reach a client; `StartupError` stops the node at
start with one line.

`failure_words` reads a failure's text as it is stored and shown (a `PeerUnreachable` message,
a member's or a rejoin candidate's last error): the peer's id apart, and an exception class name
in words. The members view (`membership.in_words`), the status page (`health.describe_error`)
and the transport's last resort (`transport.describe_failure`) all read failures through it.
"""

import re


class NodeError(Exception):
    """An error the node answers a request with: `status` and `message`."""
    status = 500

    def __init__(self, message: str):
        super().__init__(message)
        self.message = message



class BadRequest(NodeError):
    status = 400


class Unauthorized(NodeError):
    status = 401


class NotFound(NodeError):
    status = 404


class MethodNotAllowed(NodeError):
    status = 405

    def __init__(self, message: str, allow: list[str]):
        super().__init__(message)
        self.allow = allow


class Conflict(NodeError):
    status = 409


class NotAPeer(BadRequest):
    """A message that only the original system's nodes send: refused, and logged on the
    refusing node (at once, then with backoff per sender, by `api.App`). `sender` is who sent
    it."""

    def __init__(self, message: str, sender: str):
        super().__init__(message)
        self.sender = sender


class OtherCluster(Conflict):
    """A join, heartbeat or leave from a node of another cluster or protocol: refused, and
    logged on the refusing node with backoff per sender (by `api.App`). `sender` is who sent
    it."""

    def __init__(self, message: str, sender: str):
        super().__init__(message)
        self.sender = sender


class Unprocessable(NodeError):
    status = 422


class Unavailable(NodeError):
    status = 503


class StorageFailure(Unavailable):
    """A write to the data directory failed; nothing was acknowledged."""


class TooManyPeers(Unavailable):
    """A new peer would list more peers than --max-peers allows; it is not listed."""


class Relayed(NodeError):
    """Another node's error answer, passed on to the client with the node's own status (a keyed
    increment decided at its key's home, keyhome.py)."""

    def __init__(self, status: int, message: str):
        super().__init__(message)
        self.status = status


class PeerUnreachable(Exception):
    """A peer could not be reached or did not answer in time. `sent` is False when the request
    certainly never left (the connection was refused or never made): the peer cannot have acted
    on it."""

    def __init__(self, message: str = "", sent: bool = True):
        super().__init__(message)
        self.sent = sent


class PeerRefused(Exception):
    """A peer answered with a non-2xx status."""

    def __init__(self, status: int, message: str):
        super().__init__(f"{status}: {message}")
        self.status = status
        self.message = message


class StartupError(Exception):
    """The node cannot start; the message is the one line printed before exiting 1."""


# -- failures in words ---------------------------------------------------------------------------

# What a failed peer call's exception class means, for a reader. The transport reports a failure
# as "host:port: ClassName" (PeerUnreachable); texts already in words pass through unchanged.
FAILURE_WORDS = {
    "ConnectionError": "could not connect (refused, or no route to the host)",
    "ConnectTimeout": "no connection within the request timeout (host down, or a firewall?)",
    "ReadTimeout": "connected, but no answer within the request timeout (the node hangs or "
                   "is overloaded?)",
    "Timeout": "no answer within the request timeout",
    "SSLError": "TLS failed (certificate not trusted? set --tls-ca)",
    "ProxyError": "a proxy refused the connection",
    "ChunkedEncodingError": "the answer was cut short",
    "ContentDecodingError": "the answer was cut short",
    "InvalidURL": "not a valid address",
    "InvalidSchema": "not a valid address",
    "MissingSchema": "not a valid address",
    "InvalidHeader": "not a valid request",
    "TooManyRedirects": "the node answered with redirects",
    "RetryError": "the request failed",
    "RequestException": "the request failed",
}
_PEER_PREFIX = re.compile(r"^(?P<peer>\[?[A-Za-z0-9.:_-]+\]?:\d+): ")


def failure_words(text: str, words=FAILURE_WORDS) -> tuple[str | None, str]:
    """`text` as (the peer's id it starts with, or None; the rest, an exception class name
    turned into `words`)."""
    match = _PEER_PREFIX.match(text)
    peer, rest = (match.group("peer"), text[match.end():]) if match else (None, text)
    return peer, words.get(rest, rest)
