"""Signed peer requests and client tokens, on real node processes.

Every refused request is checked to change nothing: the counts and every node's GET /nodes are
the same afterwards, and a join naming an address we listen on never makes a node connect to it.
"""

import json
import select
import socket
import time

import pytest

from dcounter import auth
from tests.integration.harness import poll

SECRET = "cluster-secret-" + "1" * 20
OLD = "cluster-secret-" + "0" * 20
WRONG = "cluster-secret-" + "9" * 20
TOKEN = "client-token-" + "7" * 20


def signed_post(node, path, payload, secret=SECRET, at=None, nonce=None, headers=None):
    body = json.dumps(payload).encode()
    sent = auth.sign(secret, "POST", path, body, time.time() if at is None else at, nonce)
    sent.update(headers or {})
    return node.session.post(node.base + path, data=body, headers=sent, timeout=5)


def snapshot(nodes):
    return [(n.count(), sorted(n.nodes())) for n in nodes]


def listener():
    """A loopback socket nobody should ever connect to."""
    sock = socket.socket()
    sock.bind(("127.0.0.1", 0))
    sock.listen(8)
    return sock, f"localhost:{sock.getsockname()[1]}"


def no_connection(sock, seconds):
    readable, _, _ = select.select([sock], [], [], seconds)
    return not readable


def peer_bodies(node_id, origin="Attacker01"):
    return {
        "/nodes/join": {"node_id": node_id, "cluster": "default", "protocol": 1,
                        "origin": origin},
        "/nodes/heartbeat": {"node_id": node_id, "cluster": "default", "protocol": 1,
                             "origin": origin, "digest": {origin: 5}, "peers": [node_id]},
        "/nodes/leave": {"node_id": node_id},
        "/counter/replicate": {"node_id": node_id,
                               "events": [{"id": f"{origin}:1", "counter": "default",
                                           "delta": 1000}]},
        "/counter/state": {"node_id": node_id, "origins": [origin]},
    }


@pytest.fixture
def secured(cluster):
    """Two nodes sharing SECRET, one through the flag and one through the environment."""
    a = cluster.node("a", extra=["--cluster-secret", SECRET]).start()
    b = cluster.node("b", peers=[a.node_id],
                     env={"DCOUNTER_CLUSTER_SECRET": SECRET}).start()
    cluster.wait_membership([a, b])
    assert a.incr().status_code == 200 and b.incr().status_code == 200
    cluster.wait_converged([a, b], 2)
    return a, b


def test_bad_signatures_get_401_and_change_nothing(cluster, secured):
    a, b = secured
    before = snapshot([a, b])
    trap, trap_id = listener()
    try:
        for path, payload in peer_bodies(trap_id).items():
            for label, response in [
                ("missing", a.post(path, payload)),
                ("wrong secret", signed_post(a, path, payload, secret=WRONG)),
                ("stale", signed_post(a, path, payload, at=time.time() - 120)),
                ("future", signed_post(a, path, payload, at=time.time() + 120)),
                ("client token", a.post(path, payload,
                                        headers={"Authorization": f"Bearer {SECRET}"})),
            ]:
                assert response.status_code == 401, (path, label, response.text)
                assert "error" in response.json()
        # A leave naming a live peer, unsigned, does not evict it.
        assert a.post("/nodes/leave", {"node_id": b.node_id}).status_code == 401
        # Even with heartbeats due several times over, nobody contacts the trap.
        assert no_connection(trap, 1.5)
    finally:
        trap.close()
    assert snapshot([a, b]) == before


def test_a_replayed_request_gets_401_and_changes_nothing(cluster, secured):
    a, b = secured
    path = "/counter/replicate"
    payload = {"node_id": b.node_id,
               "events": [{"id": "Replayed01:1", "counter": "default", "delta": 5}]}
    body = json.dumps(payload).encode()
    headers = auth.sign(SECRET, "POST", path, body, time.time())
    first = a.session.post(a.base + path, data=body, headers=headers, timeout=5)
    assert first.status_code == 200 and first.json()["applied"] == 1
    cluster.wait_converged([a, b], 7)
    before = snapshot([a, b])
    again = a.session.post(a.base + path, data=body, headers=headers, timeout=5)
    assert again.status_code == 401 and "replayed" in again.json()["error"]
    # The same nonce under a new, valid signature is a replay too, also at the other node
    # after it saw it once.
    nonce = headers[auth.NONCE_HEADER]
    assert signed_post(a, "/nodes/leave", {"node_id": b.node_id}, nonce=nonce).status_code == 401
    leave = auth.sign(SECRET, "POST", "/nodes/leave", json.dumps({"node_id": a.node_id}).encode(),
                      time.time())
    captured = {"data": json.dumps({"node_id": a.node_id}).encode(), "headers": leave,
                "timeout": 5}
    # A captured leave works once (a genuine leave) ...
    assert b.session.post(b.base + "/nodes/leave", **captured).status_code == 200
    cluster.wait_membership([a, b])  # ... a's heartbeats bring it back ...
    # ... and replayed, it cannot evict the live node again.
    assert b.session.post(b.base + "/nodes/leave", **captured).status_code == 401
    assert sorted(b.nodes()) == [a.node_id]
    assert [n.count() for n in (a, b)] == [before[0][0]] * 2


