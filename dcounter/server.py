"""The HTTP server: `ThreadingHTTPServer` with its defaults overridden, and a thin handler.

The handler only reads, decodes and writes: it reads the request line, headers and body
(Content-Length only; chunked bodies get 411, bodies over the cap 413), hands a `Request` to the
application (`api.App.handle`) and writes the `Response` it returns. Everything is HTTP/1.1 with
keep-alive, TCP_NODELAY, a Content-Length on every response and JSON errors. A response whose
body is a `FileBody` (a backup copy) is sent from its file in chunks, never read into memory,
and the body is closed however the sending ends. Per-request logging
goes to `logging` at DEBUG; a client that hangs up is not a traceback; anything else that goes
wrong while serving is logged at ERROR with its traceback and answered with a JSON 500.

Numbers in the request line and headers (the HTTP version, Content-Length) are ASCII digits only
(`validation.is_ascii_digits`), the request line's words are separated by space and tab only,
and two different Content-Lengths get 400.

Limits: at most `max_connections` connections are served at once (more get 503 and are
closed, all by one thread: `refuser.py`); a request's headers and body must arrive within
`request_deadline` seconds; an idle kept-alive connection is closed after `idle_timeout`
seconds. The deadline holds across every read, however slowly the bytes trickle in: the
connection's `rfile` re-arms the socket timeout with the time left before each `recv`
(`_DeadlineReader`), and the TLS handshake runs under one timeout of `request_deadline` (ssl
treats a socket timeout as the handshake's total). A handshake that fails because the other
side does not trust this node's certificate, or speaks plain HTTP, is a WARNING naming the
address (with backoff per address and cause); any other failed handshake stays at DEBUG.
"""

import io
import logging
import re
import socket
import threading
import time
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from urllib.parse import parse_qsl

from dcounter import validation
from dcounter.http_types import FileBody, Headers, Request, Response, error_response
from dcounter.membership import backoff_warnings
from dcounter.refuser import Refuser

log = logging.getLogger(__name__)

_CLIENT_GONE = (ConnectionError, TimeoutError, socket.timeout, BrokenPipeError)

_UNTRUSTED = ("does not trust this node's certificate: give it --tls-ca with the CA that "
              "signed it")
# A failed TLS handshake worth a warning, by the reason OpenSSL gives: the client's own alert
# that it refused our certificate, or a plain HTTP request on the TLS port.
_HANDSHAKE_WARNINGS = {
    "TLSV1_ALERT_UNKNOWN_CA": _UNTRUSTED,
    "SSLV3_ALERT_BAD_CERTIFICATE": _UNTRUSTED,
    "SSLV3_ALERT_CERTIFICATE_UNKNOWN": _UNTRUSTED,
    "HTTP_REQUEST": "speaks plain HTTP to this HTTPS node: every node needs --tls-cert, and "
                    "clients https://",
}


class _DeadlineReader(io.RawIOBase):
    """The raw stream under a connection's `rfile`: before every `recv` it re-arms the socket
    timeout with what is left of the current request's deadline (or the idle timeout between
    requests). A socket timeout alone bounds each `recv`, so a client trickling a byte at a
    time would reset it forever; this bounds the request as a whole, the header lines that
    `parse_request` reads included."""

    def __init__(self, sock, arm):
        super().__init__()
        self._sock = sock
        self._arm = arm

    def readable(self) -> bool:
        return True

    def readinto(self, buffer) -> int:
        self._arm()
        return self._sock.recv_into(buffer)


_REQUEST_LINE_SPACE = re.compile(r"[ \t]+")
_MAX_HEADER_LINE = 65536  # the limits of http.client.parse_headers
_MAX_HEADERS = 100


