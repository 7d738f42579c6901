"""One peer's outbox, driven by a fake clock: batching, linger, backoff, bounds and drops."""

import logging

import pytest

from dcounter.counter import Event
from dcounter.outbox import LINGER_CAP, LinkState, Outbox
from dcounter.retry import RetryPolicy, RetrySchedule
from tests.fakes import FakeClock

LINGER = 0.25  # for the linger tests: exact in binary, so the fake clock lands on it


def make(**kwargs) -> tuple[Outbox, FakeClock]:
    # The default linger (0.02 s, at most 0.07 s with the cap) is shorter than any backoff.
    options = {"max_backlog": 1000, "batch_max": 100, "batch_linger": 0.02, "goal": 12}
    options.update(kwargs)
    schedule = options.pop("schedule", None) or RetrySchedule(RetryPolicy(0.1, 10.0))
    return Outbox("p:1", schedule, **options), FakeClock()


def events(first: int, count: int) -> list[Event]:
    return [Event("o", seq, "c", 1) for seq in range(first, first + count)]


def ids(batch) -> list[str]:
    return [event.id for event, _ in batch]


def test_an_idle_outbox_sends_an_event_at_once():
    box, clock = make(batch_linger=LINGER)
    assert box.next_wakeup(clock.monotonic()) is None  # nothing to do until an event comes
    assert box.enqueue(events(1, 1), clock.monotonic()) is True
    assert box.next_wakeup(clock.monotonic()) == clock.monotonic()
    batch = box.take_batch(clock.monotonic())
    assert ids(batch) == ["o:1"] and batch[0][1] == clock.monotonic()  # queued at
    assert box.state is LinkState.SENDING


def test_one_batch_in_flight_at_a_time():
    box, clock = make()
    box.enqueue(events(1, 1), clock.monotonic())
    first = box.take_batch(clock.monotonic())
    assert box.enqueue(events(2, 3), clock.monotonic()) is False
    clock.advance(1.0)
    assert box.take_batch(clock.monotonic()) is None
    assert box.next_wakeup(clock.monotonic()) is None  # the outcome comes first
    box.sent_ok(first, clock.monotonic())
    assert ids(box.take_batch(clock.monotonic())) == ["o:2", "o:3", "o:4"]


def test_a_busy_outbox_lingers_then_sends_a_short_batch_at_the_cap():
    box, clock = make(batch_linger=LINGER)
    t0 = clock.monotonic()
    box.enqueue(events(1, 1), t0)
    box.sent_ok(box.take_batch(t0), t0 + 0.001)
    clock.advance(0.005)
    assert box.enqueue(events(2, 3), clock.monotonic()) is True  # the sender looks again ...
    assert box.take_batch(clock.monotonic()) is None            # ... and waits for `linger`
    assert box.next_wakeup(clock.monotonic()) == pytest.approx(t0 + LINGER)
    clock.advance(t0 + LINGER - clock.monotonic())
    assert box.take_batch(clock.monotonic()) is None  # short of its goal: on to the cap
    assert box.next_wakeup(clock.monotonic()) == pytest.approx(t0 + LINGER * LINGER_CAP)
    clock.advance(t0 + LINGER * LINGER_CAP - clock.monotonic())
    assert ids(box.take_batch(clock.monotonic())) == ["o:2", "o:3", "o:4"]


def test_a_lingering_batch_goes_once_it_reaches_its_goal():
    box, clock = make(batch_linger=LINGER, goal=12)
    t0 = clock.monotonic()
    box.enqueue(events(1, 1), t0)
    box.sent_ok(box.take_batch(t0), t0)
    clock.advance(LINGER)
    box.enqueue(events(2, 10), clock.monotonic())
    assert box.take_batch(clock.monotonic()) is None
    assert box.enqueue(events(12, 1), clock.monotonic()) is False  # 11: not yet
    assert box.enqueue(events(13, 1), clock.monotonic()) is True   # 12: the goal
    assert len(box.take_batch(clock.monotonic())) == 12


