"""`Config`: every setting of a node, its unit, its default and its validation.

The defaults are the original system's timings. `__post_init__` refuses impossible values and
impossible combinations with `ValueError`, whose message is the one line the CLI prints.
"""

import dataclasses
import socket
from dataclasses import dataclass

from dcounter.errors import BadRequest
from dcounter import validation

LOOPBACK_HOSTS = {"127.0.0.1", "localhost", "::1"}


@dataclass(frozen=True)
class Config:
    host: str = "127.0.0.1"            # address to bind
    port: int = 8080                   # TCP port; 0 lets the OS pick one
    advertise: str | None = None       # node id peers use (host:port); None = derived
    peers: tuple[str, ...] = ()        # seed node ids, contacted at start and kept as candidates
    cluster: str = "default"           # cluster name; nodes of another cluster are refused (409)

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
    max_body: int = 1 << 20            # bytes; larger request bodies get 413
    max_backlog: int = 100_000         # events waiting per peer; past it the backlog is dropped
    gap_cap: int = 10_000              # out-of-order events held per origin above its watermark
    batch_max: int = 2_000             # events in one replicate request
    batch_linger: float = 0.02         # seconds a busy link waits for a batch to grow (idle: none)
    idempotency_ttl: float = 86_400.0  # seconds an Idempotency-Key is remembered (wall clock)
    drain_timeout: float = 2.0         # seconds to flush replication when shutting down
    max_connections: int = 256         # concurrent client connections; more get 503
    log_level: str = "INFO"

    def __post_init__(self):
        positive = ("heartbeat_interval", "cleanup_interval", "peer_timeout", "retry_base",
                    "retry_max", "request_timeout", "idempotency_ttl")
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
        for name in ("max_counters", "max_body", "max_backlog", "gap_cap", "batch_max",
                     "max_connections"):
            value = getattr(self, name)
            if not isinstance(value, int) or isinstance(value, bool) or value < 1:
                raise ValueError(f"--{name.replace('_', '-')} must be a positive integer")
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

