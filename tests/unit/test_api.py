"""Route functions through `App.handle`, on a real opened node (in memory, no loops running)."""

import dataclasses
import json
import logging
from types import SimpleNamespace

import pytest

from dcounter import PROTOCOL
from dcounter.api import App, Route
from dcounter.config import Config
from dcounter.node import Node
from dcounter.validation import INT64_MAX, MAX_DELTA
from tests.fakes import FakeClock, FakeNetwork, make_request

NODE_ID = "n1:7001"
BASE = Config(port=0, in_memory=True, advertise=NODE_ID, batch_linger=0, drain_timeout=0)


@pytest.fixture
def make_node():
    nodes = []

    def make(**changes):
        network = FakeNetwork()
        node = Node(dataclasses.replace(BASE, **changes), clock=FakeClock(),
                    transport=network.transport(NODE_ID))
        node.open()
        network.attach(node)
        nodes.append(node)
        return node

    yield make
    for node in nodes:
        node.stop(leave=False)


@pytest.fixture
def node(make_node):
    return make_node()


def call(node, method, path, body=b"", **kwargs):
    response = node.app.handle(make_request(method, path, body, **kwargs))
    if response.content_type == "application/json":
        return response.status, json.loads(response.body), response.headers
    return response.status, response.body.decode(), response.headers


def post(node, path, body=b"", **kwargs):
    return call(node, "POST", path, body, **kwargs)


def get(node, path, query=None, **kwargs):
    return call(node, "GET", path, query=query, **kwargs)


def peer(node_id, **fields):
    """A join or heartbeat body as a dcounter peer sends it: with protocol and origin."""
    return {"node_id": node_id, "protocol": 1, "origin": "o" + node_id.rsplit(":", 1)[-1],
            **fields}


def assert_error(outcome, status):
    got, payload, _ = outcome
    assert got == status, payload
    assert isinstance(payload, dict) and set(payload) == {"error"}
    assert isinstance(payload["error"], str) and payload["error"]


# -- increment -------------------------------------------------------------------------------------

@pytest.mark.parametrize("body,counter,expected", [
    (b"", "default", 1), (b"  \n", "default", 1), ({}, "default", 1), ({"counter": "x"}, "x", 1),
    ({"counter": "x", "delta": -7}, "x", -7), ({"delta": MAX_DELTA}, "default", MAX_DELTA),
])
def test_increment_forms(node, body, counter, expected):
    status, payload, headers = post(node, "/counter/increment", body)
    assert status == 200
    assert payload == {"counter": counter, "count": expected,
                       "event_id": f"{node.counter.local_origin}:1"}
    assert "Idempotent-Replayed" not in headers
    assert get(node, "/counter/count", [("counter", counter)])[1] == \
        {"counter": counter, "count": expected}


def test_count_defaults_to_the_default_counter_and_zero(node):
    assert get(node, "/counter/count") == (200, {"counter": "default", "count": 0}, {})
    assert get(node, "/counter/count", [("counter", "never")])[1]["count"] == 0
    post(node, "/counter/increment", {"counter": "a", "delta": 2})
    post(node, "/counter/increment")
    assert get(node, "/counters")[1] == {"counters": {"a": 2, "default": 1}}


@pytest.mark.parametrize("body", [
    b"{", b"not json", b"[1]", b'"text"', b"null", b"\xff\xfe", b'{"delta": 1}{',
    {"delta": True}, {"delta": False}, {"delta": 1.0}, {"delta": 1.5}, {"delta": 0},
    {"delta": MAX_DELTA + 1}, {"delta": -MAX_DELTA - 1}, {"delta": "1"}, {"delta": None},
    {"counter": ""}, {"counter": "a b"}, {"counter": 5}, {"counter": None}, {"counter": "x" * 129},
    {"counter": "x", "extra": 1}, {"Delta": 1}, b'{"delta": NaN}', b'{"delta": Infinity}',
    b'{"delta": 1e400}',
])
def test_bad_increments_are_400_and_change_nothing(node, body):
    assert_error(post(node, "/counter/increment", body), 400)
    assert node.counter.counters() == {} and node.counter.digest() == {}


