"""Test doubles of our own making: a clock that moves only when told, and an in-memory network
that connects several nodes' route tables without sockets.

`FakeNetwork` hands each node a transport-compatible endpoint (`post`, `close`, `timeout`, the
same `PeerUnreachable` / `PeerRefused` as `dcounter.transport`). A post is delivered at once, in
the caller's thread, to the target node's `App.handle` as an `http_types.Request`, so the nodes'
real routes, validation and error handling run. Faults: `partition(a, b)` / `isolate(a)` /
`heal()`; and, for the paths in `fault_paths`, requests dropped, replies dropped (the request
was applied but the sender sees a failure), requests duplicated, and requests held back and
delivered late by `deliver_late()` (after the sender gave up and retried: reordering). A send
in flight is not the network's business: a test that drives the senders takes a batch and
completes it later (`PeerLink.take` / `PeerLink.send`). Fault draws come from a seeded
`random.Random`. A target that is cut off or not attached fails like a refused connection
(`sent=False`); a dropped request or reply like a timeout (`sent=True`).
"""

import json
import random
import threading
import time

from dcounter.errors import PeerRefused, PeerUnreachable
from dcounter.http_types import Headers, Request


DEADLINE = 10.0  # seconds of real time a wait may take before the test fails


def wait_for(predicate, what: str, deadline: float = DEADLINE, step=lambda: None) -> None:
    """Poll `predicate` (calling `step` between tries) until it holds; fail after `deadline`
    seconds of real time. For tests whose threads run for real."""
    end = time.monotonic() + deadline
    while not predicate():
        if time.monotonic() > end:
            raise AssertionError(f"timed out waiting for {what}")
        step()
        time.sleep(0.001)


class FakeClock:
    """`monotonic()` and `time()` advance together, and only through `advance`."""

    def __init__(self, monotonic: float = 1000.0, wall: float = 1_700_000_000.0):
        self._monotonic = monotonic
        self._wall = wall

    def monotonic(self) -> float:
        return self._monotonic

    def time(self) -> float:
        return self._wall

    def advance(self, seconds: float) -> None:
        if seconds < 0:
            raise ValueError("time does not go backwards")
        self._monotonic += seconds
        self._wall += seconds


def make_request(method: str, path: str, body=b"", *, headers: dict | None = None,
                 query: list[tuple[str, str]] | None = None, client: str = "127.0.0.1") -> Request:
    """An `http_types.Request` as the HTTP handler would build it. `body` may be bytes, a str or a
    JSON-serialisable object."""
    if not isinstance(body, (bytes, str)):
        body = json.dumps(body)
    if isinstance(body, str):
        body = body.encode()
    fields = [(name.lower(), value) for name, value in (headers or {}).items()]
    if body:
        fields.append(("content-length", str(len(body))))
    return Request(method, path, list(query or []), Headers(fields), body, client)


class FakeTransport:
    """One node's end of the `FakeNetwork`, with the interface of `dcounter.transport`."""

    def __init__(self, network: "FakeNetwork", source: str, timeout: float):
        self.network = network
        self.source = source
        self.timeout = timeout
        self.closed = False

    def post(self, node_id: str, path: str, payload: dict, timeout: float | None = None) -> dict:
        return self.network.deliver(self.source, node_id, path, payload)

    def close(self) -> None:
        self.closed = True


