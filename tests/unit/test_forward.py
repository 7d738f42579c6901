"""Keyed increments decided at their key's home: real nodes over the in-memory FakeNetwork.

Replication is held back (every replicate request is delayed) where a test needs to show that
the answer comes from the home, not from an event that reached the node meanwhile.
"""

import json

from dcounter.api import ROUTES, App, Route
from dcounter.errors import Unauthorized
from dcounter.keyhome import home
from tests.fakes import make_request
from tests.unit.test_cluster import Cluster, cluster_of  # noqa: F401 (a fixture)

FORWARDED = "dcounter_increments_forwarded_total"
REFUSED = "dcounter_increments_forward_refused_total"


def key_at(c: Cluster, node_id: str, prefix: str = "order") -> str:
    """A key whose home, in the view of the whole cluster, is `node_id`."""
    return next(k for k in (f"{prefix}-{n}" for n in range(1000)) if home(k, c.ids) == node_id)


def formed(cluster_of, size: int = 3) -> Cluster:
    c = cluster_of(size)
    c.form()
    assert c.fully_connected()
    return c


def hold_replication(c: Cluster) -> None:
    c.net.set_faults(delay=1.0, paths={"/counter/replicate"})


def post_increment(c: Cluster, node_id: str, delta: int, key: str | None, counter: str = "c"):
    headers = {"Idempotency-Key": key} if key else None
    return c[node_id].app.handle(make_request("POST", "/counter/increment",
                                              {"counter": counter, "delta": delta},
                                              headers=headers))


def body(response) -> dict:
    return json.loads(response.body)


def test_a_keyed_increment_is_applied_once_at_its_home_and_a_retry_elsewhere_replays(cluster_of):
    c = formed(cluster_of)
    n1, n2, n3 = c.ids
    key = key_at(c, n2)
    hold_replication(c)
    first = post_increment(c, n1, 5, key)
    assert first.status == 200 and "Idempotent-Replayed" not in first.headers
    assert body(first)["count"] == 5
    assert body(first)["event_id"].startswith(c[n2].counter.local_origin + ":")
    assert c.counts() == {n1: 0, n2: 5, n3: 0}  # decided at the home; replication held back
    assert c[n1].metrics.value(FORWARDED) == 1

    retry = post_increment(c, n3, 5, key)  # the client failed over to a third node
    assert retry.status == 200 and retry.headers["Idempotent-Replayed"] == "true"
    assert body(retry)["event_id"] == body(first)["event_id"]
    assert c.counts() == {n1: 0, n2: 5, n3: 0}

    c.net.clear_faults()
    c.net.deliver_late()
    c.drain_replication()
    assert c.counts() == {n1: 5, n2: 5, n3: 5}


def test_an_increment_without_a_key_is_never_forwarded(cluster_of):
    c = formed(cluster_of)
    n1, n2, n3 = c.ids
    hold_replication(c)
    assert post_increment(c, n1, 2, None).status == 200
    assert c.counts() == {n1: 2, n2: 0, n3: 0}
    assert c[n1].metrics.value(FORWARDED) == 0


def test_the_homes_refusal_of_a_reused_key_is_relayed(cluster_of):
    c = formed(cluster_of)
    n1, n2, n3 = c.ids
    key = key_at(c, n2)
    assert post_increment(c, n1, 5, key).status == 200
    refused = post_increment(c, n3, 6, key)  # the same key with another delta
    assert refused.status == 422 and "Idempotency-Key" in body(refused)["error"]
    c.drain_replication()
    assert c.counts() == {n1: 5, n2: 5, n3: 5}


def test_a_home_that_refuses_the_connection_leaves_the_increment_to_this_node(cluster_of):
    c = formed(cluster_of)
    n1, n2, n3 = c.ids
    key = key_at(c, n2)
    c.net.detach(n2)  # down: its port refuses connections; n1 still lists it
    answer = post_increment(c, n1, 4, key)
    assert answer.status == 200 and "Idempotent-Replayed" not in answer.headers
    assert body(answer)["event_id"].startswith(c[n1].counter.local_origin + ":")
    assert c[n1].count("c") == 4
    assert c[n1].metrics.value(REFUSED) == 1
    assert c[n1].metrics.value(FORWARDED) == 0
    # The same key again at the same node: n2 still refuses, n1 remembers the key.
    again = post_increment(c, n1, 4, key)
    assert again.headers["Idempotent-Replayed"] == "true" and c[n1].count("c") == 4


