"""The Python client (`from dcounter import Client`) against real nodes: a retry after a lost
answer counts once, a node that refuses connections is skipped, errors are typed."""

import re
import shutil
import signal
import threading

import pytest

from dcounter import (Client, InvalidRequest, Refused, TLSFailure, Unauthorized, Unprocessable,
                      Unreachable)
from tests.integration.harness import poll
from tests.integration.test_tls import certs, tls_node  # noqa: F401 (a fixture, and its use)

TOKEN = "library-client-token-" + "7" * 16


def local_increments(node) -> int:
    """Increments this node counted itself (a replayed key is not one)."""
    text = node.get("/metrics").text
    match = re.search(r"^dcounter_increments_local_total (\d+)", text, re.M)
    return int(match.group(1)) if match else 0


def increments_asked(node) -> int:
    """Increments clients sent to this node (whatever the answer)."""
    text = node.get("/metrics").text
    return sum(int(n) for n in re.findall(
        r'^dcounter_http_requests_total\{route="/counter/increment",status="\d+"\} (\d+)',
        text, re.M))


def test_a_retry_after_a_lost_answer_goes_to_the_same_node_and_counts_once(cluster):
    a, b = cluster.start(2, in_memory=True)
    retries = []

    def resume(delay):
        # The first attempt sits in the stopped node's socket and timed out at the client: its
        # answer is lost. Let the node count it before the retry is sent, so the retry is
        # certainly a second delivery of an increment that counted.
        retries.append(delay)
        a.signal(signal.SIGCONT)
        poll(lambda: a.count() == 1, message="a to count the first attempt")

    client = Client([a.node_id, b.node_id], timeout=0.5, sleep=resume)
    a.signal(signal.SIGSTOP)
    try:
        assert client.incr() == 1
    finally:
        a.signal(signal.SIGCONT)
    assert len(retries) == 1
    cluster.wait_converged([a, b], 1)
    # Counted once (at a, or at b when b is the key's home), and the client never asked b.
    assert local_increments(a) + local_increments(b) == 1
    assert increments_asked(b) == 0
    client.close()


def test_after_a_lost_answer_the_write_fails_over_only_once_its_node_refuses(cluster):
    a, b = cluster.start(2, in_memory=True)
    attempts = []

    def kill_a(delay):
        attempts.append(delay)
        if a.alive:
            a.kill()  # the stopped node dies with the first attempt unread

    client = Client([a.node_id, b.node_id], timeout=0.5, sleep=kill_a)
    a.signal(signal.SIGSTOP)
    assert client.incr("c", 3) == 3
    # One retry at a (refused: a is down), then b at once, with no wait before it.
    assert len(attempts) == 1
    assert b.count("c") == 3 and local_increments(b) == 1


def test_a_node_that_refuses_connections_is_skipped_and_reads_follow(cluster):
    down = cluster.node("down", in_memory=True).start()
    down.kill()
    (b,) = cluster.start(1, in_memory=True)
    with Client([down.node_id, b.node_id], sleep=pytest.fail) as client:
        assert client.incr("apples", 2) == 2
        assert client.incr("apples", 3) == 5
        assert client.count("apples") == 5
        assert client.counters() == {"apples": 5}
    with pytest.raises(Unreachable) as info:
        Client([down.node_id], retries=0).count()
    assert "connection refused" in str(info.value) and info.value.sent is False


def test_a_client_shared_by_threads_counts_every_increment_once(cluster):
    (a,) = cluster.start(1, in_memory=True)
    client = Client(a.node_id)
    errors = []

    def work():
        try:
            for _ in range(25):
                client.incr("shared")
        except Exception as exc:  # reported below, in the test's thread
            errors.append(exc)

    threads = [threading.Thread(target=work) for _ in range(4)]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join(60)
    assert errors == [] and client.count("shared") == 100
    client.close()


def test_errors_are_typed(cluster):
    node = cluster.node("guarded", in_memory=True,
                        extra=["--client-token", TOKEN, "--protect-reads"]).start()
    with pytest.raises(Unauthorized) as info:
        Client(node.node_id).incr()
    assert info.value.status == 401 and info.value.maybe_counted is False

    client = Client(node.node_id, token=TOKEN)
    assert client.incr("x", 2, key="k-1") == 2
    assert client.incr("x", 2, key="k-1") == 2  # the same key: counted once
    with pytest.raises(Unprocessable) as info:
        client.incr("x", 5, key="k-1")  # the same key with another delta
    assert info.value.status == 422 and info.value.key == "k-1"

    # What the node refuses as malformed is an InvalidRequest, a ValueError too.
    with pytest.raises(InvalidRequest) as info:
        client.post("/counter/increment", {"counter": "x", "delta": 1, "colour": "red"})
    assert info.value.status == 400 and "colour" in info.value.message
    with pytest.raises(ValueError):
        client.get("/counter/count", params={"counter": "x", "colour": "red"})
    # ... and what the client can tell is refused before anything is sent.
    with pytest.raises(InvalidRequest):
        client.incr("no spaces")
    assert client.counters() == {"x": 2}
    client.close()


def test_a_read_of_the_whole_cluster(cluster):
    a, b = cluster.start(2, in_memory=True)
    Client(b.node_id).incr("c", 5)
    # Covers b's increment whether or not it has reached a yet.
    assert Client(a.node_id).count("c", consistency="all") == 5
    cluster.wait_converged([a, b], 5, counter="c")
    assert Client(a.node_id).count("c") == 5


def test_incr_many(cluster):
    (a,) = cluster.start(1, in_memory=True)
    client = Client(a.node_id)
    try:
        result = client.incr_many({"apples": 2, "pears": -1}, key="basket-1")
    except Refused as exc:
        if exc.status == 404:
            pytest.skip("this node has no POST /counter/increments yet")
        raise
    assert result == {"apples": 2, "pears": -1}
    assert client.incr_many([("apples", 2), ("pears", -1)], key="basket-1") == result
    assert client.counters() == {"apples": 2, "pears": -1}


@pytest.mark.skipif(shutil.which("openssl") is None, reason="needs the openssl CLI")
def test_https_with_the_ca_and_a_tls_failure_without(cluster, certs):
    node = tls_node(cluster, "tls", certs).start()
    address = f"localhost:{node.port}"
    assert Client(address, ca=certs["ca"]).incr(delta=2) == 2  # https because of the CA
    assert Client(f"https://{address}", ca=certs["ca"]).count() == 2
    with pytest.raises(TLSFailure, match="not trusted"):
        Client(f"https://{address}").count()  # the system's CAs do not know this one
