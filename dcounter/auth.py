"""Who may call what: HMAC-signed requests between nodes, a bearer token for clients.

Theory of operation. Every route has a kind (`api.Route.kind`), and `App` asks `Auth.check`
about it before the route runs, so a refused request changes nothing:

    peer   join, heartbeat, leave, replicate, state, forward. With a cluster secret they must
           carry a valid signature; the client token is not accepted in its place.
    admin  forgetting a member (`POST /nodes/forget`): sent by an operator or passed on by a
           node. A request that carries a signature must carry a valid one; otherwise the
           rules of `write` apply (the client token when there is one, else open).
    write  increments, backups. With a client token they need `Authorization: Bearer <token>`.
    read   counts, counters, nodes, status, metrics. Open, unless `protect_reads`.
    open   /healthz and /readyz: always open.

A signature is HMAC-SHA256, keyed with a cluster secret, over

    dcounter-v1 \\n METHOD \\n PATH \\n TIMESTAMP \\n NONCE \\n hex(SHA-256(body))

sent as the headers X-Dcounter-Timestamp (wall-clock seconds with a fraction), X-Dcounter-Nonce
(random) and X-Dcounter-Signature (hex). The receiver refuses, in this order: missing or
malformed headers; a timestamp further than `max_clock_skew` from its own wall clock; a MAC that
matches none of its secrets; a nonce it has already accepted. A nonce is recorded only after the
MAC checked out, and forgotten once its timestamp is stale anyway, so the replay cache holds at
most one window of genuine peer traffic and strangers cannot fill it. Nodes sign with the first
secret and accept any, which lets a cluster rotate its secret without downtime.

The path is signed without a query string; peer routes take none, and a signed request that
carries one is refused.

A refused peer request is also a WARNING on this node that names the sender (the node id its
body claims, and its address) and the cause in words: unsigned, signed with another secret,
stale (clocks apart), replayed. It is logged per sender and cause at once, then 1, 2, 4 ...
minutes apart (at most 10), since a misconfigured peer retries every second or so.

Pure: the wall clock is injected, nothing here touches sockets or threads beyond one lock that
guards the replay cache. Secrets and tokens are compared with `hmac.compare_digest`.
"""

from __future__ import annotations

import hashlib
import heapq
import hmac
import json
import logging
import re
import secrets as _secrets
import threading

from dcounter.errors import Unauthorized, Unavailable
from dcounter.membership import backoff_warnings

log = logging.getLogger(__name__)

TIMESTAMP_HEADER = "X-Dcounter-Timestamp"
NONCE_HEADER = "X-Dcounter-Nonce"
SIGNATURE_HEADER = "X-Dcounter-Signature"
NONCE_CAPACITY = 250_000  # accepted nonces remembered at once; beyond it signed calls get 503

_TIMESTAMP_RE = re.compile(r"[0-9]{1,12}(?:\.[0-9]{1,9})?")
_NONCE_RE = re.compile(r"[A-Za-z0-9_-]{16,128}")
_SIGNATURE_RE = re.compile(r"[0-9a-f]{64}")

# What the refusing node's warning says after "refused <sender>: ", per cause.
_CAUSES = {
    "unsigned": "its request carries no valid signature ({detail}); start it with this node's "
                "--cluster-secret",
    "secret": "its request is signed with another secret: do the nodes share --cluster-secret?",
    "stale": "{detail}: are the two machines' clocks within --max-clock-skew?",
    "replay": "{detail}",
}


class _SignatureRefused(Unauthorized):
    def __init__(self, message: str, cause: str):
        super().__init__(message)
        self.cause = cause


def message(method: str, path: str, timestamp: str, nonce: str, body: bytes) -> bytes:
    """The bytes a signature covers."""
    return "\n".join(["dcounter-v1", method.upper(), path, timestamp, nonce,
                      hashlib.sha256(body).hexdigest()]).encode()


def mac(secret: str, data: bytes) -> str:
    return hmac.new(secret.encode(), data, hashlib.sha256).hexdigest()


