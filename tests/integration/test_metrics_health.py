"""/metrics, /healthz and /readyz on real node processes."""

import signal

import pytest

from tests.integration.harness import poll

parser = pytest.importorskip("prometheus_client.parser",
                             reason="prometheus_client is a test dependency (pip install "
                                    "-e '.[test]')")

# Keep a paused peer listed while a test looks at its backlog.
SLOW_EXPIRY = ["--peer-timeout", "60"]


def scrape(node) -> dict:
    """{sample name: {frozenset of label items: value}}, parsed by prometheus_client."""
    response = node.get("/metrics")
    assert response.status_code == 200
    assert response.headers["Content-Type"].startswith("text/plain; version=0.0.4")
    samples: dict = {}
    for family in parser.text_string_to_metric_families(response.text):
        for s in family.samples:
            samples.setdefault(s.name, {})[frozenset(s.labels.items())] = s.value
    return samples


def value(samples: dict, name: str, **labels) -> float:
    return samples.get(name, {}).get(frozenset(labels.items()), 0)


def test_metrics_parse_and_move_with_increments_and_replication(cluster):
    a, b = cluster.start(2, extra=SLOW_EXPIRY)
    before = scrape(a)
    assert value(before, "dcounter_increments_local_total") == 0
    assert value(before, "dcounter_peers_alive") == 1
    assert value(before, "dcounter_replication_backlog_events", peer=b.node_id) == 0

    for _ in range(3):
        assert a.incr("x").status_code == 200
    for _ in range(2):
        assert b.incr("x", 5).status_code == 200
    cluster.wait_converged([a, b], 13, counter="x")

    def moved():
        m = scrape(a)
        return (value(m, "dcounter_increments_local_total") == 3
                and value(m, "dcounter_increments_replicated_total") == 2
                and value(m, "dcounter_replicate_batches_sent_total") >= 1) and m
    m = poll(moved, 10, message="a's counters to move")
    assert value(m, "dcounter_http_requests_total", route="/counter/increment",
                 status="200") == 3
    assert value(m, "dcounter_http_requests_total", route="/counter/replicate",
                 status="200") >= 1
    assert value(m, "dcounter_commit_seconds_count") >= 3  # durable: each increment committed
    assert value(m, "dcounter_commit_seconds_sum") > 0
    assert value(m, "dcounter_replicate_batches_failed_total") == 0
    assert value(m, "dcounter_replication_retry_attempt", peer=b.node_id) == 0
    assert value(poll(lambda: scrape(b), 5), "dcounter_increments_replicated_total") >= 3

    assert a.get("/no/such/path").status_code == 404
    assert value(scrape(a), "dcounter_http_requests_total", route="unknown", status="404") == 1

    # A paused peer: sends fail, the backlog and the retry attempt grow, then drain.
    b.signal(signal.SIGSTOP)
    try:
        assert a.incr("x").status_code == 200

        def backed_up():
            m = scrape(a)
            return (value(m, "dcounter_replicate_batches_failed_total") >= 1
                    and value(m, "dcounter_replication_backlog_events", peer=b.node_id) >= 1
                    and value(m, "dcounter_replication_retry_attempt", peer=b.node_id) >= 1)
        poll(backed_up, 15, message="a to report a failed send and a backlog for b")
    finally:
        b.signal(signal.SIGCONT)
    cluster.wait_converged([a, b], 14, counter="x")
    poll(lambda: value(scrape(a), "dcounter_replication_backlog_events", peer=b.node_id) == 0,
         15, message="a's backlog for b to drain")


def test_a_late_joiner_counts_anti_entropy_pulls(cluster):
    a, = cluster.start(1, in_memory=True)
    for _ in range(4):
        assert a.incr().status_code == 200
    c = cluster.node("late", peers=[a.node_id], in_memory=True).start()
    cluster.wait_converged([a, c], 4)

    def pulled():
        m = scrape(c)
        return value(m, "dcounter_anti_entropy_pulls_total") >= 1 and m
    m = poll(pulled, 10, message="c to count a pull")
    assert value(m, "dcounter_peers_alive") == 1
    assert value(m, "dcounter_commit_seconds_count") == 0  # in memory: nothing to commit


def test_healthz_and_readyz(cluster):
    alone = cluster.node("alone", in_memory=True).start()
    health = alone.get("/healthz")
    assert health.status_code == 200 and health.json()["status"] == "ok"
    ready = alone.get("/readyz")
    assert ready.status_code == 200
    assert ready.json() == {"ready": True, "reason": "no peers known"}

    # A node whose only seed does not answer is alive but not ready.
    seed = cluster.node("seed").start()
    seed.signal(signal.SIGSTOP)
    try:
        joiner = cluster.node("joiner", peers=[seed.node_id]).start()
        assert joiner.get("/healthz").status_code == 200
        response = joiner.get("/readyz")
        assert response.status_code == 503
        body = response.json()
        assert body["ready"] is False and "anti-entropy" in body["reason"]
        assert joiner.get("/status").json()["ready"]["ready"] is False
    finally:
        seed.signal(signal.SIGCONT)
    poll(lambda: joiner.get("/readyz").status_code == 200, 15,
         message="joiner to become ready once its seed answers")
    assert joiner.get("/readyz").json()["ready"] is True