def test_deeply_nested_json_is_400_not_500(node):
    assert_error(post(node, "/counter/increment", b"[" * 200_000), 400)
    assert_error(post(node, "/nodes/join", b'{"node_id":' * 100_000), 400)


def test_idempotency_key_replays_the_original_response(node):
    headers = {"Idempotency-Key": "retry-1"}
    first = post(node, "/counter/increment", {"delta": 3}, headers=headers)
    post(node, "/counter/increment", {"delta": 10})
    status, payload, replay_headers = post(node, "/counter/increment", {"delta": 3},
                                           headers=headers)
    assert status == 200 and payload == first[1]
    assert replay_headers["Idempotent-Replayed"] == "true"
    assert node.count("default") == 13


def test_idempotency_key_with_another_request_is_422(node):
    post(node, "/counter/increment", {"delta": 3}, headers={"Idempotency-Key": "k"})
    assert_error(post(node, "/counter/increment", {"delta": 4},
                      headers={"Idempotency-Key": "k"}), 422)
    assert_error(post(node, "/counter/increment", {"counter": "other", "delta": 3},
                      headers={"Idempotency-Key": "k"}), 422)
    assert node.counter.counters() == {"default": 3}


@pytest.mark.parametrize("key", ["", " lead", "x" * 256, "caf\u00e9"])
def test_malformed_idempotency_key_is_400(node, key):
    assert_error(post(node, "/counter/increment", headers={"Idempotency-Key": key}), 400)
    assert node.counter.counters() == {}


def test_result_outside_signed_64_bits_is_422(node):
    events = [{"id": f"peer:{i}", "counter": "big", "delta": MAX_DELTA} for i in range(1, 1025)]
    assert post(node, "/counter/replicate", {"node_id": "n2:7002", "events": events})[0] == 200
    near = 1024 * MAX_DELTA
    assert_error(post(node, "/counter/increment", {"counter": "big", "delta": MAX_DELTA}), 422)
    assert node.count("big") == near
    assert post(node, "/counter/increment",
                {"counter": "big", "delta": INT64_MAX - near})[1]["count"] == INT64_MAX
    assert_error(post(node, "/counter/increment", {"counter": "big"}), 422)
    assert node.count("big") == INT64_MAX


def test_too_many_counters_is_422(make_node):
    node = make_node(max_counters=2)
    post(node, "/counter/increment", {"counter": "a"})
    post(node, "/counter/increment", {"counter": "b"})
    assert_error(post(node, "/counter/increment", {"counter": "c"}), 422)
    assert post(node, "/counter/increment", {"counter": "a"})[0] == 200
    assert node.counters() == {"a": 2, "b": 1}


# -- routing and query strings -----------------------------------------------------------------

@pytest.mark.parametrize("method,path,allow", [
    ("GET", "/counter/increment", "POST"), ("PUT", "/counter/increment", "POST"),
    ("POST", "/counter/count", "GET"), ("DELETE", "/nodes", "GET"),
    ("GET", "/nodes/join", "POST"), ("GET", "/counter/replicate", "POST"),
])
def test_wrong_method_is_405_with_allow(node, method, path, allow):
    outcome = call(node, method, path)
    assert_error(outcome, 405)
    assert outcome[2]["Allow"] == allow


@pytest.mark.parametrize("path", ["/nope", "/nodes/", "/counter", "/counter/count/", "/COUNTERS"])
def test_unknown_path_is_404(node, path):
    assert_error(get(node, path), 404)


@pytest.mark.parametrize("path,query", [
    ("/counter/count", [("name", "x")]), ("/counter/count", [("counter", "a"), ("counter", "b")]),
    ("/counter/count", [("counter", "bad name")]), ("/counters", [("x", "1")]),
    ("/nodes", [("all", "1")]),
])
def test_bad_query_parameters_are_400(node, path, query):
    assert_error(get(node, path, query), 400)


# -- membership ------------------------------------------------------------------------------------

