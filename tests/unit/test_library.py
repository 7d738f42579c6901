"""The Python client against `responses`: where each attempt goes, what it sends, what it raises."""

import subprocess
import sys
from pathlib import Path

import pytest
import requests
import responses
import urllib3
from responses import matchers

from dcounter.library import (Client, Conflict, DcounterError, InvalidRequest, Refused,
                              TLSFailure, Unauthorized, Unavailable, Unprocessable, Unreachable)

ROOT = Path(__file__).resolve().parents[2]
A = "http://a.example:8080"
B = "http://b.example:8080"


def refused_connection():
    """What requests raises when nothing listens: the request never left."""
    return requests.ConnectionError(urllib3.exceptions.MaxRetryError(
        None, "/", urllib3.exceptions.NewConnectionError(
            None, "Failed to establish a new connection: [Errno 111] Connection refused")))


def lost_answer():
    """Sent, then no answer in time: it may have counted."""
    return requests.ReadTimeout("read timed out")


def answered(count=1, counter="default"):
    return {"json": {"counter": counter, "count": count, "event_id": "o:1"}}


@pytest.fixture
def slept():
    return []


@pytest.fixture
def client(slept):
    c = Client(["a.example:8080", "b.example:8080"], sleep=slept.append, retries=3)
    yield c
    c.close()


def keys(path="/counter/increment"):
    return [(c.request.url.split("/counter")[0], c.request.headers.get("Idempotency-Key"))
            for c in responses.calls if c.request.url.endswith(path)]


@responses.activate
def test_a_write_that_never_left_fails_over_at_once_with_the_same_key(client, slept):
    responses.post(A + "/counter/increment", body=refused_connection())
    responses.post(B + "/counter/increment", **answered(7))
    assert client.incr() == 7
    (a, key), (b, again) = keys()
    assert (a, b) == (A, B) and key == again and len(key) == 32
    assert slept == []
    # The node that answered is asked first from now on.
    responses.post(B + "/counter/increment", **answered(8))
    assert client.incr() == 8 and keys()[-1][0] == B


@responses.activate
def test_a_write_whose_answer_was_lost_is_retried_at_the_same_node(client, slept):
    responses.post(A + "/counter/increment", body=lost_answer())
    responses.post(A + "/counter/increment", **answered(1),
                   headers={"Idempotent-Replayed": "true"})
    responses.post(B + "/counter/increment", **answered(99))
    assert client.incr() == 1
    (a1, key), (a2, again) = keys()
    assert (a1, a2) == (A, A) and key == again
    assert slept == [0.2]


@responses.activate
def test_after_a_lost_answer_the_write_leaves_its_node_only_once_it_refuses_connections(
        client, slept):
    responses.post(A + "/counter/increment", body=lost_answer())
    responses.post(A + "/counter/increment", status=503, json={"error": "shutting down"})
    responses.post(A + "/counter/increment", body=lost_answer())
    responses.post(A + "/counter/increment", body=refused_connection())
    responses.post(B + "/counter/increment", **answered(1))
    assert client.incr() == 1
    sent = keys()
    assert [node for node, _ in sent] == [A, A, A, A, B]
    assert len({key for _, key in sent}) == 1
    assert slept == [0.2, 0.4, 0.8]  # B, a node not yet tried, is asked at once


@responses.activate
def test_a_503_changed_nothing_so_the_write_fails_over(client, slept):
    responses.post(A + "/counter/increment", status=503, json={"error": "storage failure"})
    responses.post(B + "/counter/increment", **answered(3))
    assert client.incr() == 3
    assert [node for node, _ in keys()] == [A, B] and slept == []


@responses.activate
def test_when_every_attempt_fails_the_error_says_so_and_carries_the_key(client, slept):
    responses.post(A + "/counter/increment", body=lost_answer())
    responses.post(A + "/counter/increment", body=refused_connection())
    responses.post(B + "/counter/increment", body=refused_connection())
    with pytest.raises(Unreachable) as info:
        client.incr("apples", 2, key="order-17")
    error = info.value
    assert error.key == "order-17" and error.maybe_counted is True
    assert str(error).startswith("no node succeeded: ")
    assert "a.example:8080: connection refused" in str(error)
    assert "b.example:8080: connection refused" in str(error)
    assert len(keys()) == 2 + 3  # one attempt at each node, then 3 retries


@responses.activate
def test_nothing_sent_means_nothing_maybe_counted(client):
    responses.post(A + "/counter/increment", body=refused_connection())
    responses.post(B + "/counter/increment", body=refused_connection())
    with pytest.raises(Unreachable) as info:
        client.incr()
    assert info.value.maybe_counted is False and info.value.sent is False


@responses.activate
def test_reads_go_to_the_next_node_on_any_failure_asking_again_may_cure(client, slept):
    responses.get(A + "/counter/count", body=lost_answer())
    responses.get(B + "/counter/count", status=503, json={"error": "too many connections"})
    responses.get(A + "/counter/count", json={"counter": "default", "count": 4},
                  match=[matchers.query_param_matcher({"counter": "default"})])
    assert client.count() == 4
    assert [c.request.url.split("/counter")[0] for c in responses.calls] == [A, B, A]
    assert all("Idempotency-Key" not in c.request.headers for c in responses.calls)
    assert slept == [0.2]


@responses.activate
@pytest.mark.parametrize("status,kind", [(400, InvalidRequest), (401, Unauthorized),
                                         (404, Refused), (409, Conflict),
                                         (413, Refused), (422, Unprocessable), (500, Refused)])
