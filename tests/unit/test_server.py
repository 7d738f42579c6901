"""The HTTP server in-process on a free loopback port, with small stand-in applications: the
error boundary around the application and the connection cap's refusals."""

import json
import logging
import os
import socket
import struct
import threading

import pytest

from dcounter.http_types import FileBody, Response, error_response
from dcounter.server import Server
from tests.integration.harness import poll
from tests.rawhttp import exchange


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


class _Streaming:
    """Answers every request with the file at `path` as a `FileBody` of `length` bytes (the
    file's size unless given), and counts the bodies closed."""

    def __init__(self, path, length=None, headers=None):
        self.path, self.length, self.headers = path, length, headers or {}
        self.bodies, self.closed = [], []

    def handle(self, request):
        file = open(self.path, "rb")
        length = os.path.getsize(self.path) if self.length is None else self.length
        body = FileBody(file, length, on_close=lambda: self.closed.append(True))
        self.bodies.append(body)
        return Response(200, body, "application/octet-stream", dict(self.headers))

    def all_closed(self) -> bool:
        return len(self.closed) == len(self.bodies) and all(b.file.closed for b in self.bodies)


def test_a_file_body_is_sent_whole_with_its_length_then_closed(serve, tmp_path):
    path = tmp_path / "body"
    content = os.urandom(3 << 20)
    path.write_bytes(content)
    app = _Streaming(path)
    server = serve(app)
    with socket.create_connection(("127.0.0.1", server.server_address[1]), timeout=5) as s:
        for _ in range(2):  # the connection stays usable after a streamed answer
            status, headers, body = exchange(0, GET, s)
            assert status == 200 and int(headers["content-length"]) == len(content)
            assert body == content
    poll(app.all_closed, message="both bodies to be closed")
    assert len(app.closed) == 2


def test_a_client_that_hangs_up_mid_body_gets_the_file_closed(serve, tmp_path):
    path = tmp_path / "body"
    with open(path, "wb") as file:
        file.truncate(64 << 20)  # more than any socket buffers hold: the send must wait
    app = _Streaming(path)
    server = serve(app)
    sock = socket.socket()
    sock.setsockopt(socket.SOL_SOCKET, socket.SO_RCVBUF, 4096)
    sock.settimeout(5)
    sock.connect(("127.0.0.1", server.server_address[1]))
    try:
        sock.sendall(GET)
        assert sock.recv(65536).startswith(b"HTTP/1.1 200 ")
        assert not app.closed  # still sending
    finally:
        # Reset, not a polite close: what a killed client leaves.
        sock.setsockopt(socket.SOL_SOCKET, socket.SO_LINGER, struct.pack("ii", 1, 0))
        sock.close()
    poll(app.all_closed, message="the body to be closed after the client left")
    with socket.create_connection(("127.0.0.1", server.server_address[1]), timeout=5) as s:
        s.sendall(b"HEAD / HTTP/1.1\r\nHost: x\r\nConnection: close\r\n\r\n")
        head = _read_until_closed(s)  # the head alone, and the body closed unsent
    assert head.startswith(b"HTTP/1.1 200 ") and head.endswith(b"\r\n\r\n")
    assert b"Content-Length: 67108864" in head
    poll(app.all_closed, message="the unsent body to be closed")


def test_a_file_shorter_than_its_length_ends_the_connection_and_is_closed(serve, tmp_path,
                                                                           caplog):
    path = tmp_path / "body"
    path.write_bytes(b"x" * 1000)
    app = _Streaming(path, length=5000)
    server = serve(app)
    with caplog.at_level(logging.ERROR, logger="dcounter.server"):
        with socket.create_connection(("127.0.0.1", server.server_address[1]), timeout=5) as s:
            s.sendall(GET)
            received = _read_until_closed(s)  # never a body the client could take as whole
    assert received.endswith(b"\r\n\r\n" + b"x" * 1000)
    assert app.all_closed()
    assert any("ended after 1000 of 5000 bytes" in r.getMessage() for r in caplog.records)


def test_a_file_body_whose_answer_cannot_be_encoded_is_a_500_and_closed(serve, tmp_path):
    path = tmp_path / "body"
    path.write_bytes(b"x")
    app = _Streaming(path, headers={"X-Bad": "\u2603"})
    server = serve(app)
    status, _, body = exchange(server.server_address[1], GET)
    assert status == 500 and json.loads(body) == {"error": "internal error"}
    poll(app.all_closed, message="the body to be closed")


def _read_all_responses(socks) -> list[int]:
    statuses = []
    for sock in socks:
        status, headers, body = exchange(0, b"", sock)
        assert headers.get("connection") == "close" and json.loads(body)["error"], body
        statuses.append(status)
    return statuses


def test_connections_over_the_cap_get_503_without_a_thread_each(serve):
    server = serve(_Returning(Response(200, b"{}")), max_connections=2)
    port = server.server_address[1]
    held = [socket.create_connection(("127.0.0.1", port), timeout=5) for _ in range(2)]
    refused = []
    try:
        for sock in held:  # both served: their handler threads run
            assert exchange(0, GET, sock)[0] == 200
        before = threading.active_count()
        # Clients that send their request and keep the connection open, as a busy client
        # would: the server may linger on each to read the request before it closes.
        for _ in range(40):
            sock = socket.create_connection(("127.0.0.1", port), timeout=5)
            sock.sendall(GET)
            refused.append(sock)
        assert _read_all_responses(refused) == [503] * 40
        assert threading.active_count() <= before + 1  # one thread answers every refusal
        # The held connections are still served.
        assert exchange(0, GET, held[0])[0] == 200
    finally:
        for sock in held + refused:
            sock.close()



def _read_until_closed(sock) -> bytes:
    data = b""
    while True:
        chunk = sock.recv(65536)
        if not chunk:
            return data
        data += chunk


def test_the_refuser_holds_a_bounded_number_and_closes_them_all_at_close():
    from dcounter.refuser import RESPONSE, Refuser
    refuser = Refuser(linger=30.0, max_pending=2)
    pairs = [socket.socketpair() for _ in range(3)]
    try:
        for server_side, client_side in pairs:
            client_side.settimeout(5)
            refuser.refuse(server_side)
        # The first two are answered and held (their clients have not hung up); the third
        # was over the bound: closed at once, unanswered.
        for _server, client in pairs[:2]:
            assert client.recv(len(RESPONSE), socket.MSG_WAITALL) == RESPONSE
        assert _read_until_closed(pairs[2][1]) == b""
        refuser.close()
        for _server, client in pairs[:2]:
            assert _read_until_closed(client) == b""
        assert not any(t.name == "refuser" and t.is_alive() for t in threading.enumerate())
    finally:
        refuser.close()
        for _server, client in pairs:
            client.close()


def test_a_refused_client_that_hangs_up_frees_its_place():
    from dcounter.refuser import RESPONSE, Refuser
    refuser = Refuser(linger=30.0, max_pending=1)
    try:
        for _ in range(3):  # each frees the one place for the next
            server_side, client_side = socket.socketpair()
            with client_side:
                client_side.settimeout(5)
                refuser.refuse(server_side)
                client_side.sendall(GET)
                assert client_side.recv(len(RESPONSE), socket.MSG_WAITALL) == RESPONSE
                client_side.shutdown(socket.SHUT_WR)
                assert _read_until_closed(client_side) == b""
    finally:
        refuser.close()


def test_a_port_in_use_is_an_os_error(serve):
    server = serve(_Returning(Response(200, b"{}")))
    with pytest.raises(OSError):
        Server(server.server_address, _Returning(Response(200, b"{}")), max_body=1,
               max_connections=1)
