"""The bulk check's request body and report (`bin/dcounter-bench --bulk`); not its timings."""

import json

from dcounter import benchbulk
from tests.unit.test_api import get, make_node, node, post  # noqa: F401 (fixtures)


def test_the_bulk_body_is_one_accepted_request_of_100_items_over_10_counters(node):
    status, payload, _ = post(node, "/counter/increments", json.loads(benchbulk.BODY))
    assert status == 200 and len(payload["results"]) == benchbulk.ITEMS == 100
    assert get(node, "/counters")[1]["counters"] == {name: 10 for name in benchbulk.COUNTERS}


def test_the_report_names_every_cluster_and_says_when_a_node_lacks_the_total():
    results = [
        {"config": "1 node, durable", "nodes": 1, "requests": 900, "increments_per_s": 18000.0,
         "cpu_us_per_increment": 6.5, "largest_backlog_events": 0, "non2xx": 0, "errors": 0,
         "counts_match": True},
        {"config": "3 nodes, durable", "nodes": 3, "requests": 700,
         "increments_per_s": 14000.0, "cpu_us_per_increment": None,
         "largest_backlog_events": 65, "non2xx": 0, "errors": 0, "counts_match": False}]
    lines = benchbulk.render(results).splitlines()
    assert lines[1].startswith("  1 node, durable: 18000 increments/s (900 requests)")
    assert "CPU µs/increment -" in lines[2] and "backlog 65 events" in lines[2]
    assert lines[1].endswith("yes") and lines[2].endswith("NO")