def test_other_answers_are_final_and_typed(client, status, kind):
    responses.post(A + "/counter/increment", status=status, json={"error": "the node's words"})
    with pytest.raises(kind) as info:
        client.incr()
    error = info.value
    assert type(error) is kind and error.status == status
    assert error.message == "the node's words" and error.node == "a.example:8080"
    assert str(error) == f"a.example:8080 answered {status}: the node's words"
    assert error.maybe_counted is False and error.key
    assert len(responses.calls) == 1


@responses.activate
def test_a_tls_failure_is_not_retried(client):
    responses.get(A + "/counters", body=requests.exceptions.SSLError("certificate verify failed"))
    with pytest.raises(TLSFailure) as info:
        client.counters()
    assert not isinstance(info.value, Unreachable)
    assert len(responses.calls) == 1


@responses.activate
def test_every_write_gets_its_own_key_unless_given_one(client):
    responses.post(A + "/counter/increment", **answered())
    client.incr()
    client.incr()
    client.incr(key="k-1")
    first, second, given = (key for _, key in keys())
    assert first != second and given == "k-1"


@responses.activate
@pytest.mark.parametrize("call", [
    lambda c: c.incr("no spaces"), lambda c: c.incr(delta=0), lambda c: c.incr(delta=True),
    lambda c: c.incr(delta=2**53), lambda c: c.incr(key=""), lambda c: c.incr(key="\n"),
    lambda c: c.count(consistency="most"), lambda c: c.incr_many([]),
    lambda c: c.incr_many([("a", 1, 2)]), lambda c: c.incr_many({"a": 0}),
])
def test_what_a_node_would_refuse_is_refused_before_anything_is_sent(client, call):
    with pytest.raises(InvalidRequest) as info:
        call(client)
    assert isinstance(info.value, ValueError) and info.value.node is None
    assert len(responses.calls) == 0


@responses.activate
def test_incr_many_sends_one_request_and_answers_each_count(client):
    responses.post(A + "/counter/increments",
                   json={"event_id": "o:3", "results": [{"counter": "a", "count": 2},
                                                        {"counter": "b", "count": -1}]},
                   match=[matchers.json_params_matcher(
                       {"increments": [{"counter": "a", "delta": 2},
                                       {"counter": "b", "delta": -1}]})])
    assert client.incr_many({"a": 2, "b": -1}) == {"a": 2, "b": -1}
    assert keys("/counter/increments")[0][1]


@responses.activate
def test_count_all_and_counters(client):
    responses.get(A + "/counter/count", json={"counter": "x", "count": 9, "answered": 2,
                                              "members": 2, "complete": True},
                  match=[matchers.query_param_matcher({"counter": "x", "consistency": "all"})])
    responses.get(A + "/counters", json={"counters": {"x": 9}})
    assert client.count("x", consistency="all") == 9
    assert client.counters() == {"x": 9}


@responses.activate
def test_an_answer_that_is_not_a_dcounter_answer_is_an_error(client):
    responses.get(A + "/counters", body="<html>a proxy</html>")
    with pytest.raises(DcounterError, match="without JSON"):
        client.counters()


def test_the_scheme_comes_from_the_urls_given_or_the_ca(tmp_path):
    ca = tmp_path / "ca.pem"
    ca.write_text("")
    assert Client("vm1:8080").url("vm1:8080", "/x") == "http://vm1:8080/x"
    with_ca = Client(["vm1:8080", "vm2:8080"], ca=ca, token="t")
    assert with_ca.url("vm2:8080", "/x") == "https://vm2:8080/x" and with_ca.verify == str(ca)
    assert with_ca._session().headers["Authorization"] == "Bearer t"
    given = Client(["HTTPS://vm1:8080/", "vm2:8080"])
    assert given.nodes == ["https://vm1:8080", "vm2:8080"]
    assert given.url("vm2:8080", "/x") == "https://vm2:8080/x" and given.verify is True
    for nodes, kwargs, words in [
            ([], {}, "at least one"), (["http://a:1", "https://b:1"], {}, "mixed"),
            (["ftp://a:1"], {}, "unsupported scheme"), ([""], {}, "an address"),
            (["a:1"], {"ca": tmp_path / "missing.pem"}, "no such file"),
            (["a:1"], {"timeout": 0}, "timeout"), (["a:1"], {"retries": -1}, "retries"),
            (["a:1"], {"token": "two\nlines"}, "token")]:
        with pytest.raises(ValueError, match=words):
            Client(nodes, **kwargs)


def test_import_dcounter_does_not_load_the_client():
    code = ("import sys, dcounter; assert 'dcounter.library' not in sys.modules; "
            "from dcounter import Client, DcounterError, Unreachable, Refused; "
            "assert Client.__module__ == 'dcounter.library'; print('ok')")
    result = subprocess.run([sys.executable, "-B", "-c", code], cwd=ROOT, capture_output=True,
                            text=True, timeout=60)
    assert result.stdout == "ok\n", result.stderr


@responses.activate
@pytest.mark.parametrize("method", ["reset", "delete"])
def test_reset_and_delete_are_keyed_writes_that_answer_the_count(client, method):
    path = f"/counter/{method}"
    responses.post(A + path, body=lost_answer())
    responses.post(A + path, json={"counter": "c", "count": 0, "event_id": "o:2"},
                   match=[matchers.json_params_matcher({"counter": "c"})])
    assert getattr(client, method)("c") == 0
    (_, key), (_, again) = keys(path)
    assert key == again  # pinned to the node after an unknown outcome, with the same key
    responses.post(A + path, status=404, json={"error": "no counter 'nope' at this node"})
    with pytest.raises(Refused, match="nope"):
        getattr(client, method)("nope")
    with pytest.raises(InvalidRequest):
        getattr(client, method)("bad name")
