"""The simulator's node: the protocol a real node runs, as short steps over the real pure objects
(`Counter`/`Txn`, `PeerStore`, `RetrySchedule`), driven by the simulated world.

Theory of operation
-------------------
A `SimNode` is one incarnation after another of a node at a fixed address. `start(disk)` loads
the committed state (a `MemoryStore`, written from each `Txn` the way `store.py` writes SQLite)
and arms three periodic timers: heartbeat, rejoin, cleanup. Everything else is a reaction to a
message or a timer, each a short method that mirrors one decision of `node.py` /
`replication.py`:

    heartbeat_tick   digest and peer list to every listed peer; the reply is a direct contact
    rejoin_tick      join every due candidate (seeds, removed peers, second-hand ids)
    cleanup_tick     expire silent peers (their links go), expire idempotency keys
    enqueue/push     per-peer backlog, batches of `batch_max`, linger, backoff (RetrySchedule)
    learn/pull_once  a peer ahead on an origin, or holding other events above the same
                     watermark (`antientropy.held_leads`): pull its prefix and held events after
                     a short settle, adopt and merge them
    on_join/on_heartbeat/on_leave/on_replicate/on_state   the server side
    reset, client_increment/on_forward   resets; keyed increments decided at the key's home

Commits are synchronous (`commit(job)`): a job stages into a `Txn`, the store writes it (or
raises `StorageFailure` while a failing-commit fault is on), then the counter installs it and
new local events go to the outbox. A stale timer or answer of an earlier incarnation is
ignored; while paused, timers and messages queue up in the inbox and run on resume.

These methods are where the pure `membership`, `antientropy` and `outbox` objects will be
called once they exist; the world, network, faults and checks do not depend on how the node
decides.
"""

from __future__ import annotations

import copy
import enum

from dcounter import keyhome
from dcounter.antientropy import held_leads
from dcounter.config import Config
from dcounter.counter import Counter, Event, KeyRecord, OriginState
from dcounter.errors import DcounterError, StorageFailure
from dcounter.peers import PeerStore
from dcounter.retry import RetryPolicy, RetrySchedule
from dcounter.simnet import NodeClock
from dcounter.wire import decode_covers, decode_deleted, decode_snapshot


class MemoryStore:
    """A durable node's disk: what `store.py` keeps in SQLite, kept in dicts, written from a
    `Txn` by the same rules (`Store._write_locked`) and loaded the same way."""

    def __init__(self, origin: str):
        self.origin = origin
        self.watermarks: dict[str, int] = {}
        self.prefixes: dict[str, dict[str, int]] = {}
        self.held: dict[str, dict[int, tuple]] = {}
        self.keys: dict[str, KeyRecord] = {}
        self.covers: dict[str, dict[str, tuple[int, int]]] = {}  # counter -> origin -> cover
        self.deleted: set[str] = set()

    def write(self, txn) -> None:
        for origin, staged in txn.origins.items():
            self.watermarks[origin] = staged.watermark
            prefix = self.prefixes.setdefault(origin, {})
            if staged.replace_prefix:
                prefix.clear()
            prefix.update(staged.prefix)
            held = self.held.setdefault(origin, {})
            for seq in staged.held_del:
                held.pop(seq, None)
            held.update(staged.held_add)
        for key in txn.keys_del:
            self.keys.pop(key, None)
        self.keys.update(txn.keys_add)
        if txn.reorigined_from is not None:
            self.origin = txn.local_origin
        self.write_resets(txn)

    def write_resets(self, txn) -> None:
        """The covers and tombstones of resets, as `Store._write_resets_locked` writes them."""
        for (name, origin), cover in txn.cover_add.items():
            if cover is None:
                self.covers.get(name, {}).pop(origin, None)
            else:
                self.covers.setdefault(name, {})[origin] = cover
        self.deleted |= txn.deleted_add

    def resets(self) -> dict:
        """`Counter.load`'s covers and deleted, as `Store.load_resets` reads them."""
        return {"covers": {name: dict(per_origin) for name, per_origin in self.covers.items()
                           if per_origin},
                "deleted": set(self.deleted)}

    def load(self) -> tuple[str, dict[str, OriginState], dict[str, KeyRecord]]:
        origins = {o: OriginState(w, dict(self.prefixes.get(o, {})), dict(self.held.get(o, {})))
                   for o, w in self.watermarks.items()}
        return self.origin, origins, dict(self.keys)

    def holds(self, origin: str, seq: int) -> bool:
        return self.watermarks.get(origin, 0) >= seq or seq in self.held.get(origin, {})

    def copy(self) -> "MemoryStore":
        return copy.deepcopy(self)


