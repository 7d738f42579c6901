"""The simulator's node: the real protocol objects, driven by the simulated world.

Theory of operation
-------------------
A `SimNode` is one incarnation after another of a node at a fixed address. `start(disk)` loads
the committed state (a `MemoryStore`, written from each `Txn` the way `store.py` writes SQLite)
and arms three periodic timers: heartbeat, rejoin, cleanup. Everything else is a reaction to a
message or a timer, and every decision is taken by the object the real node asks
(`node.py`, `replication.py`, `writer.py`):

    membership     `PeerStore` and membership.py's `contact_from`/`contact_to`,
                   `join_reply_peers`, `link_changes` (after every change to the listing);
                   contacts in flight are claimed (`begin_contacts`, `claim_due_candidates`)
                   and released when they end, as the node does
    outbox         one real `Outbox` per listed peer over one `RetrySchedule`; this module plays
                   the link's sender thread: take a batch when the outbox says so, report the
                   outcome with `now`, sleep until `next_wakeup`. A removed link's late answer
                   is reported to its own outbox (which then forgets its backoff), never to the
                   peer's next one
    anti-entropy   the real `AntiEntropy`: observe digests and held events' summaries (a peer
                   ahead on an origin, or holding other events above the same watermark), pull
                   what is due (one pull round at a time, as the node's sync thread does) with
                   held events, covers and tombstones, report each pull
    commits        `commitgroup.GroupCommit`: jobs submitted while a commit is under way
                   (`COMMIT_TIME`) form one group in one `Txn`, a savepoint per job; a failed
                   store write fails every job
    resets/keys    `reset`, and keyed increments decided at their key's home
                   (`client_increment`/`on_forward`, keyhome.py)
    retirement     the cleanup sweep retires idle origins (`Txn.retire_origins` with the listed
                   peers and their origins, as `Node.cleanup_once`), pulls adopt a peer's base;
                   the disk keeps activity, retired set and base as store.py does, and notes for
                   the checker the covers each retired origin's base folded in

A stale timer or answer of an earlier incarnation is ignored; while paused, timers and messages
queue up in the inbox and run on resume. A request to a node that is down is refused at once
(as a closed port answers), one to a paused node waits for its timeout.
"""

from __future__ import annotations

import copy

from dcounter import keyhome
from dcounter.antientropy import AntiEntropy
from dcounter.config import Config
from dcounter.counter import Counter, Event, KeyRecord, OriginState
from dcounter.errors import NodeError, StorageFailure
from dcounter.membership import Contact, contact_from, contact_to, join_reply_peers, link_changes
from dcounter.outbox import EVENTS_PER_PEER, LinkState, Outbox
from dcounter.peers import PeerStore
from dcounter.retirement import RETIRED_ENTRY
from dcounter.retry import RetryPolicy
from dcounter.simnet import NodeClock
from dcounter.wire import decode_covers, decode_deleted, decode_snapshot

COMMIT_TIME = 0.002  # virtual seconds a group commit takes: jobs submitted meanwhile join it
MAX_GROUP = 16       # jobs in one group at most


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
        # Origin retirement (retirement.py): the live origins' activity, the retired origins'
        # final watermarks (in the order they retired: a reset's cover of the base covers the
        # first of them) and their base.
        self.activity: dict[str, tuple[int, float]] = {}
        self.retired: dict[str, int] = {}
        self.base: dict[str, int] = {}
        # Not stored by store.py, only the checker's: per retired origin, the covers of it (per
        # counter) that the base folded in when the origin retired, here or at the node whose
        # base this one adopted. A reset's cover beyond them never applied (the README's window).
        self.base_covers: dict[str, dict[str, tuple[int, int]]] = {}
        # Set on a copy taken by `dcounter-node backup` and restored by `dcounter-node restore`:
        # the store takes a fresh origin when it next opens (`Store._leave_backup_origin`).
        self.backup_of: str | None = None

    def leave_backup_origin(self, new_origin) -> None:
        if self.backup_of is not None:
            self.origin, self.backup_of = new_origin(), None

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
        self.write_retirement(txn)
        self.write_resets(txn)

    def write_retirement(self, txn) -> None:
        """What `Store._write_retirement_locked` writes."""
        for origin, activity in txn.activity.items():
            if origin not in txn.origins_dropped:
                self.activity[origin] = activity
        for origin in txn.origins_dropped:
            for table in (self.watermarks, self.prefixes, self.held, self.activity):
                table.pop(origin, None)
        self.retired.update(txn.retired_add)
        if txn.base is not None:
            self.base = dict(txn.base)

    def write_resets(self, txn) -> None:
        """The covers and tombstones of resets, as `Store._write_resets_locked` writes them."""
        for (name, origin), cover in txn.cover_add.items():
            if cover is None:
                self.covers.get(name, {}).pop(origin, None)
            else:
                self.covers.setdefault(name, {})[origin] = cover
        self.deleted |= txn.deleted_add

    def retirement(self) -> tuple[dict[str, int], dict[str, int], dict[str, tuple]]:
        """`Counter.load`'s retired, base and activity, as `Store.load_retirement` reads them."""
        return dict(self.retired), dict(self.base), dict(self.activity)

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
        """Whether the event is stored here: in a live origin's prefix or held, or in the base
        (a retired origin's events up to its final watermark)."""
        return self.watermarks.get(origin, 0) >= seq or seq in self.held.get(origin, {}) or \
            self.retired.get(origin, 0) >= seq

    def copy(self) -> "MemoryStore":
        return copy.deepcopy(self)


