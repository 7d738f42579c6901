"""The simulator's node: the real protocol objects and the real node's decisions, driven by the
simulated world.

Theory of operation
-------------------
A `SimNode` is one incarnation after another of a node at a fixed address. `start(disk)` loads
the committed state (a `MemoryStore`, simdisk.py) and arms three periodic timers: heartbeat,
rejoin, cleanup. Everything else is a reaction to a message or a timer, and every decision is
taken by the code the real node runs; this module plays only the node's I/O and threads
(gossip.py, pulls.py, node.py, writer.py), on the virtual clock:

    membership     `PeerStore` and membership.py: what a contact carries (`payload`), what it
                   means for the listing (`contact_from`/`contact_to`, `join_reply_peers`), what
                   is learned from it (`learn`), the cleanup's `sweep`, and `sync_links` after
                   every change to the listing; contacts in flight are claimed
                   (`begin_contacts`, `claim_due_candidates`) and released when they end
    links          one real `Outbox` per listed peer over one `RetrySchedule` (simlinks.py)
    anti-entropy   the real `AntiEntropy` through pulls.py's plain functions: the pulls due,
                   the request, the reply (`state_reply`), reading it and the job that adopts
                   it (`read_state`, `adopt_job`: prefixes, held events, covers and tombstones),
                   the report of each pull; one pull round at a time, as the node's sync thread
    commits        `commitgroup.GroupCommit` (simdisk.py's `SimWriter`)
    resets/keys    `reset`, and keyed increments decided at their key's home
                   (`client_increment`/`on_forward`, keyhome.py)
    retirement     the cleanup sweep retires idle origins (membership.py's `retire_idle_job`,
                   as `Node.cleanup_once`), pulls adopt a peer's base; the disk keeps activity,
                   retired set and base as store.py does, and notes for the checker the covers
                   each retired origin's base folded in

A stale timer or answer of an earlier incarnation is ignored; while paused, timers and messages
queue up in the inbox and run on resume. A request to a node that is down is refused at once
(as a closed port answers), one to a paused node waits for its timeout.
"""

from __future__ import annotations