def sign(secret: str, method: str, path: str, body: bytes, now: float,
         nonce: str | None = None) -> dict[str, str]:
    """The three headers that authenticate one request sent at wall-clock time `now`."""
    timestamp = f"{now:.3f}"
    nonce = nonce or _secrets.token_hex(16)
    return {TIMESTAMP_HEADER: timestamp, NONCE_HEADER: nonce,
            SIGNATURE_HEADER: mac(secret, message(method, path, timestamp, nonce, body))}


class Signer:
    """`Transport`'s signer hook: `signer(method, path, body) -> headers`."""

    def __init__(self, secret: str, clock):
        self._secret = secret
        self._clock = clock

    def __call__(self, method: str, path: str, body: bytes) -> dict[str, str]:
        return sign(self._secret, method, path, body, self._clock.time())


class NonceCache:
    """Nonces accepted within the replay window, each kept until its expiry (wall-clock
    seconds). Not thread-safe by itself; `Auth` holds a lock around it."""

    def __init__(self, capacity: int = NONCE_CAPACITY):
        self.capacity = capacity
        self._expiry: dict[str, float] = {}
        self._heap: list[tuple[float, str]] = []

    def __len__(self) -> int:
        return len(self._expiry)

    def expire(self, now: float) -> None:
        while self._heap and self._heap[0][0] < now:
            _, nonce = heapq.heappop(self._heap)
            self._expiry.pop(nonce, None)

    def add(self, nonce: str, expires: float, now: float) -> bool:
        """Record `nonce`; False when it is already held (a replay). Raises `Unavailable` when
        the cache is full of unexpired nonces rather than forget one early."""
        self.expire(now)
        if nonce in self._expiry:
            return False
        if len(self._expiry) >= self.capacity:
            raise Unavailable("too many signed requests within the replay window; retry later")
        self._expiry[nonce] = expires
        heapq.heappush(self._heap, (expires, nonce))
        return True


