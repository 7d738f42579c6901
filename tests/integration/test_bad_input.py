"""Bad input to every endpoint gets the 4xx of DESIGN.md with a JSON `{"error": ...}` body,
changes nothing (peers and counts stay as they were) and leaves the node serving; clients that
hang up mid-request leave no traceback in the log.

Most cases run against one pair of nodes shared by the module (starting nodes per case would
take longer than all the cases together); every case checks the state before and after itself.
"""

from __future__ import annotations

import json
import socket
import struct
import time

import pytest

from tests.integration.harness import Cluster, poll
from tests.rawhttp import exchange, read_response

MAX_BODY = 16_384
INT64_MAX = 2**63 - 1
INT64_MIN = -(2**63)
MAX_DELTA = 2**53 - 1
STRANGER = "localhost:9"  # a node id no node knows; a refused join must not add it


# -- raw HTTP, for what `requests` will not send ---------------------------------------------------

def raw_exchange(node, data: bytes, timeout: float = 10.0) -> tuple[int, dict, bytes]:
    """Send `data` as is on a new connection and read one response."""
    return exchange(node.port, data, timeout=timeout)


def request_head(method: str, path: str, headers: dict) -> bytes:
    lines = [f"{method} {path} HTTP/1.1", "Host: 127.0.0.1"]
    lines += [f"{name}: {value}" for name, value in headers.items()]
    return ("\r\n".join(lines) + "\r\n\r\n").encode()


# -- the shared pair ------------------------------------------------------------------------------

@pytest.fixture(scope="module")
def pair(tmp_path_factory):
    cluster = Cluster(tmp_path_factory.mktemp("bad-input"))
    try:
        a, b = cluster.start(2, in_memory=True, extra=["--max-body", str(MAX_BODY)])
        for delta in (1, 2, 3):
            assert a.incr(delta=delta).status_code == 200
        assert b.incr("other", 10).status_code == 200
        cluster.wait_converged([a, b], 6)
        cluster.wait_converged([a, b], 10, counter="other")
        yield cluster, a, b
    finally:
        cluster.close()


def state_of(node):
    return node.get("/counters").json()["counters"], sorted(node.nodes())


def assert_json_error(status: int, headers, body: bytes, expected: int, where: str):
    assert status == expected, f"{where}: got {status} {body[:300]!r}, expected {expected}"
    content_type = headers.get("content-type") or headers.get("Content-Type")
    assert content_type.startswith("application/json"), f"{where}: {content_type}"
    payload = json.loads(body)
    assert isinstance(payload, dict) and list(payload) == ["error"], f"{where}: {payload!r}"
    assert isinstance(payload["error"], str) and payload["error"], where


J = json.dumps
PEER = "{peer}"  # replaced by the second node's id
PEER_SQUARED = "{peer}²"  # the second node's id with a superscript two after its port

# (method, path, body, headers, expected status). A dict body is sent as JSON; bytes as is.
BAD_BODIES = [
    b"{", b'{"counter": "x",}', b"[]", b'"default"', b"null", b"17", b"\xff\xfe\x00{",
    b"{'counter': 'x'}", b'{"counter": "x"} trailing',
]
BAD_NODE_IDS = [None, 5, "", "localhost", "localhost:", "localhost:0", "localhost:65536",
                "localhost:08080", "-bad-:80", "bad host:80", "[::1:80", "a" * 300 + ":80",
                ["localhost:80"],
                # Digits that `str.isdigit()` accepts but that are not ASCII digits.
                "a:\u00b2", "localhost:\uff18\uff10", "localhost:\u0668\u0660", "localhost:8_0"]
BAD_COUNTERS = [5, None, "", "a" * 129, "has space", "slash/name", "naïve", ["x"], {"x": 1},
                "new\nline"]
BAD_DELTAS = [0, 1.5, 1.0, True, False, "1", None, [1], {"n": 1}, MAX_DELTA + 1,
              -(MAX_DELTA + 1), 10**30]

CASES = []
for body in BAD_BODIES:
    for path in ("/counter/increment", "/counter/replicate", "/counter/state", "/nodes/join",
                 "/nodes/heartbeat", "/nodes/leave"):
        CASES.append(("POST", path, body, {}, 400))
for path in ("/counter/replicate", "/counter/state", "/nodes/join", "/nodes/heartbeat",
             "/nodes/leave"):
    CASES.append(("POST", path, b"", {}, 400))  # these need a body
    CASES.append(("POST", path, {}, {}, 400))

