"""The node: wires the pure parts (Counter, PeerStore, RetrySchedule, the decisions of
membership.py and antientropy.py) and the modules that carry them out to threads, sockets and
the disk, and starts and stops it all.

What each part owns:

    gossip.py       membership's calls and replies: joins, heartbeats, leaves, forgets, the
                    warnings of failed contacts; the replication links match the listing
    pulls.py        anti-entropy's pulls and the replies to a peer's pull
    forwarding.py   a keyed increment sent to its key's home, the answer relayed
    nodemetrics.py  the gauges, the observe hooks, the status page's history samples
    nodestatus.py   readiness and the status document
    updates.py      increments, resets and replicated batches, each a writer job
    node.py         the wiring, the operations the routes call, the loops, start and stop

Threads it owns, each a thin loop around a step that tests may call directly:

    http         serve_forever
    membership   heartbeat_once() every heartbeat_interval; rejoin_once() for due candidates
    cleanup      cleanup_once() every cleanup_interval (silent peers, expired keys, idle origins)
    retry        retry_once() when a replication retry is due
    sync         anti-entropy pulls once they are due (pull_once)
    writer       group commit (writer.py); one sender thread per peer (replication.py)
    contacts     heartbeats, joins and the goodbye run in pools (contacts.py)

Every step catches, logs and continues, and so does every task of the contact pools, so no
thread dies silently. Shutdown, all within one deadline (`drain_timeout`): stop accepting,
finish requests in flight, stop the loops and let the contacts they started end, tell peers we
leave, one last replication attempt, stop the writer, close the store (never under a running
commit).
"""

from __future__ import annotations

import logging
import threading

from dcounter import backup as backup_copy
from dcounter import tls
from dcounter.antientropy import AntiEntropy
from dcounter.api import App
from dcounter.auth import Auth, exposure_warning
from dcounter.clock import SystemClock
from dcounter.clusterread import ClusterCount, ClusterReader
from dcounter.config import Config
from dcounter.contacts import Contacts, run_within
from dcounter.counter import (BulkResult, Counter, Event, Items, LocalResult, RemoteResult,
                              new_origin_id)
from dcounter.errors import StartupError
from dcounter.forwarding import Forwarder
from dcounter.gossip import Gossip
from dcounter.membership import retire_idle_job
from dcounter.metrics import Metrics
from dcounter.nodemetrics import NodeMetrics
from dcounter.nodestatus import NodeStatus
from dcounter.peers import PeerStore
from dcounter.protocol import PeerProtocols
from dcounter.pulls import Pulls
from dcounter.replication import Replicator
from dcounter.retry import RetryPolicy, RetrySchedule
from dcounter.server import Server
from dcounter.store import Store
from dcounter.transport import Transport
from dcounter.updates import Updates
from dcounter.writer import StoreGate, Writer

log = logging.getLogger("dcounter.node")

WRITER_GRACE = 1.0  # seconds the last commit may take at shutdown beyond --drain-timeout


