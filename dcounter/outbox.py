"""One peer's outbox: what waits for the peer, when a batch goes, and what is given up (pure).

Theory of operation. Events queue in a backlog as they are committed. `take_batch(now)` answers
whether a batch goes now, and which; `next_wakeup(now)` when to ask again (None: only after the
next `enqueue`). The sender reports each batch's outcome with `sent_ok` or `send_failed`. At
most one batch is in flight.

- Batching. An idle link sends an event at once. A busy link starts a batch at most once per
  `batch_linger` seconds, so under load one request carries many events; past `batch_linger` a
  batch short of its goal (`EVENTS_PER_PEER` events per peer of the cluster) waits on for more,
  up to `LINGER_CAP` times `batch_linger` since the last start. Under load a node then sends at
  most one request per `EVENTS_PER_PEER` events per peer, so replication costs at most
  1/`EVENTS_PER_PEER` requests per increment whatever the cluster size. A batch holds at most
  `batch_max` events, a bulk event weighing as many as its items (so that a batch of bulk
  events stays within a peer's body limit), and always at least one event.
- Backoff. A failed send puts the batch back at the head of the backlog and asks the
  `RetrySchedule` for the next attempt (`min(base * 2**(attempt-1), cap)`); the outbox sends
  nothing before then. A success resets the backoff. The schedule is keyed by the outbox
  itself, so the outcome of a removed peer's outbox never touches the outbox that replaces it.
- Bounds. Past `max_backlog` events the backlog is dropped; a batch whose send failed for an
  unexpected reason (not unreachable, not refused) `max_unexpected` times in a row is dropped,
  logged at ERROR, so one poisoned batch cannot block every later event (while it is retried
  it does not grow, so only its own events are given up). Either way the peer
  catches up through anti-entropy: every event stays in the prefix of the nodes that applied it.

No threads, sleeps, sockets or clock reads: time comes in as `now` (monotonic seconds). Not
thread-safe: its link calls it under the link's lock.
"""

import collections
import enum
import logging

from dcounter.counter import Event
from dcounter.retry import RetrySchedule

log = logging.getLogger(__name__)

EVENTS_PER_PEER = 12  # a busy link's batch goal, per peer: replication stays under 1/12
                      # request per increment, leaving room for heartbeats under 0.1
LINGER_CAP = 3.5      # times batch_linger: the longest a busy link lets a batch grow
MAX_UNEXPECTED_FAILURES = 5  # sends of a batch that fail for an unexpected reason before it is
                             # dropped and left to anti-entropy


def batch_goal(links: int) -> int:
    """A busy link's batch goal with `links` links: EVENTS_PER_PEER per peer of the cluster."""
    return EVENTS_PER_PEER * max(1, links)


# (event, monotonic time it was queued): the time measures the replication delay.
Queued = tuple[Event, float]


class LinkState(enum.Enum):
    IDLE = "idle"        # nothing to send
    READY = "ready"      # events waiting, may send (once the batch is ripe)
    SENDING = "sending"  # a batch is in flight
    BACKOFF = "backoff"  # the last send failed; waiting for the retry schedule


