"""Outbound replication: one link per peer, a thread shell around the peer's `Outbox`.

What to send, when, and what to give up is decided by `outbox.Outbox` (pure: batching, linger,
backoff, bounds). A `PeerLink` runs it: its sender thread takes a batch when the outbox says
so, posts it, and reports the outcome; it sleeps until the outbox's next wakeup, a new event,
or the retry loop's wake (`Replicator.retry_once`). Nothing a send raises ends the thread: an
unexpected error counts as a failed send (logged with its traceback) and the outbox backs off,
then drops a batch that keeps failing so. Backoff is keyed by the outbox, never by the peer's
name, so a link removed while its send was in flight cannot touch the peer's next link.

A peer of protocol 2 gets the compact body (`wire.encode_runs`); a peer of an older protocol
the list of event objects, and only the events its protocol can express (`protocol.py`): the
others count as delivered to it, and reach it through anti-entropy.

Threads start only in `Replicator.start()`; a link added before it waits for it, a link added
after starts at once. A removed peer's backlog is dropped (anti-entropy catches the peer up).
Without threads a caller drives the same steps itself: `Replicator.step()` takes and sends
every batch due now, and `PeerLink.take` / `PeerLink.send` split one send in two, so that what
happens while a batch is in flight can be lined up between them.
"""

import logging
import threading
from collections.abc import Container

from dcounter.counter import Event
from dcounter.errors import PeerRefused, PeerUnreachable
from dcounter.outbox import EVENTS_PER_PEER, LINGER_CAP, LinkState, Outbox, Queued, batch_goal
from dcounter.protocol import PeerProtocols, expressible
from dcounter.retry import RetrySchedule
from dcounter.wire import encode_runs

log = logging.getLogger(__name__)

__all__ = ["EVENTS_PER_PEER", "LINGER_CAP", "LinkState", "PeerLink", "Replicator"]


class PeerLink:
    def __init__(self, peer: str, replicator: "Replicator", outbox: Outbox):
        self.peer = peer
        self.r = replicator
        self.outbox = outbox
        self.cond = threading.Condition()  # guards the outbox and the flags below
        self.started = False
        self.stopped = False
        self.thread = threading.Thread(target=self._run, name=f"link-{peer}", daemon=True)

    # -- called by other threads ----------------------------------------------------------------
    def start(self) -> None:
        with self.cond:
            if self.started or self.stopped:
                return
            self.started = True
        self.thread.start()

    def enqueue(self, events: list[Event]) -> None:
        with self.cond:
            if not self.stopped and self.outbox.enqueue(events, self.r.clock.monotonic()):
                self.cond.notify()

    def wake(self) -> None:
        """Look at the outbox again (a retry may be due)."""
        with self.cond:
            self.cond.notify()

    def stop(self) -> None:
        with self.cond:
            self.stopped = True
            self.cond.notify()

    def join(self, timeout: float) -> None:
        if self.started:
            self.thread.join(timeout=timeout)

    def status(self) -> dict:
        with self.cond:
            return {"backlog": len(self.outbox.backlog), "state": self.outbox.state.value,
                    "attempts": self.outbox.attempts, "dropped": self.outbox.dropped}

    # -- the sender's steps -----------------------------------------------------------------------
    def take(self, now: float) -> list[Queued] | None:
        """The batch the outbox gives at `now`, or None (nothing due, one already in flight, or
        the link stopped). The batch taken is in flight until `send` reports its outcome: the
        sender's decision without its wait, for a caller that drives the link itself."""
        with self.cond:
            return self._take_locked(now)

    def _take_locked(self, now: float) -> list[Queued] | None:
        return None if self.stopped else self.outbox.take_batch(now)

    def next_batch(self) -> list[Queued] | None:
        """Block until the outbox gives a batch; None once stopped."""
        clock = self.r.clock
        with self.cond:
            while not self.stopped:
                now = clock.monotonic()
                batch = self._take_locked(now)
                if batch is not None:
                    return batch
                wake_at = self.outbox.next_wakeup(now)
                self.cond.wait(None if wake_at is None else max(0.0, wake_at - now))
            return None

    def send(self, batch: list[Queued]) -> bool:
        """Post a batch taken by `take` or `next_batch` and report its outcome to the
        outbox."""
        unexpected = False
        try:
            self.r.post_batch(self.peer, [event for event, _ in batch])
            ok = True
        except (PeerUnreachable, PeerRefused) as exc:
            log.debug("replicate to %s failed (attempt %d): %s", self.peer,
                      self.outbox.attempts + 1, exc)
            ok = False
        except Exception:
            log.exception("replicate to %s failed unexpectedly", self.peer)
            ok, unexpected = False, True
        with self.cond:
            now = self.r.clock.monotonic()
            if ok:
                self.outbox.sent_ok(batch, now)
            else:
                self.outbox.send_failed(batch, now, unexpected)
            if self.stopped:
                self.outbox.forget()  # removed while in flight: leave no schedule entry behind
        if ok:
            self.r.delivered(self.peer, batch)
        else:
            self.r.retry_scheduled()
        return ok

    def _run(self) -> None:
        while True:
            try:
                batch = self.next_batch()
                if batch is None:
                    return
                self.send(batch)
            except Exception:
                log.exception("sender for %s failed; continuing", self.peer)
                self._recover()

    def _recover(self) -> None:
        """After an error outside the send itself: the batch in flight goes back (or, after
        repeated failures, is dropped) and the outbox backs off, as for a failed send."""
        try:
            with self.cond:
                self.outbox.send_failed(self.outbox.in_flight or [], self.r.clock.monotonic(),
                                        unexpected=True)
            self.r.retry_scheduled()
        except Exception:
            log.exception("sender for %s cannot recover; pausing", self.peer)
            with self.cond:
                if not self.stopped:
                    self.cond.wait(self.r.schedule.policy.cap)


