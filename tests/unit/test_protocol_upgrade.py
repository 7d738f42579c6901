"""The protocol-upgrade rule (protocol.py): nodes of protocols 1 and 2 in one cluster, over the
in-memory FakeNetwork, driven step by step (see test_cluster.py)."""

import dataclasses
import json

import pytest

from dcounter import PROTOCOL
from dcounter.counter import Event
from dcounter.protocol import PeerProtocols, accepted, expressible
from tests.fakes import make_request
from tests.unit.test_cluster import BASE, Cluster, cluster_of  # noqa: F401 (fixture)


def bulk(cluster, node_id, items):
    """A bulk increment through the route table; counted when acknowledged."""
    body = {"increments": [{"counter": name, "delta": delta} for name, delta in items]}
    response = cluster[node_id].app.handle(make_request("POST", "/counter/increments", body))
    assert response.status == 200, response.body
    for name, delta in items:
        cluster.acknowledged[name] = cluster.acknowledged.get(name, 0) + delta


def test_peer_protocols_rules():
    assert PROTOCOL == 2
    assert accepted(2, 1) and accepted(2, 2) and not accepted(2, 3) and not accepted(2, 0)
    assert accepted(1, 1) and not accepted(1, 2)
    assert expressible(Event("o", 1, "c", 1), 1)
    assert not expressible(Event("o", 1, None, 0, None, (("a", 1), ("b", 1))), 1)
    assert expressible(Event("o", 1, None, 0, None, (("a", 1), ("b", 1))), 2)
    p = PeerProtocols(2)
    assert p.for_requests("x") == 2 and p.for_events("x") == 1  # unknown: offer ours, push v1
    p.note_request("x", 1)
    assert p.for_requests("x") == 1 and p.for_events("x") == 1
    p.note_request("x", 2)  # a request only raises
    p.note_request("x", 1)
    assert p.for_events("x") == 2
    p.note_reply("x", 1)  # a reply states the peer's own: rolled back
    assert p.for_events("x") == 1
    p.note_reply("x", 7)  # a newer peer speaks ours to us
    assert p.for_requests("x") == 2
    for junk in (None, "2", True, 0, -1, 2.0):
        p.note_reply("y", junk)
    assert p.known("y") is None
    assert PeerProtocols(1).for_requests("x") == 1


def mixed(cluster_of):
    """n1 and n2 speak protocol 2, n3 only protocol 1 (as a node of the previous release)."""
    c = cluster_of(2)
    c.add_member("n3:7003", dataclasses.replace(BASE, advertise="n3:7003",
                                                peers=("n1:7001",), protocol=1))
    c.form()
    assert c.fully_connected()
    return c


def test_a_mixed_cluster_speaks_protocol_1_to_the_old_node_only(cluster_of):
    c = mixed(cluster_of)
    n1, n2, n3 = c.ids
    assert c[n1].protocols.known(n2) == 2 and c[n2].protocols.known(n1) == 2
    assert c[n1].protocols.known(n3) == 1 and c[n2].protocols.known(n3) == 1
    assert c[n3].protocols.known(n1) == 1


def test_bulk_events_reach_the_old_node_through_anti_entropy_and_everything_converges(
        cluster_of):
    c = mixed(cluster_of)
    n1, n2, n3 = c.ids
    for round_ in range(3):
        for node_id in c.ids:
            c.increment(node_id, "a", round_ + 1)
            bulk(c, node_id, [("a", 2), ("b", -1), ("c", 5)])
        c.increment(n1, "b", 4)
    # Nothing is refused or retried: the old node is never sent what it cannot read (it
    # refuses bulk events with 400, like a node of the previous release).
    c.drain_replication()
    assert all(link["attempts"] == 0 and link["dropped"] == 0 for link in c.links())
    # n1 and n2 push their bulk events to each other; n3's reach them by anti-entropy
    n3_bulk = 3 * 2
    assert c.counts("a")[n1] == c.counts("a")[n2] == c.acknowledged["a"] - n3_bulk
    for _ in range(3):
        c.anti_entropy_round()
        if all(c.converged(name) for name in "abc"):
            break
    for name in "abc":
        assert c.converged(name), (name, c.counts(name), c.acknowledged[name])


def test_the_old_node_refuses_bulk_events_like_the_previous_release(cluster_of):
    c = mixed(cluster_of)
    n1, n3 = c.ids[0], c.ids[2]
    body = {"node_id": n1, "events": [{"id": "o:1", "items": [["a", 1], ["b", 1]]}]}
    response = c[n3].app.handle(make_request("POST", "/counter/replicate", body))
    assert response.status == 400 and b"protocol 2" in response.body
    assert c[n3].counters() == {}