def test_a_goal_reached_within_the_linger_wakes_the_sender_only_when_ripe():
    box, clock = make(batch_linger=LINGER, goal=4, batch_max=10)
    t0, tick = clock.monotonic(), 1 / 1024  # exact in binary
    box.enqueue(events(1, 1), t0)
    box.sent_ok(box.take_batch(t0), t0)
    assert box.enqueue(events(2, 1), t0 + tick) is True  # idle -> ready: the sender looks
    assert box.next_wakeup(t0 + tick) == t0 + LINGER      # and sleeps until the linger ends
    # The goal within the linger wakes nobody: the sender is due at the linger's end anyway.
    assert box.enqueue(events(3, 3), t0 + 2 * tick) is False
    assert box.take_batch(t0 + 2 * tick) is None
    # A full batch goes at once, so it wakes the sender.
    assert box.enqueue(events(6, 6), t0 + 3 * tick) is True
    assert ids(box.take_batch(t0 + 3 * tick)) == [f"o:{seq}" for seq in range(2, 12)]
    box.sent_ok([], t0 + 4 * tick)
    box.enqueue(events(12, 3), t0 + 4 * tick)
    after = t0 + 3 * tick + LINGER
    assert box.take_batch(after) is None  # one event short of the goal: on to the cap
    # The goal reached past the linger makes the batch ripe: the sender is woken for it.
    assert box.enqueue(events(15, 1), after) is True
    assert len(box.take_batch(after)) == 4


def test_the_goal_does_not_beat_the_linger():
    box, clock = make(batch_linger=LINGER, goal=2)
    t0 = clock.monotonic()
    box.enqueue(events(1, 1), t0)
    box.sent_ok(box.take_batch(t0), t0)
    box.enqueue(events(2, 5), t0 + 0.001)
    assert box.take_batch(t0 + 0.001) is None  # at most one batch start per linger
    assert len(box.take_batch(t0 + LINGER)) == 5


def test_batches_hold_at_most_batch_max_and_a_full_one_does_not_linger():
    box, clock = make(batch_linger=LINGER, batch_max=10)
    t0 = clock.monotonic()
    box.enqueue(events(1, 1), t0)
    box.sent_ok(box.take_batch(t0), t0)
    box.enqueue(events(2, 25), t0)
    sizes = []
    while (batch := box.take_batch(t0)) is not None:
        sizes.append(len(batch))
        box.sent_ok(batch, t0)
    assert sizes == [10, 10]  # full batches go within the linger; the short rest waits
    assert len(box.take_batch(t0 + LINGER * LINGER_CAP)) == 5


def test_a_failed_batch_waits_for_its_backoff_then_goes_again():
    box, clock = make()
    box.enqueue(events(1, 2), clock.monotonic())
    delays = []
    for _ in range(4):
        batch = box.take_batch(clock.monotonic())
        assert ids(batch) == ["o:1", "o:2"]
        delays.append(box.send_failed(batch, clock.monotonic()))
        assert box.state is LinkState.BACKOFF
        assert box.next_wakeup(clock.monotonic()) == clock.monotonic() + delays[-1]
        assert box.take_batch(clock.monotonic() + delays[-1] * 0.99) is None
        clock.advance(delays[-1])
    assert delays == pytest.approx([0.1, 0.2, 0.4, 0.8])
    assert box.attempts == 4


def test_a_failed_batch_goes_back_ahead_of_newer_events():
    box, clock = make()
    box.enqueue(events(1, 2), clock.monotonic())
    batch = box.take_batch(clock.monotonic())
    box.enqueue(events(3, 1), clock.monotonic())
    assert box.enqueue(events(4, 1), clock.monotonic()) is False  # in backoff soon: no hurry
    delay = box.send_failed(batch, clock.monotonic())
    clock.advance(delay)
    assert ids(box.take_batch(clock.monotonic())) == ["o:1", "o:2", "o:3", "o:4"]


