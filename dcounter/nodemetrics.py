"""A node's own metrics: the gauges it registers for `GET /metrics`, the hooks the transport and
the writer call to observe peer calls and commits, and the samples of the status page's recent
past (history.py) taken from those metrics.

Owns the names and help texts of the node's gauges; the registry and its text format are
metrics.py's; the counters are incremented where things happen. Time comes from the node's
injected clock.
"""

from __future__ import annotations

from dcounter.counter import Counter
from dcounter.history import History
from dcounter.metrics import Metrics
from dcounter.peers import PeerStore
from dcounter.replication import Replicator

DELAY = "dcounter_replication_delay_seconds"


class NodeMetrics:
    def __init__(self, metrics: Metrics, clock):
        self.metrics = metrics
        self.clock = clock
        self.history = History(metrics.histogram(DELAY)[0])  # for the status page

    def observe_peer_call(self, path: str, ok: bool) -> None:
        self.metrics.inc("dcounter_peer_requests_total", path=path,
                         outcome="ok" if ok else "failed")

    def observe_commit(self, seconds: float, group: int) -> None:
        self.metrics.observe("dcounter_commit_seconds", seconds)
        self.metrics.observe("dcounter_commit_group_size", group)

    def sample_history(self) -> int:
        """The status page's recent past (history.py): a sample per interval that passed."""
        m = self.metrics
        return self.history.observe(self.clock.monotonic(),
                                    m.value("dcounter_increments_local_total"),
                                    m.value("dcounter_increments_replicated_total"),
                                    m.histogram(DELAY)[1])

    def register_gauges(self, peers: PeerStore, replicator: Replicator,
                        counter: Counter) -> None:
        m = self.metrics
        m.gauge("dcounter_peers_alive", "Peers this node considers alive.",
                lambda: len(peers.alive()))
        m.gauge("dcounter_replication_backlog_events", "Events waiting to be sent, per peer.",
                lambda: [({"peer": p}, v["backlog"])
                         for p, v in replicator.backlogs().items()])
        m.gauge("dcounter_replication_retry_attempt", "Current retry attempt, per peer "
                "(0 when the last send succeeded).",
                lambda: [({"peer": p}, v["attempts"])
                         for p, v in replicator.backlogs().items()])
        m.gauge("dcounter_counters", "Distinct counters.", lambda: counter.counter_names())
        m.gauge("dcounter_origins", "Origins known.", lambda: counter.origin_count())
        m.gauge("dcounter_held_events", "Out-of-order events held above watermarks.",
                lambda: counter.held_total())
        m.gauge("dcounter_idempotency_keys", "Unexpired idempotency keys remembered.",
                lambda: counter.key_count())
        m.gauge("dcounter_idempotency_key_retention_seconds", "Age of the oldest idempotency "
                "key remembered: about --idempotency-ttl, less when --max-keys forgets keys early.",
                lambda: counter.key_retention(self.clock.time()))
        m.gauge("dcounter_origins_retired", "Origins retired (folded into the base).",
                lambda: counter.retired_count())
        m.gauge("dcounter_retired_origin_events_refused", "Replicated events of retired "
                "origins refused since start.", lambda: counter.retired_refused)
        m.gauge("dcounter_deleted_counters", "Tombstones of deleted counters counting toward "
                "--max-deleted.", lambda: counter.deleted_count())
        m.gauge("dcounter_resets_applied", "Resets and deletes applied here since start, local "
                "and replicated.", lambda: counter.resets_applied)
        m.gauge("dcounter_idempotency_keys_evicted", "Idempotency keys forgotten before their "
                "ttl since start, to stay within --max-keys.",
                lambda: counter.keys_evicted)
