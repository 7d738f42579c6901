"""The reset and delete routes, and resets across nodes over the in-memory FakeNetwork."""

import dataclasses
import json

import pytest

from dcounter.api import ROUTES
from tests.fakes import make_request
from tests.unit.test_api import assert_error, get, make_node, node, post  # noqa: F401 (fixtures)
from tests.unit.test_cluster import BASE, cluster_of  # noqa: F401 (fixture)


def counters(node):
    return get(node, "/counters")[1]["counters"]


def test_reset_and_delete_are_write_routes():
    kinds = {route.path: route.kind for route in ROUTES}
    assert kinds["/counter/reset"] == kinds["/counter/delete"] == "write"


def test_a_reset_answers_the_count_here_and_the_event_id(node):
    post(node, "/counter/increment", {"counter": "a", "delta": 5})
    status, payload, headers = post(node, "/counter/reset", {"counter": "a"})
    assert status == 200 and "Idempotent-Replayed" not in headers
    assert payload == {"counter": "a", "count": 0,
                       "event_id": f"{node.counter.local_origin}:2"}
    post(node, "/counter/increment", {"counter": "a", "delta": 2})
    assert get(node, "/counter/count", [("counter", "a")])[1]["count"] == 2
    assert counters(node) == {"a": 2}


def test_a_delete_hides_the_name_until_an_increment(node):
    post(node, "/counter/increment", {"counter": "a", "delta": 5})
    status, payload, _ = post(node, "/counter/delete", {"counter": "a"})
    assert status == 200 and payload["count"] == 0
    assert counters(node) == {}
    assert get(node, "/counter/count", [("counter", "a")])[1]["count"] == 0
    post(node, "/counter/increment", {"counter": "a", "delta": 3})
    assert counters(node) == {"a": 3}


def test_a_keyed_reset_is_replayed(node):
    post(node, "/counter/increment", {"counter": "a", "delta": 5})
    headers = {"Idempotency-Key": "r1"}
    first = post(node, "/counter/reset", {"counter": "a"}, headers=headers)
    post(node, "/counter/increment", {"counter": "a", "delta": 1})
    status, payload, replay = post(node, "/counter/reset", {"counter": "a"}, headers=headers)
    assert status == 200 and payload == first[1] and replay["Idempotent-Replayed"] == "true"
    assert node.count("a") == 1
    assert_error(post(node, "/counter/delete", {"counter": "a"}, headers=headers), 422)
    assert_error(post(node, "/counter/increment", {"counter": "a"}, headers=headers), 422)
    assert node.count("a") == 1


@pytest.mark.parametrize("body", [
    b"", b"{", {}, {"counter": ""}, {"counter": 5}, {"counter": "a", "delta": 1},
    {"counter": "a b"}, [],
])
@pytest.mark.parametrize("path", ["/counter/reset", "/counter/delete"])
def test_bad_resets_are_400_and_change_nothing(node, path, body):
    post(node, "/counter/increment", {"counter": "a", "delta": 5})
    before = node.counter.digest()
    assert_error(post(node, path, body), 400)
    assert node.counter.digest() == before and counters(node) == {"a": 5}


@pytest.mark.parametrize("path", ["/counter/reset", "/counter/delete"])
def test_a_name_this_node_does_not_know_is_404(node, path):
    assert_error(post(node, path, {"counter": "never"}), 404)
    assert node.counter.digest() == {}


def test_deletes_past_max_deleted_are_422_and_the_hidden_names_free_max_counters(make_node):
    node = make_node(max_counters=2, max_deleted=1)
    for name in ("a", "b"):
        post(node, "/counter/increment", {"counter": name})
    assert_error(post(node, "/counter/increment", {"counter": "c"}), 422)
    assert post(node, "/counter/delete", {"counter": "a"})[0] == 200
    assert post(node, "/counter/increment", {"counter": "c"})[0] == 200
    status, payload, _ = post(node, "/counter/delete", {"counter": "b"})
    assert status == 422 and "too many deleted counters" in payload["error"]
    assert counters(node) == {"b": 1, "c": 1}