def test_join_adds_the_caller_and_returns_our_id_and_peers(node):
    assert get(node, "/nodes")[1] == []
    status, reply, _ = post(node, "/nodes/join", peer("n2:7002"))
    assert status == 200
    assert reply["peers"] == [NODE_ID] and reply["node_id"] == NODE_ID
    assert reply["origin"] == node.counter.local_origin
    post(node, "/nodes/join", {"node_id": "n3:7003", "cluster": "default", "protocol": 1,
                               "origin": "abc"})
    assert get(node, "/nodes")[1] == ["n2:7002", "n3:7003"]
    assert post(node, "/nodes/join", peer("n3:7003"))[1]["peers"] == [NODE_ID, "n2:7002"]


@pytest.mark.parametrize("path", ["/nodes/join", "/nodes/heartbeat", "/nodes/leave"])
@pytest.mark.parametrize("body,status", [
    (b"", 400), (b"{", 400), ([], 400), ({}, 400), ({"node_id": None}, 400),
    ({"node_id": "nohost"}, 400), ({"node_id": "n2:0"}, 400), ({"node_id": 7002}, 400),
    ({"node_id": "n2:7002", "extra": True}, 400),
    ({"node_id": "n2:7002", "cluster": "other"}, 409),
    ({"node_id": "n2:7002", "cluster": 5}, 400),
    ({"node_id": "n2:7002", "protocol": PROTOCOL + 1}, 409),
    ({"node_id": "n2:7002", "protocol": 0}, 409),
    ({"node_id": "n2:7002", "protocol": "1"}, 400),
    ({"node_id": "n2:7002", "protocol": True}, 400),
    ({"node_id": "n2:7002", "origin": "bad origin"}, 400),
])
def test_bad_membership_requests_change_nothing(node, path, body, status):
    post(node, "/nodes/join", peer("n9:7009"))
    if path != "/nodes/leave" and isinstance(body, dict):
        body = {"protocol": 1, "origin": "o2", **body}  # what is wrong is the rest
    assert_error(post(node, path, body), status)
    assert get(node, "/nodes")[1] == ["n9:7009"]


@pytest.mark.parametrize("field,value", [
    ("digest", []), ("digest", {"o": -1}), ("digest", {"o": 1.5}), ("digest", {"o": True}),
    ("digest", {"bad origin": 1}), ("peers", "n3:7003"), ("peers", ["n3"]), ("peers", [3]),
    ("digest", {"o": 2**63}), ("digest", {"o": 2**64 + 5}),
])
def test_bad_digest_or_peer_list_is_400(node, field, value):
    for path in ("/nodes/join", "/nodes/heartbeat"):
        assert_error(post(node, path, peer("n2:7002", **{field: value})), 400)
    assert get(node, "/nodes")[1] == []


def test_heartbeat_reply_carries_id_origin_digest_and_peers(node):
    post(node, "/counter/increment")
    status, reply, _ = post(node, "/nodes/heartbeat",
                            peer("n2:7002", digest={}, peers=["n3:7003"]))
    assert status == 200
    origin = node.counter.local_origin
    assert reply == {"node_id": NODE_ID, "cluster": "default", "protocol": PROTOCOL, "origin": origin,
                     "digest": {origin: 1}, "peers": ["n2:7002"]}
    assert get(node, "/nodes")[1] == ["n2:7002"]  # n3 was heard of second-hand only


def test_a_peer_with_our_own_origin_is_never_listed(node):
    post(node, "/nodes/join", peer("alias:7001", origin=node.counter.local_origin))
    assert get(node, "/nodes")[1] == []


def test_leave_drops_the_peer_at_once(node):
    post(node, "/nodes/join", peer("n2:7002"))
    assert post(node, "/nodes/leave", {"node_id": "n2:7002"})[:2] == (200, {"left": True})
    assert get(node, "/nodes")[1] == []


# -- replicate and state ------------------------------------------------------------------------