def test_a_node_learns_a_peer_is_old_from_its_409_and_asks_again_in_protocol_1(cluster_of):
    c = cluster_of(1)
    old = c.add_member("n9:7009", dataclasses.replace(BASE, advertise="n9:7009", protocol=1))
    refused = []
    original = old.app.handle

    def handle(request):  # watch what the old node answers
        response = original(request)
        refused.append(response.status)
        return response

    old.app.handle = handle
    c["n1:7001"].peers.add_candidates(["n9:7009"], c.clock.monotonic())
    c["n1:7001"].rejoin_once()
    assert refused[:2] == [409, 200]
    assert c.fully_connected()
    assert c["n1:7001"].protocols.known("n9:7009") == 1
    c["n1:7001"].heartbeat_once()  # later contacts go in protocol 1 at once
    assert refused[2:] == [200]


def test_nodes_that_spoke_protocol_1_to_each_other_move_up_after_the_upgrade(cluster_of):
    c = cluster_of(2)
    n1, n2 = c.ids
    c.form()
    c[n1].protocols.refused(n2)  # as if n2 had been of the previous release
    c[n2].protocols.refused(n1)
    for node in c.nodes.values():
        node.heartbeat_once()
    assert c[n1].protocols.known(n2) == 2 and c[n2].protocols.known(n1) == 2


def test_a_peer_found_old_is_sent_plain_events_only(cluster_of):
    c = cluster_of(2)
    n1, n2 = c.ids
    c.form()
    c[n1].protocols.refused(n2)  # n2 turned out to speak only protocol 1
    bulk(c, n1, [("a", 1), ("b", 1)])
    c.increment(n1, "a", 1)
    bulk(c, n1, [("a", 1), ("b", 1)])
    c.drain_replication()
    assert c[n2].counters() == {"a": 1}
    assert all(link["attempts"] == 0 for link in c.links())


@pytest.mark.parametrize("path", ["/nodes/join", "/nodes/heartbeat", "/nodes/leave"])
def test_a_protocol_1_node_refuses_protocol_2(cluster_of, path):
    c = cluster_of(1)
    old = c.add("n9:7009", dataclasses.replace(BASE, advertise="n9:7009", protocol=1))
    body = {"node_id": "n5:7005", "protocol": 2, "origin": "o5"}
    response = old.app.handle(make_request("POST", path, body))
    assert response.status == 409


def test_protocol_2_peers_get_runs_and_the_old_node_the_event_list(cluster_of):
    c = mixed(cluster_of)
    n1, n2, n3 = c.ids
    bodies: dict[str, list[dict]] = {node_id: [] for node_id in c.ids}
    for node_id in c.ids:
        original = c[node_id].app.handle

        def handle(request, node_id=node_id, original=original):
            if request.path == "/counter/replicate":
                bodies[node_id].append(json.loads(request.body))
            return original(request)

        c[node_id].app.handle = handle
    for node_id in c.ids:
        for _ in range(3):
            c.increment(node_id, "a", 1)
    bulk(c, n1, [("a", 2), ("b", 1)])
    c.drain_replication()
    assert bodies[n3] and all(set(body) == {"node_id", "events"} for body in bodies[n3])
    for node_id in (n1, n2):
        assert all(set(body) == {"node_id", "runs"} if body["node_id"] != n3
                   else set(body) == {"node_id", "events"} for body in bodies[node_id])
    assert any(body["node_id"] == n1 for body in bodies[n2])
    for name in "ab":
        for _ in range(3):
            if c.converged(name):
                break
            c.anti_entropy_round()
        assert c.converged(name), (name, c.counts(name), c.acknowledged[name])


def test_the_old_node_refuses_runs_with_400(cluster_of):
    c = mixed(cluster_of)
    n1, n3 = c.ids[0], c.ids[2]
    body = {"node_id": n1, "runs": [{"origin": "o", "first": 1, "events": [["a", 1]]}]}
    response = c[n3].app.handle(make_request("POST", "/counter/replicate", body))
    assert response.status == 400 and b"protocol 2" in response.body
    assert c[n3].counters() == {}


def test_held_events_travel_between_protocol_2_nodes_and_the_old_node_never_sees_them(
        cluster_of):
    c = mixed(cluster_of)
    n1, n2, n3 = c.ids
    bodies = []
    original = c[n3].app.handle

    def handle(request):  # what reaches the old node
        bodies.append(request.body)
        return original(request)

    c[n3].app.handle = handle
    c[n2].replicate("n9:7009", [Event("dead", 2, "c", 5)])  # held above a gap nobody fills
    for _ in range(2):
        c.clock.advance(10.0)
        c.anti_entropy_round()
    assert c[n1].count("c") == 5 and c[n1].counter.held_total() == 1
    assert bodies and not any(b"held" in body for body in bodies)
