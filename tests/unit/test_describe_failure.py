"""Failed peer calls in words: `describe_failure` on the exceptions the transport raises for
real failures (a closed port, a name that does not resolve, a listener that never answers, an
untrusted certificate, TLS against a plain node, plain HTTP against a TLS node) and on every
refusal status. The network failures are made on loopback; TLS ones from a throwaway context."""

import socket
import ssl
import struct
import threading

import pytest
import requests
import responses

from dcounter.errors import PeerRefused, PeerUnreachable
from dcounter.transport import Transport, describe_failure, failure_kind


def unreachable(node_id, timeout=1.0, **kwargs) -> PeerUnreachable:
    transport = Transport(timeout=timeout, **kwargs)
    try:
        with pytest.raises(PeerUnreachable) as info:
            transport.post(node_id, "/nodes/join", {})
        return info.value
    finally:
        transport.close()


def test_a_port_nobody_listens_on_is_connection_refused():
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))  # bound, never listening: connecting is refused
        exc = unreachable(f"127.0.0.1:{sock.getsockname()[1]}")
    assert failure_kind(exc) == "refused"
    assert describe_failure(exc).startswith("connection refused")
    assert describe_failure(exc.__cause__) == describe_failure(exc)


def test_a_listener_that_never_answers_is_a_timeout():
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        sock.listen(1)
        exc = unreachable(f"127.0.0.1:{sock.getsockname()[1]}", timeout=0.2)
    assert describe_failure(exc) == "no answer within --request-timeout"


def test_a_name_that_does_not_resolve_says_so():
    exc = unreachable("no-such-host.invalid:7000")
    assert failure_kind(exc) == "dns"
    assert "not resolved" in describe_failure(exc)


def test_a_reset_without_an_answer_over_plain_http_hints_at_https():
    """What a plain-HTTP caller sees from a TLS node: the handshake fails, the socket closes."""
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        sock.listen(1)

        def reset():
            conn, _ = sock.accept()
            conn.recv(1024)
            # Linger 0: close sends a reset, as a failed TLS handshake's close may.
            conn.setsockopt(socket.SOL_SOCKET, socket.SO_LINGER, struct.pack("ii", 1, 0))
            conn.close()
        thread = threading.Thread(target=reset)
        thread.start()
        exc = unreachable(f"127.0.0.1:{sock.getsockname()[1]}")
        thread.join(5)
    assert failure_kind(exc) == "reset-plain"
    assert "--tls-cert" in describe_failure(exc)


def test_tls_against_a_plain_listener_says_the_peer_does_not_speak_tls():
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        sock.listen(1)

        def plain():
            conn, _ = sock.accept()
            conn.recv(1024)
            conn.sendall(b"HTTP/1.1 400 Bad Request\r\nContent-Length: 0\r\n\r\n")
            conn.close()
        thread = threading.Thread(target=plain)
        thread.start()
        exc = unreachable(f"127.0.0.1:{sock.getsockname()[1]}", scheme="https")
        thread.join(5)
    assert failure_kind(exc) == "not-tls"
    assert describe_failure(exc) == ("the peer does not speak TLS: start every node with "
                                     "--tls-cert, or none")


def cert_error(code: int, message: str) -> requests.exceptions.SSLError:
    """A verification failure as requests wraps it (the handshake itself is covered against
    real nodes in tests/integration/test_warnings.py)."""
    inner = ssl.SSLCertVerificationError(1, f"[SSL: CERTIFICATE_VERIFY_FAILED] {message}")
    inner.verify_code, inner.verify_message = code, message
    try:
        try:
            raise inner
        except ssl.SSLError as exc:
            raise requests.exceptions.SSLError(exc) from exc
    except requests.RequestException as outer:
        return outer


def test_an_untrusted_certificate_says_to_set_tls_ca():
    exc = cert_error(20, "unable to get local issuer certificate")
    assert failure_kind(exc) == "untrusted"
    assert describe_failure(exc) == ("certificate not trusted: set --tls-ca to the CA that "
                                     "signed the peer's certificate")


def test_a_certificate_for_another_name_says_so():
    exc = cert_error(62, "Hostname mismatch, certificate is not valid for 'peer.example'.")
    assert failure_kind(exc) == "hostname"
    assert "does not name the address" in describe_failure(exc)


@responses.activate
def test_a_reply_that_is_not_json_is_named():
    responses.post("http://peer.example:7001/nodes/join", body="<html>")
    exc = unreachable("peer.example:7001")
    assert describe_failure(exc) == "answered with something that is not a dcounter reply"


@pytest.mark.parametrize("status,message,expected", [
    (401, "wrong request signature (do the nodes share a cluster secret?)",
     "refused our signature: do the nodes share --cluster-secret and a clock within "
     "--max-clock-skew?"),
    (401, "request signature is stale: its timestamp is +45.0s from this node's clock",
     "refused our signature: do the nodes share --cluster-secret and a clock within "
     "--max-clock-skew? (it answered: request signature is stale: its timestamp is +45.0s from "
     "this node's clock)"),
    (409, "this node belongs to cluster 'alpha', not 'beta'",
     "refused us as another cluster (it answered: this node belongs to cluster 'alpha', not "
     "'beta'): is --cluster the same on every node?"),
    (409, "protocol 9 is not supported (this node speaks 1)",
     "refused us as another protocol or cluster (it answered: protocol 9 is not supported "
     "(this node speaks 1))"),
    (503, "this node lists 2 peers, the most --max-peers allows",
     "turned us away for now: this node lists 2 peers, the most --max-peers allows"),
    (400, "not a dcounter peer", "refused our request (400): not a dcounter peer"),
])
def test_refusals_are_said_with_their_cause(status, message, expected):
    assert describe_failure(PeerRefused(status, message)) == expected


def test_anything_else_still_gives_words_not_a_class_name():
    assert describe_failure(PeerUnreachable("p:1: reply is not a JSON object")) == \
        "reply is not a JSON object"
    assert describe_failure(PeerRefused(500, "")) == "refused our request (500): no reason given"