class FakeNetwork:
    def __init__(self, seed: int = 0, timeout: float = 2.0):
        self.timeout = timeout
        self._lock = threading.Lock()
        self._apps: dict[str, object] = {}
        self._cut: set[frozenset] = set()
        self._rng = random.Random(seed)
        self._late: list[tuple[str, str, str, bytes]] = []
        self.fault_paths: set[str] = {"/counter/replicate"}
        self.drop_request_rate = 0.0
        self.drop_reply_rate = 0.0
        self.duplicate_rate = 0.0
        self.delay_rate = 0.0
        self.stats = {"delivered": 0, "unreachable": 0, "dropped_requests": 0,
                      "dropped_replies": 0, "duplicated": 0, "delayed": 0}

    # -- wiring -------------------------------------------------------------------------------
    def transport(self, node_id: str) -> FakeTransport:
        """The endpoint to give the node whose id will be `node_id` (use `--advertise`)."""
        return FakeTransport(self, node_id, self.timeout)

    def attach(self, node) -> None:
        """Make an opened node reachable under its node id."""
        with self._lock:
            self._apps[node.node_id] = node.app

    def detach(self, node_id: str) -> None:
        with self._lock:
            self._apps.pop(node_id, None)

    # -- faults -------------------------------------------------------------------------------
    def partition(self, a: str, b: str) -> None:
        """Cut the link between a and b, both ways."""
        with self._lock:
            self._cut.add(frozenset((a, b)))

    def isolate(self, a: str) -> None:
        with self._lock:
            for other in self._apps:
                if other != a:
                    self._cut.add(frozenset((a, other)))

    def heal(self) -> None:
        with self._lock:
            self._cut.clear()

    def set_faults(self, *, drop_request: float = 0.0, drop_reply: float = 0.0,
                   duplicate: float = 0.0, delay: float = 0.0, paths=None) -> None:
        with self._lock:
            self.drop_request_rate, self.drop_reply_rate = drop_request, drop_reply
            self.duplicate_rate, self.delay_rate = duplicate, delay
            if paths is not None:
                self.fault_paths = set(paths)

    def clear_faults(self) -> None:
        self.set_faults()

    def deliver_late(self) -> int:
        """Deliver the held-back requests now (their senders saw a failure long ago)."""
        with self._lock:
            late, self._late = self._late, []
        for source, target, path, body in late:
            app = self._reachable(source, target)
            if app is not None:
                app.handle(make_request("POST", path, body, client=source))
        return len(late)

    # -- delivery -----------------------------------------------------------------------------
    def _reachable(self, source: str, target: str):
        with self._lock:
            if frozenset((source, target)) in self._cut:
                return None
            return self._apps.get(target)

    def deliver(self, source: str, target: str, path: str, payload: dict) -> dict:
        body = json.dumps(payload, separators=(",", ":")).encode()
        app = self._reachable(source, target)
        if app is None:
            self._count("unreachable")
            raise PeerUnreachable(f"{target}: unreachable from {source}", sent=False)
        with self._lock:
            faulty = path in self.fault_paths
            drop_request = faulty and self._rng.random() < self.drop_request_rate
            delay = faulty and self._rng.random() < self.delay_rate
            duplicate = faulty and self._rng.random() < self.duplicate_rate
            drop_reply = faulty and self._rng.random() < self.drop_reply_rate
            if delay and not drop_request:
                self._late.append((source, target, path, body))
                self.stats["delayed"] += 1
        if drop_request or delay:
            self._count("dropped_requests" if drop_request else "unreachable")
            raise PeerUnreachable(f"{target}: request lost")
        response = app.handle(make_request("POST", path, body, client=source))
        self._count("delivered")
        if duplicate:
            app.handle(make_request("POST", path, body, client=source))
            self._count("duplicated")
        if drop_reply:
            self._count("dropped_replies")
            raise PeerUnreachable(f"{target}: reply lost")
        return _decode(target, response)

    def _count(self, what: str) -> None:
        with self._lock:
            self.stats[what] += 1


def _decode(target: str, response) -> dict:
    """What `dcounter.transport` makes of a response."""
    if not 200 <= response.status < 300:
        try:
            message = json.loads(response.body).get("error", "")
        except (ValueError, AttributeError):
            message = response.body[:200].decode(errors="replace")
        raise PeerRefused(response.status, str(message))
    try:
        data = json.loads(response.body)
    except ValueError as exc:
        raise PeerUnreachable(f"{target}: reply is not JSON") from exc
    if not isinstance(data, dict):
        raise PeerUnreachable(f"{target}: reply is not a JSON object")
    return data
