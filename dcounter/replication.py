"""Outbound replication: one link per peer, batching, backoff, bounded backlogs.

Each peer has a `PeerLink`: a backlog (deque) of events and a sender thread. When the link has
been idle an event goes at once; while the link is busy a batch collects what arrives, and a
new batch starts at most once per `batch_linger` seconds, so under load one request carries
many events. Past `batch_linger` a batch smaller than `EVENTS_PER_PEER` events per peer waits
on for more, up to `LINGER_CAP` times `batch_linger` since the last start: under load a node
then sends at most one request per `EVENTS_PER_PEER` events per peer, so replication costs at
most 1/`EVENTS_PER_PEER` requests per increment whatever the cluster size.

A failed send puts the batch back and asks the `RetrySchedule` for the next attempt
(`min(base * 2**(attempt-1), cap)`); the replicator's retry loop (`retry_once`) wakes the link
when it is due. A success resets the backoff.

The backlog is bounded: past `max_backlog` it is dropped and the peer catches up through
anti-entropy (every event stays in the prefix of the nodes that applied it). A removed peer's
backlog is dropped the same way.
"""

import collections
import enum
import logging
import threading

from dcounter.counter import Event
from dcounter.errors import PeerRefused, PeerUnreachable
from dcounter.retry import RetrySchedule

log = logging.getLogger(__name__)

EVENTS_PER_PEER = 12  # a busy link's batch goal, per peer: replication stays under 1/12
                      # request per increment, leaving room for heartbeats under 0.1
LINGER_CAP = 3.5      # times batch_linger: the longest a busy link lets a batch grow
MAX_UNEXPECTED_FAILURES = 5  # sends of a batch that fail for an unexpected reason before it is
                             # dropped and left to anti-entropy


class LinkState(enum.Enum):
    IDLE = "idle"        # nothing to send
    READY = "ready"      # events waiting, may send
    SENDING = "sending"  # a batch is in flight
    BACKOFF = "backoff"  # the last send failed; waiting for the retry schedule


class PeerLink:
    def __init__(self, peer: str, replicator: "Replicator"):
        self.peer = peer
        self.r = replicator
        self.cond = threading.Condition()
        # (event, monotonic time it was queued): the time measures the replication delay.
        self.backlog: collections.deque[tuple[Event, float]] = collections.deque()
        self.state = LinkState.IDLE
        self.last_start = float("-inf")
        self.stopped = False
        self.dropped = 0
        self.unexpected_failures = 0  # in a row, since the last success or drop
        self.thread = threading.Thread(target=self._run, name=f"link-{peer}", daemon=True)

    # -- called by other threads ----------------------------------------------------------------
    def enqueue(self, events: list[Event]) -> None:
        with self.cond:
            if self.stopped:
                return
            now = self.r.clock.monotonic()
            before = len(self.backlog)
            self.backlog.extend((event, now) for event in events)
            if len(self.backlog) > self.r.max_backlog:
                self._drop_locked("backlog over its bound")
            if self.state is LinkState.IDLE:
                self.state = LinkState.READY
                self.cond.notify()
            elif before < self.r.batch_goal <= len(self.backlog):
                self.cond.notify()  # a lingering batch reached its goal

    def wake(self) -> None:
        with self.cond:
            if self.state is LinkState.BACKOFF:
                self.state = LinkState.READY if self.backlog else LinkState.IDLE
                self.cond.notify()

    def stop(self) -> None:
        with self.cond:
            self.stopped = True
            self.cond.notify()

    def _drop_locked(self, why: str) -> None:
        if self.backlog:
            log.warning("dropping %d events queued for %s (%s); anti-entropy will catch it up",
                        len(self.backlog), self.peer, why)
            self.dropped += len(self.backlog)
            self.backlog.clear()

    # -- the sender thread ----------------------------------------------------------------------
    def _run(self) -> None:
        clock = self.r.clock
        while True:
            with self.cond:
                while not self.stopped and (self.state is not LinkState.READY or not self.backlog):
                    if self.state is LinkState.READY and not self.backlog:
                        self.state = LinkState.IDLE
                    self.cond.wait()
                if self.stopped:
                    return
                # A busy link lets the batch grow for `batch_linger` since the last start, then
                # on up to LINGER_CAP * batch_linger while it is short of its goal (two waits at
                # most: the first ends at `batch_linger` or earlier, the second at the cap or
                # when the goal is reached).
                linger = self.r.batch_linger
                for _ in range(2):
                    since = clock.monotonic() - self.last_start
                    size = len(self.backlog)
                    if size >= self.r.batch_max or since >= linger * LINGER_CAP or \
                            (since >= linger and size >= self.r.batch_goal):
                        break
                    self.cond.wait((linger if since < linger else linger * LINGER_CAP) - since)
                    if self.stopped:
                        return
                n = min(len(self.backlog), self.r.batch_max)
                batch = [self.backlog.popleft() for _ in range(n)]
                self.state = LinkState.SENDING
                self.last_start = clock.monotonic()
            if not batch:
                with self.cond:
                    self.state = LinkState.READY if self.backlog else LinkState.IDLE
                continue
            unexpected = False
            try:
                ok = self.r.send_batch(self, [event for event, _ in batch])
            except Exception:
                log.exception("replicate to %s failed unexpectedly", self.peer)
                ok, unexpected = False, True
            if ok:
                self.r.observe_delivery(batch)
            with self.cond:
                if ok:
                    self.unexpected_failures = 0
                    self.state = LinkState.READY if self.backlog else LinkState.IDLE
                elif unexpected and self.unexpected_failures + 1 >= MAX_UNEXPECTED_FAILURES:
                    # Whatever breaks the send may be in the batch itself: give it up rather
                    # than block every later event behind it.
                    log.error("dropping a batch of %d events for %s after %d unexpected "
                              "failures; anti-entropy will catch it up", len(batch), self.peer,
                              self.unexpected_failures + 1)
                    self.dropped += len(batch)
                    self.unexpected_failures = 0
                    self.state = LinkState.BACKOFF
                else:
                    self.unexpected_failures += unexpected
                    self.backlog.extendleft(reversed(batch))
                    if len(self.backlog) > self.r.max_backlog:
                        self._drop_locked("backlog over its bound")
                    self.state = LinkState.BACKOFF
            if not ok:
                self.r.schedule_retry(self)