# increment
for name in BAD_COUNTERS:
    CASES.append(("POST", "/counter/increment", {"counter": name}, {}, 400))
for delta in BAD_DELTAS:
    CASES.append(("POST", "/counter/increment", {"counter": "default", "delta": delta}, {}, 400))
CASES += [
    ("POST", "/counter/increment", b'{"delta": NaN}', {}, 400),
    ("POST", "/counter/increment", b'{"delta": 1e3}', {}, 400),
    ("POST", "/counter/increment", {"counter": "default", "extra": 1}, {}, 400),
    ("POST", "/counter/increment", {"count": 1}, {}, 400),
    ("POST", "/counter/increment", {"delta": 1}, {"Idempotency-Key": "k" * 256}, 400),
    ("POST", "/counter/increment?counter=x", {}, {}, 400),
]
# bulk increments: one bad item refuses the whole request
BULK = "/counter/increments"
for body in BAD_BODIES + [b"", b"{}"]:
    CASES.append(("POST", BULK, body, {}, 400))
for increments in ([], {}, None, "x", 5, [{}] * 1001, [None], [[]], [["default", 1]]):
    CASES.append(("POST", BULK, {"increments": increments}, {}, 400))
for name in BAD_COUNTERS:
    CASES.append(("POST", BULK, {"increments": [{}, {"counter": name}]}, {}, 400))
for delta in BAD_DELTAS:
    CASES.append(("POST", BULK, {"increments": [{"counter": "a", "delta": delta}, {}]}, {}, 400))
CASES += [
    ("POST", BULK, {"increments": [{}], "extra": 1}, {}, 400),
    ("POST", BULK, {"increments": [{"counter": "a", "extra": 1}]}, {}, 400),
    ("POST", BULK, b'{"increments": [{"delta": NaN}]}', {}, 400),
    ("POST", BULK, {"increments": [{}]}, {"Idempotency-Key": "k" * 256}, 400),
    ("POST", BULK + "?counter=x", {"increments": [{}]}, {}, 400),
]

# reads
for query in ("counter=bad%20name", "counter=", "counter=" + "a" * 129, "foo=1",
              "counter=a&counter=b"):
    CASES.append(("GET", "/counter/count?" + query, None, {}, 400))
for path in ("/counters?x=1", "/nodes?x=1", "/status?x=1", "/metrics?x=1", "/healthz?x=1",
             "/readyz?x=1"):
    CASES.append(("GET", path, None, {}, 400))

# replicate, batch form
GOOD = {"id": "g00d0r1g1n:1", "counter": "default", "delta": 100}
for node_id in BAD_NODE_IDS:
    CASES.append(("POST", "/counter/replicate", {"node_id": node_id, "events": [GOOD]}, {}, 400))
CASES.append(("POST", "/counter/replicate", {"events": [GOOD]}, {}, 400))
for events in ({}, "x", None, 5, [5], [None], [[GOOD]]):
    CASES.append(("POST", "/counter/replicate", {"node_id": STRANGER, "events": events}, {}, 400))
BAD_EVENTS = [{**GOOD, "id": bad} for bad in ("g00d0r1g1n:0", "g00d0r1g1n", "g00d0r1g1n:-1",
                                              ":1", "g00d0r1g1n:1.5", "g00d0r1g1n:01",
                                              "bad origin:1", 5, None, "g00d0r1g1n:" + "9" * 19,
                                              "g00d0r1g1n:\u00b2", "g00d0r1g1n:\uff11",
                                              "g00d0r1g1n:\u0661")]
BAD_EVENTS += [{**GOOD, "counter": name} for name in BAD_COUNTERS]
BAD_EVENTS += [{**GOOD, "delta": delta} for delta in BAD_DELTAS]
BAD_EVENTS += [{k: v for k, v in GOOD.items() if k != field} for field in GOOD]
BAD_EVENTS += [{**GOOD, "extra": 1}, {**GOOD, "key": 5}, {**GOOD, "key": ""}]
for bad in BAD_EVENTS:
    # One bad event refuses the whole batch: the good one beside it is not applied either.
    CASES.append(("POST", "/counter/replicate", {"node_id": STRANGER, "events": [GOOD, bad]},
                  {}, 400))