def test_replicate_applies_once(node):
    batch = {"node_id": "n2:7002", "events": [
        {"id": "o2:1", "counter": "c", "delta": 2},
        {"id": "o2:3", "counter": "c", "delta": 5, "key": "client-key"}]}
    assert post(node, "/counter/replicate", batch)[:2] == \
        (200, {"applied": 2, "duplicates": 0, "deferred": 0})
    assert post(node, "/counter/replicate", batch)[1] == \
        {"applied": 0, "duplicates": 2, "deferred": 0}
    assert node.count("c") == 7
    status, payload, headers = post(node, "/counter/increment", {"counter": "c", "delta": 5},
                                    headers={"Idempotency-Key": "client-key"})
    assert payload == {"counter": "c", "count": 7, "event_id": "o2:3"}
    assert headers["Idempotent-Replayed"] == "true"


def test_replicate_applies_runs_once(node):
    batch = {"node_id": "n2:7002", "runs": [
        {"origin": "o2", "first": 1, "events": [["c", 2], ["c", 3, "client-key"]]},
        {"origin": "o3", "first": 5, "events": [{"items": [["c", 1], ["d", 4]]}]}]}
    assert post(node, "/counter/replicate", batch)[:2] == \
        (200, {"applied": 3, "duplicates": 0, "deferred": 0})
    assert post(node, "/counter/replicate", batch)[1] == \
        {"applied": 0, "duplicates": 3, "deferred": 0}
    assert node.count("c") == 6 and node.count("d") == 4
    assert node.counter.digest()["o2"] == 2


@pytest.mark.parametrize("bad_event", [
    "o2:5", {"id": "o2:0", "counter": "c", "delta": 1}, {"id": "o2", "counter": "c", "delta": 1},
    {"id": "o2:5", "counter": "c", "delta": 0}, {"id": "o2:5", "counter": "c", "delta": True},
    {"id": "o2:5", "counter": "c d", "delta": 1}, {"id": "o2:5", "counter": "c"},
    {"id": "o2:5", "counter": "c", "delta": 1, "extra": 1},
    {"id": "o2:5", "counter": "c", "delta": 1, "key": ""},
    {"id": "o2:5", "counter": "c", "delta": 1, "key": 5},
    {"id": "o2:9223372036854775808", "counter": "c", "delta": 1},
    {"id": "o2:5", "counter": "c", "delta": MAX_DELTA + 1},
])
def test_one_bad_event_refuses_the_whole_batch(node, bad_event):
    batch = {"node_id": "n2:7002", "events": [{"id": "o2:1", "counter": "c", "delta": 1},
                                              bad_event]}
    assert_error(post(node, "/counter/replicate", batch), 400)
    assert node.counter.counters() == {} and node.counter.digest() == {}


@pytest.mark.parametrize("body", [
    {}, {"events": []}, {"node_id": "bad", "events": []}, {"node_id": "n2:7002", "events": {}},
    {"node_id": "n2:7002", "events": [], "x": 1}, {"node_id": "n2:7002"},
    {"node_id": "n2:7002", "event_id": ""}, {"node_id": "n2:7002", "event_id": 5},
    {"node_id": "n2:7002", "runs": {}}, {"node_id": "n2:7002", "runs": [], "events": []},
    {"node_id": "n2:7002", "runs": [], "x": 1}, {"runs": []}, {"node_id": "bad", "runs": []},
    {"node_id": "n2:7002", "runs": [{"origin": "o2", "first": 1, "events": [["c", 0]]}]},
])
def test_malformed_replicate_requests_are_400(node, body):
    assert_error(post(node, "/counter/replicate", body), 400)


def test_state_returns_the_requested_prefixes(node):
    post(node, "/counter/increment", {"delta": 4})
    origin = node.counter.local_origin
    status, payload, _ = post(node, "/counter/state", {"origins": [origin, "unknown"]})
    assert status == 200
    assert payload == {"node_id": NODE_ID,
                       "origins": {origin: {"watermark": 1, "counters": {"default": 4}}},
                       "digest": {origin: 1}}


@pytest.mark.parametrize("body", [{}, {"origins": "o"}, {"origins": ["bad origin"]},
                                  {"origins": [], "x": 1}, {"origins": [1]}])
def test_malformed_state_requests_are_400(node, body):
    assert_error(post(node, "/counter/state", body), 400)