class Replicator:
    def __init__(self, self_id: str, transport, schedule: RetrySchedule, clock, *,
                 max_backlog: int, batch_max: int, batch_linger: float,
                 on_success=lambda peer: None, metrics=None):
        self.self_id = self_id
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
        self.batch_goal = EVENTS_PER_PEER  # EVENTS_PER_PEER per link
        self._retry_wakeup = threading.Event()

    # -- membership ---------------------------------------------------------------------------
    def add_peer(self, peer: str) -> None:
        with self._lock:
            if peer in self._links:
                return
            link = self._links[peer] = PeerLink(peer, self)
            self.batch_goal = EVENTS_PER_PEER * len(self._links)
        link.thread.start()

    def remove_peer(self, peer: str) -> None:
        with self._lock:
            link = self._links.pop(peer, None)
            self.batch_goal = EVENTS_PER_PEER * max(1, len(self._links))
        if link is not None:
            with link.cond:
                link._drop_locked("peer removed")
            link.stop()
            self.schedule.forget(link)

    def peers(self) -> list[str]:
        with self._lock:
            return sorted(self._links)

    # -- events -------------------------------------------------------------------------------
    def enqueue(self, events: list[Event]) -> None:
        with self._lock:
            links = list(self._links.values())
        for link in links:
            link.enqueue(events)

    def _payload(self, batch: list[Event]) -> dict:
        return {"node_id": self.self_id, "events": [e.to_wire() for e in batch]}

    def send_batch(self, link: PeerLink, batch: list[Event]) -> bool:
        """Send one batch; False on a failure the transport expects (unreachable, refused).
        Anything else raises. Backoff is keyed by the link, never by the peer's name: a link
        removed while its send was in flight must not touch the state of the peer's next link."""
        peer = link.peer
        try:
            self.transport.post(peer, "/counter/replicate", self._payload(batch))
        except (PeerUnreachable, PeerRefused) as exc:
            attempt = self.schedule.attempts(link) + 1
            log.debug("replicate to %s failed (attempt %d): %s", peer, attempt, exc)
            if self.metrics:
                self.metrics.inc("dcounter_replicate_batches_failed_total")
            return False
        self.schedule.succeeded(link)
        # The batch arrived: what follows must not make it count as a failure.
        try:
            if self.metrics:
                self.metrics.inc("dcounter_replicate_batches_sent_total")
                self.metrics.inc("dcounter_replicate_events_sent_total", len(batch))
            self.on_success(peer)
        except Exception:
            log.exception("bookkeeping after a batch to %s failed; continuing", peer)
        return True

    def observe_delivery(self, batch: list[tuple[Event, float]]) -> None:
        """Record how long each event of an acknowledged batch took since it was queued."""
        if self.metrics:
            now = self.clock.monotonic()
            self.metrics.observe_histogram("dcounter_replication_delay_seconds",
                                           [now - queued for _, queued in batch])

    def schedule_retry(self, link: PeerLink) -> None:
        self.schedule.failed(link, self.clock.monotonic())
        self._retry_wakeup.set()

    # -- the retry loop's step ----------------------------------------------------------------
    def retry_once(self, now: float) -> list[str]:
        due = self.schedule.pop_due(now)
        for link in due:
            link.wake()  # a removed link is stopped: waking it does nothing
        return [link.peer for link in due]

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
        out = {}
        for link in links:
            with link.cond:
                out[link.peer] = {"backlog": len(link.backlog), "state": link.state.value,
                                  "attempts": self.schedule.attempts(link),
                                  "dropped": link.dropped}
        return out

    def stop(self) -> None:
        with self._lock:
            links = list(self._links.values())
        for link in links:
            link.stop()
        self._retry_wakeup.set()
        for link in links:
            link.thread.join(timeout=self.transport.timeout + 1)

    def drain(self, deadline: float) -> int:
        """After stop(): one last attempt per peer with a backlog, within `deadline`
        (monotonic). Returns how many events are still undelivered."""
        with self._lock:
            links = list(self._links.values())
        left = 0
        for link in links:
            with link.cond:
                pending = [event for event, _ in link.backlog]
                link.backlog.clear()
            while pending:
                remaining = deadline - self.clock.monotonic()
                if remaining <= 0:
                    left += len(pending)
                    break
                batch, pending = pending[:self.batch_max], pending[self.batch_max:]
                try:
                    self.transport.post(link.peer, "/counter/replicate", self._payload(batch),
                                        timeout=min(remaining, self.transport.timeout))
                except (PeerUnreachable, PeerRefused):
                    left += len(batch) + len(pending)
                    break
        return left