CASES.append(("POST", "/counter/replicate", {"node_id": STRANGER, "events": [GOOD], "x": 1},
              {}, 400))
# bulk events (protocol 2)
GOOD_BULK = {"id": "g00d0r1g1n:2", "items": [["default", 1], ["other", 2]]}
BAD_BULK_EVENTS = [{**GOOD_BULK, "items": items} for items in (
    [], [["default", 1]], [["default", 1]] * 1001, None, "x", {"default": 1}, [["default", 1], 5],
    [["default", 1], ["other"]], [["default", 1], ["other", 2, 3]],
    [["default", 1], {"counter": "other", "delta": 2}])]
BAD_BULK_EVENTS += [{**GOOD_BULK, "items": [["default", 1], [name, 1]]}
                    for name in BAD_COUNTERS]
BAD_BULK_EVENTS += [{**GOOD_BULK, "items": [["default", 1], ["other", delta]]}
                    for delta in BAD_DELTAS]
BAD_BULK_EVENTS += [{**GOOD_BULK, "counter": "default"}, {**GOOD_BULK, "key": ""},
                    {**GOOD_BULK, "id": "g00d0r1g1n:0"}, {"items": GOOD_BULK["items"]}]
for bad in BAD_BULK_EVENTS:
    CASES.append(("POST", "/counter/replicate",
                  {"node_id": STRANGER, "events": [GOOD, GOOD_BULK, bad]}, {}, 400))
# replicate, the original single-event form: always refused
for event_id in (5, None, "", " padded", "x" * 256, ["id"],
                 "0d4c6b0e-2b7f-4a8e-9d8e-0e5f1a3c9b11"):
    CASES.append(("POST", "/counter/replicate", {"node_id": STRANGER, "event_id": event_id},
                  {}, 400))
for node_id in BAD_NODE_IDS:
    CASES.append(("POST", "/counter/replicate",
                  {"node_id": node_id, "event_id": "0d4c6b0e-2b7f-4a8e-9d8e-0e5f1a3c9b11"},
                  {}, 400))
CASES.append(("POST", "/counter/replicate",
              {"node_id": STRANGER, "event_id": "0d4c6b0e-2b7f-4a8e-9d8e-0e5f1a3c9b11", "x": 1},
              {}, 400))
CASES.append(("POST", "/counter/replicate", {"event_id": "0d4c6b0e-2b7f-4a8e-9d8e-0e5f1a3c9b11"},
              {}, 400))

# state
for body in ({"origins": "x"}, {"origins": [5]}, {"origins": ["bad origin"]},
             {"origins": [], "x": 1}, {"origins": None}, {"origins": {"a": 1}},
             {"origins": [], "node_id": "nope"}):
    CASES.append(("POST", "/counter/state", body, {}, 400))

# forward (a keyed increment sent to its key's home)
FORWARD = {"node_id": STRANGER, "counter": "default", "delta": 1, "key": "fwd-1"}
for body in BAD_BODIES + [b"", {}]:
    CASES.append(("POST", "/counter/forward", body, {}, 400))
for field, values in (("node_id", BAD_NODE_IDS), ("counter", BAD_COUNTERS),
                      ("delta", BAD_DELTAS), ("key", ["", "k" * 256, "new\nline", 5, None])):
    for value in values:
        CASES.append(("POST", "/counter/forward", {**FORWARD, field: value}, {}, 400))
for field in FORWARD:
    CASES.append(("POST", "/counter/forward",
                  {k: v for k, v in FORWARD.items() if k != field}, {}, 400))
CASES.append(("POST", "/counter/forward", {**FORWARD, "x": 1}, {}, 400))

