"""`Config`: every setting of a node, its unit, its default and its validation.

The defaults are the original system's timings. `__post_init__` refuses impossible values and
impossible combinations with `ValueError`, whose message is the one line the CLI prints.
"""

import dataclasses
import math
import socket
from dataclasses import dataclass, field

from dcounter.errors import BadRequest
from dcounter import PROTOCOL, validation

LOOPBACK_HOSTS = {"127.0.0.1", "localhost", "::1"}


@dataclass(frozen=True)
class Config:
    host: str = "127.0.0.1"            # address to bind
    port: int = 8080                   # TCP port; 0 lets the OS pick one
    advertise: str | None = None       # node id peers use (host:port); None = derived
    peers: tuple[str, ...] = ()        # seed node ids, contacted at start and kept as candidates
    cluster: str = "default"           # cluster name; nodes of another cluster are refused (409)
    protocol: int = PROTOCOL           # protocol spoken to peers: 1 speaks only what the previous
                                       # release does (rolling upgrades; see protocol.py)

    heartbeat_interval: float = 2.0    # seconds between heartbeats to every peer
    cleanup_interval: float = 5.0      # seconds between sweeps for silent peers
    peer_timeout: float = 6.0          # seconds of silence after which a peer is removed
    retry_base: float = 0.1            # seconds: first retry delay, doubled per failed attempt
    retry_max: float = 10.0            # seconds: cap of the retry delay
    request_timeout: float = 2.0       # seconds a peer call may take before it counts as failed

    data_dir: str | None = None        # None = ./dcounter-data-<port>
    in_memory: bool = False            # keep nothing on disk (unreplicated events die with it)
    sync: str = "full"                 # SQLite synchronous: "full" survives power loss, "normal" a crash

    max_counters: int = 10_000         # distinct counter names a node creates locally
    max_deleted: int = 10_000          # tombstones of deleted counters kept (reset.py); a
                                       # delete past it gets 422
    max_body: int = 1 << 20            # bytes; larger request bodies get 413
    max_backlog: int = 100_000         # events waiting per peer; past it the backlog is dropped
    gap_cap: int = 10_000              # out-of-order events held per origin above its watermark
    batch_max: int = 2_000             # events in one replicate request
    batch_linger: float = 0.02         # seconds a busy link waits for a batch to grow (idle: none)
    idempotency_ttl: float = 86_400.0  # seconds an Idempotency-Key is remembered (wall clock)
    drain_timeout: float = 5.0         # seconds the whole shutdown may take (the last commit
                                       # 1 s more); well under systemd's TimeoutStopSec=20
    max_keys: int = 1_000_000          # Idempotency-Keys remembered; past it the oldest are
                                       # forgotten early (a retry of one counts again)
    origin_retire_after: float = 604_800.0
                                       # seconds (wall clock) an origin may stay idle, its node
                                       # unlisted, before it is folded into the base; its later
                                       # events are refused
    reap_after: float = 86_400.0       # seconds a failed or left member is kept (and shown)
                                       # before it is forgotten; also how long a forgotten id is
                                       # not taken back from gossip
    max_connections: int = 256         # concurrent client connections; more get 503
    max_peers: int = 64                # peers listed at once; a join past it gets 503 (rejoin
                                       # candidates are capped at 4x this)
    request_deadline: float = 10.0     # seconds from a request's first byte to its last (headers
                                       # and body, and a TLS handshake); slower clients are cut off
    idle_timeout: float = 30.0         # seconds an idle kept-alive connection is kept open

    # Trust. Secrets and the token stay out of repr() so they never reach a log line.
    cluster_secret: tuple[str, ...] = field(default=(), repr=False)
                                       # HMAC-SHA256 keys for peer requests: sign with the first,
                                       # accept any (rotation); () = peer routes unauthenticated
    max_clock_skew: float = 30.0       # seconds a signed request's timestamp may differ from our
                                       # wall clock; also how long its nonce is remembered
    client_token: str | None = field(default=None, repr=False)
                                       # bearer token increments need; None = increments open
    protect_reads: bool = False        # reads need the client token too (healthz/readyz stay open)
    tls_cert: str | None = None        # PEM certificate (chain): serve HTTPS, call peers over HTTPS
    tls_key: str | None = None         # PEM private key of tls_cert
    tls_ca: str | None = None          # PEM CA bundle peer certificates are verified against;
                                       # None = the public CA bundle (certifi, via requests)
    log_level: str = "INFO"
    log_format: str = "text"           # "text", or "json": one object a line for log shippers

    def __post_init__(self):
        positive = ("heartbeat_interval", "cleanup_interval", "peer_timeout", "retry_base",
                    "retry_max", "request_timeout", "idempotency_ttl", "origin_retire_after",
                    "reap_after")
        for name in positive:
            value = getattr(self, name)
            if not isinstance(value, (int, float)) or isinstance(value, bool) or not value > 0:
                raise ValueError(f"--{name.replace('_', '-')} must be a positive number of seconds")
        for name in ("batch_linger", "drain_timeout"):
            if not getattr(self, name) >= 0:
                raise ValueError(f"--{name.replace('_', '-')} must be zero or more seconds")
        if not self.peer_timeout > self.heartbeat_interval:
            raise ValueError("--peer-timeout must be greater than --heartbeat-interval "
                             f"({self.peer_timeout} <= {self.heartbeat_interval})")
        if self.retry_base > self.retry_max:
            raise ValueError("--retry-base must not exceed --retry-max")
        if not isinstance(self.port, int) or not 0 <= self.port <= 65535:
            raise ValueError("--port must be between 0 and 65535")
        for name in ("max_counters", "max_deleted", "max_body", "max_backlog", "gap_cap",
                     "batch_max", "max_connections", "max_peers", "max_keys"):
            value = getattr(self, name)
            if not isinstance(value, int) or isinstance(value, bool) or value < 1:
                raise ValueError(f"--{name.replace('_', '-')} must be a positive integer")
        if (isinstance(self.protocol, bool) or not isinstance(self.protocol, int)
                or not 1 <= self.protocol <= PROTOCOL):
            raise ValueError(f"--protocol must be from 1 to {PROTOCOL}")
        self._check_trust()
        if self.log_format not in ("text", "json"):
            raise ValueError("--log-format must be 'text' or 'json'")
        if self.sync not in ("full", "normal"):
            raise ValueError("--sync must be 'full' or 'normal'")
        if not self.cluster or len(self.cluster) > 128 or not self.cluster.isprintable():
            raise ValueError("--cluster must be 1-128 printable characters")
        for flag, value in [("--advertise", self.advertise)] + [("--peers", p) for p in self.peers]:
            if value is None:
                continue
            try:
                validation.node_id(value, flag)
            except BadRequest as exc:
                raise ValueError(f"{exc.message}, got {value!r}") from None

    def _check_trust(self) -> None:
        for name in ("request_deadline", "idle_timeout", "max_clock_skew"):
            value = getattr(self, name)
            if (not isinstance(value, (int, float)) or isinstance(value, bool)
                    or not 0 < value < math.inf):
                raise ValueError(f"--{name.replace('_', '-')} must be a positive number of seconds")
        if self.max_clock_skew > 3600:
            raise ValueError("--max-clock-skew must be at most 3600 seconds (nonces are "
                             "remembered that long)")
        for secret in self.cluster_secret:
            if (not isinstance(secret, str) or len(secret) < 16 or not secret.isprintable()
                    or secret != secret.strip() or "," in secret):
                raise ValueError("each --cluster-secret must be at least 16 printable characters "
                                 "(comma-separated, no surrounding spaces)")
        if self.client_token is not None:
            token = self.client_token
            if (not isinstance(token, str) or len(token) < 16 or not token.isascii()
                    or not all(33 <= ord(c) <= 126 for c in token)):
                raise ValueError("--client-token must be at least 16 printable ASCII characters "
                                 "without spaces")
        if self.protect_reads and self.client_token is None:
            raise ValueError("--protect-reads needs --client-token")
        if (self.tls_cert is None) != (self.tls_key is None):
            raise ValueError("--tls-cert and --tls-key go together")
        if self.tls_ca is not None and self.tls_cert is None:
            raise ValueError("--tls-ca needs --tls-cert and --tls-key (peers speak HTTPS only "
                             "when every node serves it)")

    def binds_loopback(self) -> bool:
        return self.host in LOOPBACK_HOSTS or self.host.startswith("127.")

    def node_id(self, bound_port: int | None = None) -> str:
        """The id this node advertises: --advertise, else localhost:PORT on loopback, else
        <hostname>:PORT."""
        if self.advertise:
            return self.advertise
        port = bound_port if bound_port is not None else self.port
        if self.host in LOOPBACK_HOSTS or self.host.startswith("127."):
            return f"localhost:{port}"
        if self.host in ("0.0.0.0", "::", ""):
            return f"{socket.gethostname()}:{port}"
        if ":" in self.host:
            return f"[{self.host}]:{port}"
        return f"{self.host}:{port}"

    def data_path(self, bound_port: int | None = None) -> str:
        port = bound_port if bound_port is not None else self.port
        return self.data_dir or f"dcounter-data-{port}"

    def replace(self, **changes) -> "Config":
        return dataclasses.replace(self, **changes)

