"""The node: wires the pure parts (Counter, PeerStore, RetrySchedule) to threads, sockets and
the disk.

Threads it owns, each a thin loop around a step that tests may call directly:

    http         serve_forever
    membership   heartbeat_once() every heartbeat_interval; rejoin_once() for due candidates
    cleanup      cleanup_once() every cleanup_interval (silent peers, expired keys)
    retry        retry_once() when a replication retry is due
    sync         anti-entropy pulls queued by heartbeats and joins (pull_once)
    writer       group commit (writer.py); one sender thread per peer (replication.py)

Every step catches, logs and continues, so no daemon thread dies silently. Shutdown order:
stop accepting, finish requests in flight, tell peers we leave, stop the loops, one last bounded
replication attempt, stop the writer, close the store.
"""

from __future__ import annotations

import concurrent.futures
import logging
import threading

from dcounter import PROTOCOL, tls, validation
from dcounter.api import App
from dcounter.auth import Auth, exposure_warning
from dcounter.clock import SystemClock
from dcounter.clusterread import ClusterCount, ClusterReader
from dcounter.config import Config
from dcounter.counter import Counter, Event, LocalResult, RemoteResult, new_origin_id
from dcounter.errors import (BadRequest, PeerRefused, PeerUnreachable, StartupError)
from dcounter.metrics import Metrics
from dcounter.peers import PeerStore
from dcounter.replication import Replicator
from dcounter.retry import RetryPolicy, RetrySchedule
from dcounter.server import Server
from dcounter.store import Store
from dcounter.transport import Transport
from dcounter.wire import decode_digest, decode_peer_list, decode_snapshot
from dcounter.writer import Writer

log = logging.getLogger("dcounter.node")


