"""Re-delivered and reordered replication count once, on the node that receives them and on
every node they spread to.

Batches are posted to `/counter/replicate` as a peer would, under origins the test makes up.
"""

import threading
import uuid

import requests

from tests.integration.harness import poll

SENDER = "localhost:9"  # a peer id that no node lists: replication alone never adds a peer


def replicate(node, *events, sender=SENDER):
    response = node.post("/counter/replicate", {"node_id": sender, "events": list(events)})
    assert response.status_code == 200, response.text
    return response.json()


def event(origin, seq, counter, delta, **extra):
    return {"id": f"{origin}:{seq}", "counter": counter, "delta": delta, **extra}


def counters_everywhere(cluster, nodes, expected: dict, timeout=30.0):
    for name, value in expected.items():
        cluster.wait_converged(nodes, value, counter=name, timeout=timeout)


def test_a_batch_delivered_twice_counts_once_everywhere(cluster):
    a, b, c = cluster.start(3, in_memory=True)
    assert a.incr().status_code == 200
    batch = [event("feedc0de01", 1, "dup", 5), event("feedc0de01", 2, "dup", 7),
             event("feedc0de01", 3, "default", 1, key="client-retry-1")]

    first = replicate(a, *batch)
    assert (first["applied"], first["duplicates"]) == (3, 0)
    second = replicate(a, *batch)
    assert (second["applied"], second["duplicates"]) == (0, 3)
    assert a.count("dup") == 12 and a.count() == 2

    counters_everywhere(cluster, [a, b, c], {"dup": 12, "default": 2})
    # The same batch arriving at a node that already has it through the cluster.
    again = replicate(b, *batch)
    assert (again["applied"], again["duplicates"]) == (0, 3)
    # Re-delivered in pieces and in another order.
    assert replicate(c, batch[2], batch[0])["duplicates"] == 2
    cluster.wait_replication_idle([a, b, c])  # every re-send is done; nothing counted again
    for node in (a, b, c):
        assert node.get("/counters").json()["counters"] == {"dup": 12, "default": 2}
        assert SENDER not in node.nodes()


def test_the_same_batch_delivered_concurrently_counts_once(cluster):
    a, b = cluster.start(2)  # durable: concurrent deliveries meet in one group commit
    batch = [event("c0ffee", seq, "race", seq) for seq in range(1, 51)]
    results, lock = [], threading.Lock()

    def deliver():
        session = requests.Session()
        session.trust_env = False
        response = session.post(a.base + "/counter/replicate",
                                json={"node_id": SENDER, "events": batch}, timeout=30)
        session.close()
        with lock:
            results.append((response.status_code, response.json()))

    threads = [threading.Thread(target=deliver) for _ in range(4)]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join(60)
    assert [status for status, _ in results] == [200] * 4
    assert sum(body["applied"] for _, body in results) == 50
    assert sum(body["duplicates"] for _, body in results) == 150
    counters_everywhere(cluster, [a, b], {"race": sum(range(1, 51))})


def test_events_out_of_order_count_once(cluster):
    a, b, c = cluster.start(3, in_memory=True)
    origin = "0dd0rder"
    e1, e2, e3 = (event(origin, 1, "ooo", 1), event(origin, 2, "ooo", 2),
                  event(origin, 3, "ooo", 4))

    # Seq 3, 1, 2 in separate requests to one node.
    assert replicate(c, e3)["applied"] == 1
    assert c.count("ooo") == 4
    assert replicate(c, e1)["applied"] == 1
    assert replicate(c, e2)["applied"] == 1
    assert c.count("ooo") == 7
    # Any of them again, alone or in a shuffled batch, is a duplicate.
    assert replicate(c, e3) == {"applied": 0, "duplicates": 1, "deferred": 0}
    again = replicate(c, e2, e3, e1)
    assert (again["applied"], again["duplicates"]) == (0, 3)
    counters_everywhere(cluster, [a, b, c], {"ooo": 7})

    # Another origin's events scattered over the nodes, out of order: each node holds a
    # different piece, and anti-entropy must assemble them without counting any twice.
    origin = "5ca77e2ed"
    replicate(a, event(origin, 3, "scattered", 40))
    replicate(b, event(origin, 1, "scattered", 1))
    replicate(c, event(origin, 2, "scattered", 2))
    replicate(a, event(origin, 4, "scattered", 300))
    counters_everywhere(cluster, [a, b, c], {"scattered": 343, "ooo": 7})
    # Late duplicates of every piece, at every node, change nothing.
    for node in (a, b, c):
        result = replicate(node, *(event(origin, s, "scattered", d)
                                   for s, d in ((4, 300), (2, 2), (3, 40), (1, 1))))
        assert (result["applied"], result["duplicates"]) == (0, 4)
    cluster.wait_replication_idle([a, b, c])
    for node in (a, b, c):
        assert node.get("/counters").json()["counters"] == {"scattered": 343, "ooo": 7}


def test_the_original_single_event_form_is_refused_everywhere_and_logged(cluster):
    """The original system sends one increment's uuid to every node: dcounter cannot tell whether
    another node counted it, so it counts it nowhere and says why."""
    a, b, c = cluster.start(3, in_memory=True)
    legacy = {"node_id": SENDER, "event_id": str(uuid.uuid4())}
    for node in (a, b, c, a):
        response = node.post("/counter/replicate", legacy)
        assert response.status_code == 400
        assert "original system" in response.json()["error"]
    assert a.incr().status_code == 200
    counters_everywhere(cluster, [a, b, c], {"default": 1})
    poll(lambda: "original system" in a.stderr() and SENDER in a.stderr(),
         message="the refusal in the log")
    assert a.stderr().count("refused " + SENDER) == 1  # once a minute per sender
