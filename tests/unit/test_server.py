"""The HTTP server in-process on a free loopback port, with small stand-in applications: the
error boundary around the application and the connection cap's refusals."""

import json
import logging
import socket
import threading

import pytest

from dcounter.http_types import Response, error_response
from dcounter.server import Server


class _Raising:
    def handle(self, request):
        raise RuntimeError("a bug in the application")


class _Returning:
    def __init__(self, response):
        self.response = response

    def handle(self, request):
        return self.response


@pytest.fixture
def serve():
    servers = []

    def start(app, **limits):
        limits.setdefault("max_body", 1 << 16)
        limits.setdefault("max_connections", 16)
        server = Server(("127.0.0.1", 0), app, request_deadline=5.0, idle_timeout=5.0, **limits)
        thread = threading.Thread(target=server.serve_forever, kwargs={"poll_interval": 0.05},
                                  daemon=True)
        thread.start()
        servers.append((server, thread))
        return server

    yield start
    for server, thread in servers:
        server.shutdown()
        server.server_close()
        thread.join(5)


def exchange(port: int, data: bytes, sock=None) -> tuple[int, dict, bytes]:
    """Send `data` and read one response (on `sock` when given, else a new connection)."""
    own = sock is None
    if own:
        sock = socket.create_connection(("127.0.0.1", port), timeout=5)
    try:
        sock.sendall(data)
        buffer = b""
        while b"\r\n\r\n" not in buffer:
            chunk = sock.recv(65536)
            if not chunk:
                raise AssertionError(f"connection closed without a response: {buffer!r}")
            buffer += chunk
        head, _, body = buffer.partition(b"\r\n\r\n")
        lines = head.decode("latin-1").split("\r\n")
        headers = {}
        for line in lines[1:]:
            name, _, value = line.partition(":")
            headers[name.strip().lower()] = value.strip()
        length = int(headers["content-length"])
        while len(body) < length:
            chunk = sock.recv(65536)
            if not chunk:
                break
            body += chunk
        return int(lines[0].split()[1]), headers, body
    finally:
        if own:
            sock.close()


GET = b"GET /anything HTTP/1.1\r\nHost: x\r\n\r\n"


def test_an_application_error_is_a_json_500_logged_at_error(serve, caplog):
    server = serve(_Raising())
    with caplog.at_level(logging.DEBUG, logger="dcounter.server"):
        with socket.create_connection(("127.0.0.1", server.server_address[1]), timeout=5) as s:
            for _ in range(2):  # the connection stays usable after the 500
                status, headers, body = exchange(0, GET, s)
                assert status == 500 and headers["content-type"] == "application/json"
                assert json.loads(body) == {"error": "internal error"}
    records = [r for r in caplog.records if r.levelno >= logging.ERROR]
    assert records and all(r.exc_info and r.exc_info[0] is RuntimeError for r in records)


@pytest.mark.parametrize("response", [
    Response(200, b"{}", headers={"X-Name": "caf\u00e9 \u2603"}),  # not Latin-1
    Response(200, "not bytes"),
    error_response(400, "fine", {"X-Bad": "\u2603"}),
], ids=["header", "body", "error-header"])
def test_a_response_that_cannot_be_encoded_is_a_json_500(serve, caplog, response):
    server = serve(_Returning(response))
    with caplog.at_level(logging.ERROR, logger="dcounter.server"):
        status, headers, body = exchange(server.server_address[1], GET)
    assert status == 500 and json.loads(body) == {"error": "internal error"}
    assert any(r.levelno == logging.ERROR and r.exc_info for r in caplog.records)