def show_lead(node, peer_id, digest):
    """`peer_id` shows `digest` twice, a heartbeat interval apart: a lead that lasted is pulled."""
    post(node, "/nodes/heartbeat", peer(peer_id, digest=digest))
    node.clock.advance(node.config.heartbeat_interval)
    post(node, "/nodes/heartbeat", peer(peer_id, digest=digest))


@pytest.mark.parametrize("prefix", [
    {"watermark": 2**63, "counters": {"c": 1}},
    {"watermark": 2, "counters": {"c": 2 * MAX_DELTA + 1}},
    {"watermark": 2, "counters": {"c": -2 * MAX_DELTA - 1}},
    {"watermark": 0, "counters": {}},
    {"watermark": 3, "counters": {"c": True}},
])
def test_a_state_reply_out_of_bounds_is_ignored_with_a_warning(node, prefix, caplog):
    peer_id = "n9:7009"
    reply = {"node_id": peer_id, "origins": {"o9": prefix}}
    routes = [Route("POST", "/counter/state", lambda _node, _request: (200, reply), "peer")]
    node.transport.network.attach(SimpleNamespace(node_id=peer_id, app=App(None, routes)))
    show_lead(node, peer_id, {"o9": 5})  # n9 is ahead
    with caplog.at_level(logging.WARNING, logger="dcounter"):
        assert node.pull_once() == 0
    assert f"ignoring malformed state from {peer_id}" in caplog.text
    assert node.counter.counters() == {} and node.counter.digest() == {}


def test_a_state_reply_at_the_bounds_is_adopted(node):
    peer_id = "n9:7009"
    big = 2 * MAX_DELTA  # two events of the largest delta
    reply = {"node_id": peer_id, "origins": {"o9": {"watermark": 2, "counters": {"c": big}},
                                          "o8": {"watermark": INT64_MAX, "counters": {}}}}
    routes = [Route("POST", "/counter/state", lambda _node, _request: (200, reply), "peer")]
    node.transport.network.attach(SimpleNamespace(node_id=peer_id, app=App(None, routes)))
    show_lead(node, peer_id, {"o9": 2, "o8": INT64_MAX})
    assert node.pull_once() == 2
    assert node.counter.counters() == {"c": big}
    assert node.counter.digest() == {"o9": 2, "o8": INT64_MAX}


# -- health and status ----------------------------------------------------------------------------

def test_health_ready_status_and_metrics(node):
    assert get(node, "/healthz")[:2] == (200, {"status": "ok", "node_id": NODE_ID})
    assert get(node, "/readyz")[:2] == (200, {"ready": True, "reason": "no peers known"})
    status, payload, _ = get(node, "/status")
    assert status == 200 and payload["node_id"] == NODE_ID and payload["durable"] is False
    status, text, _ = get(node, "/metrics")
    assert status == 200 and "dcounter_http_requests_total" in text


def test_idempotency_keys_expire_by_the_wall_clock_and_are_swept(make_node):
    node = make_node(idempotency_ttl=60.0)
    headers = {"Idempotency-Key": "k"}
    post(node, "/counter/increment", headers=headers)
    node.clock.advance(59)
    assert post(node, "/counter/increment", headers=headers)[2]["Idempotent-Replayed"] == "true"
    node.clock.advance(2)
    node.cleanup_once()
    assert node.counter.key_count() == 0
    status, payload, replay = post(node, "/counter/increment", headers=headers)
    assert status == 200 and "Idempotent-Replayed" not in replay
    assert payload["count"] == 2


def test_a_payload_json_cannot_encode_is_a_500_json_error(node, caplog):
    from dcounter.api import Route
    node.app.add(Route("GET", "/broken", lambda node, request: (200, {"x": object()}), "open"))
    with caplog.at_level("ERROR", logger="dcounter.api"):
        assert_error(get(node, "/broken"), 500)
    record = next(r for r in caplog.records if "internal error" in r.getMessage())
    assert record.levelname == "ERROR" and record.exc_info is not None