# join and heartbeat
MEMBERSHIP_BAD = [{"node_id": node_id} for node_id in BAD_NODE_IDS] + [
    {"cluster": "default"},
    {"node_id": STRANGER, "cluster": 5},
    {"node_id": STRANGER, "cluster": None},
    {"node_id": STRANGER, "protocol": "1"},
    {"node_id": STRANGER, "protocol": True},
    {"node_id": STRANGER, "protocol": 1.0},
    {"node_id": STRANGER, "origin": "bad origin!"},
    {"node_id": STRANGER, "origin": 5},
    {"node_id": STRANGER, "digest": []},
    {"node_id": STRANGER, "digest": {"abc": -1}},
    {"node_id": STRANGER, "digest": {"abc": 1.5}},
    {"node_id": STRANGER, "digest": {"bad origin": 1}},
    {"node_id": STRANGER, "peers": "localhost:1"},
    {"node_id": STRANGER, "peers": ["nope"]},
    {"node_id": STRANGER, "peers": [5]},
    {"node_id": STRANGER, "extra": 1},
]
SPEAKS = {"protocol": 1, "origin": "Stranger09"}  # what every dcounter peer sends
for path in ("/nodes/join", "/nodes/heartbeat"):
    for body in MEMBERSHIP_BAD:
        CASES.append(("POST", path, {**SPEAKS, **body}, {}, 400))
    CASES.append(("POST", path, {**SPEAKS, "node_id": STRANGER, "cluster": "elsewhere"}, {}, 409))
    CASES.append(("POST", path, {**SPEAKS, "node_id": STRANGER, "protocol": 99}, {}, 409))
    # The original system's nodes send neither protocol nor origin: refused, never listed.
    for body in ({"node_id": STRANGER}, {"node_id": STRANGER, "protocol": 1},
                 {"node_id": STRANGER, "origin": "Stranger09"}):
        CASES.append(("POST", path, body, {}, 400))

# leave: a refused leave must not drop the peer it names
for body in ({"node_id": PEER, "extra": 1}, {"node_id": PEER, "cluster": 5},
             {"node_id": PEER, "digest": {}}, {"node_id": PEER, "protocol": "1"},
             {"peer": PEER}, {"node_id": 5}, {"node_id": "localhost"}, {"node_id": "a:\u00b2"},
             {"node_id": PEER_SQUARED}):
    CASES.append(("POST", "/nodes/leave", body, {}, 400))
CASES.append(("POST", "/nodes/leave", {"node_id": PEER, "cluster": "elsewhere"}, {}, 409))
CASES.append(("POST", "/nodes/leave", {"node_id": PEER, "protocol": 99}, {}, 409))

# wrong method (405 with Allow), unknown path (404)
WRONG_METHOD = [("GET", "/counter/increment", "POST"), ("PUT", "/counter/increment", "POST"),
                ("GET", "/counter/increments", "POST"),
                ("DELETE", "/counter/increment", "POST"), ("GET", "/counter/replicate", "POST"),
                ("GET", "/counter/state", "POST"), ("POST", "/counter/count", "GET"),
                ("DELETE", "/counters", "GET"), ("POST", "/nodes", "GET"),
                ("GET", "/nodes/join", "POST"), ("GET", "/nodes/heartbeat", "POST"),
                ("GET", "/nodes/leave", "POST"), ("PATCH", "/counter/replicate", "POST")]
for method, path, _allow in WRONG_METHOD:
    CASES.append((method, path, {"node_id": PEER}, {}, 405))
for method, path in (("GET", "/index.html"), ("GET", "/nope"), ("POST", "/counter/nope"),
                     ("GET", "/counter/count/extra"), ("GET", "/Counters"),
                     ("POST", "/nodes/join/"), ("DELETE", "/nodes/x")):
    CASES.append((method, path, {"node_id": PEER}, {}, 404))

# bodies over the limit
CASES.append(("POST", "/counter/increment", b'{"delta": 1' + b" " * MAX_BODY + b"}", {}, 413))
CASES.append(("POST", "/counter/increment", b'{"delta": 1' + b" " * 200_000 + b"}", {}, 413))
CASES.append(("POST", "/counter/replicate",
              {"node_id": STRANGER,
               "events": [{**GOOD, "id": f"b1gbatch:{seq}"} for seq in range(1, 400)]}, {}, 413))
CASES.append(("POST", "/nodes/join", {"node_id": STRANGER, "peers": ["localhost:1"] * 2000},
              {}, 413))


def _case_id(case):
    method, path, body, headers, status = case
    text = body.decode("latin-1") if isinstance(body, bytes) else J(body)
    if len(text) > 60:
        text = text[:57] + "..."
    return f"{status}-{method}-{path}-{text!r}" + ("-hdr" if headers else "")


def _substitute(body, peer: str):
    if isinstance(body, dict):
        text = J(body).replace(J(PEER), J(peer)).replace(J(PEER_SQUARED), J(peer + "²"))
        return text.encode()
    return body


