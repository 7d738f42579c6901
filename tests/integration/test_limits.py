"""Limits on what one client can hold: request deadline, idle timeout, connection cap, body
size. Each test checks that the node keeps serving everybody else meanwhile."""

import socket
import threading

from dcounter import PROTOCOL
from tests.integration.harness import poll

GET = b"GET /healthz HTTP/1.1\r\nHost: x\r\n\r\n"


def trickle(port, head: bytes, drip: bytes, result: dict, interval=0.1):
    """Send `head`, then `drip` one byte per `interval` seconds; record whether the server
    closed the connection before we ran out of bytes."""
    sock = socket.create_connection(("127.0.0.1", port))
    result["cut"] = False
    try:
        sock.sendall(head)
        for byte in drip:
            try:
                sock.sendall(bytes([byte]))
                sock.settimeout(interval)
                if sock.recv(4096) == b"":
                    result["cut"] = True
                    return
            except socket.timeout:
                continue
            except OSError:
                result["cut"] = True
                return
    finally:
        sock.close()


def read_response(sock, timeout=5.0) -> bytes:
    """One whole response (head and Content-Length body); what arrived if the socket ends."""
    sock.settimeout(timeout)
    data = b""
    try:
        while b"\r\n\r\n" not in data:
            chunk = sock.recv(4096)
            if not chunk:
                return data
            data += chunk
        head, _, body = data.partition(b"\r\n\r\n")
        length = 0
        for line in head.split(b"\r\n")[1:]:
            name, _, value = line.partition(b":")
            if name.strip().lower() == b"content-length":
                length = int(value)
        while len(body) < length:
            chunk = sock.recv(4096)
            if not chunk:
                break
            body += chunk
        return head + b"\r\n\r\n" + body
    except OSError:
        return data


def test_slow_clients_are_cut_off_while_others_are_served(cluster):
    node = cluster.node("a", in_memory=True, extra=["--request-deadline", "1"]).start()
    header_result, body_result = {}, {}
    slow = [
        # Headers that never end: one byte every 0.1 s for 10 s.
        threading.Thread(target=trickle, args=(node.port, b"GET /healthz HTTP/1.1\r\n",
                                               b"X-Slow: " + b"a" * 100, header_result)),
        # A body that arrives at the same pace.
        threading.Thread(target=trickle, args=(
            node.port, b"POST /counter/increment HTTP/1.1\r\nHost: x\r\n"
                       b"Content-Type: application/json\r\nContent-Length: 108\r\n\r\n",
            b'{"delta": 1' + b" " * 97, body_result)),
    ]
    for thread in slow:
        thread.start()
    served = 0
    while any(thread.is_alive() for thread in slow):
        assert node.get("/healthz", timeout=2).status_code == 200
        assert node.incr(timeout=2).status_code == 200
        served += 1
    for thread in slow:
        thread.join(15)
    assert header_result["cut"] and body_result["cut"]
    assert served >= 1
    assert node.count() == served  # the cut-off increment counted for nothing


def test_idle_kept_alive_connections_are_closed(cluster):
    node = cluster.node("a", in_memory=True, extra=["--idle-timeout", "0.5"]).start()
    sock = socket.create_connection(("127.0.0.1", node.port))
    try:
        sock.sendall(GET)
        assert read_response(sock).startswith(b"HTTP/1.1 200")
        sock.settimeout(10)
        assert sock.recv(4096) == b""  # closed by the node after half a second of silence
    finally:
        sock.close()
    silent = socket.create_connection(("127.0.0.1", node.port))
    try:
        silent.settimeout(10)
        assert silent.recv(4096) == b""  # never sent a byte: closed too
    finally:
        silent.close()


def test_connections_beyond_the_cap_get_503_and_the_node_stays_responsive(cluster):
    node = cluster.node("a", in_memory=True, extra=["--max-connections", "4"]).start()
    held = [socket.create_connection(("127.0.0.1", node.port)) for _ in range(4)]
    try:
        # The held connections are served: each can make a request.
        for sock in held:
            sock.sendall(GET)
            assert read_response(sock).startswith(b"HTTP/1.1 200")

        def refused_with_503():
            with socket.create_connection(("127.0.0.1", node.port), timeout=5) as extra:
                extra.sendall(GET)
                return read_response(extra).startswith(b"HTTP/1.1 503")

        assert refused_with_503()
        # A burst of extra connections: each gets its 503 at once, none hangs.
        outcomes = []
        burst = [threading.Thread(target=lambda: outcomes.append(refused_with_503()))
                 for _ in range(30)]
        for thread in burst:
            thread.start()
        for thread in burst:
            thread.join(15)
        assert len(outcomes) == 30 and all(outcomes)
        # The held connections still work.
        held[0].sendall(GET)
        assert read_response(held[0]).startswith(b"HTTP/1.1 200")
    finally:
        for sock in held:
            sock.close()
    poll(lambda: node.get("/healthz").status_code == 200, 10,
         message="the node to serve again once connections are released")
    assert node.incr().status_code == 200 and node.count() == 1


def test_a_body_over_the_cap_gets_413_and_changes_nothing(cluster):
    node = cluster.node("a", in_memory=True, extra=["--max-body", "64"]).start()
    response = node.post("/counter/increment", {"delta": 1, "counter": "c" * 100})
    assert response.status_code == 413
    assert node.count() == 0
    assert node.get("/counters").json() == {"counters": {}}
    assert node.incr().status_code == 200


def test_joins_with_made_up_ids_list_at_most_max_peers(cluster):
    """Without a cluster secret anyone may join: 200 joins with made-up ids list at most
    --max-peers (64 by default) peers, each refused join gets a JSON 503, and the node keeps
    answering. The ids are loopback addresses nobody listens on, so contacting them fails fast."""
    node = cluster.node("a", in_memory=True).start()
    outcomes = {200: 0, 503: 0}
    for i in range(200):
        response = node.post("/nodes/join", {"node_id": f"127.77.{i // 100}.{i % 100 + 1}:9",
                                             "protocol": PROTOCOL, "origin": f"made-up-{i}"})
        assert response.status_code in outcomes, response.text
        outcomes[response.status_code] += 1
        if response.status_code == 503:
            assert "--max-peers" in response.json()["error"]
        if i % 20 == 0:
            assert len(node.nodes()) <= 64
    assert outcomes[200] >= 64 and outcomes[503] > 0
    assert len(node.nodes()) <= 64
    status = node.get("/status").json()
    assert len(status["replication"]) <= 64  # one sender per listed peer, no more
    assert len(status["candidates"]) <= 4 * 64
    assert node.get("/healthz").status_code == 200
    assert node.incr().status_code == 200 and node.count() == 1
