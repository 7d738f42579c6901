"""Membership across cluster names: nodes of different clusters pointed at each other never
merge, however long they keep trying."""

import time

from dcounter import PROTOCOL
from tests.integration.harness import FAST

HEARTBEAT = float(FAST[FAST.index("--heartbeat-interval") + 1])


def test_nodes_of_different_clusters_pointed_at_each_other_never_merge(cluster):
    a = cluster.node("alpha1", in_memory=True, extra=["--cluster", "alpha"]).start()
    b = cluster.node("beta1", in_memory=True, peers=[a.node_id],
                     extra=["--cluster", "beta"]).start()
    # Point the first back at the second (same port), and add a second alpha node seeded with
    # both.
    a.kill()
    a.restart(peers=[b.node_id])
    a2 = cluster.node("alpha2", in_memory=True, peers=[a.node_id, b.node_id],
                      extra=["--cluster", "alpha"]).start()
    cluster.wait_membership([a, a2])

    assert a.incr(delta=5).status_code == 200
    assert b.incr(delta=7).status_code == 200
    cluster.wait_converged([a, a2], 5)

    # Several heartbeat intervals and rejoin attempts: the clusters stay apart.
    deadline = time.monotonic() + 8 * HEARTBEAT
    while time.monotonic() < deadline:
        assert sorted(a.nodes()) == [a2.node_id]
        assert sorted(a2.nodes()) == [a.node_id]
        assert b.nodes() == []
        assert [a.count(), a2.count(), b.count()] == [5, 5, 7]
        time.sleep(HEARTBEAT / 3)

    # Each side refuses the other explicitly, and says why.
    for node, foreign in ((a, "beta"), (b, "alpha")):
        for path in ("/nodes/join", "/nodes/heartbeat"):
            response = node.post(path, {"node_id": "localhost:9", "cluster": foreign,
                                        "protocol": 1, "origin": "Foreign09"})
            assert response.status_code == 409
            assert foreign in response.json()["error"]
    assert "refused" in b.stderr()
    assert b.nodes() == [] and "localhost:9" not in a.nodes()


def test_an_unknown_protocol_is_refused(cluster):
    a, b = cluster.start(2, in_memory=True)
    response = a.post("/nodes/join", {"node_id": "localhost:9", "protocol": PROTOCOL + 1,
                                      "origin": "Foreign09"})
    assert response.status_code == 409
    assert isinstance(response.json()["error"], str)
    assert a.nodes() == [b.node_id]


def test_a_node_that_leaves_is_dropped_at_once_and_membership_heals(cluster):
    a, b, c = cluster.start(3, in_memory=True)
    assert c.terminate() == 0
    # Dropped by the time it has exited, not a peer timeout later.
    assert a.nodes() == [b.node_id]
    assert b.nodes() == [a.node_id]
    c.restart()
    cluster.wait_membership([a, b, c])
    assert c.incr().status_code == 200
    cluster.wait_converged([a, b, c], 1)