class Outbox:
    def __init__(self, peer: str, schedule: RetrySchedule, *, max_backlog: int, batch_max: int,
                 batch_linger: float, goal: int = EVENTS_PER_PEER,
                 max_unexpected: int = MAX_UNEXPECTED_FAILURES):
        self.peer = peer
        self.schedule = schedule
        self.max_backlog = max_backlog
        self.batch_max = batch_max
        self.batch_linger = batch_linger
        self.goal = goal  # the replicator sets it: EVENTS_PER_PEER per peer of the cluster
        self.max_unexpected = max_unexpected
        self.backlog: collections.deque[Queued] = collections.deque()
        self.state = LinkState.IDLE
        self.in_flight: list[Queued] | None = None
        self.last_start = float("-inf")
        self.retry_at: float | None = None
        self.unexpected_failures = 0  # in a row, since the last success or drop
        # After an unexpected failure the retried batch holds the same events and no more, so
        # that only those are dropped if it keeps failing.
        self.retry_limit: int | None = None
        self.dropped = 0

    @property
    def attempts(self) -> int:
        """Failed sends since the last success."""
        return self.schedule.attempts(self)

    # -- input ----------------------------------------------------------------------------------
    def enqueue(self, events: list[Event], now: float) -> bool:
        """Queue events; True when the sender should look again (`take_batch`) now: an idle
        link has work, or a lingering batch just became ripe. A batch that reaches its goal
        within the linger wakes nobody: the sender is already due at the end of the linger."""
        before = len(self.backlog)
        self.backlog.extend((event, now) for event in events)
        if len(self.backlog) > self.max_backlog:
            self.drop("backlog over its bound")
        size = len(self.backlog)
        if not size:
            return False
        if self.state is LinkState.IDLE:
            self.state = LinkState.READY
            return True
        return self.state is LinkState.READY and \
            (before < self.goal <= size or before < self.batch_max <= size) and self._ripe(now)

    def drop(self, why: str) -> int:
        """Give up what waits (not what is in flight); returns how many events."""
        n = len(self.backlog)
        if n:
            log.warning("dropping %d events queued for %s (%s); anti-entropy will catch it up",
                        n, self.peer, why)
            self.dropped += n
            self.backlog.clear()
        return n

    def take_all(self) -> list[Queued]:
        """Everything that waits, removed (the last attempt at shutdown)."""
        out = list(self.backlog)
        self.backlog.clear()
        return out

    def forget(self) -> None:
        """The peer is gone: its backoff with it."""
        self.schedule.forget(self)

    # -- decisions ------------------------------------------------------------------------------
    def take_batch(self, now: float) -> list[Queued] | None:
        """The batch to send now, or None. A batch taken is in flight until its outcome is
        reported."""
        self._end_backoff(now)
        if self.state is not LinkState.READY:
            return None
        if not self.backlog:
            self.state = LinkState.IDLE
            return None
        if not self._ripe(now):
            return None
        n = min(len(self.backlog), self.batch_max, self.retry_limit or self.batch_max)
        batch = take_weighted(self.backlog, n, self.batch_max)
        self.state = LinkState.SENDING
        self.in_flight = batch
        self.last_start = now
        return batch

    def next_wakeup(self, now: float) -> float | None:
        """When `take_batch` may next give a batch (≤ now: at once); None: not before the next
        `enqueue` or outcome."""
        if self.state is LinkState.BACKOFF:
            return self.retry_at
        if self.state is not LinkState.READY or not self.backlog:
            return None
        if self._ripe(now):
            return now
        linger = self.batch_linger
        since = now - self.last_start
        return self.last_start + (linger if since < linger else linger * LINGER_CAP)

    def _ripe(self, now: float) -> bool:
        since, size, linger = now - self.last_start, len(self.backlog), self.batch_linger
        return size >= self.batch_max or since >= linger * LINGER_CAP or \
            (since >= linger and size >= self.goal)

    def _end_backoff(self, now: float) -> None:
        if self.state is LinkState.BACKOFF and (self.retry_at is None or now >= self.retry_at):
            self.state = LinkState.READY if self.backlog else LinkState.IDLE
            self.retry_at = None

    # -- outcomes -------------------------------------------------------------------------------
    def sent_ok(self, batch: list[Queued], now: float) -> None:
        self.schedule.succeeded(self)
        self.unexpected_failures = 0
        self.retry_limit = None
        self.in_flight = None
        self.retry_at = None
        self.state = LinkState.READY if self.backlog else LinkState.IDLE

    def send_failed(self, batch: list[Queued], now: float, unexpected: bool = False) -> float:
        """The batch did not arrive. `unexpected`: not a failure the transport expects
        (unreachable, refused) but anything else. Returns the delay before the next attempt."""
        self.in_flight = None
        delay = self.schedule.failed(self, now)
        self.retry_at = now + delay
        self.state = LinkState.BACKOFF
        if unexpected and batch:
            self.unexpected_failures += 1
            if self.unexpected_failures >= self.max_unexpected:
                # Whatever breaks the send may be in the batch itself: give it up rather than
                # block every later event behind it.
                log.error("dropping a batch of %d events for %s after %d unexpected failures; "
                          "anti-entropy will catch it up", len(batch), self.peer,
                          self.unexpected_failures)
                self.dropped += len(batch)
                self.unexpected_failures = 0
                self.retry_limit = None
                return delay
            self.retry_limit = len(batch)
        self.backlog.extendleft(reversed(batch))
        if len(self.backlog) > self.max_backlog:
            self.drop("backlog over its bound")
        return delay


def take_weighted(backlog: "collections.deque[Queued]", n: int, limit: int) -> list[Queued]:
    """Up to `n` events from the head of `backlog`, each weighing 1, a bulk event's items or a
    reset's covers, whose weight stays within `limit` (at least one event is taken)."""
    batch, weight = [], 0
    while len(batch) < n:
        event = backlog[0][0]
        if event.reset is not None:
            weight += max(1, len(event.reset.covers))
        else:
            weight += 1 if event.items is None else len(event.items)
        if batch and weight > limit:
            break
        batch.append(backlog.popleft())
    return batch