class Auth:
    """The policy `App` consults before every route (`check`), and the signer peers use."""

    def __init__(self, *, clock, cluster_secrets=(), client_token: str | None = None,
                 protect_reads: bool = False, max_clock_skew: float = 30.0,
                 nonce_capacity: int = NONCE_CAPACITY):
        if protect_reads and not client_token:
            raise ValueError("protect_reads needs a client token")
        self._clock = clock
        self._secrets = tuple(cluster_secrets)
        self._token_digest = (hashlib.sha256(client_token.encode()).digest()
                              if client_token else None)
        self.protect_reads = protect_reads
        self.max_clock_skew = max_clock_skew
        self._nonces = NonceCache(nonce_capacity)
        self._lock = threading.Lock()
        self.signer = Signer(self._secrets[0], clock) if self._secrets else None
        self._warnings = backoff_warnings()  # per (sender, cause); guards itself

    @classmethod
    def from_config(cls, config, clock) -> "Auth | None":
        """The policy a `Config` asks for; None when it asks for none."""
        if not config.cluster_secret and not config.client_token:
            return None
        return cls(clock=clock, cluster_secrets=config.cluster_secret,
                   client_token=config.client_token, protect_reads=config.protect_reads,
                   max_clock_skew=config.max_clock_skew)

    @property
    def signs_peers(self) -> bool:
        return bool(self._secrets)

    def replay_cache_size(self) -> int:
        with self._lock:
            return len(self._nonces)

    # -- the check ------------------------------------------------------------------------------
    def check(self, request, kind: str) -> None:
        """Raise `Unauthorized` unless `request` may call a route of `kind`."""
        if kind == "peer":
            if self._secrets:
                try:
                    self._check_signature(request)
                except _SignatureRefused as exc:
                    self._warn_refused(request, exc)
                    raise
        elif kind == "admin":
            if self._secrets and request.headers.get_all(SIGNATURE_HEADER):
                try:
                    self._check_signature(request)
                except _SignatureRefused as exc:
                    self._warn_refused(request, exc)
                    raise
            elif self._token_digest is not None:
                self._check_token(request)
        elif kind == "write":
            if self._token_digest is not None:
                self._check_token(request)
        elif kind == "read":
            if self.protect_reads:
                self._check_token(request)
        elif kind != "open":
            raise ValueError(f"unknown route kind {kind!r}")

    def _check_token(self, request) -> None:
        values = request.headers.get_all("Authorization") or []
        if not values:
            raise Unauthorized("missing Authorization: Bearer <token>")
        if len(values) > 1:
            raise Unauthorized("more than one Authorization header")
        scheme, _, token = values[0].strip().partition(" ")
        given = hashlib.sha256(token.strip().encode("utf-8", "replace")).digest()
        if scheme.lower() != "bearer" or not hmac.compare_digest(given, self._token_digest):
            raise Unauthorized("wrong bearer token")

    def _warn_refused(self, request, exc: "_SignatureRefused") -> None:
        """Say who was refused and why, with backoff per (sender, cause). The sender is the
        node id the body claims (unauthenticated, so its address goes with it)."""
        address = request.client or "unknown address"
        claimed = None
        try:
            data = json.loads(request.body) if request.body else None
        except (ValueError, UnicodeDecodeError, RecursionError):
            data = None
        if isinstance(data, dict) and isinstance(data.get("node_id"), str):
            node_id = data["node_id"]
            if node_id.isprintable() and len(node_id) <= 261:
                claimed = node_id
        if not self._warnings.due((claimed or address, exc.cause), self._clock.monotonic()):
            return
        who = f"{claimed} (from {address})" if claimed else address
        log.warning("refused %s on %s: %s", who, request.path,
                    _CAUSES[exc.cause].format(detail=exc.message))

    def _check_signature(self, request) -> None:
        headers = request.headers
        fields = []
        for name, shape in ((TIMESTAMP_HEADER, _TIMESTAMP_RE), (NONCE_HEADER, _NONCE_RE),
                            (SIGNATURE_HEADER, _SIGNATURE_RE)):
            values = headers.get_all(name) or []
            if len(values) != 1:
                raise _SignatureRefused(f"missing request signature ({name})" if not values
                                        else f"more than one {name} header", "unsigned")
            if not shape.fullmatch(values[0]):
                raise _SignatureRefused(f"malformed {name} header", "unsigned")
            fields.append(values[0])
        timestamp, nonce, signature = fields
        if request.query:
            raise _SignatureRefused("a signed request carries no query string", "unsigned")
        now = self._clock.time()
        sent = float(timestamp)
        if abs(now - sent) > self.max_clock_skew:
            raise _SignatureRefused(
                f"request signature is stale: its timestamp is {now - sent:+.1f}s from this "
                f"node's clock (allowed {self.max_clock_skew:g}s)", "stale")
        data = message(request.method, request.path, timestamp, nonce, request.body)
        matched = False
        for secret in self._secrets:  # every secret, so the time taken shows nothing
            matched |= hmac.compare_digest(mac(secret, data), signature)
        if not matched:
            raise _SignatureRefused("wrong request signature (do the nodes share a cluster "
                                    "secret?)", "secret")
        with self._lock:
            fresh = self._nonces.add(nonce, sent + self.max_clock_skew, now)
        if not fresh:
            raise _SignatureRefused("replayed request (nonce already seen)", "replay")


def exposure_warning(config) -> str | None:
    """The warning a node logs once at start when it is reachable from other machines and
    nothing authenticates its peers; None otherwise."""
    if config.cluster_secret:
        return None
    if config.binds_loopback():
        return None
    host = config.host
    where = "all interfaces" if host in ("", "0.0.0.0", "::") else host
    token = ("; --client-token protects increments only, " if config.client_token else "; ")
    return (f"no --cluster-secret while listening on {where}: anyone who can reach this port "
            f"can join the cluster, inject increments through replication and make this node "
            f"contact other addresses{token}set --cluster-secret (DCOUNTER_CLUSTER_SECRET) on "
            f"every node")