def test_a_join_past_max_peers_is_503_and_lists_nothing(make_node):
    node = make_node(max_peers=2)
    assert post(node, "/nodes/join", peer("n2:7002"))[0] == 200
    assert post(node, "/nodes/join", peer("n3:7003"))[0] == 200
    for body in (peer("n4:7004"), peer("n4:7004", peers=["n5:7005"])):
        status, payload, _ = post(node, "/nodes/join", body)
        assert_error((status, payload, {}), 503)
        assert "--max-peers" in payload["error"]
    assert_error(post(node, "/nodes/heartbeat", peer("n4:7004")), 503)
    assert get(node, "/nodes")[1] == ["n2:7002", "n3:7003"]
    assert sorted(node.replicator.backlogs()) == ["n2:7002", "n3:7003"]
    assert "n5:7005" not in node.peers.candidates(0.0)
    # A listed peer's join and heartbeat still succeed.
    assert post(node, "/nodes/heartbeat", peer("n3:7003"))[0] == 200
    assert post(node, "/nodes/join", peer("n2:7002"))[0] == 200


# -- the original system's nodes are refused --------------------------------------------------

ORIGINAL_UUID = "8a3c6a2e-0f7b-4f59-9a4e-2d1c8f3b7e10"


@pytest.mark.parametrize("path", ["/nodes/join", "/nodes/heartbeat"])
@pytest.mark.parametrize("body", [
    {"node_id": "n2:7002"},                                    # what the original nodes send
    {"node_id": "n2:7002", "protocol": 1},                     # no origin
    {"node_id": "n2:7002", "origin": "o2"},                    # no protocol
    {"node_id": "n2:7002", "cluster": "default", "digest": {}, "peers": []},
])
def test_a_join_or_heartbeat_without_protocol_and_origin_is_refused(node, path, body, caplog):
    with caplog.at_level(logging.WARNING, logger="dcounter"):
        outcome = post(node, path, body)
    assert_error(outcome, 400)
    message = outcome[1]["error"]
    assert "not a dcounter peer" in message and "Leaving the original system" in message
    assert get(node, "/nodes")[1] == []
    assert not node.peers.candidates(node.clock.monotonic())
    assert "n2:7002" in caplog.text and "not a dcounter peer" in caplog.text


def test_refusals_of_one_sender_are_logged_once_a_minute(node, caplog):
    original = {"node_id": "n2:7002"}
    with caplog.at_level(logging.WARNING, logger="dcounter"):
        for _ in range(3):
            assert_error(post(node, "/nodes/heartbeat", original), 400)
            assert_error(post(node, "/counter/replicate",
                              {"node_id": "n2:7002", "event_id": ORIGINAL_UUID}), 400)
        assert_error(post(node, "/nodes/join", {"node_id": "n3:7003"}), 400)
    warnings = [r for r in caplog.records if r.levelno == logging.WARNING]
    assert len(warnings) == 2
    assert ["n2:7002" in r.getMessage() for r in warnings] == [True, False]
    caplog.clear()
    node.clock.advance(61)
    with caplog.at_level(logging.WARNING, logger="dcounter"):
        assert_error(post(node, "/nodes/heartbeat", original), 400)
    assert len([r for r in caplog.records if r.levelno == logging.WARNING]) == 1


def test_the_original_uuid_replicate_form_is_refused_and_counts_nothing(node, caplog):
    body = {"node_id": "n2:7002", "event_id": ORIGINAL_UUID}
    with caplog.at_level(logging.WARNING, logger="dcounter"):
        for _ in range(2):
            outcome = post(node, "/counter/replicate", body)
            assert_error(outcome, 400)
    assert "original system" in outcome[1]["error"]
    assert "Leaving the original system" in outcome[1]["error"]
    assert node.count("default") == 0 and node.counter.digest() == {}
    assert get(node, "/nodes")[1] == []
    assert "n2:7002" in caplog.text and "original system" in caplog.text