class Handler(BaseHTTPRequestHandler):
    protocol_version = "HTTP/1.1"
    default_request_version = "HTTP/1.0"  # never answer as HTTP/0.9, without a status line
    server_version = "dcounter"
    sys_version = ""
    error_content_type = "application/json"

    # -- connection lifecycle ----------------------------------------------------------------------
    def setup(self) -> None:
        super().setup()
        try:
            self.connection.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)
        except OSError:
            pass
        self._deadline = None
        self.connection.settimeout(self.server.idle_timeout)
        # Every read goes through the deadline; the socket file made by `super().setup()` is
        # closed first so that it holds no reference to the socket.
        self.rfile.close()
        self.rfile = io.BufferedReader(_DeadlineReader(self.connection, self._arm_timeout),
                                       buffer_size=65536)

    def handle(self) -> None:
        try:
            super().handle()
        except _CLIENT_GONE:
            pass
        except OSError as exc:  # e.g. a TLS error from a client that went away
            log.debug("connection from %s ended: %s", self.client_address[0], exc)

    def handle_one_request(self) -> None:
        # Idle wait for the next request on a kept-alive connection.
        self._deadline = None
        try:
            first = self.rfile.peek(1)
        except _CLIENT_GONE:
            self.close_connection = True
            return
        if not first:
            self.close_connection = True
            return
        # From the first byte on, the whole request must arrive within the deadline.
        self._deadline = time.monotonic() + self.server.request_deadline
        try:
            self.raw_requestline = self.rfile.readline(65537)
        except _CLIENT_GONE:
            self.close_connection = True
            return
        if len(self.raw_requestline) > 65536:
            self.requestline = self.request_version = self.command = ""
            self._write(error_response(414, "request line too long"), close=True)
            return
        if not self.raw_requestline.endswith(b"\n"):  # empty, or the client hung up mid-line
            self.close_connection = True
            return
        try:
            if not self.parse_request():
                return
        except _CLIENT_GONE:
            self.close_connection = True
            return
        self.server.track_request(+1)
        try:
            self._serve()
        finally:
            self.server.track_request(-1)

    def parse_request(self) -> bool:
        """`BaseHTTPRequestHandler.parse_request` with its request-line rules, limits and error
        statuses, reading the header block into `Headers` instead of an email message. A header
        line without a colon, with white space before the colon, or folded gets 400; a header
        block cut off by the client hanging up is not served at all."""
        self.command = None
        self.request_version = version = self.default_request_version
        self.close_connection = True
        requestline = str(self.raw_requestline, "iso-8859-1").rstrip("\r\n")
        self.requestline = requestline
        # Words are separated by ASCII space and tab; str.split() would also split at the
        # Latin-1 no-break space, NEL and the ASCII separators, where other parsers do not.
        words = _REQUEST_LINE_SPACE.split(requestline.strip(" \t"))
        if words == [""]:
            words = []
        if not words:
            return False
        if len(words) >= 3:
            version = words[-1]
            number = version[5:].split(".") if version.startswith("HTTP/") else []
            if len(number) != 2 or not all(validation.is_ascii_digits(part) and len(part) <= 10
                                           for part in number):
                self.send_error(400, f"Bad request version ({version!r})")
                return False
            major_minor = int(number[0]), int(number[1])
            if major_minor >= (2, 0):
                self.send_error(505, f"Invalid HTTP version ({version[5:]})")
                return False
            if major_minor >= (1, 1):
                self.close_connection = False
            self.request_version = version
        if not 2 <= len(words) <= 3:
            self.send_error(400, f"Bad request syntax ({requestline!r})")
            return False
        command, path = words[:2]
        if len(words) == 2:
            self.close_connection = True
            if command != "GET":
                self.send_error(400, f"Bad HTTP/0.9 request type ({command!r})")
                return False
        self.command, self.path = command, path
        if path.startswith("//"):  # as the standard library does (gh-87389)
            self.path = "/" + path.lstrip("/")
        fields = []
        readline = self.rfile.readline
        while True:
            line = readline(_MAX_HEADER_LINE + 1)
            if len(line) > _MAX_HEADER_LINE:
                self.send_error(431, "Line too long")
                return False
            if line in (b"\r\n", b"\n"):
                break
            if not line.endswith(b"\n"):  # the client hung up mid-headers: serve nothing
                self.close_connection = True
                return False
            if len(fields) >= _MAX_HEADERS:
                self.send_error(431, "Too many headers")
                return False
            name, colon, value = line.decode("iso-8859-1").partition(":")
            if not colon or not name or name != name.strip() or line[:1] in (b" ", b"\t"):
                self.send_error(400, "malformed header line")
                return False
            # Optional white space is space and tab (RFC 9110), not every Unicode space.
            fields.append((name.lower(), value.strip(" \t\r\n")))
        self.headers = headers = Headers(fields)
        connection = (headers.get("Connection") or "").lower()
        if connection == "close":
            self.close_connection = True
        elif connection == "keep-alive":
            self.close_connection = False
        if (headers.get("Expect") or "").lower() == "100-continue" and \
                self.request_version >= "HTTP/1.1":
            if not self.handle_expect_100():
                return False
        return True

    def _arm_timeout(self) -> None:
        """Before each read: the idle timeout between requests, else what is left of the
        request's deadline (TimeoutError once it has passed)."""
        if self._deadline is None:
            self.connection.settimeout(self.server.idle_timeout)
            return
        remaining = self._deadline - time.monotonic()
        if remaining <= 0:
            raise TimeoutError("request deadline passed")
        self.connection.settimeout(remaining)

    # -- the request -------------------------------------------------------------------------------
    def _serve(self) -> None:
        server = self.server
        if server.draining:
            self._write(error_response(503, "node is shutting down"), close=True)
            return
        if "chunked" in self.headers.get("Transfer-Encoding", "").lower():
            self._write(error_response(411, "chunked request bodies are not accepted; "
                                            "send Content-Length"), close=True)
            return
        lengths = self.headers.get_all("Content-Length") or []
        if any(not validation.is_ascii_digits(raw) for raw in lengths):
            self._write(error_response(400, "invalid Content-Length: it must be ASCII digits"),
                        close=True)
            return
        digits = {raw.lstrip("0") or "0" for raw in lengths}
        if len(digits) > 1:  # which one frames the body would be a guess
            self._write(error_response(400, "conflicting Content-Length headers"), close=True)
            return
        digits = digits.pop() if digits else "0"
        # More digits than any cap has is over the cap (and past what int() converts).
        length = int(digits) if len(digits) <= 18 else server.max_body + 1
        if length > server.max_body:
            self._write(error_response(413, f"request body over {server.max_body} bytes"),
                        close=True)
            return
        try:
            body = self._read_body(length)
        except _CLIENT_GONE:
            self.close_connection = True
            return
        if body is None:
            self.close_connection = True
            return
        path, _, query = self.path.partition("?")
        params = parse_qsl(query, keep_blank_values=True)
        request = Request(self.command, path, params, self.headers, body,
                          self.client_address[0] if self.client_address else "")
        # The error boundary: whatever the application raises, and an answer that cannot be
        # encoded, becomes a 500 with a JSON body, never a connection closed without a word.
        response = None
        try:
            response = server.app.handle(request)
            data = self._encode(response)
        except Exception:
            log.exception("internal error on %s %s", self.command, path)
            data = self._encode(error_response(500, "internal error"))
            if response is not None and isinstance(response.body, FileBody):
                response.body.close()
            response = None
        if response is not None and isinstance(response.body, FileBody):
            self._send_file(data, response.body)
        else:
            self._send(data)

    def _read_body(self, length: int) -> bytes | None:
        chunks, remaining = [], length
        while remaining > 0:
            chunk = self.rfile.read1(min(remaining, 65536))
            if not chunk:
                return None
            chunks.append(chunk)
            remaining -= len(chunk)
        return b"".join(chunks)

    def _write(self, response: Response, close: bool = False) -> None:
        if close:
            self.close_connection = True
        self._send(self._encode(response))

    def _encode(self, response: Response) -> bytes:
        """Status line, headers and body as the bytes to send (of a `FileBody`, the head
        alone); raises on a response that cannot be encoded (a header outside Latin-1, a body
        that is not bytes)."""
        status = response.status
        phrase = self.responses[status][0] if status in self.responses else ""
        streamed = isinstance(response.body, FileBody)
        body = b"" if streamed else bytes(response.body)
        length = response.body.length if streamed else len(body)
        lines = [f"{self.protocol_version} {status} {phrase}\r\n"
                 f"Content-Type: {response.content_type}\r\n"
                 f"Content-Length: {length}\r\n"]
        close = self.close_connection or self.server.draining
        for name, value in response.headers.items():
            lines.append(f"{name}: {value}\r\n")
            if name.lower() == "connection" and str(value).lower() == "close":
                close = True
        if close:
            lines.append("Connection: close\r\n")
        lines.append("\r\n")
        head = "".join(lines).encode("latin-1", "strict")
        self.close_connection = close
        return head if self.command == "HEAD" else head + body

    def _send(self, data: bytes) -> None:
        try:
            # The reply, too, must go out within a deadline: a client that stops reading does
            # not hold its thread forever (sendall's timeout bounds the whole send).
            self.connection.settimeout(self.server.request_deadline)
            # Status line, headers and body leave in one send (one system call, one segment).
            self.wfile.write(data)
            self.wfile.flush()
        except _CLIENT_GONE:
            self.close_connection = True

    def _send_file(self, head: bytes, body: FileBody) -> None:
        """The head, then the file in chunks; the file is closed however this ends. Each chunk
        must leave within the deadline: a client that stops reading is cut off, and its copy
        closed, after `request_deadline` seconds, while a slow but steady one gets it all.
        A file that ends before its Content-Length closes the connection, so the client
        never takes a short body for the whole."""
        reading = False  # whether an OSError came from the file (else from the connection)
        try:
            self.connection.settimeout(self.server.request_deadline)
            self.wfile.write(head)
            if self.command == "HEAD":
                return
            sent, reading = 0, True
            for chunk in body.chunks():
                reading = False
                self.wfile.write(chunk)
                sent += len(chunk)
                reading = True
            if sent != body.length:
                log.error("a file answer to %s %s ended after %d of %d bytes; connection closed",
                          self.command, self.path, sent, body.length)
                self.close_connection = True
            reading = False
            self.wfile.flush()
        except _CLIENT_GONE:
            self.close_connection = True
        except OSError as exc:
            if reading:  # the file could not be read: the answer cannot be finished
                log.exception("a file answer to %s %s failed; connection closed",
                              self.command, self.path)
            else:  # e.g. a TLS error from a client that went away
                log.debug("sending to %s ended: %s", self.client_address[0], exc)
            self.close_connection = True
        finally:
            body.close()

    # -- BaseHTTPRequestHandler defaults, overridden ------------------------------------------------
    def send_error(self, code, message=None, explain=None):
        """Errors found by `parse_request` (bad request line, bad headers): JSON, not HTML."""
        text = message or self.responses.get(code, ("error",))[0]
        self._write(error_response(code, text), close=True)

    def log_message(self, format, *args):
        log.debug("%s %s", self.address_string(), format % args)

    def log_error(self, format, *args):
        log.debug("%s %s", self.address_string(), format % args)