@pytest.mark.parametrize("case", CASES, ids=[_case_id(case) for case in CASES])
def test_bad_request_is_refused_with_a_json_error_and_changes_nothing(pair, case):
    cluster, a, b = pair
    method, path, body, headers, expected = case
    before = state_of(a)
    assert b.node_id in before[1]
    response = a.session.request(method, a.base + path, data=_substitute(body, b.node_id),
                                 headers=headers, timeout=10)
    assert_json_error(response.status_code, response.headers, response.content, expected,
                      f"{method} {path}")
    if expected == 405:
        allow = dict((m, a_) for m, p, a_ in WRONG_METHOD if p == path and m == method)
        assert response.headers["Allow"] == allow[method]
    assert state_of(a) == before
    # The node keeps serving, on a new connection too.
    assert a.get("/healthz").status_code == 200


def test_chunked_body_gets_411_and_changes_nothing(pair):
    cluster, a, b = pair
    before = state_of(a)
    body = b'{"delta": 5}'
    data = request_head("POST", "/counter/increment",
                        {"Transfer-Encoding": "chunked", "Content-Type": "application/json"})
    data += b"%x\r\n%s\r\n0\r\n\r\n" % (len(body), body)
    status, headers, payload = raw_exchange(a, data)
    assert_json_error(status, headers, payload, 411, "chunked increment")
    # A peer call sent chunked is refused the same way.
    data = request_head("POST", "/counter/replicate", {"Transfer-Encoding": "chunked"})
    event = J({"node_id": STRANGER, "events": [{**GOOD, "id": "chunk3d:1"}]}).encode()
    data += b"%x\r\n%s\r\n0\r\n\r\n" % (len(event), event)
    status, headers, payload = raw_exchange(a, data)
    assert_json_error(status, headers, payload, 411, "chunked replicate")
    assert state_of(a) == before


def test_malformed_framing_gets_a_json_4xx(pair):
    cluster, a, b = pair
    before = state_of(a)
    for length in ("abc", "-1", "1.5", "0x10"):
        data = request_head("POST", "/counter/increment", {"Content-Length": length}) + b"{}"
        status, headers, payload = raw_exchange(a, data)
        assert_json_error(status, headers, payload, 400, f"Content-Length {length}")
    # Announcing a huge body is refused at once, without waiting for it.
    data = request_head("POST", "/counter/increment", {"Content-Length": str(10**9)}) + b"{"
    status, headers, payload = raw_exchange(a, data, timeout=5)
    assert_json_error(status, headers, payload, 413, "huge Content-Length")
    status, headers, payload = raw_exchange(a, b"NONSENSE\r\n\r\n")
    assert_json_error(status, headers, payload, 400, "garbage request line")
    assert state_of(a) == before


def _raw_request(method: str, path: str, version: bytes = b"HTTP/1.1", headers=(),
                 body: bytes = b"") -> bytes:
    """A request with header values given as bytes, sent as they are (Latin-1 on the wire)."""
    lines = [method.encode() + b" " + path.encode() + b" " + version, b"Host: 127.0.0.1"]
    lines += [name + b": " + value for name, value in headers]
    return b"\r\n".join(lines) + b"\r\n\r\n" + body


# Content-Length values that are not a run of ASCII digits, however `str.isdigit()` and `int()`
# see them once the server decodes the header as Latin-1.
NON_ASCII_LENGTHS = [b"\xb2", b"1\xb2", b"\xb3\xb9", b"\xb9", "\u0661".encode(),
                     "\uff11".encode(), b"1_0", b"+2", b"2 2", b"\xa02"]


@pytest.mark.parametrize("length", NON_ASCII_LENGTHS, ids=repr)
def test_a_content_length_of_other_than_ascii_digits_gets_a_json_400(pair, length):
    cluster, a, b = pair
    before = state_of(a)
    data = _raw_request("POST", "/counter/increment", headers=[(b"Content-Length", length)],
                        body=b"{}")
    status, headers, payload = raw_exchange(a, data)
    assert_json_error(status, headers, payload, 400, f"Content-Length {length!r}")
    assert state_of(a) == before
    assert a.get("/healthz").status_code == 200


