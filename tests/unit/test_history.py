"""The status page's recent past: one sample per interval in a bounded ring (pure)."""

import pytest

from dcounter.config import Config
from dcounter.history import History, quantile
from dcounter.node import Node
from tests.fakes import FakeClock

BOUNDS = (0.01, 0.1, 1.0)


def counts(*per_bucket):
    return list(per_bucket)


def test_the_first_observation_is_only_a_baseline():
    clock, history = FakeClock(), History(BOUNDS)
    assert history.observe(clock.monotonic(), 100, 50, counts(0, 0, 0, 0)) == 0
    assert history.to_dict()["increments_per_second"] == []


def test_a_sample_is_the_rate_over_the_time_that_passed():
    clock, history = FakeClock(), History(BOUNDS, interval=5.0)
    history.observe(clock.monotonic(), 100, 0, counts(0, 0, 0, 0))
    clock.advance(2.0)
    assert history.observe(clock.monotonic(), 110, 0, counts(0, 0, 0, 0)) == 0  # slot not over
    clock.advance(3.0)
    assert history.observe(clock.monotonic(), 150, 25, counts(0, 0, 0, 0)) == 1
    view = history.to_dict()
    assert view["interval"] == 5.0
    assert view["increments_per_second"] == [10.0]
    assert view["replicated_per_second"] == [5.0]
    assert view["replication_delay_p99_ms"] == [None]  # nothing was delivered


def test_the_delay_is_the_99th_percentile_of_what_was_delivered_in_the_interval():
    clock, history = FakeClock(), History(BOUNDS, interval=5.0)
    history.observe(clock.monotonic(), 0, 0, counts(1000, 0, 0, 0))  # before: not counted
    clock.advance(5.0)
    history.observe(clock.monotonic(), 0, 0, counts(1000 + 99, 0, 1, 0))
    clock.advance(5.0)
    history.observe(clock.monotonic(), 0, 0, counts(1000 + 99, 100, 1, 0))
    p99 = history.to_dict()["replication_delay_p99_ms"]
    # 99 fast ones and one in (0.1, 1]: the 99th percentile sits at the fast bucket's top.
    assert p99[0] == pytest.approx(10.0)
    assert 10.0 < p99[1] <= 100.0


def test_a_late_observation_fills_every_slot_it_covers():
    clock, history = FakeClock(), History(BOUNDS, interval=5.0)
    history.observe(clock.monotonic(), 0, 0)
    clock.advance(15.0)
    assert history.observe(clock.monotonic(), 300, 0) == 3
    assert history.to_dict()["increments_per_second"] == [20.0, 20.0, 20.0]


def test_slots_keep_to_the_interval_when_observations_come_slightly_early():
    clock, history = FakeClock(), History(BOUNDS, interval=5.0)
    history.observe(clock.monotonic(), 0, 0)
    added = 0
    for _ in range(100):  # a loop that runs every 4.9 s: 490 s are 98 slots
        clock.advance(4.9)
        added += history.observe(clock.monotonic(), 0, 0)
    assert added == 98 and len(history.to_dict()["increments_per_second"]) == 98


def test_the_ring_is_bounded():
    clock, history = FakeClock(), History(BOUNDS, interval=5.0, size=120)
    history.observe(clock.monotonic(), 0, 0)
    for i in range(1, 301):
        clock.advance(5.0)
        history.observe(clock.monotonic(), i * 5, 0)
    rates = history.to_dict()["increments_per_second"]
    assert len(rates) == 120 and set(rates) == {1.0}
    clock.advance(3600.0)  # a paused process: one fill, still bounded
    assert history.observe(clock.monotonic(), 1500, 0) == 120
    assert history.to_dict()["increments_per_second"] == [0.0] * 120


def test_totals_that_went_down_start_a_new_baseline():
    clock, history = FakeClock(), History(BOUNDS, interval=5.0)
    history.observe(clock.monotonic(), 100, 0)
    clock.advance(5.0)
    assert history.observe(clock.monotonic(), 5, 0) == 0
    clock.advance(5.0)
    assert history.observe(clock.monotonic(), 10, 0) == 1
    assert history.to_dict()["increments_per_second"] == [1.0]


def test_quantile_of_nothing_is_none_and_of_the_overflow_bucket_is_the_last_bound():
    assert quantile(0.99, BOUNDS, [0, 0, 0, 0]) is None
    assert quantile(0.99, BOUNDS, [0, 0, 0, 7]) == 1.0
    assert quantile(0.5, BOUNDS, [0, 2, 0, 0]) == pytest.approx(0.055)


def test_bad_shape_is_refused():
    with pytest.raises(ValueError):
        History(BOUNDS, interval=0)
    with pytest.raises(ValueError):
        History(BOUNDS, size=0)


def test_a_node_samples_what_it_acknowledged_into_its_status():
    clock = FakeClock()
    node = Node(Config(port=0, in_memory=True, drain_timeout=0), clock=clock)
    node.open()
    node.writer.start()
    try:
        node.sample_history()
        for _ in range(10):
            node.increment("apples", 1, None)
        clock.advance(5.0)
        assert node.sample_history() == 1
        history = node.status()["history"]
        assert history["interval"] == 5.0
        assert history["increments_per_second"] == [2.0]
        assert history["replication_delay_p99_ms"] == [None]
    finally:
        node.stop(leave=False)
