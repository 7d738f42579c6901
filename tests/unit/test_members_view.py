"""The members view of GET /status and `POST /nodes/forget`, on real nodes over the in-memory
FakeNetwork, driven step by step with a fake clock (see test_cluster.py)."""

import json

from tests.fakes import make_request
from tests.unit.test_cluster import BASE, cluster_of  # noqa: F401 (a fixture)


def members(node) -> dict:
    return node.status()["members"]


def states(node) -> dict:
    return {peer: m["state"] for peer, m in members(node).items()}


def heartbeats(c) -> None:
    for node in c.nodes.values():
        node.heartbeat_once()


def forget(node, member, **extra):
    response = node.app.handle(make_request("POST", "/nodes/forget",
                                            {"node_id": member, **extra}))
    return response.status, json.loads(response.body)


def fail(c, node_id) -> None:
    """Cut `node_id` off; the others remove it for silence."""
    c.net.isolate(node_id)
    c.clock.advance(BASE.peer_timeout + 0.1)
    heartbeats(c)
    for other, node in c.nodes.items():
        if other != node_id:
            node.cleanup_once()


def test_every_member_is_alive_and_caught_up_once_formed(cluster_of):
    c = cluster_of(3)
    n1, n2, n3 = c.ids
    c.form()
    c.increment(n1)
    c.drain_replication()
    heartbeats(c)
    view = members(c[n1])
    assert sorted(view) == [n2, n3]
    for member in view.values():
        assert member["state"] == "alive" and member["caught_up"] is True
        assert member["backlog"] == 0 and member["error"] is None
        assert 0 <= member["last_heard_seconds"] < 1
    assert c[n1].status()["summary"] == "3 of 3 members up, all caught up"


def test_a_silent_member_is_suspect_then_failed_and_kept(cluster_of):
    c = cluster_of(3)
    n1, n2, n3 = c.ids
    c.form()
    heartbeats(c)
    c.net.isolate(n3)
    c.clock.advance(1.5 * BASE.heartbeat_interval + 0.1)
    heartbeats(c)
    assert states(c[n1]) == {n2: "alive", n3: "suspect"}
    assert "1 suspect" in c[n1].status()["summary"]
    c.clock.advance(BASE.peer_timeout)
    heartbeats(c)
    c[n1].cleanup_once()
    assert states(c[n1]) == {n2: "alive", n3: "failed"}
    c.clock.advance(3600)
    c[n1].rejoin_once()  # its rejoin fails: the reason is shown in words
    heartbeats(c)
    c[n1].cleanup_once()
    failed = members(c[n1])[n3]
    assert failed["state"] == "failed" and failed["last_heard_seconds"] > 3600
    assert failed["error"] and "Error" not in failed["error"]
    assert c[n1].status()["summary"].startswith(f"2 of 3 members up ({n3} failed)")
    # It answers again: alive.
    c.net.heal()
    c.clock.advance(3600)
    c[n1].rejoin_once()
    assert states(c[n1])[n3] == "alive"


def leave(c, node_id) -> None:
    """`node_id` says goodbye to every other node (what its graceful stop sends)."""
    c.net.detach(node_id)
    c.nodes.pop(node_id).stop(leave=False)
    for other, node in c.nodes.items():
        if other != node_id:
            response = node.app.handle(make_request("POST", "/nodes/leave",
                                                    {"node_id": node_id}))
            assert response.status == 200


def test_a_member_that_leaves_is_left_not_missing(cluster_of):
    c = cluster_of(3)
    n1, n2, n3 = c.ids
    c.form()
    leave(c, n3)
    assert states(c[n1]) == {n2: "alive", n3: "left"}
    assert c[n1].status()["summary"] == "2 of 2 members up, all caught up, 1 left"


def test_failed_and_left_members_are_reaped_after_reap_after(cluster_of):
    c = cluster_of(4, reap_after=100.0)
    n1, n2, n3, n4 = c.ids
    c.form()
    leave(c, n4)
    fail(c, n3)
    assert states(c[n1]) == {n2: "alive", n3: "failed", n4: "left"}
    c.net.heal()
    c.clock.advance(101)
    c[n1].cleanup_once()
    assert n3 not in states(c[n1]) and n4 not in states(c[n1])
    assert n3 not in c[n1].status()["candidates"]


def test_forget_removes_a_failed_member_on_every_node(cluster_of):
    c = cluster_of(3)
    n1, n2, n3 = c.ids
    c.form()
    fail(c, n3)
    heartbeats(c)
    assert states(c[n2])[n3] == "failed"
    status, reply = forget(c[n1], n3)
    assert status == 200, reply
    assert reply == {"forgotten": n3, "known": True, "told": [n2], "not_told": {}}
    for node_id in (n1, n2):
        assert n3 not in states(c[node_id])
        assert n3 not in c[node_id].status()["candidates"]
        assert c[node_id].status()["summary"] == "2 of 2 members up, all caught up"
    # Gossip that still names it does not bring it back.
    c[n2].on_heartbeat(n1, None, {}, [n3])
    assert n3 not in c[n2].status()["candidates"]
    # A node that joins directly again is accepted.
    c.net.heal()
    c.clock.advance(60)
    c[n3].rejoin_once()
    heartbeats(c)
    assert states(c[n1])[n3] == "alive"


def test_a_forwarded_forget_is_applied_and_not_passed_on(cluster_of):
    c = cluster_of(3)
    n1, n2, n3 = c.ids
    c.form()
    fail(c, n3)
    status, reply = forget(c[n2], n3, forwarded=True)
    assert status == 200 and reply["told"] == [] and reply["not_told"] == {}
    assert n3 not in states(c[n2]) and states(c[n1])[n3] == "failed"


def test_forget_refuses_a_live_member_an_unknown_one_and_bad_input(cluster_of):
    c = cluster_of(2)
    n1, n2 = c.ids
    c.form()
    before = c[n1].status()["members"]
    status, reply = forget(c[n1], n2)
    assert status == 409 and "live member" in reply["error"]
    status, reply = forget(c[n1], "nobody:9")
    assert status == 404 and "not a member" in reply["error"]
    status, reply = forget(c[n1], n1)
    assert status == 400
    for body in ({"node_id": n2, "forwarded": "yes"}, {"node_id": "not an id"}, {},
                 {"node_id": n2, "extra": 1}):
        response = c[n1].app.handle(make_request("POST", "/nodes/forget", body))
        assert response.status == 400, body
    assert c[n1].status()["members"].keys() == before.keys()
    assert states(c[n1]) == {n2: "alive"}


def test_a_forwarded_forget_of_a_member_alive_here_is_refused(cluster_of):
    # n1 and n2 are cut off from each other; n3 still hears n2. n1 forgets n2: n3 refuses.
    c = cluster_of(3)
    n1, n2, n3 = c.ids
    c.form()
    c.net.partition(n1, n2)
    c.clock.advance(BASE.peer_timeout + 0.1)
    heartbeats(c)
    c[n1].cleanup_once()
    assert states(c[n1])[n2] == "failed" and states(c[n3])[n2] == "alive"
    status, reply = forget(c[n1], n2)
    assert status == 200 and reply["told"] == []
    assert "live member of n3:7003" in reply["not_told"][n3]
    assert states(c[n3])[n2] == "alive"