class Node:
    def __init__(self, config: Config, clock=None, transport: Transport | None = None,
                 auth=None, ssl_context=None, on_fatal=None):
        self.config = config
        self.on_fatal = on_fatal  # called with the reason after it is logged; cli.py exits 3
        self.clock = clock or SystemClock()
        self.metrics = Metrics()
        self.node_metrics = NodeMetrics(self.metrics, self.clock)
        self.auth = auth if auth is not None else Auth.from_config(config, self.clock)
        signer = self.auth.signer if self.auth is not None else None
        self.transport = transport or Transport(timeout=config.request_timeout,
                                                scheme=tls.peer_scheme(config),
                                                verify=tls.peer_verify(config), signer=signer,
                                                on_request=self.node_metrics.observe_peer_call)
        self.ssl_context = ssl_context
        self.store: Store | None = None
        self._store_gate: StoreGate | None = None
        self.server: Server | None = None
        self.node_id = ""
        self.counter: Counter | None = None
        self.peers: PeerStore | None = None
        self.replicator: Replicator | None = None
        self.writer: Writer | None = None
        self.reader: ClusterReader | None = None
        # The modules that carry out the decisions, made by open() once their parts exist.
        self.gossip: Gossip | None = None
        self.pulls: Pulls | None = None
        self.forwarder: Forwarder | None = None
        self.updates: Updates | None = None
        self.reports: NodeStatus | None = None
        self.policy = RetryPolicy(config.retry_base, config.retry_max)
        self._stop = threading.Event()
        self._kick = threading.Event()
        self._threads: list[threading.Thread] = []
        self.anti_entropy = AntiEntropy(settle=config.heartbeat_interval)
        self._pull_wakeup = threading.Event()  # a new lead: the sync loop looks again
        self._backup_slot = threading.Lock()  # one backup copy made or sent at a time
        self.contacts = Contacts(self._stop, config.request_timeout)
        self.protocols = PeerProtocols(config.protocol)  # what each peer speaks (protocol.py)
        self.started = False

    # -- start and stop ---------------------------------------------------------------------------
    def open(self) -> None:
        """Bind the port, then open storage; nothing runs yet. Raises StartupError."""
        cfg = self.config
        if self.ssl_context is None and cfg.tls_cert:
            self.ssl_context = tls.server_context(cfg.tls_cert, cfg.tls_key)
        app = App(self, auth=self.auth, metrics=self.metrics, clock=self.clock)
        self.app = app
        # The port first: a node that cannot listen must leave no data directory behind. Until
        # start() serves it, a connection waits in the listen backlog.
        try:
            self.server = Server((cfg.host, cfg.port), app, max_body=cfg.max_body,
                                 max_connections=cfg.max_connections,
                                 request_deadline=cfg.request_deadline,
                                 idle_timeout=cfg.idle_timeout,
                                 ssl_context=self.ssl_context)
        except OSError as exc:
            raise StartupError(f"cannot listen on {cfg.host}:{cfg.port}: "
                               f"{exc.strerror or exc}") from None
        try:
            if cfg.in_memory:
                origin, origins, keys, retirement, resets = new_origin_id(), {}, {}, (), ()
            else:
                self.store = Store(cfg.data_path(), sync=cfg.sync)
                self.store.open()
                origin, origins, keys = self.store.load()
                retirement = self.store.load_retirement()
                resets = self.store.load_resets()
        except BaseException:
            self.server.server_close()
            raise
        self.counter = Counter(origin, max_counters=cfg.max_counters, gap_cap=cfg.gap_cap,
                               key_ttl=cfg.idempotency_ttl, max_keys=cfg.max_keys,
                               origin_retire_after=cfg.origin_retire_after,
                               max_deleted=cfg.max_deleted)
        self.counter.load(origins, keys, *retirement, *resets)
        self.port = self.server.server_address[1]
        self.node_id = cfg.node_id(self.port)
        warning = exposure_warning(cfg)
        if warning:
            log.warning("%s", warning)
        self.peers = PeerStore(self.node_id, peer_timeout=cfg.peer_timeout, policy=self.policy,
                               seeds=cfg.peers, max_peers=cfg.max_peers,
                               reap_after=cfg.reap_after, now=self.clock.monotonic())
        self.replicator = Replicator(self.node_id, self.transport, RetrySchedule(self.policy),
                                     self.clock, max_backlog=cfg.max_backlog,
                                     batch_max=cfg.batch_max, batch_linger=cfg.batch_linger,
                                     on_success=self._replicated_to, metrics=self.metrics,
                                     protocol_of=self.protocols.for_events)
        self.reader = ClusterReader(self.node_id, self.transport, self.clock)
        self._store_gate = StoreGate(self.store) if self.store is not None else None
        self.writer = Writer(self.counter, self._store_gate, on_commit=self.replicator.enqueue,
                             on_fatal=self._fatal,
                             observe_commit=self.node_metrics.observe_commit,
                             clock=self.clock)
        self.node_metrics.register_gauges(self.peers, self.replicator, self.counter)
        self._compose()

    def _compose(self) -> None:
        """The modules that carry out membership, anti-entropy, forwarding, updates and the
        status, each holding the parts it needs."""
        common = dict(node_id=self.node_id, config=self.config, clock=self.clock)
        self.gossip = Gossip(**common, transport=self.transport, peers=self.peers,
                             counter=self.counter, replicator=self.replicator,
                             anti_entropy=self.anti_entropy, protocols=self.protocols,
                             contacts=self.contacts, wake_membership=self._kick.set,
                             wake_pulls=self._pull_wakeup.set)
        self.pulls = Pulls(**common, transport=self.transport, counter=self.counter,
                           writer=self.writer, anti_entropy=self.anti_entropy,
                           protocols=self.protocols, metrics=self.metrics)
        self.forwarder = Forwarder(node_id=self.node_id, transport=self.transport,
                                   peers=self.peers, protocols=self.protocols,
                                   metrics=self.metrics, warn_failure=self.gossip.warn_failure)
        self.updates = Updates(config=self.config, clock=self.clock, writer=self.writer,
                               peers=self.peers, protocols=self.protocols, metrics=self.metrics,
                               forward=self.forwarder.forward)
        self.reports = NodeStatus(**common, store=self.store, counter=self.counter,
                                  peers=self.peers, replicator=self.replicator,
                                  anti_entropy=self.anti_entropy,
                                  history=self.node_metrics.history,
                                  stopping=self._stop.is_set)

    def start(self) -> None:
        if self.server is None:
            self.open()
        self.writer.start()
        self.replicator.start()
        self._spawn("http", lambda: self.server.serve_forever(poll_interval=0.1))
        self._spawn("membership", self._membership_loop)
        self._spawn("cleanup", self._cleanup_loop)
        self._spawn("retry", self._retry_loop)
        self._spawn("sync", self._sync_loop)
        self.started = True
        self._kick.set()

    def _fatal(self, reason: str) -> None:
        """The writer can no longer keep memory and disk equal: say why, then stop."""
        log.critical("%s", reason)
        if self.on_fatal is not None:
            self.on_fatal(reason)

    def _spawn(self, name: str, target) -> None:
        thread = threading.Thread(target=target, name=name, daemon=True)
        thread.start()
        self._threads.append(thread)

    def stop(self, leave: bool = True) -> None:
        """Graceful shutdown within one deadline, `drain_timeout` seconds from now (the last
        commit may take up to WRITER_GRACE more); safe to call once from any thread but a
        request thread. A stage still running at the deadline is left behind (its threads are
        daemons) and the stop goes on, except that the store is never closed under a commit."""
        if self._stop.is_set():
            return
        deadline = self.clock.monotonic() + self.config.drain_timeout
        # 1. stop accepting, 2. finish requests in flight
        if self.server is not None:
            self.server.draining = True
            if self.started:
                self.server.shutdown()
            self.server.server_close()
            self.server.wait_idle(deadline)
        # 3. stop the loops, and let the contacts they started end: a heartbeat still in flight
        # when the goodbye goes out could list this node again at a peer after its leave.
        self._stop.set()
        self._kick.set()
        self._pull_wakeup.set()
        for thread in self._threads:
            if thread.name != "http":
                thread.join(timeout=self._left(deadline))
        self.contacts.settle(self._left(deadline) / 2)
        # 4. tell peers we leave
        if leave and self.gossip is not None:
            self.gossip.say_goodbye(self._left(deadline))
        # 5. stop the senders, one last replication attempt
        if self.replicator is not None:
            run_within("stop links", self.replicator.stop, self._left(deadline))
            left = []
            if self._left(deadline) > 0 and not run_within(
                    "flush replication", lambda: left.append(self.replicator.drain(deadline)),
                    self._left(deadline)):
                log.warning("replication not flushed within --drain-timeout; peers will catch "
                            "up through anti-entropy")
            elif left and left[0]:
                log.warning("%d replicated event(s) not delivered at shutdown; peers will "
                            "catch up through anti-entropy", left[0])
        self.contacts.shutdown()
        if self.reader is not None:
            self.reader.close()
        # 6. writer, store
        if self.writer is not None:
            grace = max(self._left(deadline), WRITER_GRACE)
            run_within("stop writer", lambda: self.writer.stop(timeout=grace), grace)
        if self._store_gate is not None and not self._store_gate.close():
            log.error("a commit is still running at shutdown; leaving the store open (SQLite "
                      "recovers it when the node next opens it)")
        self.transport.close()

    def _left(self, deadline: float) -> float:
        return max(0.0, deadline - self.clock.monotonic())

    # -- operations used by the routes (api.NodeOps) -------------------------------------------
    def increment(self, counter: str, delta: int, key: str | None,
                  forwarded: bool = False) -> LocalResult:
        """Decided at the key's home when it has one elsewhere (updates.py)."""
        return self.updates.increment(counter, delta, key, forwarded)

    def increment_many(self, items: Items, key: str | None) -> BulkResult:
        return self.updates.increment_many(items, key)

    def reset(self, counter: str, delete: bool, key: str | None) -> LocalResult:
        return self.updates.reset(counter, delete, key)

    @property
    def protocol(self) -> int:
        """The protocol this node speaks (`--protocol`)."""
        return self.config.protocol

    def replicate(self, sender: str, events: list[Event]) -> RemoteResult:
        return self.updates.replicate(sender, events)

    def state_reply(self, origins: list[str], held: int = 0) -> dict:
        """The reply to a pull (pulls.py)."""
        return self.pulls.reply(origins, held)

    def count(self, name: str) -> int:
        return self.counter.count(name)

    def counters(self) -> dict[str, int]:
        return self.counter.counters()

    def count_all(self, name: str, timeout: float) -> ClusterCount:
        """A read of the whole cluster (clusterread.py); changes nothing here."""
        return self.reader.read(self.counter, name, self.peers.alive(), timeout)

    @property
    def cluster(self) -> str:
        """The cluster this node belongs to (`--cluster`)."""
        return self.config.cluster

    def alive_peers(self) -> list[str]:
        """The peers this node lists (`GET /nodes`), never itself."""
        return self.peers.alive()

    def render_metrics(self) -> str:
        return self.metrics.render()

    def backup(self):
        """A consistent, marked copy of the database (backup.py) as `(file, done)`: the copy
        open for reading, already unlinked, and the function to call once it is sent (or
        sending failed), which frees the one backup slot. None in memory. Raises
        `backup.BackupBusy` while another copy is being made or sent, `backup.BackupError`
        when no copy could be made."""
        if self.store is None:
            return None
        if not self._backup_slot.acquire(blocking=False):
            raise backup_copy.BackupBusy("another backup of this node is in progress; one "
                                         "runs at a time, try again when it is done")
        try:
            file = backup_copy.backup_file(self.store.path, self.clock.time())
        except BaseException:
            self._backup_slot.release()
            raise
        return file, self._backup_slot.release

    # -- membership (gossip.py) -------------------------------------------------------------------
    def on_join(self, sender, origin, digest, peers, protocol=None, held=None) -> dict:
        return self.gossip.on_join(sender, origin, digest, peers, protocol, held)

    def on_heartbeat(self, sender, origin, digest, peers, protocol=None, held=None) -> dict:
        return self.gossip.on_heartbeat(sender, origin, digest, peers, protocol, held)

    def on_leave(self, sender, origin) -> bool:
        return self.gossip.on_leave(sender, origin)

    def forget(self, member: str, forwarded: bool) -> dict:
        return self.gossip.forget(member, forwarded)

    # -- loop steps -------------------------------------------------------------------------------
    def heartbeat_once(self) -> None:
        self.gossip.heartbeat_once()

    def rejoin_once(self) -> list[str]:
        return self.gossip.rejoin_once()

    def cleanup_once(self) -> list[str]:
        gone = self.gossip.sweep()
        if gone:
            self._kick.set()
        now = self.clock.time()
        self.writer.submit(lambda txn: txn.expire_keys(now))
        self.writer.submit(retire_idle_job(self.peers, now))
        return gone

    def sample_history(self) -> int:
        return self.node_metrics.sample_history()

    def retry_once(self) -> list[str]:
        return self.replicator.retry_once(self.clock.monotonic())

    def pull_once(self) -> int:
        return self.pulls.pull_once()

    # -- loops ------------------------------------------------------------------------------------
    def _guard(self, step, name: str):
        try:
            return step()
        except Exception:
            log.exception("%s step failed; continuing", name)

    def _membership_loop(self) -> None:
        next_heartbeat = self.clock.monotonic()
        while not self._stop.is_set():
            now = self.clock.monotonic()
            if now >= next_heartbeat:
                self._guard(self.heartbeat_once, "heartbeat")
                next_heartbeat = now + self.config.heartbeat_interval
            if self._stop.is_set():
                return
            self._guard(self.rejoin_once, "rejoin")
            self._kick.wait(min(0.1, max(0.0, next_heartbeat - self.clock.monotonic())))
            self._kick.clear()

    def _cleanup_loop(self) -> None:
        while not self._stop.wait(self.config.cleanup_interval):
            self._guard(self.cleanup_once, "cleanup")
            self._guard(self.sample_history, "history")

    def _retry_loop(self) -> None:
        while not self._stop.is_set():
            self.replicator.wait_for_retry(1.0)
            self._guard(self.retry_once, "retry")

    def _sync_loop(self) -> None:
        while not self._stop.is_set():
            due = self.anti_entropy.next_due()
            wait = 1.0 if due is None else min(1.0, max(0.0, due - self.clock.monotonic()))
            self._pull_wakeup.wait(wait)
            self._pull_wakeup.clear()
            if self._stop.is_set():
                return
            self._guard(self.pull_once, "anti-entropy")

    # -- callbacks, status ------------------------------------------------------------------------
    def _replicated_to(self, peer: str) -> None:
        self.peers.refresh(peer, self.clock.monotonic())

    def readiness(self) -> tuple[bool, str]:
        """Whether this node takes traffic, and why (nodestatus.py)."""
        if self.reports is None:  # not opened
            return False, "shutting down" if self._stop.is_set() else "store not open"
        return self.reports.readiness()

    def status(self) -> dict:
        return self.reports.status()