def test_with_a_client_token_a_reset_needs_it(make_node):
    token = "t" * 20
    node = make_node(client_token=token)
    auth = {"Authorization": f"Bearer {token}"}
    post(node, "/counter/increment", {"counter": "a"}, headers=auth)
    assert_error(post(node, "/counter/reset", {"counter": "a"}), 401)
    assert node.count("a") == 1
    assert post(node, "/counter/reset", {"counter": "a"}, headers=auth)[0] == 200


def test_resets_and_deletes_are_in_metrics(node):
    post(node, "/counter/increment", {"counter": "a"})
    post(node, "/counter/reset", {"counter": "a"})
    post(node, "/counter/delete", {"counter": "a"})
    text = get(node, "/metrics")[1]
    assert 'dcounter_resets_local_total{kind="reset"} 1' in text
    assert 'dcounter_resets_local_total{kind="delete"} 1' in text
    assert "dcounter_deleted_counters 1" in text
    assert "dcounter_resets_applied 2" in text


def test_a_protocol_1_node_refuses_a_reset(make_node):
    node = make_node(protocol=1)
    post(node, "/counter/increment", {"counter": "a"})
    status, payload, _ = post(node, "/counter/reset", {"counter": "a"})
    assert status == 409 and "protocol 1" in payload["error"]
    assert node.count("a") == 1


# -- across nodes -----------------------------------------------------------------------------

def reset_at(cluster, node_id, name="c", path="/counter/reset", key=None):
    headers = {"Idempotency-Key": key} if key else None
    response = cluster[node_id].app.handle(make_request("POST", path, {"counter": name},
                                                        headers=headers))
    return response.status, json.loads(response.body)


def test_a_reset_replicates_and_increments_made_meanwhile_elsewhere_survive(cluster_of):
    c = cluster_of(3)
    c.form()
    n1, n2, n3 = c.ids
    for node_id in c.ids:
        c.increment(node_id, "c", 5)
    c.drain_replication()
    c.net.partition(n1, n3)
    c.net.partition(n2, n3)
    c.increment(n3, "c", 7)  # n1 does not see it before its reset
    assert reset_at(c, n1)[0] == 200
    c.net.heal()
    c.drain_replication()
    c.anti_entropy_round()
    assert set(c.counts().values()) == {7}


def test_a_node_that_missed_the_reset_event_learns_it_with_a_prefix(cluster_of):
    c = cluster_of(2, max_backlog=1)
    c.form()
    n1, n2 = c.ids
    c.increment(n1, "c", 5)
    c.drain_replication()
    c.net.partition(n1, n2)
    reset_at(c, n1)
    for _ in range(3):
        c.increment(n1, "other", 1)  # the backlog to n2 is dropped: the reset with it
    c.net.heal()
    c.drain_replication()
    assert c.counts() == {n1: 0, n2: 5}  # the reset never reached n2 by push
    for _ in range(3):
        c.anti_entropy_round()
    assert c.counts() == {n1: 0, n2: 0}
    assert c.counts("other") == {n1: 3, n2: 3}


def test_a_delete_leaves_every_list_and_an_uncovered_increment_brings_it_back(cluster_of):
    c = cluster_of(3)
    c.form()
    n1, n2, n3 = c.ids
    c.increment(n2, "gone", 4)
    c.increment(n2, "kept", 1)
    c.drain_replication()
    assert reset_at(c, n1, "gone", "/counter/delete")[0] == 200
    c.drain_replication()
    assert all(node.counters() == {"kept": 1} for node in c.nodes.values())
    c.increment(n3, "gone", 2)
    c.drain_replication()
    assert all(node.counters() == {"gone": 2, "kept": 1} for node in c.nodes.values())


def test_a_reset_is_refused_while_a_member_speaks_protocol_1(cluster_of):
    c = cluster_of(2)
    c.add_member("n3:7003", dataclasses.replace(BASE, advertise="n3:7003",
                                                peers=("n1:7001",), protocol=1))
    c.form()
    c.increment("n1:7001", "c", 1)
    status, payload = reset_at(c, "n1:7001")
    assert status == 409 and "n3:7003" in payload["error"] and "protocol 1" in payload["error"]
    assert c["n1:7001"].count("c") == 1
