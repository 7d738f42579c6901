"""The node: wires the pure parts (Counter, PeerStore, RetrySchedule, the decisions of
membership.py and antientropy.py) to threads, sockets and the disk.

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
commit). The replication links always match the listing of peers (`_sync_links`).
"""

from __future__ import annotations

import logging
import threading

from dcounter import keyhome, tls, validation
from dcounter.antientropy import AntiEntropy
from dcounter.api import App
from dcounter.auth import Auth, exposure_warning
from dcounter.clock import SystemClock
from dcounter.clusterread import ClusterCount, ClusterReader
from dcounter.config import Config
from dcounter.contacts import Contacts, Kind, run_within
from dcounter.counter import (BulkResult, Counter, Event, Items, LocalResult, RemoteResult,
                              new_origin_id)
from dcounter.errors import (BadRequest, Conflict, NotFound, PeerRefused, PeerUnreachable,
                             Relayed, StartupError, StorageFailure, Unavailable)
from dcounter.history import History
from dcounter.membership import (Contact, backoff_warnings, contact_from, contact_to,
                                 in_words, join_reply_peers, link_changes, members_view,
                                 summary)
from dcounter.metrics import Metrics
from dcounter.peers import PeerStore
from dcounter.protocol import PeerProtocols
from dcounter.replication import Replicator
from dcounter.retry import RetryPolicy, RetrySchedule
from dcounter.server import Server
from dcounter.store import Store
from dcounter.transport import Transport, describe_failure, failure_kind
from dcounter.wire import (decode_covers, decode_deleted, decode_digest, decode_forward_reply,
                           decode_held_summaries, decode_peer_list, decode_snapshot)
from dcounter.writer import Writer

log = logging.getLogger("dcounter.node")

DELAY = "dcounter_replication_delay_seconds"
WRITER_GRACE = 1.0  # seconds the last commit may take at shutdown beyond --drain-timeout


