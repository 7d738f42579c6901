"""Convergence of real node processes: concurrent clients, a late joiner, a paused node, a
node killed and restarted without its data.

What is asserted is what a user sees: the count every node reports and the peers it lists.
"""

import random
import signal
import threading

import requests

from tests.integration.harness import poll


def _spread_increments(nodes, clients: int, per_client: int, counters=("default",)):
    """`clients` threads, each with its own Session, send `per_client` increments spread over
    `nodes`. Returns (acknowledged sum per counter, outcomes that were not a 2xx)."""
    acknowledged = {name: 0 for name in counters}
    failures = []
    lock = threading.Lock()
    start = threading.Barrier(clients)

    def client(index: int) -> None:
        rng = random.Random(index)
        session = requests.Session()
        session.trust_env = False
        mine = {name: 0 for name in counters}
        start.wait()
        try:
            for i in range(per_client):
                node = nodes[(index + i) % len(nodes)]
                name = counters[i % len(counters)]
                delta = 1 if name == "default" else rng.choice([-3, -1, 2, 5, 7])
                body = {} if name == "default" else {"counter": name, "delta": delta}
                try:
                    response = session.post(node.base + "/counter/increment", json=body,
                                            timeout=30)
                except requests.RequestException as exc:
                    with lock:
                        failures.append(repr(exc))
                    continue
                if 200 <= response.status_code < 300:
                    assert response.json()["counter"] == name
                    mine[name] += delta
                else:
                    with lock:
                        failures.append((response.status_code, response.text))
        finally:
            session.close()
            with lock:
                for name, value in mine.items():
                    acknowledged[name] += value

    threads = [threading.Thread(target=client, args=(i,)) for i in range(clients)]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join(120)
    assert not any(thread.is_alive() for thread in threads), "a client thread hung"
    return acknowledged, failures


def _all_list_each_other(cluster, nodes, timeout=30.0):
    cluster.wait_membership(nodes, timeout=timeout)


def test_concurrent_clients_on_three_nodes_count_exactly_the_acknowledged(cluster):
    nodes = cluster.start(3)  # durable, the default: acknowledged means committed
    acknowledged, failures = _spread_increments(nodes, clients=6, per_client=80,
                                                counters=("default", "visits"))
    # Every request got a definite answer, so every node must show exactly the acknowledged sum.
    assert failures == []
    assert acknowledged["default"] == 240
    for name, total in acknowledged.items():
        assert cluster.wait_converged(nodes, total, counter=name) == total
    for node in nodes:
        assert node.get("/counters").json()["counters"] == acknowledged


def test_a_node_that_joins_late_catches_up_by_itself(cluster):
    a, b = cluster.start(2, in_memory=True)
    for i in range(200):
        assert (a, b)[i % 2].incr().status_code == 200
    cluster.wait_converged([a, b], 200)

    late = cluster.node("late", peers=[b.node_id], in_memory=True).start()
    # Nothing is ever re-sent to it: the 200 reach it only through anti-entropy.
    assert cluster.wait_converged([a, b, late], 200) == 200
    _all_list_each_other(cluster, [a, b, late])


def test_a_paused_node_is_dropped_then_rejoins_and_converges(cluster):
    a, b, c = cluster.start(3, in_memory=True)
    for i in range(30):
        assert (a, b, c)[i % 3].incr().status_code == 200
    cluster.wait_converged([a, b, c], 30)

    c.signal(signal.SIGSTOP)
    acknowledged = 30
    try:
        for i in range(40):
            assert (a, b)[i % 2].incr().status_code == 200
            acknowledged += 1
        # Longer than the peer timeout: the others drop it, while they keep taking increments.
        for node in (a, b):
            poll(lambda node=node: c.node_id not in node.nodes(), 20,
                 message=f"{node.name} to drop the paused node")
        for i in range(40):
            assert (a, b)[i % 2].incr(delta=2).status_code == 200
            acknowledged += 2
        assert cluster.wait_converged([a, b], acknowledged) == acknowledged
    finally:
        c.signal(signal.SIGCONT)

    for _ in range(20):
        assert c.incr().status_code == 200
        acknowledged += 1
    assert cluster.wait_converged([a, b, c], acknowledged) == acknowledged
    # Membership heals with no operator action.
    _all_list_each_other(cluster, [a, b, c])
    # And the healed cluster replicates new increments everywhere.
    assert a.incr().status_code == 200
    acknowledged += 1
    assert cluster.wait_converged([a, b, c], acknowledged) == acknowledged


def test_a_killed_node_restarted_in_memory_converges_from_its_peers(cluster):
    a, b, c = cluster.start(3, in_memory=True)
    for i in range(30):
        assert c.incr(delta=3 if i % 2 else 1).status_code == 200
    acknowledged = 60
    # Its increments reached the others before it dies.
    assert cluster.wait_converged([a, b, c], acknowledged) == acknowledged

    c.kill()
    for i in range(50):
        assert (a, b)[i % 2].incr().status_code == 200
        acknowledged += 1
    assert cluster.wait_converged([a, b], acknowledged) == acknowledged

    c.restart()  # same port, same seed, nothing remembered
    for i in range(20):  # the others keep taking increments while it catches up
        assert (a, b)[i % 2].incr().status_code == 200
        acknowledged += 1
    assert cluster.wait_converged([a, b, c], acknowledged) == acknowledged
    _all_list_each_other(cluster, [a, b, c])

    # Its new increments (under a new origin) spread and are not confused with its old ones.
    for _ in range(10):
        assert c.incr().status_code == 200
        acknowledged += 1
    assert cluster.wait_converged([a, b, c], acknowledged) == acknowledged