class LinkState(enum.Enum):
    IDLE = "idle"
    READY = "ready"        # a send is armed (linger)
    SENDING = "sending"
    BACKOFF = "backoff"


class Link:
    """What waits for one peer. A new object each time the peer is listed, so an answer to an
    earlier link's send is recognised as stale."""
    __slots__ = ("peer", "backlog", "state", "dropped")

    def __init__(self, peer: str):
        self.peer = peer
        self.backlog: list[Event] = []
        self.state = LinkState.IDLE
        self.dropped = 0


class SimNode:
    def __init__(self, sim, node_id: str, seeds: tuple[str, ...], config: Config):
        self.sim = sim                  # the Simulation: world, net, oracle, injects
        self.node_id = node_id
        self.seeds = seeds
        self.cfg = config
        self.clock = NodeClock(sim.world)
        self.policy = RetryPolicy(config.retry_base, config.retry_max)
        self.disk: MemoryStore | None = None
        self.up = False
        self.paused = False
        self.failing = False            # failing-commit fault
        self.incarnation = 0
        self.inbox: list = []
        self.counter: Counter | None = None
        self.max_backlog_seen = 0

    # -- lifecycle ------------------------------------------------------------------------------
    def start(self, disk: MemoryStore | None) -> None:
        self.incarnation += 1
        self.disk = disk if disk is not None else MemoryStore(self.sim.new_origin())
        origin, origins, keys = self.disk.load()
        self.counter = Counter(origin, max_counters=self.cfg.max_counters,
                               gap_cap=self.cfg.gap_cap, key_ttl=self.cfg.idempotency_ttl,
                               new_origin=self.sim.new_origin)
        self.counter.load(origins, keys, **self.disk.resets())
        self.peers = PeerStore(self.node_id, peer_timeout=self.cfg.peer_timeout,
                               policy=self.policy, seeds=self.seeds)
        self.schedule = RetrySchedule(self.policy)
        self.links: dict[str, Link] = {}
        self.pending: dict[int, tuple] = {}
        self.pulls: dict[str, dict[str, int]] = {}
        self.held_pulls: dict[str, dict[str, tuple]] = {}  # peer -> held leads: its summaries
        self.pull_armed = False
        self.contacting: set[str] = set()
        # Peers whose digest this node compared with its own and pulled what it lacked from
        # (the node's readiness: ready once it is not empty).
        self.compared: set[str] = set()
        self.up, self.paused, self.inbox = True, False, []
        self.sim.world.record(f"{self.node_id} start origin={origin}")
        self.timer(0.0, self.heartbeat_tick)
        self.timer(0.0, self.rejoin_tick)
        self.timer(self.cfg.cleanup_interval, self.cleanup_tick)

    def stop(self) -> None:
        """The process is gone: timers, inbox and calls in flight die with it."""
        self.up = False
        self.paused = False
        self.inbox = []
        self.incarnation += 1

    def pause(self) -> None:
        self.paused = True

    def resume(self) -> None:
        self.paused = False
        inbox, self.inbox = self.inbox, []
        for fn, args in inbox:
            if not self.up or self.paused:
                break
            fn(*args)

    # -- the event plumbing ---------------------------------------------------------------------
    def timer(self, delay: float, fn, *args) -> None:
        self.sim.world.after(delay, self._fire, self.incarnation, fn, args)

    def _fire(self, incarnation: int, fn, args) -> None:
        if incarnation != self.incarnation or not self.up:
            return
        if self.paused:
            self.inbox.append((fn, args))
            return
        fn(*args)

    def receive(self, src: str, message) -> None:
        """The network's delivery: a request from a peer, or the answer to our call."""
        if not self.up:
            return
        if self.paused:
            self.inbox.append((self._handle, (src, message)))
            return
        self._handle(src, message)

    def _handle(self, src: str, message) -> None:
        kind, call_id, body = message
        if kind == "reply":
            entry = self.pending.pop(call_id, None)
            if entry is not None:
                on_reply, on_fail = entry
                if body is None:
                    on_fail()
                else:
                    on_reply(body)
            return
        reply = getattr(self, "on_" + kind)(src, body)
        if call_id is not None:
            self.sim.net.send(self.node_id, src, ("reply", call_id, reply))

    def call(self, peer: str, kind: str, body, on_reply, on_fail=lambda: None) -> None:
        """A request to a peer; exactly one of on_reply(body) and on_fail() runs, unless this
        incarnation ends first. No answer within request_timeout is a failure."""
        call_id = next(self.sim.call_ids)
        self.pending[call_id] = (on_reply, on_fail)
        self.sim.net.send(self.node_id, peer, (kind, call_id, body))
        self.timer(self.cfg.request_timeout, self._timeout, call_id)

    def _timeout(self, call_id: int) -> None:
        entry = self.pending.pop(call_id, None)
        if entry is not None:
            entry[1]()

    def now(self) -> float:
        return self.clock.monotonic()

    # -- commits ---------------------------------------------------------------------------------
    def commit(self, job):
        """Run `job(txn)`, write, install, hand new local events to the outbox. Raises what the
        job raises (nothing staged) or StorageFailure (nothing installed)."""
        txn = self.counter.begin()
        try:
            result = job(txn)
        except BaseException:
            self.counter.abort(txn)
            raise
        if not txn.empty():
            if self.failing:
                self.counter.abort(txn)
                if self.sim.inject == "ack-failed-commit":
                    return result  # the defect: a failed group's jobs keep their results
                raise StorageFailure("storage failure: injected by the simulator")
            self.disk.write(txn)
        self.counter.install(txn)
        if txn.outbound:
            self.enqueue(txn.outbound)
        return result

    def increment(self, counter: str, delta: int, key: str | None):
        now = self.clock.time()
        return self.commit(lambda txn: txn.local(counter, delta, key, now))

    # -- membership, server side -----------------------------------------------------------------
    def membership_payload(self) -> dict:
        return {"node_id": self.node_id, "origin": self.counter.local_origin,
                "digest": self.counter.digest(), "peers": self.peers.alive(),
                "held": self.counter.held_summaries()}

    def accept_contact(self, sender: str, origin: str | None) -> None:
        if origin is not None and origin == self.counter.local_origin:
            self.peers.mark_self(sender)
            return
        if self.peers.heard_from(sender, self.now(), origin):
            self.add_link(sender)

    def on_join(self, sender: str, body: dict) -> dict:
        self.accept_contact(sender, body["origin"])
        self.learn(sender, body["digest"], body["peers"], body["held"])
        reply = self.membership_payload()
        reply["peers"] = [self.node_id] + [p for p in reply["peers"] if p != sender]
        return reply

    def on_heartbeat(self, sender: str, body: dict) -> dict:
        self.accept_contact(sender, body["origin"])
        self.learn(sender, body["digest"], body["peers"], body["held"])
        return self.membership_payload()

    def on_leave(self, sender: str, body: dict) -> dict:
        self.peers.leave(sender)
        self.remove_link(sender)
        return {}

    def learn(self, source: str, digest: dict[str, int], peers: list[str],
              held: dict[str, tuple]) -> list[str]:
        """Second-hand ids become candidates; origins where `source` is ahead, or shows other
        held events at our watermark, are pulled."""
        self.peers.add_candidates([p for p in peers if p != self.node_id], self.now())
        held_ahead = held_leads(digest, held, self.counter.digest(),
                                self.counter.held_summaries())
        behind = self.counter.behind(digest) + held_ahead
        if behind and not self.peers.is_self(source):
            wanted = self.pulls.setdefault(source, {})
            for origin in behind:
                wanted[origin] = max(wanted.get(origin, 0), digest.get(origin, 0))
            self.held_pulls.setdefault(source, {}).update({o: held[o] for o in held_ahead})
            if not self.pull_armed:
                self.pull_armed = True
                self.timer(self.sim.pull_settle, self.pull_once)
        return behind

    # -- membership, client side -----------------------------------------------------------------
    def heartbeat_tick(self) -> None:
        payload = self.membership_payload()
        for peer in self.peers.alive():
            self.call(peer, "heartbeat", payload, lambda r, p=peer: self.handle_reply(p, r))
        self.timer(self.cfg.heartbeat_interval, self.heartbeat_tick)

    def handle_reply(self, peer: str, reply: dict) -> None:
        if reply["origin"] == self.counter.local_origin:
            self.peers.mark_self(peer)
            return
        if self.peers.contact_succeeded(peer, self.now(), reply["origin"]):
            self.add_link(peer)
        if not self.learn(peer, reply["digest"], reply["peers"], reply["held"]):
            self.compared.add(peer)

    def rejoin_tick(self) -> None:
        payload = self.membership_payload()
        for peer in self.peers.due_candidates(self.now()):
            if peer in self.contacting:
                continue
            self.contacting.add(peer)
            self.call(peer, "join", payload,
                      lambda r, p=peer: self.joined(p, r), lambda p=peer: self.join_failed(p))
        self.timer(self.sim.rejoin_tick, self.rejoin_tick)

    def joined(self, peer: str, reply: dict) -> None:
        self.contacting.discard(peer)
        self.handle_reply(peer, reply)

    def join_failed(self, peer: str) -> None:
        self.contacting.discard(peer)
        self.peers.contact_failed(peer, self.now(), "unreachable")

    def cleanup_tick(self) -> None:
        for peer in self.peers.expire(self.now()):
            self.remove_link(peer)
        wall = self.clock.time()
        try:
            self.commit(lambda txn: txn.expire_keys(wall))
        except StorageFailure:
            pass
        self.timer(self.cfg.cleanup_interval, self.cleanup_tick)

    def leave(self) -> None:
        """Graceful stop: tell every listed peer, then go."""
        for peer in self.peers.alive():
            self.sim.net.send(self.node_id, peer, ("leave", None, {"node_id": self.node_id}))
        self.stop()

    # -- outbox ------------------------------------------------------------------------------------
    def add_link(self, peer: str) -> None:
        if peer not in self.links:
            self.links[peer] = Link(peer)

    def remove_link(self, peer: str) -> None:
        if self.links.pop(peer, None) is not None:
            self.schedule.forget(peer)

    def enqueue(self, events: list[Event]) -> None:
        for link in self.links.values():
            link.backlog.extend(events)
            if len(link.backlog) > self.cfg.max_backlog:
                link.dropped += len(link.backlog)  # anti-entropy will bring the peer up to date
                link.backlog.clear()
            self.max_backlog_seen = max(self.max_backlog_seen, len(link.backlog))
            if link.state is LinkState.IDLE and link.backlog:
                self.push(link)

    def push(self, link: Link) -> None:
        if self.links.get(link.peer) is not link:
            return
        if not link.backlog:
            link.state = LinkState.IDLE
            return
        batch = link.backlog[:self.cfg.batch_max]
        del link.backlog[:self.cfg.batch_max]
        link.state = LinkState.SENDING
        self.call(link.peer, "replicate", {"node_id": self.node_id, "events": batch},
                  lambda r: self.pushed(link, r), lambda: self.push_failed(link, batch))

    def pushed(self, link: Link, reply) -> None:
        if self.links.get(link.peer) is not link:
            return  # a removed link's late answer changes nothing (the schedule is the new link's)
        self.schedule.succeeded(link.peer)
        self.peers.refresh(link.peer, self.now())
        if link.backlog:
            link.state = LinkState.READY
            self.timer(self.cfg.batch_linger, self.push, link)
        else:
            link.state = LinkState.IDLE

    def push_failed(self, link: Link, batch: list[Event]) -> None:
        if self.links.get(link.peer) is not link:
            return
        link.backlog[:0] = batch
        if len(link.backlog) > self.cfg.max_backlog:
            link.dropped += len(link.backlog)
            link.backlog.clear()
        link.state = LinkState.BACKOFF
        self.timer(self.schedule.failed(link.peer, self.now()), self.retry_tick)

    def retry_tick(self) -> None:
        for peer in self.schedule.pop_due(self.now()):
            link = self.links.get(peer)
            if link is not None and link.state is LinkState.BACKOFF:
                self.push(link)

    def on_replicate(self, sender: str, body: dict):
        events = body["events"]
        now = self.clock.time()
        try:
            result, reached = self.commit(lambda txn: self.sim.remote(txn, events, now))
        except StorageFailure:
            return None  # 503: the sender keeps the batch and retries
        self.sim.oracle.replicated(self.node_id, reached)
        self.peers.refresh(sender, self.now())
        return {"applied": len(result.applied), "duplicates": result.duplicates,
                "deferred": result.deferred}

    # -- anti-entropy ------------------------------------------------------------------------------
    def pull_once(self) -> None:
        self.pull_armed = False
        pulls, self.pulls = self.pulls, {}
        held, self.held_pulls = self.held_pulls, {}
        for peer, wanted in pulls.items():
            origins = self.counter.behind(wanted) + held_leads(
                wanted, held.get(peer, {}), self.counter.digest(), self.counter.held_summaries())
            if not origins:
                self.compared.add(peer)
            else:
                self.call(peer, "state", {"origins": sorted(origins), "held": self.cfg.gap_cap},
                          lambda r, p=peer: self.adopt(p, r))

    def on_state(self, sender: str, body: dict) -> dict:
        return {"origins": self.counter.snapshot(body["origins"], body["held"]),
                **self.covers_reply()}

    def adopt(self, peer: str, reply: dict) -> None:
        now = self.clock.time()

        def job(txn):
            snapshot = decode_snapshot(reply["origins"], max_held=self.cfg.gap_cap)
            adopted = sum(txn.adopt(o, s["watermark"], s["counters"])
                          + txn.adopt_held(o, s.get("held", []), now)
                          for o, s in snapshot.items())
            self.adopt_covers(txn, reply)
            return adopted

        try:
            self.commit(job)
        except (StorageFailure, DcounterError):
            return
        self.compared.add(peer)

    # -- resets and keys' homes (reset.py, keyhome.py) -------------------------------------------
    def reset(self, counter: str, delete: bool, key: str | None):
        """`Node.reset`: a reset (or delete) of `counter` made here."""
        now = self.clock.time()
        return self.commit(lambda txn: txn.local_reset(counter, delete, key, now))

    def covers_reply(self) -> dict:
        """What a state reply adds: every cover and tombstone (a prefix may hold resets the
        puller never received), only when there are some, as `Node.state_reply`."""
        covers, deleted = self.counter.covers_wire()
        return {"covers": covers, "deleted": deleted} if covers or deleted else {}

    @staticmethod
    def adopt_covers(txn, reply: dict) -> None:
        """In the job that adopted a state reply's prefixes, after them (`Node._pull`)."""
        txn.adopt_covers(decode_covers(reply.get("covers", {})),
                         decode_deleted(reply.get("deleted", [])))

    def client_increment(self, counter: str, delta: int, key: str | None, answer,
                         committed) -> None:
        """The increment route (`Node.increment`/`Node.forward`): a keyed increment whose
        key's home is another member is forwarded there and its answer relayed; one without a
        key is applied here, and so is one whose home refused the connection. `answer(outcome,
        result)` runs at most once: outcome "new" or "replayed" (with the LocalResult),
        "failed" (an error that changed nothing), or "unavailable" (a 503 after the home did not
        answer: it may have counted). `committed(node_id, event)` runs where an event is made;
        it travels with the forward but is no part of the protocol (the checker's bookkeeping).
        """
        target = keyhome.forward_to(key, self.node_id, self.peers.alive())
        if target is None:
            self._apply_here(counter, delta, key, answer, committed)
        elif self.sim.connection_refused(self.node_id, target):
            # Nothing was sent: the home cannot have counted it. The refusal takes a round trip.
            self.timer(self.sim.net.delay(), self._apply_here, counter, delta, key, answer,
                       committed)
        else:
            self.sim.forwards += 1
            body = {"node_id": self.node_id, "counter": counter, "delta": delta, "key": key,
                    "committed": committed}
            self.call(target, "forward", body, lambda reply: self._relay(reply, answer),
                      lambda: answer("unavailable", None))

    def _apply_here(self, counter, delta, key, answer, committed) -> None:
        try:
            result = self.increment(counter, delta, key)
        except DcounterError:
            answer("failed", None)
            return
        if not result.replayed:
            committed(self.node_id, result.event)
        answer("replayed" if result.replayed else "new", result)

    @staticmethod
    def _relay(reply: dict, answer) -> None:
        if reply["status"] == 200:
            result = reply["result"]
            answer("replayed" if result.replayed else "new", result)
        elif keyhome.after_refusal(reply["status"]) is keyhome.AfterRefusal.RELAY:
            answer("failed", None)  # the home's own verdict: it changed nothing
        else:
            answer("unavailable", None)

    def on_forward(self, sender: str, body: dict) -> dict:
        """`POST /counter/forward` at the home: applied here whatever this node's view says,
        never forwarded again."""
        try:
            result = self.increment(body["counter"], body["delta"], body["key"])
        except DcounterError as exc:
            return {"status": exc.status}
        if not result.replayed:
            body["committed"](self.node_id, result.event)
        return {"status": 200, "result": result}

    # -- what the checker reads -----------------------------------------------------------------
    def settled(self) -> str | None:
        """None when nothing waits to be sent; else why not."""
        for link in self.links.values():
            if link.backlog or link.state is not LinkState.IDLE:
                return f"{self.node_id}'s link to {link.peer} is {link.state.value} with " \
                       f"{len(link.backlog)} event(s) waiting"
        if self.pulls or self.pull_armed:
            return f"{self.node_id} has anti-entropy pulls pending"
        return None