class _StoreGate:
    """The store as the writer sees it. A write and the close at shutdown exclude each other,
    so the store is never closed under a running commit; a write after the close fails like a
    storage failure (nothing is acknowledged)."""

    def __init__(self, store: Store):
        self.store = store
        self._lock = threading.Lock()
        self._closed = False

    def write(self, txn) -> None:
        with self._lock:
            if self._closed:
                raise StorageFailure("storage closed: the node is shutting down")
            self.store.write(txn)

    def close(self) -> bool:
        """Checkpoint and close, unless a commit is running; returns whether it closed."""
        if not self._lock.acquire(blocking=False):
            return False
        try:
            if not self._closed:
                self._closed = True
                self.store.checkpoint()
                self.store.close()
            return True
        finally:
            self._lock.release()


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
        self._store_gate: _StoreGate | None = None
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
        self.anti_entropy = AntiEntropy(settle=config.heartbeat_interval)
        self._pull_wakeup = threading.Event()  # a new lead: the sync loop looks again
        self._links_lock = threading.Lock()  # serialises _sync_links
        self.contacts = Contacts(self._stop, config.request_timeout)
        # A failed contact is a WARNING per (peer, cause): at once, then 1, 2, 4 ... minutes
        # apart, at most 10; a success with the peer starts it afresh.
        self._warnings = backoff_warnings()
        self.history = History(self.metrics.histogram(DELAY)[0])  # for the status page
        self.protocols = PeerProtocols(config.protocol)  # what each peer speaks (protocol.py)
        self.started = False

    # -- start and stop ---------------------------------------------------------------------------
    def open(self) -> None:
        """Bind the port, then open storage; nothing runs yet. Raises StartupError."""
        cfg = self.config
        if self.ssl_context is None and cfg.tls_cert:
            self.ssl_context = tls.server_context(cfg.tls_cert, cfg.tls_key)
        app = App(self, auth=self.auth, metrics=self.metrics)
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
        self._store_gate = _StoreGate(self.store) if self.store is not None else None
        self.writer = Writer(self.counter, self._store_gate, on_commit=self.replicator.enqueue,
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
        if leave and self.peers is not None:
            self._say_goodbye(deadline)
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

    def _say_goodbye(self, deadline: float) -> None:
        peers = self.peers.alive()
        if not peers:
            return
        timeout = min(self.config.request_timeout, self._left(deadline))
        if timeout <= 0:
            log.info("no time left to tell %d peer(s) that this node leaves", len(peers))
            return
        self.contacts.wait_for([self.contacts.submit(
            Kind.GOODBYE, self._post_quiet, peer, "/nodes/leave",
            self._membership_payload(include_digest=False, peer=peer), timeout)
            for peer in peers], timeout)
        log.info("left the cluster (told %d peer(s))", len(peers))

    def _post_quiet(self, peer, path, payload, timeout):
        try:
            self.transport.post(peer, path, payload, timeout=timeout)
        except (PeerUnreachable, PeerRefused):
            pass

    # -- operations used by the API -------------------------------------------------------------
    def increment(self, counter: str, delta: int, key: str | None,
                  forwarded: bool = False) -> LocalResult:
        """A keyed increment whose key's home is another member is decided there and its answer
        relayed (`forward`); a forwarded one, and one without a key, is applied here."""
        refused_home = None
        if key is not None and not forwarded:
            relayed, refused_home = self.forward(counter, delta, key)
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
        if self.protocol < 2:
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

    @property
    def protocol(self) -> int:
        """The protocol this node speaks (`--protocol`)."""
        return self.config.protocol

    def forward(self, counter: str, delta: int, key: str) -> tuple[LocalResult | None,
                                                                   str | None]:
        """Send a keyed increment to its key's home and relay the answer (keyhome.py). Returns
        (the home's answer, None), or (None, the home that refused the connection, if one did)
        when it is to be applied here. Raises `Relayed` for the home's error answer and
        `Unavailable` when the outcome at the home is unknown: nothing is applied here then."""
        excluded: set[str] = set()
        while True:
            # A peer of the previous protocol has no forward route: never a home.
            members = [peer for peer in self.peers.alive() if self.protocols.for_events(peer) >= 2]
            target = keyhome.forward_to(key, self.node_id, members, excluded=excluded)
            if target is None:
                return None, None
            payload = {"node_id": self.node_id, "counter": counter, "delta": delta, "key": key}
            try:
                reply = self.transport.post(target, keyhome.FORWARD_PATH, payload)
                answer = decode_forward_reply(reply)
            except PeerUnreachable as exc:
                if not exc.sent:  # nothing left: the home cannot have counted it
                    log.debug("the home of a key, %s, refused the connection (%s); applying "
                              "the increment here", target, exc)
                    return None, target
                raise Unavailable(f"the home of this idempotency key, {target}, did not answer "
                                  f"({exc}): the increment may have been counted there; retry "
                                  f"with the same key") from None
            except BadRequest as exc:
                log.warning("ignoring malformed forward reply from %s: %s", target, exc.message)
                raise Unavailable(f"the home of this idempotency key, {target}, gave an answer "
                                  f"this node cannot read: the increment may have been counted "
                                  f"there; retry with the same key") from None
            except PeerRefused as exc:
                action = keyhome.after_refusal(exc.status)
                if action is keyhome.AfterRefusal.NOT_A_HOME:
                    excluded.add(target)  # it does not forward: choose among the others
                    continue
                self.metrics.inc("dcounter_increments_forwarded_total")
                if exc.status == 401:
                    self._warn_failure(target, exc)
                if action is keyhome.AfterRefusal.RELAY:
                    raise Relayed(exc.status, exc.message) from None
                raise Unavailable(f"the home of this idempotency key, {target}, answered "
                                  f"{exc.status} ({exc.message}); retry with the same "
                                  f"key") from None
            self.metrics.inc("dcounter_increments_forwarded_total")
            name, count, event_id, replayed = answer
            return LocalResult(name, count, event_id, replayed, None), None

    def replicate(self, sender: str, events: list[Event]) -> RemoteResult:
        now = self.clock.time()
        result = self.writer.submit(lambda txn: txn.remote(events, now))
        if result.applied:
            self.metrics.inc("dcounter_increments_replicated_total", len(result.applied))
        self.peers.refresh(sender, self.clock.monotonic())
        return result

    def state(self, origins: list[str], held: int = 0) -> dict:
        return self.counter.snapshot(origins, held)

    def state_reply(self, origins: list[str], held: int = 0) -> dict:
        """The reply to a pull: the prefixes asked for (with up to `held` held events per
        origin), the digest, and every cover and tombstone of a reset (reset.py: a prefix may
        contain resets the puller never got)."""
        covers, deleted = self.counter.covers_wire()
        reply = {"node_id": self.node_id, "origins": self.state(origins, held),
                 "digest": self.counter.digest()}
        if covers or deleted:
            reply["covers"] = covers
            reply["deleted"] = deleted
        return reply

    def count(self, name: str) -> int:
        return self.counter.count(name)

    def counters(self) -> dict[str, int]:
        return self.counter.counters()

    def count_all(self, name: str, timeout: float) -> ClusterCount:
        """A read of the whole cluster (clusterread.py); changes nothing here."""
        return self.reader.read(self.counter, name, self.peers.alive(), timeout)

    # -- membership, server side -------------------------------------------------------------------
    def _membership_payload(self, include_digest: bool = True, peer: str | None = None,
                            held: bool = False) -> dict:
        """A join, heartbeat or leave to `peer` (its protocol), or a reply (ours). The summaries
        of held events (`held`, protocol 2) go to a peer known to speak protocol 2 (a node of
        the previous release refuses a field it does not know), and in a reply when `held`:
        the request was of protocol 2."""
        payload = {"node_id": self.node_id, "cluster": self.config.cluster,
                   "protocol": self.protocols.for_requests(peer) if peer else self.protocol,
                   "origin": self.counter.local_origin}
        if include_digest:
            payload["digest"] = self.counter.digest()
            payload["peers"] = self.peers.alive()
            send_held = held if peer is None else self.protocols.for_events(peer) >= 2
            if send_held:
                summaries = self.counter.held_summaries()
                if summaries:
                    payload["held"] = {origin: list(summary)
                                       for origin, summary in summaries.items()}
        return payload

    def _contacted(self, peer: str, contact: Contact, reached_us: bool) -> Contact:
        """After a direct contact: a peer listed for the first time (or again) gets a link, an
        alias of this node loses any it had. A join is one line on each side: "peer X joined"
        where X reached us, "joined X" where we reached X."""
        if contact is Contact.NEW:
            log.info("peer %s joined" if reached_us else "joined %s", peer)
        if contact in (Contact.NEW, Contact.SELF):
            self._sync_links()
        return contact

    def _sync_links(self) -> None:
        """Make the replication links match the listing: a link for every listed peer, none for
        another. Every change to the listing is followed by a call; calls are serialised and
        each reads the listing afresh, so whatever order changes and calls interleave in, the
        last call sees the last change and no peer stays listed without a link (or linked
        without being listed)."""
        with self._links_lock:
            add, remove = link_changes(self.peers.alive(), self.replicator.peers())
            for peer in add:
                self.replicator.add_peer(peer)
            for peer in remove:
                self.replicator.remove_peer(peer)
                self.anti_entropy.forget(peer)

    def _accept_contact(self, sender: str, origin: str | None) -> Contact:
        """A peer reached us directly."""
        return self._contacted(sender, contact_from(self.peers, self.node_id,
                                                    self.counter.local_origin, sender, origin,
                                                    self.clock.monotonic()),
                              reached_us=True)

    def on_join(self, sender, origin, digest, peers, protocol=None, held=None) -> dict:
        self.protocols.note_request(sender, protocol)
        self._accept_contact(sender, origin)
        self._learn(sender, digest, peers, held)
        reply = self._membership_payload(held=self._speaks_held(protocol))
        reply["peers"] = join_reply_peers(self.node_id, self.peers.alive(), sender)
        return reply

    def on_heartbeat(self, sender, origin, digest, peers, protocol=None, held=None) -> dict:
        self.protocols.note_request(sender, protocol)
        self._accept_contact(sender, origin)
        self._learn(sender, digest, peers, held)
        return self._membership_payload(held=self._speaks_held(protocol))

    def _speaks_held(self, protocol) -> bool:
        """Whether a request of `protocol` gets the held summaries in its reply."""
        return self.protocol >= 2 and isinstance(protocol, int) and protocol >= 2

    def on_leave(self, sender, origin) -> bool:
        if self.peers.left(sender, self.clock.monotonic()):
            log.info("peer %s left", sender)
        self._sync_links()
        return True

    def forget(self, member: str, forwarded: bool) -> dict:
        """An operator removes `member` for good (`POST /nodes/forget`). The node refuses a
        member it lists (a running node would only join again) and, asked directly, one it does
        not know; it applies the rest, and when asked directly tells each peer it lists once
        (`forwarded`: not passed on again)."""
        if member == self.node_id or self.peers.is_self(member):
            raise BadRequest(f"{member} is the node asked; stop it, or ask another node to "
                             "forget it once it is down")
        if self.peers.is_alive(member):  # passed on too: a partition may hide it elsewhere
            raise Conflict(f"{member} is a live member of {self.node_id} (heard from within "
                           "--peer-timeout); stop it first, or let it leave")
        if not forwarded and not self.peers.knows(member) \
                and not self.peers.is_forgotten(member):
            raise NotFound(f"{member} is not a member this node knows")
        known = self.peers.forget(member, self.clock.monotonic())
        self._sync_links()
        self._retain_digests()
        if known:
            log.info("forgot member %s (%s)", member,
                     "told by a peer" if forwarded else "asked by an operator")
        told, not_told = [], {}
        if not forwarded:
            told, not_told = self._forward_forget(member)
        return {"forgotten": member, "known": known, "told": told, "not_told": not_told}

    def _forward_forget(self, member: str) -> tuple[list[str], dict[str, str]]:
        peers = [p for p in self.peers.alive() if p != member]
        if not peers:
            return [], {}
        payload = {"node_id": member, "forwarded": True}
        # Without a cluster secret the request is not signed; the client token, when there is
        # one, lets the peer accept it like an operator's request.
        headers = ({"Authorization": f"Bearer {self.config.client_token}"}
                   if self.config.client_token and not self.config.cluster_secret else None)
        results: dict[str, str | None] = {}

        def tell(peer):
            try:
                self.transport.post(peer, "/nodes/forget", payload,
                                    **({"headers": headers} if headers else {}))
                results[peer] = None
            except PeerUnreachable as exc:
                results[peer] = in_words(str(exc))
            except PeerRefused as exc:
                results[peer] = f"refused ({exc.status}): {exc.message}"

        threads = [threading.Thread(target=tell, args=(peer,), name="forget", daemon=True)
                   for peer in peers]
        for thread in threads:
            thread.start()
        for thread in threads:
            thread.join(self.config.request_timeout + 1)
        told = sorted(p for p in peers if p in results and results[p] is None)
        not_told = {p: results.get(p) or "no answer in time" for p in peers if p not in told}
        return told, not_told

    def _learn(self, source: str, digest: dict[str, int], peers: list[str],
               held: dict | None = None) -> list[str]:
        """Peers, digest and held summaries heard from `source`: second-hand ids become
        candidates; origins where `source` is ahead, or shows other held events at our
        watermark, are leads, pulled once they last (antientropy.py)."""
        new = self.peers.add_candidates([p for p in peers if p != self.node_id],
                                        self.clock.monotonic())
        if new:
            self._kick.set()
        self.counter.note_digest(source, digest)
        if self.peers.is_self(source):
            return []
        ahead = self.anti_entropy.observe(source, digest, self.counter.digest(),
                                          self.clock.monotonic(), held,
                                          self.counter.held_summaries())
        if ahead:
            self._pull_wakeup.set()
        return ahead

    # -- membership, client side (loop steps) -----------------------------------------------------
    def heartbeat_once(self) -> None:
        # A peer whose last heartbeat is still in flight is skipped: it is slow, and another
        # heartbeat would only queue behind the first one.
        peers = self.peers.begin_contacts(self.peers.alive())
        self.contacts.wait([self.contacts.submit(Kind.HEARTBEAT, self._heartbeat_peer, peer)
                            for peer in peers])

    def _heartbeat_peer(self, peer: str) -> None:
        try:
            self._heartbeat(peer)
        finally:
            self.peers.contact_finished(peer)

    def _heartbeat(self, peer: str) -> None:
        try:
            reply = self._post_membership(peer, "/nodes/heartbeat")
        except PeerUnreachable as exc:
            # One missed heartbeat is no news: a peer that stays silent is removed, and the
            # attempts to rejoin it say why it cannot be reached.
            log.debug("heartbeat to %s failed: %s", peer, describe_failure(exc))
            return
        except PeerRefused as exc:
            if exc.status == 409:
                self._warn_failure(peer, exc)  # and it is listed no more
                self.peers.leave(peer)
                self._sync_links()
            elif exc.status == 401:
                # Secrets that differ (a rotation half done) or clocks further apart than
                # --max-clock-skew.
                self._warn_failure(peer, exc)
            else:
                log.debug("heartbeat to %s refused: %s", peer, describe_failure(exc))
            return
        self._handle_reply(peer, reply)

    def _warn_failure(self, peer: str, exc: Exception) -> None:
        """A WARNING naming `peer` and the cause of `exc` in words, at once and then with
        backoff per (peer, cause)."""
        skipped = self._warnings.check((peer, failure_kind(exc)), self.clock.monotonic())
        if skipped is None:
            return
        since = f" ({skipped} more failure(s) like it since the last warning)" if skipped else ""
        if isinstance(exc, PeerRefused):
            log.warning("peer %s %s%s", peer, describe_failure(exc), since)
        else:
            role = "seed" if peer in self.peers.seeds else "peer"
            log.warning("%s %s unreachable: %s%s", role, peer, describe_failure(exc), since)

    def _post_membership(self, peer: str, path: str) -> dict:
        """A join or heartbeat in the protocol `peer` speaks. Refused with 409 in a newer one,
        it is sent again at once in the oldest: a node of the previous release refuses any
        protocol but its own (protocol.py)."""
        payload = self._membership_payload(peer=peer)
        try:
            return self.transport.post(peer, path, payload)
        except PeerRefused as exc:
            if exc.status != 409 or payload["protocol"] == 1:
                raise
        self.protocols.refused(peer)
        return self.transport.post(peer, path, self._membership_payload(peer=peer))

    def _handle_reply(self, peer: str, reply: dict) -> bool:
        """A successful direct contact with `peer`; `reply` is its membership payload."""
        origin = reply.get("origin")
        try:
            if origin is not None:
                validation.origin(origin)
            digest = decode_digest(reply.get("digest", {}))
            peers = decode_peer_list(reply.get("peers", []))
            held = decode_held_summaries(reply["held"]) if "held" in reply else {}
        except BadRequest as exc:
            log.warning("ignoring malformed reply from %s: %s", peer, exc.message)
            return False
        self.protocols.note_reply(peer, reply.get("protocol"))
        contact = self._contacted(peer, contact_to(self.peers, self.counter.local_origin, peer,
                                                   origin, self.clock.monotonic()),
                                  reached_us=False)
        if contact is Contact.SELF:
            log.info("%s is this node itself; not listing it as a peer", peer)
            return False
        if contact is Contact.FULL:
            if self._warnings.due((peer, "max-peers"), self.clock.monotonic()):
                log.warning("not listing %s: this node lists %d peers, the most --max-peers "
                            "allows (raise --max-peers on every node for a larger cluster)",
                            peer, len(self.peers.alive()))
        else:
            self._warnings.clear(lambda key: key[0] == peer)  # whatever was wrong, is not now
        self._learn(peer, digest, peers, held)
        return contact is not Contact.FULL

    def rejoin_once(self) -> list[str]:
        """Contact the due candidates; one whose contact is still in flight is not due."""
        due = self.peers.claim_due_candidates(self.clock.monotonic())
        if not due:
            return due
        self.contacts.wait([self.contacts.submit(Kind.JOIN, self._join_candidate, peer)
                            for peer in due])
        return due

    def _join_candidate(self, peer: str) -> None:
        try:
            self._join(peer)
        except Exception:
            self.peers.contact_failed(peer, self.clock.monotonic(), "unexpected error")
            raise
        finally:
            self.peers.contact_finished(peer)

    def _join(self, peer: str) -> None:
        try:
            reply = self._post_membership(peer, "/nodes/join")
        except (PeerUnreachable, PeerRefused) as exc:
            delay = self.peers.contact_failed(peer, self.clock.monotonic(),
                                              describe_failure(exc))
            log.debug("join %s failed (%s); next attempt in %.1fs", peer,
                      describe_failure(exc), delay or 0)
            self._warn_failure(peer, exc)
            return
        self._handle_reply(peer, reply)  # logs "joined" when it lists the peer

    def cleanup_once(self) -> list[str]:
        gone = self.peers.expire(self.clock.monotonic())
        for peer in gone:
            log.info("removed peer %s (silent for more than %.1fs); it counts as failed until "
                     "it answers again, leaves, is forgotten or --reap-after passes", peer,
                     self.config.peer_timeout)
        for peer in self.peers.reap(self.clock.monotonic()):
            log.info("forgot member %s (failed or left more than --reap-after ago)", peer)
        self._retain_digests()
        self._sync_links()  # also after no change: the listing rules, whatever happened
        if gone:
            self._kick.set()
        now = self.clock.time()
        self.writer.submit(lambda txn: txn.expire_keys(now))
        listed = self.peers.alive()
        live = {self.peers.origin_of(peer) for peer in listed}
        self.writer.submit(lambda txn: txn.retire_origins(now, listed, live))
        return gone

    def sample_history(self) -> int:
        """The status page's recent past (history.py): a sample per interval that passed."""
        m = self.metrics
        return self.history.observe(self.clock.monotonic(),
                                    m.value("dcounter_increments_local_total"),
                                    m.value("dcounter_increments_replicated_total"),
                                    m.histogram(DELAY)[1])

    def _retain_digests(self) -> None:
        """The last digest of a member is kept while the member is known, no longer."""
        now = self.clock.monotonic()
        self.anti_entropy.retain_digests(self.peers.members(now, 0.0))

    def retry_once(self) -> list[str]:
        return self.replicator.retry_once(self.clock.monotonic())

    def pull_once(self) -> int:
        """Make the pulls that are due (a peer's lead lasted a heartbeat interval with our
        watermark unchanged); returns origins adopted."""
        if not self.anti_entropy.waiting():
            return 0
        due = self.anti_entropy.due_pulls(self.counter.digest(), self.clock.monotonic(),
                                          local_origin=self.counter.local_origin,
                                          own_held=self.counter.held_summaries())
        adopted = 0
        for peer, origins in due.items():
            count = None
            try:
                count = self._pull(peer, origins)
            finally:
                self.anti_entropy.pulled(peer, origins, self.counter.digest(),
                                         self.clock.monotonic(), ok=count is not None,
                                         own_held=self.counter.held_summaries())
            adopted += count or 0
        return adopted

    def _pull(self, peer: str, origins: list[str]) -> int | None:
        """Pull `origins`' prefixes from `peer`, with their held events (up to --gap-cap per
        origin) when it speaks protocol 2; returns how many origins changed, None when the
        peer did not answer usefully."""
        request = {"node_id": self.node_id, "origins": origins}
        held = self.config.gap_cap if self.protocols.for_events(peer) >= 2 else 0
        if held:
            request["held"] = held
        try:
            reply = self.transport.post(peer, "/counter/state", request)
            snapshot = decode_snapshot(reply.get("origins"), max_held=held)
            covers = decode_covers(reply.get("covers", {}))
            deleted = decode_deleted(reply.get("deleted", []))
        except (PeerUnreachable, PeerRefused) as exc:
            log.debug("anti-entropy pull from %s failed: %s", peer, exc)
            return None
        except BadRequest as exc:
            log.warning("ignoring malformed state from %s: %s", peer, exc.message)
            return None
        self.metrics.inc("dcounter_anti_entropy_pulls_total")

        now = self.clock.time()

        def job(txn):
            changed = 0
            for o, s in snapshot.items():
                adopted = txn.adopt(o, s["watermark"], s["counters"], s.get("retired"))
                merged = txn.adopt_held(o, s["held"], now) if s.get("held") else 0
                changed += bool(adopted or merged)
            txn.adopt_covers(covers, deleted)  # after the base: covers of retired are skipped
            return changed

        before = self.counter.local_origin
        count = self.writer.submit(job)
        if self.counter.local_origin != before:
            log.warning("peer %s holds events of our origin %s above our watermark (a "
                        "restored backup or cloned disk?); new events use origin %s",
                        peer, before, self.counter.local_origin)
        if count:
            log.info("caught up %d origin(s) from %s", count, peer)
            self.metrics.inc("dcounter_anti_entropy_adopted_total", count)
        return count

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
        m.gauge("dcounter_idempotency_key_retention_seconds", "Age of the oldest idempotency "
                "key remembered: about --idempotency-ttl, less when --max-keys forgets keys early.",
                lambda: self.counter.key_retention(self.clock.time()))
        m.gauge("dcounter_origins_retired", "Origins retired (folded into the base).",
                lambda: self.counter.retired_count())
        m.gauge("dcounter_retired_origin_events_refused", "Replicated events of retired "
                "origins refused since start.", lambda: self.counter.retired_refused)
        m.gauge("dcounter_deleted_counters", "Tombstones of deleted counters counting toward "
                "--max-deleted.", lambda: self.counter.deleted_count())
        m.gauge("dcounter_resets_applied", "Resets and deletes applied here since start, local "
                "and replicated.", lambda: self.counter.resets_applied)
        m.gauge("dcounter_idempotency_keys_evicted", "Idempotency keys forgotten before their "
                "ttl since start, to stay within --max-keys.",
                lambda: self.counter.keys_evicted)

    def readiness(self) -> tuple[bool, str]:
        """Ready: storage is open, and this node compared digests with a peer at least once (and
        pulled what it lacked), or knows no peer at all (neither alive nor to be joined)."""
        if self._stop.is_set():
            return False, "shutting down"
        if self.store is None and not self.config.in_memory:
            return False, "store not open"
        if self.store is not None and not self.store.is_open:
            return False, "store closed"
        if self.anti_entropy.caught_up():
            return True, "caught up with a peer at least once"
        now = self.clock.monotonic()
        if not self.peers.alive() and not self.peers.candidates(now):
            return True, "no peers known"
        return False, "no anti-entropy round with a peer yet"

    def suspect_after(self) -> float:
        """Seconds of silence after which a listed member shows as suspect."""
        return 1.5 * self.config.heartbeat_interval

    def status(self) -> dict:
        now = self.clock.monotonic()
        ready, reason = self.readiness()
        own = self.counter.digest()
        members = members_view(self.peers.members(now, self.suspect_after()),
                               lambda peer: self.anti_entropy.covers(peer, own),
                               self.replicator.backlogs())
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
            "history": self.history.to_dict(),
            "members": members,
            "summary": summary(members),
        }
