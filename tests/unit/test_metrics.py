"""The metrics registry renders text that a real Prometheus parser accepts."""

import pytest

from dcounter.metrics import Metrics

parser = pytest.importorskip("prometheus_client.parser",
                             reason="prometheus_client is a test dependency (pip install "
                                    "-e '.[test]')")


def families(text: str) -> dict:
    return {f.name: f for f in parser.text_string_to_metric_families(text)}


def sample(family, name=None, **labels):
    for s in family.samples:
        if (name is None or s.name == name) and s.labels == labels:
            return s.value
    raise AssertionError(f"no sample {name} {labels} in {family.samples}")


def test_fresh_registry_parses_and_unlabelled_counters_start_at_zero():
    text = Metrics().render()
    parsed = families(text)
    assert parsed["dcounter_increments_local"].type == "counter"
    assert sample(parsed["dcounter_increments_local"], "dcounter_increments_local_total") == 0
    assert sample(parsed["dcounter_replicate_batches_failed"]) == 0
    # Labelled counters have no series until something happens.
    assert parsed["dcounter_http_requests"].samples == []
    commit = parsed["dcounter_commit_seconds"]
    assert commit.type == "summary"
    assert sample(commit, "dcounter_commit_seconds_count") == 0


def test_counters_summaries_and_gauges_move():
    m = Metrics()
    m.inc("dcounter_http_requests_total", route="/counter/increment", status="200")
    m.inc("dcounter_http_requests_total", route="/counter/increment", status="200")
    m.inc("dcounter_http_requests_total", route="unknown", status="404")
    m.inc("dcounter_increments_local_total", 3)
    m.observe("dcounter_commit_seconds", 0.25)
    m.observe("dcounter_commit_seconds", 0.5)
    m.gauge("dcounter_peers_alive", "Peers alive.", lambda: 2)
    m.gauge("dcounter_replication_backlog_events", "Backlog per peer.",
            lambda: [({"peer": "a:1"}, 5), ({"peer": "b:2"}, 0)])
    parsed = families(m.render())
    requests = parsed["dcounter_http_requests"]
    assert sample(requests, route="/counter/increment", status="200") == 2
    assert sample(requests, route="unknown", status="404") == 1
    assert sample(parsed["dcounter_increments_local"]) == 3
    assert sample(parsed["dcounter_commit_seconds"], "dcounter_commit_seconds_sum") == 0.75
    assert sample(parsed["dcounter_commit_seconds"], "dcounter_commit_seconds_count") == 2
    assert parsed["dcounter_peers_alive"].type == "gauge"
    assert sample(parsed["dcounter_peers_alive"]) == 2
    assert sample(parsed["dcounter_replication_backlog_events"], peer="a:1") == 5


def test_awkward_label_values_help_texts_and_numbers_survive():
    m = Metrics()
    nasty = 'a"b\\c\nd'
    m.inc("dcounter_http_requests_total", route=nasty, status="400")
    m.gauge("dcounter_weird", 'help with \\ and\na newline', lambda: float("inf"))
    m.gauge("dcounter_fraction", "a float", lambda: 0.125)
    m.gauge("dcounter_broken", "raises", lambda: 1 / 0)
    text = m.render()
    parsed = families(text)
    assert sample(parsed["dcounter_http_requests"], route=nasty, status="400") == 1
    assert parsed["dcounter_weird"].documentation == 'help with \\ and\na newline'
    assert sample(parsed["dcounter_weird"]) == float("inf")
    assert sample(parsed["dcounter_fraction"]) == 0.125
    # A gauge that fails is left out; the scrape still works.
    assert parsed["dcounter_broken"].samples == []
    assert "dcounter_http_requests_total{" in text and text.endswith("\n")
