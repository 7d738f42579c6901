"""The transport against the `responses` library: the one network seam, mocked at its edge."""

import json
import socket

import pytest
import requests
import responses
from responses import matchers

from dcounter.errors import PeerRefused, PeerUnreachable
from dcounter.transport import Transport

URL = "http://peer.example:7001/nodes/heartbeat"


@pytest.fixture
def transport():
    seen = []
    t = Transport(timeout=1.5, on_request=lambda path, ok: seen.append((path, ok)))
    t.seen = seen
    yield t
    t.close()


@responses.activate
def test_success_returns_the_json_object(transport):
    responses.post(URL, json={"node_id": "peer.example:7001", "digest": {}},
                   match=[matchers.json_params_matcher({"node_id": "me:1", "n": 2})])
    reply = transport.post("peer.example:7001", "/nodes/heartbeat", {"node_id": "me:1", "n": 2})
    assert reply == {"node_id": "peer.example:7001", "digest": {}}
    call = responses.calls[0].request
    assert call.headers["Content-Type"] == "application/json"
    assert call.body == b'{"node_id":"me:1","n":2}'
    assert transport.seen == [("/nodes/heartbeat", True)]


@responses.activate
def test_timeouts_are_applied_to_every_call(transport):
    responses.post(URL, json={}, match=[matchers.request_kwargs_matcher({"timeout": 1.5})])
    responses.post(URL, json={}, match=[matchers.request_kwargs_matcher({"timeout": 0.25})])
    transport.post("peer.example:7001", "/nodes/heartbeat", {})
    transport.post("peer.example:7001", "/nodes/heartbeat", {}, timeout=0.25)
    assert len(responses.calls) == 2


@responses.activate
@pytest.mark.parametrize("status", [400, 404, 409, 422, 500, 503])
def test_non_2xx_raises_peer_refused_with_the_status_and_error(transport, status):
    responses.post(URL, status=status, json={"error": "another cluster"})
    with pytest.raises(PeerRefused) as info:
        transport.post("peer.example:7001", "/nodes/heartbeat", {})
    assert info.value.status == status and info.value.message == "another cluster"
    assert transport.seen == [("/nodes/heartbeat", False)]


@responses.activate
def test_non_2xx_without_a_json_error_still_raises_peer_refused(transport):
    responses.post(URL, status=502, body="<html>bad gateway</html>")
    with pytest.raises(PeerRefused) as info:
        transport.post("peer.example:7001", "/nodes/heartbeat", {})
    assert info.value.status == 502 and "bad gateway" in info.value.message


@responses.activate
@pytest.mark.parametrize("body", ["[]", '["x"]', '"just a string"', "null", "42"])
def test_non_2xx_with_a_json_body_that_is_not_an_object_raises_peer_refused(transport, body):
    responses.post(URL, status=500, body=body, content_type="application/json")
    with pytest.raises(PeerRefused) as info:
        transport.post("peer.example:7001", "/nodes/heartbeat", {})
    assert info.value.status == 500


@responses.activate
@pytest.mark.parametrize("error", [
    requests.ConnectionError("refused"), requests.ConnectTimeout("slow"),
    requests.ReadTimeout("slow"), requests.exceptions.ChunkedEncodingError("cut"),
])
def test_connection_errors_and_timeouts_raise_peer_unreachable(transport, error):
    responses.post(URL, body=error)
    with pytest.raises(PeerUnreachable) as info:
        transport.post("peer.example:7001", "/nodes/heartbeat", {})
    assert "peer.example:7001" in str(info.value)
    assert transport.seen == [("/nodes/heartbeat", False)]


@responses.activate
def test_unknown_host_raises_peer_unreachable(transport):
    # No registered response: responses refuses the connection as the network would.
    with pytest.raises(PeerUnreachable):
        transport.post("nowhere.example:1", "/nodes/join", {})


@responses.activate
@pytest.mark.parametrize("body", ["not json", "", "{truncated", "[1, 2]", "null"])
def test_a_2xx_reply_that_is_not_a_json_object_raises_peer_unreachable(transport, body):
    responses.post(URL, status=200, body=body)
    with pytest.raises(PeerUnreachable):
        transport.post("peer.example:7001", "/nodes/heartbeat", {})


@responses.activate
def test_redirects_are_not_followed(transport):
    responses.post(URL, status=307, headers={"Location": "http://elsewhere.example/x"})
    with pytest.raises(PeerRefused) as info:
        transport.post("peer.example:7001", "/nodes/heartbeat", {})
    assert info.value.status == 307
    assert len(responses.calls) == 1


@responses.activate
def test_signer_headers_are_sent():
    def signer(method, path, body):
        return {"Authorization": f"Sig {method} {path} {len(body)}"}

    t = Transport(signer=signer)
    responses.post("http://p:1/counter/replicate", json={"applied": 1})
    payload = {"node_id": "me:1", "events": []}
    t.post("p:1", "/counter/replicate", payload)
    sent = responses.calls[0].request
    body = json.dumps(payload, separators=(",", ":"))
    assert sent.headers["Authorization"] == f"Sig POST /counter/replicate {len(body)}"
    t.close()


def test_the_environment_proxy_is_ignored(monkeypatch):
    monkeypatch.setenv("HTTP_PROXY", "http://proxy.invalid:3128")
    t = Transport()
    with responses.RequestsMock() as mock:
        mock.post("http://p:1/x", json={})
        t.post("p:1", "/x", {})
        assert mock.calls[0].request.url == "http://p:1/x"
    t.close()


def test_a_refused_connection_says_nothing_was_sent_and_a_silent_peer_that_it_may_have_been():
    """Real loopback sockets: whether a request may have left decides what a keyed increment's
    forward does (keyhome.py)."""
    closed = socket.socket()
    closed.bind(("127.0.0.1", 0))
    refused_port = closed.getsockname()[1]
    closed.close()  # nothing listens there: the connection is refused
    silent = socket.socket()
    silent.bind(("127.0.0.1", 0))
    silent.listen(1)  # the handshake completes in the backlog; nobody ever answers
    transport = Transport(timeout=0.2)
    try:
        with pytest.raises(PeerUnreachable) as refused:
            transport.post(f"127.0.0.1:{refused_port}", "/counter/forward", {})
        assert refused.value.sent is False
        with pytest.raises(PeerUnreachable) as timed_out:
            transport.post(f"127.0.0.1:{silent.getsockname()[1]}", "/counter/forward", {})
        assert timed_out.value.sent is True
    finally:
        transport.close()
        silent.close()


@responses.activate
@pytest.mark.parametrize("error, sent", [
    (requests.ConnectTimeout("slow"), False), (requests.ReadTimeout("slow"), True),
    (requests.ConnectionError("reset"), True)])
def test_whether_a_failed_request_was_sent(transport, error, sent):
    responses.post(URL, body=error)
    with pytest.raises(PeerUnreachable) as info:
        transport.post("peer.example:7001", "/nodes/heartbeat", {})
    assert info.value.sent is sent