def test_a_success_resets_the_backoff():
    box, clock = make()
    box.enqueue(events(1, 1), clock.monotonic())
    for expected in (0.1, 0.2, 0.4):
        batch = box.take_batch(clock.monotonic())
        assert box.send_failed(batch, clock.monotonic()) == pytest.approx(expected)
        clock.advance(expected)
    box.sent_ok(box.take_batch(clock.monotonic()), clock.monotonic())
    assert box.attempts == 0 and box.state is LinkState.IDLE
    clock.advance(1.0)
    box.enqueue(events(2, 1), clock.monotonic())
    assert box.send_failed(box.take_batch(clock.monotonic()), clock.monotonic()) == \
        pytest.approx(0.1)


def test_past_its_bound_the_backlog_is_dropped(caplog):
    box, clock = make(max_backlog=5)
    box.enqueue(events(1, 1), clock.monotonic())
    batch = box.take_batch(clock.monotonic())
    box.enqueue(events(2, 4), clock.monotonic())
    with caplog.at_level(logging.WARNING, logger="dcounter.outbox"):
        box.enqueue(events(6, 2), clock.monotonic())  # 6 waiting > 5
    assert len(box.backlog) == 0 and box.dropped == 6
    assert "p:1" in caplog.text and "anti-entropy" in caplog.text
    box.enqueue(events(8, 5), clock.monotonic())
    box.send_failed(batch, clock.monotonic())  # put back: 6 > 5 again
    assert len(box.backlog) == 0 and box.dropped == 12


def test_a_batch_failing_unexpectedly_is_dropped_after_five_tries(caplog):
    box, clock = make()
    box.enqueue(events(1, 2), clock.monotonic())
    with caplog.at_level(logging.ERROR, logger="dcounter.outbox"):
        for attempt in range(1, 6):
            batch = box.take_batch(clock.monotonic())
            assert ids(batch) == ["o:1", "o:2"]
            if attempt == 3:
                box.enqueue(events(3, 1), clock.monotonic())  # later events wait behind it
            clock.advance(box.send_failed(batch, clock.monotonic(), unexpected=True))
    assert box.dropped == 2 and ids(box.backlog) == ["o:3"]  # the retries did not take it
    assert [r.levelno for r in caplog.records] == [logging.ERROR]
    assert "p:1" in caplog.text and "dropping a batch of 2 events" in caplog.text
    assert ids(box.take_batch(clock.monotonic())) == ["o:3"]  # the later event still goes


def test_expected_failures_never_drop_a_batch():
    box, clock = make()
    box.enqueue(events(1, 1), clock.monotonic())
    for _ in range(20):
        clock.advance(box.send_failed(box.take_batch(clock.monotonic()), clock.monotonic()))
    assert box.dropped == 0 and ids(box.take_batch(clock.monotonic())) == ["o:1"]


def test_unexpected_failures_count_in_a_row_only():
    box, clock = make()
    box.enqueue(events(1, 1), clock.monotonic())
    for _ in range(4):
        clock.advance(box.send_failed(box.take_batch(clock.monotonic()), clock.monotonic(),
                                      unexpected=True))
    box.sent_ok(box.take_batch(clock.monotonic()), clock.monotonic())
    box.enqueue(events(2, 1), clock.monotonic())
    clock.advance(1.0)
    clock.advance(box.send_failed(box.take_batch(clock.monotonic()), clock.monotonic(),
                                  unexpected=True))
    assert box.dropped == 0 and ids(box.backlog) == ["o:2"]


def test_an_empty_outbox_leaves_its_backoff_idle():
    box, clock = make(max_backlog=1)
    box.enqueue(events(1, 1), clock.monotonic())
    batch = box.take_batch(clock.monotonic())
    box.enqueue(events(2, 1), clock.monotonic())
    delay = box.send_failed(batch, clock.monotonic())  # put back: over the bound, dropped
    clock.advance(delay)
    assert box.take_batch(clock.monotonic()) is None and box.state is LinkState.IDLE
    assert box.enqueue(events(3, 1), clock.monotonic()) is True