def test_content_length_framing_limits(pair):
    cluster, a, b = pair
    before = state_of(a)
    # More digits than `int()` converts by default: still a body over the cap, 413.
    data = _raw_request("POST", "/counter/increment", headers=[(b"Content-Length", b"9" * 5000)],
                        body=b"{}")
    status, headers, payload = raw_exchange(a, data)
    assert_json_error(status, headers, payload, 413, "5000-digit Content-Length")
    # Two different lengths: which one frames the body is ambiguous, so neither does.
    data = _raw_request("POST", "/counter/increment",
                        headers=[(b"Content-Length", b"2"), (b"Content-Length", b"12")],
                        body=b'{"delta": 7}')
    status, headers, payload = raw_exchange(a, data)
    assert_json_error(status, headers, payload, 400, "two Content-Lengths")
    assert state_of(a) == before


@pytest.mark.parametrize("version", [b"HTTP/1.\xb9", b"HTTP/\xb9.1", b"HTTP/\xb2.\xb2",
                                     "HTTP/1.\u0661".encode(), b"HTTP/1.+1", b"HTTP/ 1.1"],
                         ids=repr)
def test_an_http_version_of_other_than_ascii_digits_gets_a_json_400(pair, version):
    cluster, a, b = pair
    before = state_of(a)
    for method, path in (("GET", "/counters"), ("POST", "/counter/increment")):
        data = _raw_request(method, path, version=version, headers=[(b"Content-Length", b"2")],
                            body=b"{}")
        status, headers, payload = raw_exchange(a, data)
        assert_json_error(status, headers, payload, 400, f"{method} {path} {version!r}")
    assert state_of(a) == before
    assert a.get("/healthz").status_code == 200


@pytest.mark.parametrize("line,expected", [(b"GET\xa0/counters\xa0HTTP/1.1", 400),
                                           (b"GET\x1c/counters HTTP/1.1", 400),
                                           (b"GET /counters\x85HTTP/1.1", 404)], ids=repr)
def test_a_request_line_split_by_other_than_ascii_space_is_not_served(pair, line, expected):
    """Only space and tab separate the words (the last case is one path, which does not exist)."""
    cluster, a, b = pair
    status, headers, payload = raw_exchange(a, line + b"\r\nHost: x\r\n\r\n")
    assert_json_error(status, headers, payload, expected, repr(line))


def test_non_ascii_digits_leave_no_traceback_and_no_500(pair):
    """Every request above got its 4xx from validation: the node logged no internal error."""
    cluster, a, b = pair
    for body in ({"node_id": "a:\u00b2"}, {"node_id": "a:\u00b2", "events": []},
                 {"node_id": "a:\u00b2", "event_id": "k"}):
        for path in ("/nodes/join", "/nodes/heartbeat", "/nodes/leave", "/counter/replicate"):
            response = a.post(path, body)
            assert response.status_code == 400, (path, body, response.text)
    log = a.stderr()
    assert "Traceback" not in log and "internal error" not in log, log


def test_wrong_requests_on_a_kept_alive_connection_leave_it_usable(pair):
    cluster, a, b = pair
    before = state_of(a)
    with socket.create_connection(("127.0.0.1", a.port), timeout=10) as sock:
        for method, path, body, expected in (("POST", "/counter/increment", b"{", 400),
                                             ("GET", "/nope", b"", 404),
                                             ("GET", "/counter/increment", b"", 405),
                                             ("GET", "/counters", b"", 200)):
            sock.sendall(request_head(method, path, {"Content-Length": len(body)}) + body)
            status, headers, payload = read_response(sock)
            assert status == expected, payload
            assert "error" in json.loads(payload) or expected == 200
    assert state_of(a) == before


def _hang_up(node, data: bytes, reset: bool = False) -> None:
    sock = socket.create_connection(("127.0.0.1", node.port), timeout=5)
    try:
        if data:
            sock.sendall(data)
        if reset:  # close with RST instead of FIN
            sock.setsockopt(socket.SOL_SOCKET, socket.SO_LINGER, struct.pack("ii", 1, 0))
    finally:
        sock.close()