class Node:
    def __init__(self, config: Config, clock=None, transport: Transport | None = None,
                 auth=None, ssl_context=None, on_fatal=None):
        self.config = config
        self.on_fatal = on_fatal  # called with the reason after it is logged; cli.py exits 3
        self.clock = clock or SystemClock()
        self.metrics = Metrics()
        self.auth = auth if auth is not None else Auth.from_config(config, self.clock)
        signer = self.auth.signer if self.auth is not None else None
        self.transport = transport or Transport(timeout=config.request_timeout,
                                                scheme=tls.peer_scheme(config),
                                                verify=tls.peer_verify(config), signer=signer,
                                                on_request=self._observe_peer_call)
        self.ssl_context = ssl_context
        self.store: Store | None = None
        self.server: Server | None = None
        self.node_id = ""
        self.counter: Counter | None = None
        self.peers: PeerStore | None = None
        self.replicator: Replicator | None = None
        self.writer: Writer | None = None
        self.reader: ClusterReader | None = None
        self.policy = RetryPolicy(config.retry_base, config.retry_max)
        self._stop = threading.Event()
        self._kick = threading.Event()
        self._threads: list[threading.Thread] = []
        self._pulls: dict[str, dict[str, int]] = {}  # peer -> {origin: watermark it showed}
        self._pull_lock = threading.Lock()
        self._pull_wakeup = threading.Event()
        self._pool = concurrent.futures.ThreadPoolExecutor(max_workers=8,
                                                           thread_name_prefix="contact")
        self.anti_entropy_rounds = 0
        self._refusal_warned: dict[str, float] = {}  # peer -> when its 401 was last logged
        self.started = False

    # -- start and stop ---------------------------------------------------------------------------
    def open(self) -> None:
        """Open storage and bind the port; nothing runs yet. Raises StartupError."""
        cfg = self.config
        if self.ssl_context is None and cfg.tls_cert:
            self.ssl_context = tls.server_context(cfg.tls_cert, cfg.tls_key)
        if cfg.in_memory:
            origin, origins, keys = new_origin_id(), {}, {}
        else:
            self.store = Store(cfg.data_path(), sync=cfg.sync)
            self.store.open()
            origin, origins, keys = self.store.load()
        self.counter = Counter(origin, max_counters=cfg.max_counters, gap_cap=cfg.gap_cap,
                               key_ttl=cfg.idempotency_ttl)
        self.counter.load(origins, keys)
        app = App(self, auth=self.auth, metrics=self.metrics)
        self.app = app
        try:
            self.server = Server((cfg.host, cfg.port), app, max_body=cfg.max_body,
                                 max_connections=cfg.max_connections,
                                 request_deadline=cfg.request_deadline,
                                 idle_timeout=cfg.idle_timeout,
                                 ssl_context=self.ssl_context)
        except OSError as exc:
            if self.store:
                self.store.close()
            raise StartupError(f"cannot listen on {cfg.host}:{cfg.port}: "
                               f"{exc.strerror or exc}") from None
        self.port = self.server.server_address[1]
        self.node_id = cfg.node_id(self.port)
        warning = exposure_warning(cfg)
        if warning:
            log.warning("%s", warning)
        self.peers = PeerStore(self.node_id, peer_timeout=cfg.peer_timeout, policy=self.policy,
                               seeds=cfg.peers)
        self.replicator = Replicator(self.node_id, self.transport, RetrySchedule(self.policy),
                                     self.clock, max_backlog=cfg.max_backlog,
                                     batch_max=cfg.batch_max, batch_linger=cfg.batch_linger,
                                     on_success=self._replicated_to, metrics=self.metrics)
        self.reader = ClusterReader(self.node_id, self.transport, self.clock)
        self.writer = Writer(self.counter, self.store, on_commit=self.replicator.enqueue,
                             on_fatal=self._fatal, observe_commit=self._observe_commit,
                             clock=self.clock)
        self._register_gauges()

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
        """Graceful shutdown; safe to call once from any thread but a request thread."""
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
        self._stop.set()
        self._kick.set()
        self._pull_wakeup.set()
        # 3. tell peers we leave
        if leave and self.peers is not None:
            self._say_goodbye(deadline)
        # 4. stop the loops and the senders, 5. one last replication attempt
        for thread in self._threads:
            if thread.name != "http":
                thread.join(timeout=self.config.request_timeout + 1)
        if self.replicator is not None:
            self.replicator.stop()
            left = self.replicator.drain(deadline)
            if left:
                log.warning("%d replicated event(s) not delivered at shutdown; peers will "
                            "catch up through anti-entropy", left)
        self._pool.shutdown(wait=False, cancel_futures=True)
        if self.reader is not None:
            self.reader.close()
        # 6. writer, store
        if self.writer is not None:
            self.writer.stop()
        if self.store is not None:
            self.store.checkpoint()
            self.store.close()
        self.transport.close()

    def _say_goodbye(self, deadline: float) -> None:
        peers = self.peers.alive()
        if not peers:
            return
        timeout = max(0.1, min(self.config.request_timeout, deadline - self.clock.monotonic()))
        payload = self._membership_payload(include_digest=False)
        futures = [self._pool.submit(self._post_quiet, peer, "/nodes/leave", payload, timeout)
                   for peer in peers]
        concurrent.futures.wait(futures, timeout=timeout + 0.5)
        log.info("left the cluster (told %d peer(s))", len(peers))

    def _post_quiet(self, peer, path, payload, timeout):
        try:
            self.transport.post(peer, path, payload, timeout=timeout)
        except (PeerUnreachable, PeerRefused):
            pass

    # -- operations used by the API -------------------------------------------------------------
    def increment(self, counter: str, delta: int, key: str | None) -> LocalResult:
        now = self.clock.time()
        result = self.writer.submit(lambda txn: txn.local(counter, delta, key, now))
        if not result.replayed:
            self.metrics.inc("dcounter_increments_local_total")
        return result

    def replicate(self, sender: str, events: list[Event]) -> RemoteResult:
        now = self.clock.time()
        result = self.writer.submit(lambda txn: txn.remote(events, now))
        if result.applied:
            self.metrics.inc("dcounter_increments_replicated_total", len(result.applied))
        self.peers.refresh(sender, self.clock.monotonic())
        return result

    def state(self, origins: list[str]) -> dict:
        return self.counter.snapshot(origins)

    def count(self, name: str) -> int:
        return self.counter.count(name)

    def counters(self) -> dict[str, int]:
        return self.counter.counters()

    def count_all(self, name: str, timeout: float) -> ClusterCount:
        """A read of the whole cluster (clusterread.py); changes nothing here."""
        return self.reader.read(self.counter, name, self.peers.alive(), timeout)

    # -- membership, server side -------------------------------------------------------------------
    def _membership_payload(self, include_digest: bool = True) -> dict:
        payload = {"node_id": self.node_id, "cluster": self.config.cluster,
                   "protocol": PROTOCOL, "origin": self.counter.local_origin}
        if include_digest:
            payload["digest"] = self.counter.digest()
            payload["peers"] = self.peers.alive()
        return payload

    def _accept_contact(self, sender: str, origin: str | None) -> bool:
        """A peer reached us directly. Returns False when it is this node itself."""
        if origin is not None and origin == self.counter.local_origin:
            self.peers.mark_self(sender)
            return False
        if sender == self.node_id or self.peers.is_self(sender):
            return False
        self._listed(sender, self.peers.heard_from(sender, self.clock.monotonic(), origin))
        return True

    def _listed(self, peer: str, new: bool) -> None:
        """After a direct contact: a peer listed for the first time (or again) gets a link."""
        if new:
            log.info("peer %s joined", peer)
            self.replicator.add_peer(peer)

    def on_join(self, sender, origin, digest, peers) -> dict:
        self._accept_contact(sender, origin)
        self._learn(sender, digest, peers)
        reply = self._membership_payload()
        reply["peers"] = [self.node_id] + [p for p in self.peers.alive() if p != sender]
        return reply

    def on_heartbeat(self, sender, origin, digest, peers) -> dict:
        self._accept_contact(sender, origin)
        self._learn(sender, digest, peers)
        return self._membership_payload()

    def on_leave(self, sender, origin) -> bool:
        if self.peers.leave(sender):
            log.info("peer %s left", sender)
        self.replicator.remove_peer(sender)
        return True

    def _learn(self, source: str, digest: dict[str, int], peers: list[str]) -> list[str]:
        """Peers and digest heard from `source`: second-hand ids become candidates; origins
        where `source` is ahead are pulled from it."""
        new = self.peers.add_candidates([p for p in peers if p != self.node_id],
                                        self.clock.monotonic())
        if new:
            self._kick.set()
        behind = self.counter.behind(digest)
        if behind and not self.peers.is_self(source):
            with self._pull_lock:
                wanted = self._pulls.setdefault(source, {})
                for origin in behind:
                    wanted[origin] = max(wanted.get(origin, 0), digest[origin])
            self._pull_wakeup.set()
        return behind

    # -- membership, client side (loop steps) -----------------------------------------------------
    def heartbeat_once(self) -> None:
        peers = self.peers.alive()
        futures = [self._pool.submit(self._heartbeat_peer, peer) for peer in peers]
        concurrent.futures.wait(futures, timeout=self.config.request_timeout + 1)

    def _heartbeat_peer(self, peer: str) -> None:
        try:
            reply = self.transport.post(peer, "/nodes/heartbeat", self._membership_payload())
        except PeerUnreachable as exc:
            log.debug("heartbeat to %s failed: %s", peer, exc)
            return
        except PeerRefused as exc:
            if exc.status == 409:
                log.warning("peer %s refused us (%s); removing it", peer, exc.message)
                self.peers.leave(peer)
                self.replicator.remove_peer(peer)
            elif exc.status == 401:
                self._warn_unauthorized(peer, exc.message)
            else:
                log.debug("heartbeat to %s refused: %s", peer, exc)
            return
        self._handle_reply(peer, reply)

    def _warn_unauthorized(self, peer: str, message: str) -> None:
        """A peer refused our signature: the nodes' secrets differ (a rotation half done) or
        their clocks are further apart than --max-clock-skew. Logged once a minute per peer."""
        now = self.clock.monotonic()
        last = self._refusal_warned.get(peer)
        if last is None or now - last >= 60.0:
            self._refusal_warned[peer] = now
            log.warning("peer %s refused our request signature: %s", peer, message)

    def _handle_reply(self, peer: str, reply: dict) -> bool:
        """A successful direct contact with `peer`; `reply` is its membership payload."""
        origin = reply.get("origin")
        try:
            if origin is not None:
                validation.origin(origin)
            digest = decode_digest(reply.get("digest", {}))
            peers = decode_peer_list(reply.get("peers", []))
        except BadRequest as exc:
            log.warning("ignoring malformed reply from %s: %s", peer, exc.message)
            return False
        if origin is not None and origin == self.counter.local_origin:
            log.info("%s is this node itself; not listing it as a peer", peer)
            self.peers.mark_self(peer)
            return False
        self._listed(peer, self.peers.contact_succeeded(peer, self.clock.monotonic(), origin))
        if not self._learn(peer, digest, peers):
            self.anti_entropy_rounds += 1  # compared digests: nothing to pull
        return True

    def rejoin_once(self) -> None:
        due = self.peers.due_candidates(self.clock.monotonic())
        if not due:
            return
        futures = [self._pool.submit(self._join_candidate, peer) for peer in due]
        concurrent.futures.wait(futures, timeout=self.config.request_timeout + 1)

    def _join_candidate(self, peer: str) -> None:
        try:
            reply = self.transport.post(peer, "/nodes/join", self._membership_payload())
        except PeerUnreachable as exc:
            delay = self.peers.contact_failed(peer, self.clock.monotonic(), str(exc))
            log.debug("join %s failed; next attempt in %.1fs", peer, delay or 0)
            return
        except PeerRefused as exc:
            delay = self.peers.contact_failed(peer, self.clock.monotonic(),
                                              f"refused: {exc.message}")
            if exc.status == 409:
                log.warning("%s refused to join: %s", peer, exc.message)
            return
        if self._handle_reply(peer, reply):
            log.info("joined %s", peer)

    def cleanup_once(self) -> list[str]:
        gone = self.peers.expire(self.clock.monotonic())
        for peer in gone:
            log.info("removed peer %s (silent for more than %.1fs)", peer,
                     self.config.peer_timeout)
            self.replicator.remove_peer(peer)
        if gone:
            self._kick.set()
        now = self.clock.time()
        self.writer.submit(lambda txn: txn.expire_keys(now))
        return gone

    def retry_once(self) -> list[str]:
        return self.replicator.retry_once(self.clock.monotonic())

    def pull_once(self) -> int:
        """Pull the prefixes of origins where a peer was seen ahead; returns origins adopted."""
        with self._pull_lock:
            pulls, self._pulls = self._pulls, {}
        adopted = 0
        for peer, wanted in pulls.items():
            # Events still in flight when the peer showed its digest may have arrived since.
            origins = self.counter.behind(wanted)
            if not origins:
                self.anti_entropy_rounds += 1  # compared: nothing left to pull
                continue
            try:
                reply = self.transport.post(peer, "/counter/state",
                                            {"node_id": self.node_id, "origins": sorted(origins)})
                snapshot = decode_snapshot(reply.get("origins"))
            except (PeerUnreachable, PeerRefused) as exc:
                log.debug("anti-entropy pull from %s failed: %s", peer, exc)
                continue
            except BadRequest as exc:
                log.warning("ignoring malformed state from %s: %s", peer, exc.message)
                continue
            self.metrics.inc("dcounter_anti_entropy_pulls_total")

            def job(txn, snapshot=snapshot):
                return sum(txn.adopt(o, s["watermark"], s["counters"])
                           for o, s in snapshot.items())

            before = self.counter.local_origin
            count = self.writer.submit(job)
            if self.counter.local_origin != before:
                log.warning("peer %s holds events of our origin %s above our watermark (a "
                            "restored backup or cloned disk?); new events use origin %s",
                            peer, before, self.counter.local_origin)
            if count:
                log.info("caught up %d origin(s) from %s", count, peer)
                self.metrics.inc("dcounter_anti_entropy_adopted_total", count)
            adopted += count
            self.anti_entropy_rounds += 1
        return adopted

    # -- loops ----------------------------------------------------------------------------------
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
            self._guard(self.rejoin_once, "rejoin")
            self._kick.wait(min(0.1, max(0.0, next_heartbeat - self.clock.monotonic())))
            self._kick.clear()

    def _cleanup_loop(self) -> None:
        while not self._stop.wait(self.config.cleanup_interval):
            self._guard(self.cleanup_once, "cleanup")

    def _retry_loop(self) -> None:
        while not self._stop.is_set():
            self.replicator.wait_for_retry(1.0)
            self._guard(self.retry_once, "retry")

    def _sync_loop(self) -> None:
        # A peer's digest often shows events that are on their way here by replication: give
        # them a moment to arrive before pulling prefixes nobody needs.
        settle = min(0.25, self.config.heartbeat_interval / 2)
        while not self._stop.is_set():
            self._pull_wakeup.wait(1.0)
            if self._pull_wakeup.is_set() and self._stop.wait(settle):
                return
            self._pull_wakeup.clear()
            if not self._stop.is_set():
                self._guard(self.pull_once, "anti-entropy")

    # -- callbacks, status ----------------------------------------------------------------------
    def _replicated_to(self, peer: str) -> None:
        self.peers.refresh(peer, self.clock.monotonic())

    def _observe_peer_call(self, path: str, ok: bool) -> None:
        self.metrics.inc("dcounter_peer_requests_total", path=path,
                         outcome="ok" if ok else "failed")

    def _observe_commit(self, seconds: float, group: int) -> None:
        self.metrics.observe("dcounter_commit_seconds", seconds)
        self.metrics.observe("dcounter_commit_group_size", group)

    def _register_gauges(self) -> None:
        m = self.metrics
        m.gauge("dcounter_peers_alive", "Peers this node considers alive.",
                lambda: len(self.peers.alive()))
        m.gauge("dcounter_replication_backlog_events", "Events waiting to be sent, per peer.",
                lambda: [({"peer": p}, v["backlog"])
                         for p, v in self.replicator.backlogs().items()])
        m.gauge("dcounter_replication_retry_attempt", "Current retry attempt, per peer "
                "(0 when the last send succeeded).",
                lambda: [({"peer": p}, v["attempts"])
                         for p, v in self.replicator.backlogs().items()])
        m.gauge("dcounter_counters", "Distinct counters.", lambda: self.counter.counter_names())
        m.gauge("dcounter_origins", "Origins known.", lambda: self.counter.origin_count())
        m.gauge("dcounter_held_events", "Out-of-order events held above watermarks.",
                lambda: self.counter.held_total())
        m.gauge("dcounter_idempotency_keys", "Unexpired idempotency keys remembered.",
                lambda: self.counter.key_count())

    def readiness(self) -> tuple[bool, str]:
        """Ready: storage is open, and this node compared digests with a peer at least once (and
        pulled what it lacked), or knows no peer at all (neither alive nor to be joined)."""
        if self._stop.is_set():
            return False, "shutting down"
        if self.store is None and not self.config.in_memory:
            return False, "store not open"
        if self.store is not None and not self.store.is_open:
            return False, "store closed"
        if self.anti_entropy_rounds > 0:
            return True, "caught up with a peer at least once"
        now = self.clock.monotonic()
        if not self.peers.alive() and not self.peers.candidates(now):
            return True, "no peers known"
        return False, "no anti-entropy round with a peer yet"

    def status(self) -> dict:
        now = self.clock.monotonic()
        ready, reason = self.readiness()
        return {
            "node_id": self.node_id,
            "cluster": self.config.cluster,
            "origin": self.counter.local_origin,
            "durable": self.store is not None,
            "ready": {"ready": ready, "reason": reason},
            "counters": self.counter.counters(),
            "peers": {p: {"last_seen_seconds": round(age, 3)}
                      for p, age in self.peers.last_seen_ages(now).items()},
            "replication": self.replicator.backlogs(),
            "candidates": self.peers.candidates(now),
            "recent_contacts": [
                {"age_seconds": round(now - t, 3), "peer": p, "ok": ok, "detail": d}
                for t, p, ok, d in self.peers.recent_attempts()],
            "digest": self.counter.digest(),
        }