def test_an_old_outboxs_outcome_never_touches_its_successor():
    """Two outboxes for the same peer name share one schedule: a removed one's late success
    must leave the new one's backoff alone."""
    schedule = RetrySchedule(RetryPolicy(0.1, 10.0))
    old, clock = make(schedule=schedule)
    new, _ = make(schedule=schedule)
    old.enqueue(events(1, 1), clock.monotonic())
    in_flight = old.take_batch(clock.monotonic())
    old.drop("peer removed")
    old.forget()
    new.enqueue(events(2, 1), clock.monotonic())
    new.send_failed(new.take_batch(clock.monotonic()), clock.monotonic())
    old.sent_ok(in_flight, clock.monotonic())
    assert new.attempts == 1 and new.state is LinkState.BACKOFF
    assert schedule.pop_due(clock.monotonic() + 0.1) == [new]


# -- a sender at saturation: batches sized by count, or by time when starved ---------------------

BUDGET = 0.02 * LINGER_CAP  # the default linger's delay budget: 70 ms


def saturate(*, every: float, flight: float, seconds: float = 2.0, goal: int = 48):
    """Drive one outbox as its sender thread does: events arrive every `every` seconds, each
    batch takes `flight` seconds to be acknowledged, and the sender looks at the outbox only
    when `enqueue` wakes it, after an outcome, or at `next_wakeup`. Returns the batches
    (time taken, [(event, queued at)]) in order."""
    box, clock = make(max_backlog=100_000, batch_max=2_000, batch_linger=0.02, goal=goal)
    tick = 1 / 4096  # exact in binary: the fake clock lands on every step
    steps, per_event = round(seconds / tick), max(1, round(every / tick))
    flight_steps = round(flight / tick)
    batches, seq, due, back_at, in_flight = [], 1, None, None, None
    for step in range(steps):
        now = clock.monotonic()
        if in_flight is not None and step >= back_at:
            box.sent_ok(in_flight, now)
            in_flight, due = None, now  # the sender loops straight back to the outbox
        if step % per_event == 0:
            if box.enqueue(events(seq, 1), now):
                due = now
            seq += 1
        if in_flight is None and due is not None and now >= due:
            batch = box.take_batch(now)
            if batch is None:
                due = box.next_wakeup(now)
            else:
                batches.append((now, batch))
                in_flight, back_at, due = batch, step + flight_steps, None
        clock.advance(tick)
    return batches


def waits(batches) -> list[float]:
    return [taken - queued for taken, batch in batches for _, queued in batch]


def test_a_starved_link_sends_one_request_per_delay_budget_and_no_event_waits_longer():
    # 250 events a second on a link whose goal is 48 (a five-node cluster): the goal is never
    # reached within the budget, so time sizes the batches.
    batches = saturate(every=0.004, flight=0.01)
    starts = [taken for taken, _ in batches]
    gaps = [b - a for a, b in zip(starts[1:], starts[2:])]  # the first goes at once: idle
    assert min(gaps) >= BUDGET - 0.001 and max(gaps) <= BUDGET + 0.005
    assert len(batches) <= 2.0 / BUDGET + 2
    assert max(waits(batches)) <= BUDGET + 0.001
    assert sum(len(batch) for _, batch in batches[1:-1]) / len(batches[2:]) >= 16


def test_a_flight_longer_than_the_budget_paces_the_link_and_everything_goes_at_its_end():
    # Acknowledgements take 120 ms (a peer starved of CPU): one batch in flight at a time, the
    # next taken the moment the previous is acknowledged, holding all that arrived meanwhile.
    batches = saturate(every=0.004, flight=0.12)
    starts = [taken for taken, _ in batches]
    gaps = [b - a for a, b in zip(starts, starts[1:])]
    assert all(gap == pytest.approx(0.12, abs=0.001) for gap in gaps)
    assert all(len(batch) >= 29 for _, batch in batches[1:])
    assert max(waits(batches)) <= 0.12 + 0.001


def test_a_busy_link_that_reaches_its_goal_sends_a_batch_per_linger():
    # 2000 events a second, goal 24 (three nodes): batches go at the linger, each past its goal.
    batches = saturate(every=0.0005, flight=0.005, goal=24)
    starts = [taken for taken, _ in batches]
    gaps = [b - a for a, b in zip(starts[1:], starts[2:])]
    assert all(gap == pytest.approx(0.02, abs=0.001) for gap in gaps)
    assert all(len(batch) >= 24 for _, batch in batches[2:])
    assert max(waits(batches)) <= 0.02 + 0.001