def test_a_home_that_took_the_request_and_did_not_answer_gives_503_and_nothing_here(cluster_of):
    c = formed(cluster_of)
    n1, n2, n3 = c.ids
    key = key_at(c, n2)
    c.net.set_faults(drop_reply=1.0, paths={"/counter/forward"})
    lost = post_increment(c, n1, 3, key)
    assert lost.status == 503
    assert "retry with the same key" in body(lost)["error"]
    assert c[n2].count("c") == 3  # the home counted it
    # ... and this node made no event of its own (n2's may reach it by replication).
    assert c[n1].counter.watermark(c[n1].counter.local_origin) == 0
    assert c[n1].metrics.value("dcounter_increments_local_total") == 0
    assert c[n1].metrics.value(REFUSED) == 0

    c.net.clear_faults()
    retry = post_increment(c, n1, 3, key)
    assert retry.status == 200 and retry.headers["Idempotent-Replayed"] == "true"
    c.drain_replication()
    assert c.counts() == {n1: 3, n2: 3, n3: 3}


def test_a_forwarded_request_is_applied_at_the_node_it_reaches(cluster_of):
    c = formed(cluster_of)
    n1, n2, n3 = c.ids
    key = key_at(c, n2)  # n1's view names n2 as the home
    hold_replication(c)
    reply = c[n1].app.handle(make_request("POST", "/counter/forward", {
        "node_id": n3, "counter": "c", "delta": 6, "key": key}))
    assert reply.status == 200
    assert body(reply) == {"counter": "c", "count": 6, "replayed": False,
                           "event_id": f"{c[n1].counter.local_origin}:1"}
    assert c.counts() == {n1: 6, n2: 0, n3: 0}
    assert c[n1].metrics.value(FORWARDED) == 0


def test_a_forward_is_checked_like_an_increment_and_refused_whole(cluster_of):
    c = formed(cluster_of, 2)
    n1, n2 = c.ids
    good = {"node_id": n2, "counter": "c", "delta": 1, "key": "k"}
    for bad in ({**good, "delta": 0}, {**good, "key": ""}, {**good, "counter": "no spaces"},
                {k: v for k, v in good.items() if k != "key"}, {**good, "extra": 1},
                {**good, "node_id": "nohost"}):
        answer = c[n1].app.handle(make_request("POST", "/counter/forward", bad))
        assert answer.status == 400, bad
    assert c.counts() == {n1: 0, n2: 0}


def test_a_node_without_the_forward_route_is_not_used_as_a_home(cluster_of):
    c = formed(cluster_of)
    n1, n2, n3 = c.ids
    key = key_at(c, n2)
    old = c[n2]
    old.app = App(old, routes=[r for r in ROUTES if r.path != "/counter/forward"])
    c.net.attach(old)  # n2 now answers 404 to a forward, as a node of the previous version
    hold_replication(c)
    first = post_increment(c, n1, 7, key)
    retry = post_increment(c, n3, 7, key)
    assert first.status == retry.status == 200
    assert retry.headers["Idempotent-Replayed"] == "true"
    # Both chose the next home among the others: one event, at n1 or n3.
    second = home(key, [n1, n3])
    assert body(first)["event_id"].startswith(c[second].counter.local_origin + ":")
    assert c.counts()[n2] == 0 and sum(c.counts().values()) == 7


def test_a_home_that_refuses_this_nodes_signature_gives_503_and_nothing_here(cluster_of):
    c = formed(cluster_of)
    n1, n2, n3 = c.ids

    def refuse(_node, _request):
        raise Unauthorized("bad signature")

    home_node = c[n2]
    home_node.app = App(home_node, routes=[r for r in ROUTES if r.path != "/counter/forward"]
                        + [Route("POST", "/counter/forward", refuse, "peer")])
    c.net.attach(home_node)  # its secret differs from n1's
    answer = post_increment(c, n1, 2, key_at(c, n2))
    assert answer.status == 503 and "401" in body(answer)["error"]
    assert c.counts() == {n1: 0, n2: 0, n3: 0}


def test_a_retry_after_the_home_went_away_counts_again_the_documented_window(cluster_of):
    """Membership changed between the attempts: the promise does not hold, and says so."""
    c = formed(cluster_of)
    n1, n2, n3 = c.ids
    key = key_at(c, n2)
    hold_replication(c)
    assert post_increment(c, n1, 1, key).status == 200
    for node_id in (n1, n3):
        c[node_id].peers.leave(n2)  # n2 left the cluster (its leave reached them)
    retry = post_increment(c, n3, 1, key)
    assert retry.status == 200 and "Idempotent-Replayed" not in retry.headers


def test_forward_metrics_are_exposed(cluster_of):
    c = formed(cluster_of, 2)
    text = c[c.ids[0]].metrics.render()
    assert f"{FORWARDED} 0" in text and f"{REFUSED} 0" in text



def test_the_forward_route_is_a_peer_route_signed_with_the_cluster_secret():
    kinds = {(route.method, route.path): route.kind for route in ROUTES}
    assert kinds[("POST", "/counter/forward")] == "peer"
