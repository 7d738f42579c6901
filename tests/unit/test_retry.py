"""Backoff policy and the retry schedule."""

import pytest

from dcounter.retry import RetryPolicy, RetrySchedule
from tests.fakes import FakeClock


def test_delay_sequence_with_base_0_1_and_cap_10():
    policy = RetryPolicy(base=0.1, cap=10.0)
    assert [policy.delay(n) for n in range(1, 10)] == \
        [0.1, 0.2, 0.4, 0.8, 1.6, 3.2, 6.4, 10.0, 10.0]


def test_delay_stays_at_the_cap_for_huge_attempt_counts():
    policy = RetryPolicy(base=0.1, cap=10.0)
    assert policy.delay(64) == policy.delay(65) == policy.delay(10_000) == 10.0


def test_attempts_count_from_one():
    with pytest.raises(ValueError):
        RetryPolicy().delay(0)


def test_schedule_backs_off_per_peer_and_resets_after_success():
    clock = FakeClock()
    schedule = RetrySchedule(RetryPolicy(0.1, 10.0))
    delays = [schedule.failed("a", clock.monotonic()) for _ in range(9)]
    assert delays == [0.1, 0.2, 0.4, 0.8, 1.6, 3.2, 6.4, 10.0, 10.0]
    assert schedule.attempts("a") == 9 and schedule.is_waiting("a")
    assert schedule.failed("b", clock.monotonic()) == 0.1  # independent per peer
    schedule.succeeded("a")
    assert schedule.attempts("a") == 0 and not schedule.is_waiting("a")
    assert schedule.failed("a", clock.monotonic()) == 0.1


def test_pop_due_returns_due_peers_in_due_order_once():
    clock = FakeClock()
    schedule = RetrySchedule(RetryPolicy(0.1, 10.0))
    t0 = clock.monotonic()
    schedule.failed("slow", t0)
    schedule.failed("slow", t0)      # due t0 + 0.2; the entry for t0 + 0.1 is stale
    schedule.failed("fast", t0 + 0.05)  # due t0 + 0.15
    assert schedule.next_due() == pytest.approx(t0 + 0.15)
    assert schedule.pop_due(t0 + 0.1) == []
    assert schedule.pop_due(t0 + 1) == ["fast", "slow"]
    assert schedule.pop_due(t0 + 2) == []
    assert schedule.next_due() is None
    assert schedule.attempts("slow") == 2  # popping is not a success


def test_pop_due_breaks_ties_by_insertion_order():
    schedule = RetrySchedule(RetryPolicy(0.1, 10.0))
    for peer in ("z", "a", "m"):
        schedule.failed(peer, 5.0)
    assert schedule.pop_due(5.1) == ["z", "a", "m"]


class Unorderable:
    """A peer handle that refuses ordering comparisons, as any payload might."""

    def __lt__(self, other):
        raise TypeError("payloads must never be compared")

    __gt__ = __le__ = __ge__ = __lt__


def test_heap_entries_never_compare_payloads():
    schedule = RetrySchedule(RetryPolicy(0.1, 10.0))
    peers = [Unorderable() for _ in range(50)]
    for peer in peers:
        schedule.failed(peer, 0.0)  # identical due times
    assert schedule.pop_due(1.0) == peers


def test_succeeded_or_forget_cancels_a_waiting_retry():
    schedule = RetrySchedule(RetryPolicy(0.1, 10.0))
    schedule.failed("a", 0.0)
    schedule.failed("b", 0.0)
    schedule.succeeded("a")
    schedule.forget("b")
    assert schedule.pop_due(100.0) == []
    assert schedule.next_due() is None
