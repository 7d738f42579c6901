"""A read of the whole cluster (`consistency=all`) against real node processes: it covers at
least what the node itself shows, says who answered, and says `complete: false` within its
timeout when a live member does not answer."""

import json
import signal

from dcounter.client import main
from tests.integration.harness import poll

SLOW_EXPIRY = ["--peer-timeout", "30"]  # a stopped peer stays a member for the whole test


def read_all(node, counter="c", **params):
    response = node.get("/counter/count",
                        params={"counter": counter, "consistency": "all", **params}, timeout=10)
    assert response.status_code == 200, response.text
    return response.json()


def test_a_read_of_the_whole_cluster_covers_the_local_value_and_says_who_answered(cluster,
                                                                                     capsys):
    a, b, c = cluster.start(3, in_memory=True)
    for node, delta in ((a, 3), (b, 4), (c, 1), (a, 7)):
        assert node.incr("c", delta).status_code == 200
        for reader in (a, b, c):
            local = reader.count("c")  # increments only: every value covering it is larger
            result = read_all(reader)
            assert result["count"] >= local
            assert (result["answered"], result["members"], result["complete"]) == (3, 3, True)
    cluster.wait_converged([a, b, c], 15, counter="c")
    assert read_all(b) == {"counter": "c", "count": 15, "answered": 3, "members": 3,
                           "complete": True}

    code = main(["get", "--node", a.node_id, "--counter", "c", "--consistency", "all",
                 "--json"], environ={})
    out, err = capsys.readouterr()
    assert code == 0 and json.loads(out) == {"counter": "c", "count": 15, "answered": 3,
                                             "members": 3, "complete": True}
    assert main(["get", "--node", a.node_id, "--counter", "c", "--consistency", "all"],
                environ={}) == 0
    assert capsys.readouterr().out == "15\n"


def test_a_stopped_peer_makes_the_read_incomplete_within_its_timeout(cluster):
    a, b, c = cluster.start(3, in_memory=True, extra=SLOW_EXPIRY)
    assert b.incr("c", 5).status_code == 200
    cluster.wait_converged([a, b, c], 5, counter="c")
    b.signal(signal.SIGSTOP)
    try:
        assert c.incr("c", 2).status_code == 200
        poll(lambda: a.count("c") == 7, message="a to apply c's increment")
        assert sorted(a.nodes()) == sorted([b.node_id, c.node_id])  # b is still a member
        assert read_all(a, timeout="0.5") == {"counter": "c", "count": 7, "answered": 2,
                                              "members": 3, "complete": False}
    finally:
        b.signal(signal.SIGCONT)
    poll(lambda: read_all(a)["complete"], message="b to answer again")


def test_bad_consistency_and_timeout_are_400(cluster):
    (a,) = cluster.start(1, in_memory=True)
    for params in ({"consistency": "quorum"}, {"consistency": "all", "timeout": "0"},
                   {"consistency": "all", "timeout": "31"}):
        response = a.get("/counter/count", params=params)
        assert response.status_code == 400 and set(response.json()) == {"error"}
