"""The updates a node takes: increments (a keyed one decided at its key's home first), bulk
increments, resets and deletes, and the batches peers replicate to it.

Owns what is checked before an update is staged (a reset needs protocol 2 on every member), the
writer job each update becomes, and the counting of what was new in the metrics. What a job
changes is counter.py's, committing it writer.py's, forwarding forwarding.py's.
"""

from __future__ import annotations

from typing import Callable

from dcounter.config import Config
from dcounter.counter import BulkResult, Event, Items, LocalResult, RemoteResult
from dcounter.errors import Conflict
from dcounter.metrics import Metrics
from dcounter.peers import PeerStore
from dcounter.protocol import PeerProtocols
from dcounter.writer import Writer


class Updates:
    """`forward(counter, delta, key)` sends a keyed increment to its key's home
    (`forwarding.Forwarder.forward`)."""

    def __init__(self, *, config: Config, clock, writer: Writer, peers: PeerStore,
                 protocols: PeerProtocols, metrics: Metrics,
                 forward: Callable[[str, int, str], tuple[LocalResult | None, str | None]]):
        self.config = config
        self.clock = clock
        self.writer = writer
        self.peers = peers
        self.protocols = protocols
        self.metrics = metrics
        self._forward = forward

    def increment(self, counter: str, delta: int, key: str | None,
                  forwarded: bool = False) -> LocalResult:
        """A keyed increment whose key's home is another member is decided there and its answer
        relayed (`forward`); a forwarded one, and one without a key, is applied here."""
        refused_home = None
        if key is not None and not forwarded:
            relayed, refused_home = self._forward(counter, delta, key)
            if relayed is not None:
                return relayed
        now = self.clock.time()
        result = self.writer.submit(lambda txn: txn.local(counter, delta, key, now))
        if not result.replayed:
            self.metrics.inc("dcounter_increments_local_total")
            if refused_home is not None:
                self.metrics.inc("dcounter_increments_forward_refused_total")
        return result

    def increment_many(self, items: Items, key: str | None) -> BulkResult:
        now = self.clock.time()
        result = self.writer.submit(lambda txn: txn.local_many(items, key, now))
        if not result.replayed:
            self.metrics.inc("dcounter_increments_local_total", len(items))
            self.metrics.inc("dcounter_bulk_requests_total")
        return result

    def reset(self, counter: str, delete: bool, key: str | None) -> LocalResult:
        """A reset (or delete) of `counter` made here (reset.py). Refused with 409 while this
        node or a listed member speaks protocol 1: such a node cannot receive the reset, nor
        learn its covers with a prefix, and would never converge with the others."""
        kind = "delete" if delete else "reset"
        if self.config.protocol < 2:
            raise Conflict(f"a {kind} needs protocol 2; this node speaks protocol 1 "
                           "(--protocol): finish the upgrade first")
        old = sorted(peer for peer in self.peers.alive() if self.protocols.for_events(peer) < 2)
        if old:
            raise Conflict(f"a {kind} needs protocol 2 on every member; "
                           f"{', '.join(old)} speak{'s' if len(old) == 1 else ''} protocol 1 "
                           "(or has not answered a heartbeat yet): finish the upgrade first")
        now = self.clock.time()
        result = self.writer.submit(lambda txn: txn.local_reset(counter, delete, key, now))
        if not result.replayed:
            self.metrics.inc("dcounter_resets_local_total", kind=kind)
        return result

    def replicate(self, sender: str, events: list[Event]) -> RemoteResult:
        now = self.clock.time()
        result = self.writer.submit(lambda txn: txn.remote(events, now))
        if result.applied:
            self.metrics.inc("dcounter_increments_replicated_total", len(result.applied))
        self.peers.refresh(sender, self.clock.monotonic())
        return result