class Server(ThreadingHTTPServer):
    daemon_threads = True
    allow_reuse_address = True
    request_queue_size = 256

    def __init__(self, address, app, *, max_body: int, max_connections: int,
                 request_deadline: float = 10.0, idle_timeout: float = 60.0,
                 ssl_context=None):
        self.app = app
        self.max_body = max_body
        self.max_connections = max_connections
        self.request_deadline = request_deadline
        self.idle_timeout = idle_timeout
        self.ssl_context = ssl_context
        self.draining = False
        self._count_lock = threading.Lock()
        self.connections = 0
        self.in_flight = 0
        family = socket.AF_INET6 if ":" in address[0] else socket.AF_INET
        self.address_family = family
        self._refuser = None  # a failed bind calls server_close from inside __init__
        self._handshake_warnings = backoff_warnings()
        super().__init__(address, Handler)
        self._refuser = Refuser(ssl_context)  # after binding: a failed bind leaves nothing open

    # -- connection cap -----------------------------------------------------------------------------
    def process_request(self, request, client_address):
        with self._count_lock:
            over = self.connections >= self.max_connections
            if not over:
                self.connections += 1
        if over:
            self._refuser.refuse(request)  # one thread answers every refusal
            return
        super().process_request(request, client_address)

    def server_close(self) -> None:
        super().server_close()
        if self._refuser is not None:
            self._refuser.close()

    def process_request_thread(self, request, client_address):
        try:
            if self.ssl_context is not None:
                try:
                    request.settimeout(self.request_deadline)
                    request = self.ssl_context.wrap_socket(request, server_side=True)
                except (OSError, ValueError) as exc:
                    self._handshake_failed(client_address[0], exc)
                    self.shutdown_request(request)
                    return
            super().process_request_thread(request, client_address)
        finally:
            with self._count_lock:
                self.connections -= 1

    def _handshake_failed(self, address: str, exc: Exception) -> None:
        reason = getattr(exc, "reason", None)
        said = _HANDSHAKE_WARNINGS.get(reason) if isinstance(reason, str) else None
        if said is None:
            log.debug("TLS handshake with %s failed: %s", address, exc)
        elif self._handshake_warnings.due((address, reason), time.monotonic()):
            log.warning("TLS handshake with %s failed: the other side %s", address, said)

    def track_request(self, delta: int) -> None:
        with self._count_lock:
            self.in_flight += delta

    def handle_error(self, request, client_address):
        # Hang-ups never get here (the handler ends those quietly): this is a bug.
        log.error("unexpected error while serving %s", client_address[0] if client_address
                  else "?", exc_info=True)

    def wait_idle(self, deadline: float) -> bool:
        """Wait until no request is being processed, or the monotonic deadline passes."""
        while time.monotonic() < deadline:
            with self._count_lock:
                if self.in_flight == 0:
                    return True
            time.sleep(0.01)
        return False