class Job:
    """One job for the group commit, and what to do with its outcome."""
    __slots__ = ("fn", "result", "error", "done")

    def __init__(self, fn, done):
        self.fn, self.done = fn, done
        self.result = None
        self.error: BaseException | None = None


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
        self.schedule = self.sim.retry_schedule(self.policy)
        self.links: dict[str, Outbox] = {}
        self.wakeups: dict[str, tuple[Outbox, float]] = {}  # peer -> the link's armed wakeup
        # Per link: failed sends in a row and when the last one failed, as this module saw
        # them (the backoff check: a link never retries before its policy allows).
        self.failures: dict[Outbox, tuple[int, float]] = {}
        self.anti_entropy = AntiEntropy(settle=self.cfg.heartbeat_interval)
        self.pull_at: float | None = None  # when the sync step is armed
        self.pulling = 0                   # pulls of the current round still in flight
        self.pending: dict[int, tuple] = {}
        self.jobs: list[Job] = []
        self.commit_armed = False
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
        self.jobs = []
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

    # -- group commit ------------------------------------------------------------------------------
    def submit(self, fn, done) -> None:
        """Queue `fn(txn)` for the next group; `done(job)` runs once it committed or failed (not
        if the node stops first: its caller then sees no answer)."""
        self.jobs.append(Job(fn, done))
        if not self.commit_armed:
            self.commit_armed = True
            self.timer(COMMIT_TIME, self.commit_group)

    def commit_group(self) -> None:
        group, self.jobs = self.jobs[:MAX_GROUP], self.jobs[MAX_GROUP:]
        self.commit_armed = False
        txn, _ = self.sim.group_commit.run(self.counter, group, self._write)
        if txn is not None:
            self.counter.install(txn)
            self.sim.note_retirement(self.node_id, txn)
            if txn.outbound:
                self.enqueue(txn.outbound)
        for job in group:
            if job.error is not None and not isinstance(job.error, NodeError):
                raise job.error  # a bug: the run fails loudly
            job.done(job)
        if self.jobs and not self.commit_armed:
            self.commit_armed = True
            self.timer(COMMIT_TIME, self.commit_group)

    def _write(self, txn) -> None:
        if self.failing:
            raise StorageFailure("storage failure: injected by the simulator")
        self.disk.write(txn)

    def increment(self, counter: str, delta: int, key: str | None, done) -> None:
        now = self.clock.time()
        self.submit(lambda txn: txn.local(counter, delta, key, now), done)

    # -- membership, server side -----------------------------------------------------------------
    def membership_payload(self) -> dict:
        return {"node_id": self.node_id, "origin": self.counter.local_origin,
                "digest": self.counter.digest(), "peers": self.peers.alive(),
                "held": self.counter.held_summaries()}

    def contacted(self, contact: Contact) -> Contact:
        if contact in (Contact.NEW, Contact.SELF):
            self.sync_links()
        return contact

    def on_join(self, sender: str, body: dict, respond) -> None:
        try:
            self.contacted(contact_from(self.peers, self.node_id, self.counter.local_origin,
                                        sender, body["origin"], self.now()))
        except NodeError:
            respond(None)  # 503: --max-peers listed
            return
        self.learn(sender, body["digest"], body["peers"], body["held"])
        reply = self.membership_payload()
        reply["peers"] = join_reply_peers(self.node_id, self.peers.alive(), sender)
        respond(reply)

    def on_heartbeat(self, sender: str, body: dict, respond) -> None:
        try:
            self.contacted(contact_from(self.peers, self.node_id, self.counter.local_origin,
                                        sender, body["origin"], self.now()))
        except NodeError:
            respond(None)
            return
        self.learn(sender, body["digest"], body["peers"], body["held"])
        respond(self.membership_payload())

    def on_leave(self, sender: str, body: dict, respond) -> None:
        self.peers.left(sender, self.now())
        self.sync_links()
        respond({})

    def learn(self, source: str, digest: dict[str, int], peers: list[str],
              held: dict[str, tuple]) -> list[str]:
        """Second-hand ids become candidates; origins where `source` is ahead, or shows other
        held events at our watermark, are leads."""
        if self.peers.add_candidates([p for p in peers if p != self.node_id], self.now()):
            self.timer(0.0, self.rejoin_once)  # the node kicks its membership loop
        self.counter.note_digest(source, digest)
        if self.peers.is_self(source):
            return []
        ahead = self.anti_entropy.observe(source, digest, self.counter.digest_reached(), self.now(),
                                          held, self.counter.held_summaries(),
                                          retired=self.counter.retired_origins())
        if ahead:
            self.arm_pull()
        return ahead

    def sync_links(self) -> None:
        """The links follow the listing (node.py `_sync_links`)."""
        add, remove = link_changes(self.peers.alive(), self.links)
        for peer in add:
            self.links[peer] = Outbox(peer, self.schedule, max_backlog=self.cfg.max_backlog,
                                      batch_max=self.cfg.batch_max,
                                      batch_linger=self.cfg.batch_linger)
        for peer in remove:
            outbox = self.links.pop(peer)
            outbox.drop("peer removed")
            outbox.forget()
            self.wakeups.pop(peer, None)
            self.anti_entropy.forget(peer)
        if add or remove:
            goal = EVENTS_PER_PEER * max(1, len(self.links))
            for outbox in self.links.values():
                outbox.goal = goal

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
        contact = self.contacted(contact_to(self.peers, self.counter.local_origin, peer,
                                            reply["origin"], self.now()))
        if contact is Contact.SELF:
            return
        if not self.learn(peer, reply["digest"], reply["peers"], reply["held"]):
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
        now = self.now()
        if self.peers.expire(now):
            self.timer(0.0, self.rejoin_once)
        self.peers.reap(now)
        self.anti_entropy.retain_digests(self.peers.members(now, 0.0))
        self.sync_links()
        wall = self.clock.time()
        self.submit(lambda txn: txn.expire_keys(wall), lambda job: None)
        # Origin retirement, as `Node.cleanup_once` sweeps: the listed peers (each must have
        # shown an origin at our watermark) and their own origins (never idle).
        listed = self.peers.alive()
        live = {self.peers.origin_of(peer) for peer in listed}

        def sweep(txn):
            before = {name: txn.covers_of(name) for name in self.sim.counter_names}
            return {origin: {name: covers[origin] for name, covers in before.items()
                             if origin in covers}
                    for origin in txn.retire_origins(wall, listed, live)}

        self.submit(sweep, self.folded)
        self.timer(self.cfg.cleanup_interval, self.cleanup_tick)

    def folded(self, job: Job) -> None:
        """The checker's note of what a committed retirement folded into the base."""
        if job.error is None:
            self.disk.base_covers.update(job.result)

    def leave(self) -> None:
        """Graceful stop: tell every listed peer, then go."""
        for peer in self.peers.alive():
            self.sim.net.send(self.node_id, peer, ("leave", None, {"node_id": self.node_id}))
        self.stop()

    # -- outbox: the links' sender threads --------------------------------------------------------
    def enqueue(self, events: list[Event]) -> None:
        now = self.now()
        for outbox in self.links.values():
            wake = outbox.enqueue(events, now)
            self.max_backlog_seen = max(self.max_backlog_seen, len(outbox.backlog))
            if wake:
                self.kick(outbox)
            else:
                self.arm_wakeup(outbox, outbox.next_wakeup(now))

    def kick(self, outbox: Outbox) -> None:
        """The sender looks at its outbox: sends a batch, or sleeps until the next wakeup."""
        if self.links.get(outbox.peer) is not outbox:
            return
        now = self.now()
        batch = outbox.take_batch(now)
        if batch is None:
            self.arm_wakeup(outbox, outbox.next_wakeup(now))
            return
        failed, last = self.failures.get(outbox, (0, 0.0))
        if failed and now - last < self.policy.delay(failed) - 1e-9:
            self.sim.oracle.violations.append(
                f"{self.node_id}'s link to {outbox.peer} retried {now - last:.3f}s after its "
                f"failure {failed} in a row, before its backoff of "
                f"{self.policy.delay(failed):.3f}s")
        events = [event for event, _ in batch]
        self.call(outbox.peer, "replicate", {"node_id": self.node_id, "events": events},
                  lambda r: self.pushed(outbox, batch), lambda: self.push_failed(outbox, batch))

    def arm_wakeup(self, outbox: Outbox, when: float | None) -> None:
        if when is None:
            return
        # A wakeup due now that gave no batch is a rounding of `last_start + linger`: the real
        # sender's wait returns a moment later, and so does this one.
        when = max(when, self.now() + 1e-6)
        armed = self.wakeups.get(outbox.peer)
        if armed is not None and armed[0] is outbox and armed[1] <= when:
            return  # an earlier wakeup will look again
        self.wakeups[outbox.peer] = (outbox, when)
        self.timer(max(0.0, when - self.now()), self._wake, outbox, when)

    def _wake(self, outbox: Outbox, when: float) -> None:
        armed = self.wakeups.get(outbox.peer)
        if armed is None or armed[0] is not outbox or armed[1] != when:
            return
        del self.wakeups[outbox.peer]
        self.kick(outbox)

    def pushed(self, outbox: Outbox, batch) -> None:
        now = self.now()
        outbox.sent_ok(batch, now)
        self.failures.pop(outbox, None)
        self.peers.refresh(outbox.peer, now)  # never lists a peer again
        if self.links.get(outbox.peer) is not outbox:
            outbox.forget()  # removed while in flight: leave no schedule entry behind
            return
        self.kick(outbox)

    def push_failed(self, outbox: Outbox, batch) -> None:
        now = self.now()
        outbox.send_failed(batch, now)
        failed, _ = self.failures.get(outbox, (0, 0.0))
        self.failures[outbox] = (failed + 1, now)
        if self.links.get(outbox.peer) is not outbox:
            self.failures.pop(outbox, None)
            outbox.forget()
            return
        self.max_backlog_seen = max(self.max_backlog_seen, len(outbox.backlog))
        self.kick(outbox)

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

    # -- anti-entropy: the sync thread --------------------------------------------------------------
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
        due = self.anti_entropy.due_pulls(self.counter.digest_reached(), self.now(),
                                          local_origin=self.counter.local_origin,
                                          own_held=self.counter.held_summaries(),
                                          retired=self.counter.retired_origins())
        for peer, origins in due.items():
            self.pulling += 1
            self.call(peer, "state", {"origins": origins, "held": self.cfg.gap_cap},
                      lambda r, p=peer, o=origins: self.adopt(p, o, r),
                      lambda p=peer, o=origins: self.pulled(p, o, False))

    def on_state(self, sender: str, body: dict, respond) -> None:
        # "base_covers" is no part of the protocol: the checker's note of what this node's base
        # folded in, for the puller's note if it adopts the base.
        respond({"origins": self.counter.snapshot(body["origins"], body["held"]),
                 **self.covers_reply(), "base_covers": dict(self.disk.base_covers)})

    def adopt(self, peer: str, origins: list[str], reply: dict) -> None:
        now = self.clock.time()

        def job(txn):
            snapshot = decode_snapshot(reply["origins"], max_held=self.cfg.gap_cap)
            base = snapshot.get(RETIRED_ENTRY, {}).get("retired") or {}
            newly = [origin for origin in base if not txn.is_retired(origin)]
            adopted = sum(txn.adopt(o, s["watermark"], s["counters"], s.get("retired"))
                          + txn.adopt_held(o, s.get("held", []), now)
                          for o, s in snapshot.items())
            self.adopt_covers(txn, reply)
            # The peer's base replaced ours whole: what it folded in of every origin is now ours.
            taken = any(txn.is_retired(origin) for origin in newly)
            folded = {origin: reply["base_covers"].get(origin, {}) for origin in base} \
                if taken else {}
            return adopted, folded

        def done(j: Job) -> None:
            if j.error is None:
                self.disk.base_covers.update(j.result[1])
            self.pulled(peer, origins, j.error is None)

        self.submit(job, done)

    def pulled(self, peer: str, origins: list[str], ok: bool) -> None:
        self.anti_entropy.pulled(peer, origins, self.counter.digest_reached(), self.now(), ok,
                                 own_held=self.counter.held_summaries())
        if ok:
            self.compared.add(peer)
        self.pulling -= 1
        if not self.pulling:
            self.arm_pull()

    # -- resets and keys' homes (reset.py, keyhome.py) -------------------------------------------
    def reset(self, counter: str, delete: bool, key: str | None, done) -> None:
        """`Node.reset`: a reset (or delete) of `counter` made here; `done(job)` as for
        `increment`."""
        now = self.clock.time()
        self.submit(lambda txn: txn.local_reset(counter, delete, key, now), done)

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
        for outbox in self.links.values():
            if outbox.backlog or outbox.state is not LinkState.IDLE:
                return f"{self.node_id}'s link to {outbox.peer} is {outbox.state.value} with " \
                       f"{len(outbox.backlog)} event(s) waiting"
        if self.jobs:
            return f"{self.node_id} has {len(self.jobs)} job(s) to commit"
        if self.pulling or self.anti_entropy.waiting():
            return f"{self.node_id} has anti-entropy pulls pending"
        return None