from dcounter import keyhome, membership, pulls
from dcounter.antientropy import AntiEntropy
from dcounter.config import Config
from dcounter.counter import Counter
from dcounter.errors import NodeError
from dcounter.membership import Contact, contact_from, contact_to, join_reply_peers
from dcounter.peers import PeerStore
from dcounter.retirement import RETIRED_ENTRY
from dcounter.retry import RetryPolicy
from dcounter.simdisk import Job, MemoryStore, SimWriter
from dcounter.simlinks import SimLinks
from dcounter.simnet import NodeClock
from dcounter.wire import decode_held_summaries


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
        self.lag = 0.0                  # slow-link fault: answers wait up to this long
        self.incarnation = 0
        self.inbox: list = []
        self.counter: Counter | None = None
        self.max_backlog_seen = 0

    # -- lifecycle ------------------------------------------------------------------------------
    def start(self, disk: MemoryStore | None) -> None:
        self.incarnation += 1
        self.disk = disk if disk is not None else MemoryStore(self.sim.new_origin())
        self.disk.leave_backup_origin(self.sim.new_origin)
        origin, origins, keys = self.disk.load()
        self.counter = Counter(origin, max_counters=self.cfg.max_counters,
                               gap_cap=self.cfg.gap_cap, key_ttl=self.cfg.idempotency_ttl,
                               origin_retire_after=self.cfg.origin_retire_after,
                               new_origin=self.sim.new_origin)
        self.counter.load(origins, keys, *self.disk.retirement(), **self.disk.resets())
        self.peers = PeerStore(self.node_id, peer_timeout=self.cfg.peer_timeout,
                               policy=self.policy, seeds=self.seeds,
                               max_peers=self.cfg.max_peers, reap_after=self.cfg.reap_after,
                               now=self.now())
        self.links = SimLinks(self)
        self.anti_entropy = AntiEntropy(settle=self.cfg.heartbeat_interval)
        self.pull_at: float | None = None  # when the sync step is armed
        self.pulling = 0                   # pulls of the current round still in flight
        self.pending: dict[int, tuple] = {}
        self.writer = SimWriter(self)
        # Peers whose digest this node compared with its own and pulled what it lacked from
        # (what a careful client waits for before it sends to an unmarked restored copy).
        self.compared: set[str] = set()
        self.up, self.paused, self.inbox = True, False, []
        self.sim.world.record(f"{self.node_id} start origin={origin}")
        self.timer(0.0, self.heartbeat_tick)
        self.timer(0.0, self.rejoin_tick)
        self.timer(self.cfg.cleanup_interval, self.cleanup_tick)

    def stop(self) -> None:
        """The process is gone: timers, inbox, calls in flight and jobs not yet committed die
        with it."""
        self.up = False
        self.paused = False
        self.inbox = []
        self.writer.jobs.clear()
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
            kind, call_id, _ = message
            if kind != "reply" and call_id is not None:
                # The port is closed: the caller is refused at once.
                self.sim.net.send(self.node_id, src, ("reply", call_id, None))
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

        def respond(reply) -> None:
            if call_id is None:
                return
            answer = (self.node_id, src, ("reply", call_id, reply))
            if self.lag:  # a slow process: the answer goes out later, even if it stops
                self.sim.world.after(self.sim.net.rng.random() * self.lag, self.sim.net.send,
                                     *answer)
            else:
                self.sim.net.send(*answer)

        getattr(self, "on_" + kind)(src, body, respond)

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

    # -- group commit (simdisk.py) --------------------------------------------------------------
    def submit(self, fn, done) -> None:
        """`fn(txn)` in the next group; `done(job)` once it committed or failed (not if the node
        stops first: its caller then sees no answer)."""
        self.writer.submit(fn, done)

    def increment(self, counter: str, delta: int, key: str | None, done) -> None:
        now = self.clock.time()
        self.submit(lambda txn: txn.local(counter, delta, key, now), done)

    # -- membership, server side (gossip.py) ---------------------------------------------------
    def membership_payload(self, digest: bool = True) -> dict:
        return membership.payload(self.node_id, self.cfg.cluster, self.cfg.protocol, self.counter,
                                  self.peers, digest=digest, held=True)

    @staticmethod
    def read_contact(body: dict) -> tuple:
        """What `membership.read_reply` reads of a contact or its reply; the shapes of ids are
        not checked (the simulator's are n1, n2 ...)."""
        return body["origin"], body["digest"], body["peers"], \
            decode_held_summaries(body.get("held", {}))

    def contacted(self, contact: Contact) -> Contact:
        if contact.relists:
            self.sync_links()
        return contact

    def on_join(self, sender: str, body: dict, respond) -> None:
        self.answer_contact(sender, body, respond, join=True)

    def on_heartbeat(self, sender: str, body: dict, respond) -> None:
        self.answer_contact(sender, body, respond, join=False)

    def answer_contact(self, sender: str, body: dict, respond, join: bool) -> None:
        """`Gossip.on_join` and `on_heartbeat`; 503 when --max-peers are listed."""
        origin, digest, peers, held = self.read_contact(body)
        try:
            self.contacted(contact_from(self.peers, self.node_id, self.counter.local_origin,
                                        sender, origin, self.now()))
        except NodeError:
            respond(None)
            return
        self.learn(sender, digest, peers, held)
        reply = self.membership_payload()
        if join:
            reply["peers"] = join_reply_peers(self.node_id, self.peers.alive(), sender)
        respond(reply)

    def on_leave(self, sender: str, body: dict, respond) -> None:
        self.peers.left(sender, self.now())
        self.sync_links()
        respond({})

    def learn(self, source: str, digest: dict[str, int], peers: list[str],
              held: dict[str, tuple]) -> list[str]:
        """`Gossip.learn`: new candidates kick the membership loop, leads the sync loop."""
        new, ahead = membership.learn(self.peers, self.counter, self.anti_entropy, source,
                                      digest, peers, held, self.now())
        if new:
            self.timer(0.0, self.rejoin_once)
        if ahead:
            self.arm_pull()
        return ahead

    def sync_links(self) -> None:
        """The links follow the listing (`Gossip.sync_links`)."""
        membership.sync_links(self.peers, self.links, self.anti_entropy)

    # -- membership, client side -----------------------------------------------------------------
    def heartbeat_tick(self) -> None:
        payload = self.membership_payload()
        for peer in self.peers.begin_contacts(self.peers.alive()):
            self.call(peer, "heartbeat", payload,
                      lambda r, p=peer: self.contact_ended(p, r),
                      lambda p=peer: self.peers.contact_finished(p))
        self.timer(self.cfg.heartbeat_interval, self.heartbeat_tick)

    def contact_ended(self, peer: str, reply: dict) -> None:
        self.handle_reply(peer, reply)
        self.peers.contact_finished(peer)

    def handle_reply(self, peer: str, reply: dict) -> None:
        origin, digest, peers, held = self.read_contact(reply)
        contact = self.contacted(contact_to(self.peers, self.counter.local_origin, peer,
                                            origin, self.now()))
        if contact is Contact.SELF:
            return
        if not self.learn(peer, digest, peers, held):
            self.compared.add(peer)

    def rejoin_tick(self) -> None:
        self.rejoin_once()
        self.timer(self.sim.rejoin_tick, self.rejoin_tick)

    def rejoin_once(self) -> None:
        due = self.peers.claim_due_candidates(self.now())
        if not due:
            return
        payload = self.membership_payload()
        for peer in due:
            self.call(peer, "join", payload, lambda r, p=peer: self.contact_ended(p, r),
                      lambda p=peer: self.join_failed(p))

    def join_failed(self, peer: str) -> None:
        self.peers.contact_failed(peer, self.now(), "unreachable")
        self.peers.contact_finished(peer)

    def cleanup_tick(self) -> None:
        gone, _ = membership.sweep(self.peers, self.anti_entropy, self.now())
        if gone:
            self.timer(0.0, self.rejoin_once)
        self.sync_links()
        wall = self.clock.time()
        self.submit(lambda txn: txn.expire_keys(wall), lambda job: None)
        retire = membership.retire_idle_job(self.peers, wall)  # as `Node.cleanup_once`

        def sweep(txn):
            """The retirement, and the covers of each origin it retired (for the checker)."""
            before = {name: txn.covers_of(name) for name in self.sim.counter_names}
            return {origin: {name: covers[origin] for name, covers in before.items()
                             if origin in covers}
                    for origin in retire(txn)}

        self.submit(sweep, self.folded)
        self.timer(self.cfg.cleanup_interval, self.cleanup_tick)

    def folded(self, job: Job) -> None:
        """The checker's note of what a committed retirement folded into the base."""
        if job.error is None:
            self.disk.base_covers.update(job.result)

    def leave(self) -> None:
        """Graceful stop: tell every listed peer, then go."""
        for peer in self.peers.alive():
            self.sim.net.send(self.node_id, peer, ("leave", None, self.membership_payload(False)))
        self.stop()

    # -- replicated batches ---------------------------------------------------------------------
    def on_replicate(self, sender: str, body: dict, respond) -> None:
        events = body["events"]
        wall = self.clock.time()

        def done(job: Job) -> None:
            if job.error is not None:
                respond(None)  # 503: the sender keeps the batch and retries
                return
            result, reached = job.result
            self.sim.oracle.replicated(self.node_id, reached)
            self.peers.refresh(sender, self.now())
            respond({"applied": len(result.applied), "duplicates": result.duplicates,
                     "deferred": result.deferred})

        self.submit(lambda txn: self.sim.remote(txn, events, wall), done)

    # -- anti-entropy: the sync thread (pulls.py) ----------------------------------------------
    def arm_pull(self) -> None:
        due = self.anti_entropy.next_due()
        if due is None or self.pulling:
            return  # the round in flight arms the next when it ends
        due = max(due, self.now() + 1e-6)  # as for the links' wakeups: never a loop in place
        if self.pull_at is not None and self.pull_at <= due:
            return
        self.pull_at = due
        self.timer(due - self.now(), self.pull_tick, due)

    def pull_tick(self, due: float) -> None:
        if self.pull_at != due:
            return
        self.pull_at = None
        self.pull_once()
        if not self.pulling:
            self.arm_pull()

    def pull_once(self) -> None:
        """Make the pulls that are due; the next round waits until every one has ended."""
        if not self.anti_entropy.waiting():
            return
        for peer, origins in pulls.due_pulls(self.anti_entropy, self.counter, self.now()).items():
            self.pulling += 1
            self.call(peer, "state", pulls.pull_request(self.node_id, origins, self.cfg.gap_cap),
                      lambda r, p=peer, o=origins: self.adopt(p, o, r),
                      lambda p=peer, o=origins: self.pulled(p, o, False))

    def on_state(self, sender: str, body: dict, respond) -> None:
        # "base_covers" is no part of the protocol: the checker's note of what this node's base
        # folded in, for the puller's note if it adopts the base.
        respond({**pulls.state_reply(self.counter, self.node_id, body["origins"],
                                     body.get("held", 0)),
                 "base_covers": dict(self.disk.base_covers)})

    def adopt(self, peer: str, origins: list[str], reply: dict) -> None:
        """`Pulls._pull` after the answer: the reply read, then adopted by `adopt_job`."""
        snapshot, covers, deleted = pulls.read_state(reply, self.cfg.gap_cap)
        adopt = pulls.adopt_job(snapshot, covers, deleted, self.clock.time())
        base = snapshot.get(RETIRED_ENTRY, {}).get("retired") or {}

        def job(txn):
            newly = [origin for origin in base if not txn.is_retired(origin)]
            adopt(txn)
            # The peer's base replaced ours whole: what it folded in of every origin is now ours.
            if any(txn.is_retired(origin) for origin in newly):
                return {origin: reply["base_covers"].get(origin, {}) for origin in base}
            return {}

        def done(j: Job) -> None:
            if j.error is None:
                self.disk.base_covers.update(j.result)
            self.pulled(peer, origins, j.error is None)

        self.submit(job, done)

    def pulled(self, peer: str, origins: list[str], ok: bool) -> None:
        pulls.pulled(self.anti_entropy, self.counter, peer, origins, self.now(), ok)
        if ok:
            self.compared.add(peer)
        self.pulling -= 1
        if not self.pulling:
            self.arm_pull()

    # -- resets and keys' homes (reset.py, keyhome.py) -------------------------------------------
    def reset(self, counter: str, delete: bool, key: str | None, done) -> None:
        """`Updates.reset`: a reset (or delete) of `counter` made here; `done(job)` as for
        `increment`."""
        now = self.clock.time()
        self.submit(lambda txn: txn.local_reset(counter, delete, key, now), done)

    def client_increment(self, counter: str, delta: int, key: str | None, answer,
                         committed) -> None:
        """The increment route (`Updates.increment`, `Forwarder.forward`): a keyed increment whose
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
        def done(job: Job) -> None:
            if job.error is not None:
                answer("failed", None)
                return
            result = job.result
            if not result.replayed:
                committed(self.node_id, result.event)
            answer("replayed" if result.replayed else "new", result)

        self.increment(counter, delta, key, done)

    @staticmethod
    def _relay(reply: dict, answer) -> None:
        if reply["status"] == 200:
            result = reply["result"]
            answer("replayed" if result.replayed else "new", result)
        elif keyhome.after_refusal(reply["status"]) is keyhome.AfterRefusal.RELAY:
            answer("failed", None)  # the home's own verdict: it changed nothing
        else:
            answer("unavailable", None)

    def on_forward(self, sender: str, body: dict, respond) -> None:
        """`POST /counter/forward` at the home: applied here whatever this node's view says,
        never forwarded again."""
        def done(job: Job) -> None:
            if job.error is not None:
                respond({"status": job.error.status})
                return
            result = job.result
            if not result.replayed:
                body["committed"](self.node_id, result.event)
            respond({"status": 200, "result": result})

        self.increment(body["counter"], body["delta"], body["key"], done)

    # -- what the checker reads -----------------------------------------------------------------
    def settled(self) -> str | None:
        """None when nothing waits to be sent, committed or pulled; else why not."""
        links = self.links.settled()
        if links is not None:
            return links
        if self.writer.jobs:
            return f"{self.node_id} has {len(self.writer.jobs)} job(s) to commit"
        if self.pulling or self.anti_entropy.waiting():
            return f"{self.node_id} has anti-entropy pulls pending"
        return None