def test_clients_hanging_up_mid_request_leave_no_traceback(pair):
    cluster, a, b = pair
    before = state_of(a)
    body = J({"counter": "default", "delta": 1000}).encode()
    head = request_head("POST", "/counter/increment", {"Content-Length": len(body)})
    replicate_body = J({"node_id": STRANGER, "events": [{**GOOD, "id": "h4ngup:1"}]}).encode()
    replicate_head = request_head("POST", "/counter/replicate",
                                  {"Content-Length": len(replicate_body)})
    for reset in (False, True):
        _hang_up(a, b"", reset)                                   # connect, say nothing
        _hang_up(a, b"POST /counter/incr", reset)                 # half a request line
        _hang_up(a, head[: len(head) // 2], reset)                # half the headers
        _hang_up(a, head, reset)                                  # headers, no body
        _hang_up(a, head + body[: len(body) // 2], reset)         # half a body
        _hang_up(a, replicate_head + replicate_body[:10], reset)  # half a peer call
    _hang_up(a, request_head("GET", "/counters", {}), reset=True)  # gone before the answer
    _hang_up(a, request_head("GET", "/counters", {}) * 50, reset=True)

    # Let the node notice every hang-up; nothing may be counted and nothing logged as a crash.
    time.sleep(0.5)
    assert a.get("/healthz").status_code == 200
    assert state_of(a) == before
    log = a.stderr()
    assert "Traceback" not in log, log
    assert " ERROR " not in log and "Exception" not in log, log


def test_after_all_bad_input_the_pair_still_works_and_agrees(pair):
    cluster, a, b = pair
    counters, peers = state_of(a)
    assert counters == {"default": 6, "other": 10}
    assert peers == [b.node_id]
    assert state_of(b) == (counters, [a.node_id])
    assert a.incr().status_code == 200 and b.incr().status_code == 200
    cluster.wait_converged([a, b], 8)
    for node in (a, b):
        assert "Traceback" not in node.stderr(), node.stderr()


# -- limits that need their own node --------------------------------------------------------------

def test_a_result_outside_signed_64_bits_gets_422(cluster):
    node = cluster.node("limits", in_memory=True).start()
    # Bring two counters close to the ends of the range with one replicated batch each.
    for name, sign in (("big", 1), ("small", -1)):
        events = [{"id": f"{name}0r1g1n:{seq}", "counter": name, "delta": sign * MAX_DELTA}
                  for seq in range(1, 1025)]
        response = node.post("/counter/replicate", {"node_id": STRANGER, "events": events})
        assert response.status_code == 200 and response.json()["applied"] == 1024
    assert node.count("big") == INT64_MAX - 1023
    assert node.count("small") == INT64_MIN + 1024

    refused = node.incr("big", 1024)
    assert_json_error(refused.status_code, refused.headers, refused.content, 422, "over max")
    assert node.count("big") == INT64_MAX - 1023
    assert node.incr("big", 1023).json()["count"] == INT64_MAX
    assert node.incr("big", 1).status_code == 422
    assert node.incr("big", MAX_DELTA).status_code == 422
    assert node.count("big") == INT64_MAX
    assert node.incr("big", -1).json()["count"] == INT64_MAX - 1

    assert node.incr("small", -1025).status_code == 422
    assert node.incr("small", -1024).json()["count"] == INT64_MIN
    assert node.incr("small", -1).status_code == 422
    assert node.count("small") == INT64_MIN
    assert node.get("/counters").json()["counters"] == {"big": INT64_MAX - 1,
                                                        "small": INT64_MIN}


def test_a_counter_past_max_counters_gets_422(cluster):
    node = cluster.node("capped", in_memory=True, extra=["--max-counters", "3"]).start()
    for name in ("c1", "c2", "c3"):
        assert node.incr(name).status_code == 200
    refused = node.incr("c4")
    assert_json_error(refused.status_code, refused.headers, refused.content, 422, "4th counter")
    assert node.incr().status_code == 422  # "default" would be a 4th counter too
    assert node.count("c4") == 0  # reading a counter never creates it
    assert node.incr("c2", 5).status_code == 200  # existing counters keep working
    assert node.get("/counters").json()["counters"] == {"c1": 1, "c2": 6, "c3": 1}


def test_an_idempotency_key_reused_for_another_request_gets_422(cluster):
    node = cluster.node("keys", in_memory=True).start()
    first = node.incr("k", 2, headers={"Idempotency-Key": "order-17"})
    assert first.status_code == 200
    for counter, delta in (("k", 3), ("other", 2)):
        refused = node.incr(counter, delta, headers={"Idempotency-Key": "order-17"})
        assert_json_error(refused.status_code, refused.headers, refused.content, 422,
                          "reused key")
    retry = node.incr("k", 2, headers={"Idempotency-Key": "order-17"})
    assert retry.status_code == 200 and retry.json() == first.json()
    assert node.get("/counters").json()["counters"] == {"k": 2}
    poll(lambda: node.get("/healthz").status_code == 200, 5)
