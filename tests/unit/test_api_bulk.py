"""POST /counter/increments through `App.handle`, on a real opened node (in memory)."""

import pytest

from dcounter.api import ROUTES
from dcounter.validation import INT64_MAX, MAX_DELTA
from tests.unit.test_api import assert_error, get, make_node, node, post  # noqa: F401 (fixtures)

PATH = "/counter/increments"


def counts(node):
    return get(node, "/counters")[1]["counters"]


def test_a_bulk_increment_is_one_event_and_answers_the_counts_in_item_order(node):
    post(node, "/counter/increment", {"counter": "a", "delta": 10})
    status, payload, headers = post(node, PATH, {"increments": [
        {"counter": "a", "delta": 2}, {"counter": "b"}, {}, {"delta": -3}, {"counter": "a"}]})
    assert status == 200 and "Idempotent-Replayed" not in headers
    origin = node.counter.local_origin
    assert payload == {"event_id": f"{origin}:2", "results": [
        {"counter": "a", "count": 13}, {"counter": "b", "count": 1},
        {"counter": "default", "count": -2}, {"counter": "default", "count": -2},
        {"counter": "a", "count": 13}]}
    assert counts(node) == {"a": 13, "b": 1, "default": -2}
    assert node.counter.digest() == {origin: 2}  # one sequence number for the whole request


def test_the_bulk_route_is_a_write_route():
    assert [route.kind for route in ROUTES if route.path == PATH] == ["write"]


def test_with_a_client_token_a_bulk_increment_needs_it(make_node):
    token = "t" * 20
    node = make_node(client_token=token)
    body = {"increments": [{"counter": "a"}]}
    assert_error(post(node, PATH, body), 401)
    assert counts(node) == {}
    assert post(node, PATH, body, headers={"Authorization": f"Bearer {token}"})[0] == 200


@pytest.mark.parametrize("body,fragment", [
    (b"", "JSON object"), (b"{", "malformed JSON"), ([], "JSON object"), ({}, "increments"),
    ({"increments": []}, "1 to 1000"), ({"increments": {"counter": "a"}}, "1 to 1000"),
    ({"increments": [{"counter": "a"}] * 1001}, "1 to 1000"),
    ({"increments": [{"counter": "a"}], "extra": 1}, "extra"),
    ({"increments": [{"counter": "a"}, "b"]}, "increments[1]"),
    ({"increments": [{"counter": "a"}, {"counter": "bad name"}]}, "increments[1]: counter"),
    ({"increments": [{}, {}, {"delta": 0}]}, "increments[2]: delta"),
    ({"increments": [{"delta": 1.5}]}, "increments[0]: delta"),
    ({"increments": [{"delta": True}]}, "increments[0]: delta"),
    ({"increments": [{"delta": MAX_DELTA + 1}]}, "increments[0]: delta"),
    ({"increments": [{"counter": "a", "other": 1}]}, "increments[0]"),
])
def test_a_bad_item_refuses_the_whole_request_with_400_naming_it(node, body, fragment):
    outcome = post(node, PATH, body)
    assert_error(outcome, 400)
    assert fragment in outcome[1]["error"]
    assert counts(node) == {} and node.counter.digest() == {}


def test_range_and_counter_limits_refuse_the_whole_request_with_422_naming_the_item(make_node):
    node = make_node(max_counters=2)
    post(node, "/counter/increment", {"counter": "a", "delta": MAX_DELTA})
    for _ in range(1024):  # a is close to the top of signed 64 bits
        post(node, "/counter/increment", {"counter": "a", "delta": MAX_DELTA})
    before = counts(node)
    near = INT64_MAX - before["a"]
    outcome = post(node, PATH, {"increments": [{"counter": "b"}, {"counter": "a",
                                                                    "delta": near + 1}]})
    assert_error(outcome, 422)
    assert "increments[1]" in outcome[1]["error"]
    outcome = post(node, PATH, {"increments": [{"counter": "b"}, {"counter": "c"}]})
    assert_error(outcome, 422)
    assert "increments[1]" in outcome[1]["error"] and "too many counters" in outcome[1]["error"]
    assert counts(node) == before
    assert post(node, PATH, {"increments": [{"counter": "b"}, {"counter": "a",
                                                                 "delta": near}]})[0] == 200


def test_an_idempotency_key_covers_the_whole_request(node):
    body = {"increments": [{"counter": "a"}, {"counter": "b", "delta": 5}]}
    headers = {"Idempotency-Key": "req-1"}
    first = post(node, PATH, body, headers=headers)[1]
    post(node, "/counter/increment", {"counter": "a"})
    status, replay, replay_headers = post(node, PATH, body, headers=headers)
    assert status == 200 and replay_headers["Idempotent-Replayed"] == "true"
    assert replay == {"event_id": first["event_id"], "results": [
        {"counter": "a", "count": 2}, {"counter": "b", "count": 5}]}  # the current counts
    assert counts(node) == {"a": 2, "b": 5}
    other = {"increments": [{"counter": "a"}, {"counter": "b", "delta": 6}]}
    assert_error(post(node, PATH, other, headers=headers), 422)
    assert_error(post(node, PATH, body, headers={"Idempotency-Key": ""}), 400)
    assert counts(node) == {"a": 2, "b": 5}


def test_bulk_requests_are_counted_in_metrics(node):
    post(node, PATH, {"increments": [{"counter": "a"}] * 3}, headers={"Idempotency-Key": "k"})
    post(node, PATH, {"increments": [{"counter": "a"}] * 3}, headers={"Idempotency-Key": "k"})
    text = get(node, "/metrics")[1]
    assert "dcounter_bulk_requests_total 1" in text
    assert "dcounter_increments_local_total 3" in text


@pytest.mark.parametrize("name", [["x"], {"x": 1}, 5, None])
def test_a_counter_name_of_another_type_is_400_not_a_crash(node, name):
    outcome = post(node, PATH, {"increments": [{}, {"counter": name}]})
    assert_error(outcome, 400)
    assert "increments[1]" in outcome[1]["error"]
