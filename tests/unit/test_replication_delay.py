"""The replication delay histogram: per event and peer, from queueing to the peer's 2xx."""

import pytest

from dcounter.counter import Event
from dcounter.metrics import Metrics
from dcounter.replication import Replicator
from dcounter.retry import RetryPolicy, RetrySchedule
from tests.fakes import FakeClock

parser = pytest.importorskip("prometheus_client.parser",
                             reason="prometheus_client is a test dependency (pip install "
                                    "-e '.[test]')")

NAME = "dcounter_replication_delay_seconds"


def buckets(metrics: Metrics) -> dict[float, float]:
    family = {f.name: f for f in parser.text_string_to_metric_families(metrics.render())}[NAME]
    assert family.type == "histogram"
    return {float(s.labels["le"]): s.value for s in family.samples
            if s.name == NAME + "_bucket"}


def test_a_fresh_histogram_is_empty_and_parses():
    counts = buckets(Metrics())
    assert counts[float("inf")] == 0 and set(counts.values()) == {0}


def test_observations_land_in_cumulative_buckets():
    m = Metrics()
    m.observe_histogram(NAME, [0.004, 0.1, 0.0001, 20.0, 0.004])
    m.observe_histogram(NAME, [])
    counts = buckets(m)
    assert counts[0.001] == 1 and counts[0.005] == 3 and counts[0.075] == 3
    assert counts[0.1] == 4  # a bucket holds what is at most its bound
    assert counts[10.0] == 4 and counts[float("inf")] == 5


class _Transport:
    timeout = 1.0

    def post(self, peer, path, payload, timeout=None):
        return {}


def test_a_delivered_batch_records_each_event_from_when_it_was_queued():
    clock, m = FakeClock(), Metrics()
    replicator = Replicator("a:1", _Transport(), RetrySchedule(RetryPolicy(0.1, 1.0)), clock,
                            max_backlog=100, batch_max=10, batch_linger=0.0, metrics=m)
    first, later = Event("o", 1, "c", 1), Event("o", 2, "c", 1)
    queued = clock.monotonic()
    clock.advance(0.03)
    replicator.observe_delivery([(first, queued), (later, queued + 0.02)])
    counts = buckets(m)
    assert counts[0.01] == 1 and counts[0.02] == 1 and counts[0.03] == 2
