"""Bulk increments between real node processes, and a cluster with one node on protocol 1 (as a
node of the previous release during a rolling upgrade).

What is asserted is what a user sees: answers, counts at every node, metrics and status.
"""

import re
import threading

from tests.integration.harness import poll

COUNTERS = ("a", "b", "c")


def bulk(node, items, **kwargs):
    return node.post("/counter/increments",
                     {"increments": [{"counter": name, "delta": delta} for name, delta in items]},
                     **kwargs)


def metric(node, name: str) -> float:
    match = re.search(rf"^{name} (\S+)$", node.get("/metrics").text, re.M)
    return float(match.group(1)) if match else 0.0


def test_a_bulk_increment_is_one_event_everywhere(cluster):
    nodes = cluster.start(3)
    n1 = nodes[0]
    items = [("a", 1), ("b", 2), ("a", 3), ("c", -4)]
    first = bulk(n1, items, headers={"Idempotency-Key": "batch-1"})
    assert first.status_code == 200, first.text
    event_id = first.json()["event_id"]
    assert first.json()["results"] == [{"counter": "a", "count": 4}, {"counter": "b", "count": 2},
                                       {"counter": "a", "count": 4}, {"counter": "c", "count": -4}]
    origin, seq = event_id.rsplit(":", 1)
    assert n1.get("/status").json()["digest"][origin] == int(seq) == 1  # one sequence number

    retry = bulk(n1, items, headers={"Idempotency-Key": "batch-1"})
    assert retry.headers["Idempotent-Replayed"] == "true"
    assert retry.json()["event_id"] == event_id
    refused = n1.post("/counter/increments", {"increments": [{"counter": "a"}, {"delta": 0}]})
    assert refused.status_code == 400 and "increments[1]" in refused.json()["error"]

    for name, expected in (("a", 4), ("b", 2), ("c", -4)):
        cluster.wait_converged(nodes, expected, counter=name)
    # A retry at another node, after the event reached it, counts nothing either.
    other = bulk(nodes[2], items, headers={"Idempotency-Key": "batch-1"})
    assert other.headers["Idempotent-Replayed"] == "true"
    assert other.json()["event_id"] == event_id
    assert all(node.count("a") == 4 for node in nodes)
    assert metric(n1, "dcounter_bulk_requests_total") == 1
    assert metric(n1, "dcounter_increments_local_total") == 4


def _load(nodes, rounds: int, acknowledged: dict, failures: list, lock) -> None:
    """Plain and bulk increments at every node, from one thread per node."""
    def client(index: int, node) -> None:
        mine = dict.fromkeys(COUNTERS, 0)
        for i in range(rounds):
            plain = node.post("/counter/increment", {"counter": "a", "delta": index + 1})
            if plain.status_code == 200:
                mine["a"] += index + 1
            else:
                failures.append(plain.text)
            items = [("a", 1), ("b", i % 5 + 1), ("c", -1), ("b", 1)]
            response = bulk(node, items)
            if response.status_code == 200:
                for name, delta in items:
                    mine[name] += delta
            else:
                failures.append(response.text)
        with lock:
            for name, value in mine.items():
                acknowledged[name] += value

    threads = [threading.Thread(target=client, args=(i, node)) for i, node in enumerate(nodes)]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join(60)
    assert not any(thread.is_alive() for thread in threads)


def test_a_cluster_with_one_node_on_protocol_1_converges(cluster):
    # The old node is the seed: the others' first joins in protocol 2 are refused (409) and
    # asked again in protocol 1.
    old = cluster.node("old", extra=["--protocol", "1"]).start()
    nodes = [old] + [cluster.node(peers=[old.node_id]).start() for _ in range(2)]
    cluster.wait_membership(nodes)
    acknowledged = dict.fromkeys(COUNTERS, 0)
    failures: list = []
    _load(nodes, 40, acknowledged, failures, threading.Lock())
    assert not failures
    for name in COUNTERS:
        cluster.wait_converged(nodes, acknowledged[name], counter=name)
    # Nothing any node sent was refused: the protocol-1 node, which refuses bulk events as a
    # node of the previous release does, was sent none; it pulled them as prefixes.
    for node in nodes:
        assert metric(node, "dcounter_replicate_batches_failed_total") == 0, node.name
    assert metric(old, "dcounter_anti_entropy_pulls_total") > 0
    cluster.wait_replication_idle(nodes)
    assert sorted(old.nodes()) == sorted(n.node_id for n in nodes[1:])
    poll(lambda: all(node.get("/readyz").status_code == 200 for node in nodes), 10,
         message="every node ready")
