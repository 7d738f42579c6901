"""A read of the whole cluster: the pure merge, and the route on nodes connected by the
FakeNetwork (no sockets; nothing runs by itself: the test drives replication, see
test_cluster.py)."""

import json
from types import SimpleNamespace

import pytest

from dcounter.api import App, Route
from dcounter.clusterread import merge_count
from tests.fakes import make_request
from tests.unit.test_cluster import Cluster


# -- merge_count --------------------------------------------------------------------------------

def test_alone_it_is_the_local_value():
    local = {"a": (3, 10, {5: 7}), "b": (0, 0, {2: -1})}
    assert merge_count(local, []) == 10 + 7 - 1


def test_the_furthest_prefix_of_each_origin_wins():
    local = {"a": (3, 10, {}), "b": (5, 50, {})}
    remote = [{"a": (4, 14), "b": (2, 20)}, {"a": (6, 16)}]
    assert merge_count(local, remote) == 16 + 50


def test_local_held_events_count_only_above_the_prefix_taken():
    # Held here: seq 5 (+7) and seq 9 (+100); a peer's prefix up to 6 contains seq 5 already.
    local = {"a": (3, 10, {5: 7, 9: 100})}
    assert merge_count(local, [{"a": (6, 30)}]) == 30 + 100
    assert merge_count(local, [{"a": (9, 200)}]) == 200
    assert merge_count(local, [{"a": (2, 999)}]) == 10 + 7 + 100  # behind: ignored


def test_origins_unknown_here_and_negative_totals_count():
    local = {"a": (1, 1, {})}
    remote = [{"z": (4, -40)}, {"z": (3, -30), "y": (1, 2)}]
    assert merge_count(local, remote) == 1 - 40 + 2


def test_an_origin_this_node_holds_events_of_without_a_prefix():
    local = {"a": (0, 0, {3: 5})}
    assert merge_count(local, []) == 5
    assert merge_count(local, [{"a": (2, 9)}]) == 9 + 5


# -- the route on a FakeNetwork cluster -------------------------------------------------------

@pytest.fixture
def cluster():
    clusters = []

    def make(size):
        c = Cluster(size)
        clusters.append(c)
        return c

    yield make
    for c in clusters:
        c.close()


def read(node, counter="c", consistency="all", **params):
    query = [("counter", counter), ("consistency", consistency)]
    query += [(k, str(v)) for k, v in params.items()]
    response = node.app.handle(make_request("GET", "/counter/count", query=query))
    return response.status, json.loads(response.body)


def test_a_read_at_a_node_whose_link_is_held_back_covers_the_recent_increments(cluster):
    c = cluster(3)
    n1, n2, n3 = c.ids
    c.form()
    assert c.fully_connected()
    for _ in range(3):
        c.increment(n1)
    c.increment(n2, delta=5)
    c.increment(n3, delta=-2)
    c.drain_replication(skip={n3})  # nothing reaches n3: its incoming replication waits
    assert c[n1].count("c") == 6 and c[n2].count("c") == 6
    digest_before = c[n3].counter.digest()
    assert c[n3].count("c") == -2

    assert read(c[n3]) == (200, {"counter": "c", "count": 6, "answered": 3, "members": 3,
                                 "complete": True})
    assert read(c[n3], consistency="local") == (200, {"counter": "c", "count": -2})
    # It changed nothing here: no adoption, no write.
    assert c[n3].count("c") == -2 and c[n3].counter.digest() == digest_before

    c.drain_replication()
    assert set(c.counts("c").values()) == {6}
    assert read(c[n3])[1]["count"] == 6


def test_a_peer_that_does_not_answer_makes_the_read_incomplete(cluster):
    c = cluster(3)
    n1, n2, n3 = c.ids
    c.form()
    c.increment(n1, delta=4)
    c.increment(n3, delta=1)
    c.drain_replication(skip={n3})  # nothing reaches n3
    assert c[n2].count("c") == 5
    assert c[n3].count("c") == 1
    c.net.partition(n1, n3)
    status, payload = read(c[n3])
    # n2 answered for n1's increment; n1 did not answer.
    assert (status, payload) == (200, {"counter": "c", "count": 5, "answered": 2, "members": 3,
                                       "complete": False})


def test_alone_a_read_of_the_whole_cluster_is_complete(cluster):
    c = cluster(1)
    c.increment(c.ids[0], delta=3)
    assert read(c[c.ids[0]]) == (200, {"counter": "c", "count": 3, "answered": 1, "members": 1,
                                       "complete": True})


@pytest.mark.parametrize("query", [
    [("consistency", "strong")], [("consistency", "")], [("consistency", "ALL")],
    [("consistency", "all"), ("timeout", "0")], [("consistency", "all"), ("timeout", "-1")],
    [("consistency", "all"), ("timeout", "30.5")], [("consistency", "all"), ("timeout", "nan")],
    [("consistency", "all"), ("timeout", "inf")], [("consistency", "all"), ("timeout", "2s")],
    [("consistency", "all"), ("consistency", "all")], [("timeout", "")],
])
def test_bad_consistency_or_timeout_is_400(cluster, query):
    c = cluster(1)
    response = c[c.ids[0]].app.handle(make_request("GET", "/counter/count", query=query))
    assert response.status == 400
    assert set(json.loads(response.body)) == {"error"}


def test_a_malformed_reply_is_not_an_answer_and_is_logged(cluster, caplog):
    c = cluster(1)
    node = c[c.ids[0]]
    c.increment(node.node_id, delta=2)
    bad = {"node_id": "n9:7009", "origins": {"o9": {"watermark": 0, "counters": {}}}}
    routes = [Route("POST", "/counter/state", lambda _node, _request: (200, bad), "peer")]
    c.net.attach(SimpleNamespace(node_id="n9:7009", app=App(None, routes)))
    node.peers.heard_from("n9:7009", c.clock.monotonic(), "o9")
    assert node.peers.alive() == ["n9:7009"]
    with caplog.at_level("WARNING", logger="dcounter"):
        assert read(node) == (200, {"counter": "c", "count": 2, "answered": 1, "members": 2,
                                    "complete": False})
    assert "ignoring malformed state from n9:7009" in caplog.text


def test_a_read_of_the_whole_cluster_alone_counts_the_base_of_retired_origins():
    from dcounter.counter import Counter, Event
    c = Counter("mine", origin_retire_after=10.0)
    for fn in (lambda txn: txn.remote([Event("old", 1, "c", 4)], 0.0),
               lambda txn: txn.retire_origins(0.0, [], set()),
               lambda txn: txn.retire_origins(100.0, [], set()),
               lambda txn: txn.local("c", 1, None, 100.0)):
        txn = c.begin()
        fn(txn)
        c.install(txn)
    assert c.retired_count() == 1 and c.count("c") == 5
    assert merge_count(c.read_view("c"), []) == 5  # the base as the entry `_retired`