def test_client_token_guards_increments(cluster):
    a = cluster.node("a", in_memory=True, extra=["--client-token", TOKEN]).start()
    good = {"Authorization": f"Bearer {TOKEN}"}
    assert a.incr(headers=good).status_code == 200
    for headers in ({}, {"Authorization": f"Bearer {TOKEN}x"}, {"Authorization": "Bearer "},
                    {"Authorization": f"Basic {TOKEN}"}, {"Authorization": TOKEN}):
        response = a.incr(delta=100, headers=headers)
        assert response.status_code == 401, headers
        assert response.headers["WWW-Authenticate"] == "Bearer"
    assert a.count() == 1                      # reads stay open
    assert a.get("/counters").status_code == 200
    assert a.get("/nodes").status_code == 200


def test_protect_reads(cluster):
    a = cluster.node("a", in_memory=True, extra=["--protect-reads"],
                     env={"DCOUNTER_CLIENT_TOKEN": TOKEN}).start()
    good = {"Authorization": f"Bearer {TOKEN}"}
    for path in ("/counter/count", "/counters", "/nodes"):
        assert a.get(path).status_code == 401, path
        assert a.get(path, headers={"Authorization": "Bearer nope"}).status_code == 401, path
        assert a.get(path, headers=good).status_code == 200, path
    for path in ("/healthz", "/readyz"):
        assert a.get(path).status_code in (200, 503), path
        assert a.get(path).status_code != 401, path


def test_token_and_secret_together(cluster):
    """Peers sign, clients bring the token; neither credential opens the other's routes."""
    extra = ["--cluster-secret", SECRET, "--client-token", TOKEN]
    a = cluster.node("a", extra=extra).start()
    b = cluster.node("b", peers=[a.node_id], extra=extra).start()
    cluster.wait_membership([a, b])
    good = {"Authorization": f"Bearer {TOKEN}"}
    assert a.incr(headers=good).status_code == 200
    assert b.incr(delta=2, headers=good).status_code == 200
    cluster.wait_converged([a, b], 3)
    replicate = {"node_id": b.node_id,
                 "events": [{"id": "Sneaky01:1", "counter": "default", "delta": 50}]}
    assert a.post("/counter/replicate", replicate, headers=good).status_code == 401
    assert signed_post(a, "/counter/increment", {}).status_code == 401
    assert [a.count(), b.count()] == [3, 3]


def test_rotating_the_secret_keeps_the_cluster_converging(cluster):
    """The rolling rotation the README gives, one node at a time: OLD, then OLD,NEW (accept the
    new secret), then NEW,OLD (sign with it), then NEW. The cluster converges at every step,
    each of which leaves the two nodes with different settings."""
    a = cluster.node("a", extra=["--cluster-secret", OLD]).start()
    b = cluster.node("b", peers=[a.node_id], extra=["--cluster-secret", OLD]).start()
    cluster.wait_membership([a, b])
    expected = 0
    for secrets in (f"{OLD},{SECRET}", f"{SECRET},{OLD}", SECRET):
        for node in (a, b):
            node.kill()
            node.restart(extra=["--cluster-secret", secrets])
            cluster.wait_membership([a, b])
            assert a.incr().status_code == 200 and b.incr().status_code == 200
            expected += 2
            cluster.wait_converged([a, b], expected, timeout=20)
    assert signed_post(a, "/nodes/heartbeat", {"node_id": b.node_id},
                       secret=OLD).status_code == 401


def test_a_half_done_rotation_is_logged_and_still_converges(cluster):
    """a signs with the new secret that b does not know yet: a's calls to b are refused, b's
    calls to a are accepted. b's pushes and b's pulls from a keep both counts equal, and a says
    in its log why b refuses it."""
    a = cluster.node("a", extra=["--cluster-secret", f"{SECRET},{OLD}"]).start()
    b = cluster.node("b", peers=[a.node_id], extra=["--cluster-secret", OLD]).start()
    cluster.wait_membership([a, b])
    assert a.incr(delta=3).status_code == 200 and b.incr(delta=4).status_code == 200
    cluster.wait_converged([a, b], 7, timeout=20)
    poll(lambda: f"peer {b.node_id} refused our signature" in a.stderr(), 10,
         message="a to log that b refuses its signature")
    assert "do the nodes share --cluster-secret" in a.stderr()


def test_without_a_secret_on_loopback_there_is_no_warning(cluster):
    a = cluster.node("a", in_memory=True).start()
    assert a.get("/healthz").status_code == 200
    assert "--cluster-secret" not in a.stderr()


def test_a_bad_secret_flag_stops_the_node_at_start(cluster):
    a = cluster.node("a", in_memory=True, env={"DCOUNTER_CLUSTER_SECRET": "short"})
    a.start(wait=False)
    assert a.proc.wait(15) == 2
    # The value came from the environment: the error names the variable, never the value.
    assert "DCOUNTER_CLUSTER_SECRET" in a.stderr() and "short" not in a.stderr()
