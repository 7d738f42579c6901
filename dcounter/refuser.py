"""Connections over `--max-connections`: answered with a 503 and closed by one thread, however
many there are.

Theory of operation: the accept loop hands each refused socket to `Refuser.refuse`, which never
blocks; the refuser's single thread drives every refused connection at once through a selector,
all non-blocking: the TLS handshake (when serving HTTPS), the 503, then reading what the client
sends until it hangs up, 64 KiB have arrived or `linger` seconds have passed since the refusal,
and closing. The reading matters: closing a socket with the client's request unread resets the
connection, and a reset can discard the 503 before the client reads it.

Bounds: at most `max_pending` refused connections are held at once (each holds a file
descriptor); past that a refused connection is closed at once without an answer. The thread
starts with the first refusal and ends at `close()`.

Must not import the server: the server imports this.
"""

from __future__ import annotations

import logging
import selectors
import socket
import ssl
import threading
import time

log = logging.getLogger(__name__)

_BODY = b'{"error":"too many connections"}'
RESPONSE = (b"HTTP/1.1 503 Service Unavailable\r\nContent-Type: application/json\r\n"
            b"Content-Length: " + str(len(_BODY)).encode() +
            b"\r\nConnection: close\r\nRetry-After: 1\r\n\r\n" + _BODY)
_READ_LIMIT = 65536


class _Refusal:
    __slots__ = ("sock", "deadline", "unsent", "received", "handshaking", "events")

    def __init__(self, sock, deadline: float, handshaking: bool):
        self.sock = sock
        self.deadline = deadline
        self.unsent = RESPONSE
        self.received = 0
        self.handshaking = handshaking
        self.events = 0  # what the selector waits for; 0 = not registered


class Refuser:
    def __init__(self, ssl_context: ssl.SSLContext | None = None, *, linger: float = 1.0,
                 max_pending: int = 256):
        self.ssl_context = ssl_context
        self.linger = linger
        self.max_pending = max_pending
        self._lock = threading.Lock()
        self._incoming: list[socket.socket] = []
        self._held = 0  # refusals handed over and not yet closed
        self._closed = False
        self._thread: threading.Thread | None = None
        self._selector = selectors.DefaultSelector()
        self._wake_read, self._wake_write = socket.socketpair()
        self._wake_read.setblocking(False)
        self._wake_write.setblocking(False)
        self._selector.register(self._wake_read, selectors.EVENT_READ, None)
        self._refusals: dict[int, _Refusal] = {}  # by id(); touched by the thread only

    # -- the accept loop's side ------------------------------------------------------------------
    def refuse(self, sock: socket.socket) -> None:
        """Answer `sock` with a 503 and close it, later, from the refuser's thread."""
        with self._lock:
            accept = not self._closed and self._held < self.max_pending
            if accept:
                self._held += 1
                self._incoming.append(sock)
                if self._thread is None:
                    self._thread = threading.Thread(target=self._run, name="refuser",
                                                    daemon=True)
                    self._thread.start()
        if not accept:
            _close(sock)
            return
        try:
            self._wake_write.send(b"\0")
        except OSError:  # the wake-up buffer is full: the thread is awake anyway
            pass

    def close(self, timeout: float = 2.0) -> None:
        """Stop the thread; refused connections still held are closed."""
        with self._lock:
            self._closed = True
            thread = self._thread
        try:
            self._wake_write.send(b"\0")
        except OSError:
            pass
        if thread is not None:
            thread.join(timeout)
        if thread is None or not thread.is_alive():
            self._release()

    # -- the refuser's thread --------------------------------------------------------------------
    def _run(self) -> None:
        try:
            while True:
                with self._lock:
                    incoming, self._incoming = self._incoming, []
                    closed = self._closed
                if closed:
                    for sock in incoming:
                        _close(sock)
                    return
                now = time.monotonic()
                for sock in incoming:
                    self._begin(sock, now)
                wait = min((r.deadline for r in self._refusals.values()), default=now + 1.0)
                for key, _mask in self._selector.select(max(0.0, min(1.0, wait - now))):
                    if key.data is None:
                        self._drain_wakeups()
                    else:
                        self._advance(key.data)
                now = time.monotonic()
                for refusal in [r for r in self._refusals.values() if r.deadline <= now]:
                    self._finish(refusal)
        except Exception:  # a bug: say so, and leave nothing open behind
            log.exception("the refuser of connections over the cap stopped")
            with self._lock:
                self._closed = True
            self._release()

    def _begin(self, sock, now: float) -> None:
        try:
            sock.setblocking(False)
            if self.ssl_context is not None:
                sock = self.ssl_context.wrap_socket(sock, server_side=True,
                                                    do_handshake_on_connect=False)
        except (OSError, ValueError):
            self._forget(sock)
            return
        refusal = _Refusal(sock, now + self.linger, self.ssl_context is not None)
        self._refusals[id(refusal)] = refusal
        self._advance(refusal)

    def _advance(self, refusal: _Refusal) -> None:
        """Go as far as the socket allows without blocking: handshake, send, read, close."""
        sock = refusal.sock
        try:
            if refusal.handshaking:
                sock.do_handshake()
                refusal.handshaking = False
            while refusal.unsent:
                sent = sock.send(refusal.unsent)
                refusal.unsent = refusal.unsent[sent:]
            while refusal.received < _READ_LIMIT:
                chunk = sock.recv(4096)
                if not chunk:
                    break
                refusal.received += len(chunk)
        except ssl.SSLWantReadError:
            self._wait(refusal, selectors.EVENT_READ)
            return
        except BlockingIOError:  # plain socket: sending while unsent, else reading
            self._wait(refusal, selectors.EVENT_WRITE if refusal.unsent else selectors.EVENT_READ)
            return
        except ssl.SSLWantWriteError:
            self._wait(refusal, selectors.EVENT_WRITE)
            return
        except (OSError, ValueError):
            pass
        self._finish(refusal)

    def _wait(self, refusal: _Refusal, events: int) -> None:
        if refusal.events == events:
            return
        if refusal.events:
            self._selector.modify(refusal.sock, events, refusal)
        else:
            self._selector.register(refusal.sock, events, refusal)
        refusal.events = events

    def _finish(self, refusal: _Refusal) -> None:
        if refusal.events:
            self._selector.unregister(refusal.sock)
        del self._refusals[id(refusal)]
        self._forget(refusal.sock)

    def _forget(self, sock) -> None:
        with self._lock:  # the place is free before the client can see the close
            self._held -= 1
        _close(sock)

    def _drain_wakeups(self) -> None:
        try:
            while self._wake_read.recv(4096):
                pass
        except OSError:
            pass

    def _release(self) -> None:
        for refusal in list(self._refusals.values()):
            _close(refusal.sock)
        self._refusals.clear()
        with self._lock:
            incoming, self._incoming = self._incoming, []
        for sock in incoming:
            _close(sock)
        self._selector.close()
        self._wake_read.close()
        self._wake_write.close()


def _close(sock) -> None:
    try:
        sock.close()
    except OSError:
        pass
