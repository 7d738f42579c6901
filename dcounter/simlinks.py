"""The simulator's replication links: what replication.py's `Replicator` and its sender threads
do for a node, played on the virtual clock (`SimLinks`, one per incarnation of a `SimNode`).

One real `Outbox` per listed peer over one `RetrySchedule`; this module plays each link's sender
thread: take a batch when the outbox says so, post it, report the outcome with `now`, sleep
until `next_wakeup`. A removed link's late answer is reported to its own outbox (which then
forgets its backoff), never to the peer's next one. The links follow the listing through
membership.py's `sync_links`, as the node's do (`peers`, `add_peer`, `remove_peer`), and a busy
link's batch goal grows with the cluster (`outbox.batch_goal`), as the replicator sets it.

It also checks, for the checker, that no link retries before its backoff allows: per link,
failed sends in a row and when the last one failed, as seen here.
"""

from __future__ import annotations

from dcounter.counter import Event
from dcounter.outbox import LinkState, Outbox, batch_goal


class SimLinks:
    def __init__(self, node):
        self.node = node  # the SimNode: call, timer, now, peers, and its checker's notes
        cfg = node.cfg
        self.schedule = node.sim.retry_schedule(node.policy)
        self.outbox_options = dict(max_backlog=cfg.max_backlog, batch_max=cfg.batch_max,
                                   batch_linger=cfg.batch_linger)
        self.links: dict[str, Outbox] = {}
        self.wakeups: dict[str, tuple[Outbox, float]] = {}  # peer -> the link's armed wakeup
        self.failures: dict[Outbox, tuple[int, float]] = {}

    # -- membership (the replicator's interface) ------------------------------------------------
    def peers(self) -> list[str]:
        return sorted(self.links)

    def add_peer(self, peer: str) -> None:
        self.links[peer] = Outbox(peer, self.schedule, **self.outbox_options)
        self._regoal()

    def remove_peer(self, peer: str) -> None:
        outbox = self.links.pop(peer)
        outbox.drop("peer removed")
        outbox.forget()
        self.wakeups.pop(peer, None)
        self._regoal()

    def _regoal(self) -> None:
        goal = batch_goal(len(self.links))
        for outbox in self.links.values():
            outbox.goal = goal

    # -- the senders ------------------------------------------------------------------------------
    def enqueue(self, events: list[Event]) -> None:
        now = self.node.now()
        for outbox in self.links.values():
            wake = outbox.enqueue(events, now)
            self._note_backlog(outbox)
            if wake:
                self.kick(outbox)
            else:
                self.arm_wakeup(outbox, outbox.next_wakeup(now))

    def _note_backlog(self, outbox: Outbox) -> None:
        self.node.max_backlog_seen = max(self.node.max_backlog_seen, len(outbox.backlog))

    def kick(self, outbox: Outbox) -> None:
        """The sender looks at its outbox: sends a batch, or sleeps until the next wakeup."""
        if self.links.get(outbox.peer) is not outbox:
            return
        node = self.node
        now = node.now()
        batch = outbox.take_batch(now)
        if batch is None:
            self.arm_wakeup(outbox, outbox.next_wakeup(now))
            return
        failed, last = self.failures.get(outbox, (0, 0.0))
        delay = node.policy.delay(failed) if failed else 0.0
        if failed and now - last < delay - 1e-9:
            node.sim.oracle.violations.append(
                f"{node.node_id}'s link to {outbox.peer} retried {now - last:.3f}s after its "
                f"failure {failed} in a row, before its backoff of {delay:.3f}s")
        events = [event for event, _ in batch]
        node.call(outbox.peer, "replicate", {"node_id": node.node_id, "events": events},
                  lambda r: self.pushed(outbox, batch), lambda: self.push_failed(outbox, batch))

    def arm_wakeup(self, outbox: Outbox, when: float | None) -> None:
        if when is None:
            return
        now = self.node.now()
        # A wakeup due now that gave no batch is a rounding of `last_start + linger`: the real
        # sender's wait returns a moment later, and so does this one.
        when = max(when, now + 1e-6)
        armed = self.wakeups.get(outbox.peer)
        if armed is not None and armed[0] is outbox and armed[1] <= when:
            return  # an earlier wakeup will look again
        self.wakeups[outbox.peer] = (outbox, when)
        self.node.timer(max(0.0, when - now), self._wake, outbox, when)

    def _wake(self, outbox: Outbox, when: float) -> None:
        armed = self.wakeups.get(outbox.peer)
        if armed is None or armed[0] is not outbox or armed[1] != when:
            return
        del self.wakeups[outbox.peer]
        self.kick(outbox)

    def pushed(self, outbox: Outbox, batch) -> None:
        now = self.node.now()
        outbox.sent_ok(batch, now)
        self.failures.pop(outbox, None)
        self.node.peers.refresh(outbox.peer, now)  # never lists a peer again
        if self.links.get(outbox.peer) is not outbox:
            outbox.forget()  # removed while in flight: leave no schedule entry behind
            return
        self.kick(outbox)

    def push_failed(self, outbox: Outbox, batch) -> None:
        now = self.node.now()
        outbox.send_failed(batch, now)
        failed, _ = self.failures.get(outbox, (0, 0.0))
        self.failures[outbox] = (failed + 1, now)
        if self.links.get(outbox.peer) is not outbox:
            self.failures.pop(outbox, None)
            outbox.forget()
            return
        self._note_backlog(outbox)
        self.kick(outbox)

    # -- what the checker reads -------------------------------------------------------------------
    def settled(self) -> str | None:
        """None when no link has anything waiting or in flight; else which one."""
        for outbox in self.links.values():
            if outbox.backlog or outbox.state is not LinkState.IDLE:
                return f"{self.node.node_id}'s link to {outbox.peer} is {outbox.state.value} " \
                       f"with {len(outbox.backlog)} event(s) waiting"
        return None