def test_a_join_of_another_cluster_is_logged_once_then_with_backoff(node, caplog):
    body = {"node_id": "n2:7002", "cluster": "beta", "protocol": 1, "origin": "Foreign02"}
    with caplog.at_level(logging.WARNING, logger="dcounter"):
        for _ in range(3):
            assert_error(post(node, "/nodes/join", body), 409)
            assert_error(post(node, "/nodes/heartbeat", body), 409)
        node.clock.advance(59)
        assert_error(post(node, "/nodes/join", body), 409)
    warnings = [r.getMessage() for r in caplog.records if r.levelno == logging.WARNING]
    assert warnings == [f"refused n2:7002: this node belongs to cluster "
                        f"{node.config.cluster!r}, not 'beta' (is --cluster the same on every "
                        f"node?)"]
    node.clock.advance(1)
    with caplog.at_level(logging.WARNING, logger="dcounter"):
        assert_error(post(node, "/nodes/join", body), 409)
    assert len([r for r in caplog.records if r.levelno == logging.WARNING]) == 2
    assert get(node, "/nodes")[1] == []


# -- held events (protocol 2) ---------------------------------------------------------------------

def hold_one(node):
    """A replicated event of origin o9 held above a gap (seq 1 never came)."""
    status, _, _ = post(node, "/counter/replicate",
                        {"node_id": "n9:7009", "events": [{"id": "o9:2", "counter": "c",
                                                           "delta": 3}]})
    assert status == 200 and node.counter.held_total() == 1


def test_a_protocol_2_heartbeat_gets_the_held_summaries_and_a_protocol_1_one_does_not(node):
    hold_one(node)
    reply = post(node, "/nodes/heartbeat", peer("n2:7002", protocol=2))[1]
    count, top, fingerprint = reply["held"]["o9"]
    assert (count, top) == (1, 2) and isinstance(fingerprint, int)
    assert "held" not in post(node, "/nodes/heartbeat", peer("n3:7003", protocol=1))[1]


def test_a_state_request_asking_for_held_events_gets_them(node):
    hold_one(node)
    payload = post(node, "/counter/state", {"origins": ["o9"], "held": 10})[1]
    assert payload["origins"] == {"o9": {"watermark": 0, "counters": {},
                                         "held": [{"id": "o9:2", "counter": "c", "delta": 3}]}}
    assert post(node, "/counter/state", {"origins": ["o9"]})[1]["origins"] == {}


@pytest.mark.parametrize("held", [-1, True, "10", 1.5, None, 2**63])
def test_a_state_request_with_a_bad_held_bound_is_400(node, held):
    assert_error(post(node, "/counter/state", {"origins": [], "held": held}), 400)


@pytest.mark.parametrize("held", [[], {"o": [1, 1]}, {"o": [0, 1, 0]}, {"bad origin": [1, 1, 0]}])
def test_a_membership_request_with_malformed_held_summaries_is_400(node, held):
    for path in ("/nodes/join", "/nodes/heartbeat"):
        assert_error(post(node, path, peer("n2:7002", protocol=2, held=held)), 400)
    assert get(node, "/nodes")[1] == []


def test_a_peer_holding_other_events_at_our_watermark_is_pulled_from(node):
    """n9 shows, at our watermark 0 for o9, a held event we lack; its answer is merged."""
    peer_id = "n9:7009"
    held_event = {"id": "o9:2", "counter": "c", "delta": 3}
    asked = []

    def state(_node, request):
        asked.append(json.loads(request.body))
        return 200, {"node_id": peer_id, "origins": {"o9": {"watermark": 0, "counters": {},
                                                          "held": [held_event]}}}

    node.transport.network.attach(SimpleNamespace(
        node_id=peer_id, app=App(None, [Route("POST", "/counter/state", state, "peer")])))
    summary = {"o9": [1, 2, 12345]}
    for _ in range(2):
        post(node, "/nodes/heartbeat", peer(peer_id, protocol=2, held=summary))
        node.clock.advance(node.config.heartbeat_interval)
    assert node.pull_once() == 1
    assert asked == [{"node_id": NODE_ID, "origins": ["o9"], "held": node.config.gap_cap}]
    assert node.counter.counters() == {"c": 3} and node.counter.held_total() == 1