class Replicator:
    def __init__(self, self_id: str, transport, schedule: RetrySchedule, clock, *,
                 max_backlog: int, batch_max: int, batch_linger: float,
                 on_success=lambda peer: None, metrics=None, protocol_of=None):
        self.self_id = self_id
        # peer -> the protocol its batches are limited to
        self.protocol_of = protocol_of or PeerProtocols().for_requests
        self.transport = transport
        self.schedule = schedule
        self.clock = clock
        self.max_backlog = max_backlog
        self.batch_max = batch_max
        self.batch_linger = batch_linger
        self.on_success = on_success
        self.metrics = metrics
        self._lock = threading.Lock()
        self._links: dict[str, PeerLink] = {}
        self._started = False
        self._stopped = False
        self.batch_goal = EVENTS_PER_PEER  # EVENTS_PER_PEER per link
        self._retry_wakeup = threading.Event()

    def start(self) -> None:
        """Start the sender threads: of the links added so far, and of later ones at once."""
        with self._lock:
            if self._stopped:
                return
            self._started = True
            links = list(self._links.values())
        for link in links:
            link.start()

    # -- membership ---------------------------------------------------------------------------
    def add_peer(self, peer: str) -> None:
        with self._lock:
            if peer in self._links:
                return
            outbox = Outbox(peer, self.schedule, max_backlog=self.max_backlog,
                            batch_max=self.batch_max, batch_linger=self.batch_linger)
            link = self._links[peer] = PeerLink(peer, self, outbox)
            start = self._started and not self._stopped
        self._regoal()
        if start:
            link.start()

    def remove_peer(self, peer: str) -> None:
        with self._lock:
            link = self._links.pop(peer, None)
        self._regoal()
        if link is not None:
            with link.cond:
                link.outbox.drop("peer removed")
                link.outbox.forget()
            link.stop()

    def _regoal(self) -> None:
        """A busy link's batch goal grows with the cluster (EVENTS_PER_PEER per peer)."""
        with self._lock:
            self.batch_goal = goal = batch_goal(len(self._links))
            links = list(self._links.values())
        for link in links:
            with link.cond:
                link.outbox.goal = goal

    def peers(self) -> list[str]:
        with self._lock:
            return sorted(self._links)

    def link(self, peer: str) -> PeerLink | None:
        with self._lock:
            return self._links.get(peer)

    # -- events -------------------------------------------------------------------------------
    def enqueue(self, events: list[Event]) -> None:
        with self._lock:
            links = list(self._links.values())
        for link in links:
            link.enqueue(events)

    def _payload(self, batch: list[Event], protocol: int) -> dict:
        if protocol >= 2:  # the compact body: runs of consecutive events per origin
            return {"node_id": self.self_id, "runs": encode_runs(batch)}
        return {"node_id": self.self_id, "events": [e.to_wire() for e in batch]}

    def post_batch(self, peer: str, batch: list[Event], timeout: float | None = None) -> None:
        """Post one batch. Raises PeerUnreachable / PeerRefused on the failures the transport
        expects, and whatever else goes wrong."""
        protocol = self.protocol_of(peer)
        kept = [event for event in batch if expressible(event, protocol)]
        if len(kept) < len(batch):
            # Not pushed: this peer's protocol cannot express them; they reach it through
            # anti-entropy (their prefix is the same in every protocol).
            batch = kept
            if not batch:
                return
        try:
            self.transport.post(peer, "/counter/replicate", self._payload(batch, protocol),
                                **({} if timeout is None else {"timeout": timeout}))
        except Exception:
            if self.metrics:
                self.metrics.inc("dcounter_replicate_batches_failed_total")
            raise

    def delivered(self, peer: str, batch: list[Queued]) -> None:
        """A batch arrived: metrics and the success callback. Their errors are logged, never
        turned into a failed send."""
        try:
            if self.metrics:
                self.metrics.inc("dcounter_replicate_batches_sent_total")
                self.metrics.inc("dcounter_replicate_events_sent_total", len(batch))
            self.observe_delivery(batch)
            self.on_success(peer)
        except Exception:
            log.exception("bookkeeping after a batch to %s failed; continuing", peer)

    def observe_delivery(self, batch: list[Queued]) -> None:
        """Record how long each event of an acknowledged batch took since it was queued."""
        if self.metrics:
            now = self.clock.monotonic()
            self.metrics.observe_histogram("dcounter_replication_delay_seconds",
                                           [now - queued for _, queued in batch])

    def retry_scheduled(self) -> None:
        """A link backed off: the retry loop's wait may need to end sooner."""
        self._retry_wakeup.set()

    # -- the senders' step, driven by the caller -----------------------------------------------
    def step(self, skip: Container[str] = ()) -> int:
        """What every sender thread would do next, in the caller's thread and without waiting:
        each link whose outbox gives a batch at the clock's now sends it (`take`, then `send`);
        the links to the peers in `skip` are left as they are. Returns how many batches went
        (delivered or not). For a caller that runs no sender threads (a test, or before
        `start()`); beside running threads it is safe too, as a link has at most one batch in
        flight."""
        with self._lock:
            links = [link for peer, link in self._links.items() if peer not in skip]
        sent = 0
        for link in links:
            batch = link.take(self.clock.monotonic())
            if batch is not None:
                link.send(batch)
                sent += 1
        return sent

    # -- the retry loop's step ----------------------------------------------------------------
    def retry_once(self, now: float) -> list[str]:
        """Wake the links whose retry is due; returns their peers."""
        due = self.schedule.pop_due(now)
        with self._lock:
            # A popped outbox of a removed link has no link left to wake.
            links = [link for outbox in due
                     if (link := self._links.get(outbox.peer)) is not None
                     and link.outbox is outbox]
        for link in links:
            link.wake()
        return [link.peer for link in links]

    def wait_for_retry(self, max_wait: float) -> None:
        """Block until the next retry is due or a new one is scheduled (stop() wakes it too),
        at most `max_wait` seconds."""
        next_due = self.schedule.next_due()
        wait = max_wait if next_due is None else max(0.0, min(max_wait,
                                                               next_due - self.clock.monotonic()))
        self._retry_wakeup.wait(wait)
        self._retry_wakeup.clear()

    # -- status and shutdown --------------------------------------------------------------------
    def backlogs(self) -> dict[str, dict]:
        with self._lock:
            links = list(self._links.values())
        return {link.peer: link.status() for link in links}

    def stop(self) -> None:
        with self._lock:
            self._stopped = True
            links = list(self._links.values())
        for link in links:
            link.stop()
        self._retry_wakeup.set()
        for link in links:
            link.join(timeout=self.transport.timeout + 1)

    def drain(self, deadline: float) -> int:
        """After stop(): one last attempt per peer with a backlog, within `deadline`
        (monotonic). Returns how many events are still undelivered."""
        with self._lock:
            links = list(self._links.values())
        left = 0
        for link in links:
            with link.cond:
                pending = [event for event, _ in link.outbox.take_all()]
            while pending:
                remaining = deadline - self.clock.monotonic()
                if remaining <= 0:
                    left += len(pending)
                    break
                batch, pending = pending[:self.batch_max], pending[self.batch_max:]
                try:
                    self.post_batch(link.peer, batch, timeout=min(remaining,
                                                                  self.transport.timeout))
                except Exception as exc:
                    log.debug("last replicate to %s failed: %s", link.peer, exc)
                    left += len(batch) + len(pending)
                    break
        return left
