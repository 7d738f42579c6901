"""What a misconfigured cluster says at the default log level, read from real node processes:
a WARNING on each side that names the peer and the cause in words, repeated with backoff
rather than at every attempt; joins logged once; `--log-format json` for log shippers.

"A bounded number of times" is checked against the caller's own count of failed joins
(`/metrics`), not against a wall-clock wait: once a node has retried many times, its log still
holds one warning per peer and cause (the next is due a minute later).
"""

import json
import re
import shutil
import socket

import pytest

from tests.integration.harness import poll

SECRET_A = "warnings-secret-" + "a" * 20
SECRET_B = "warnings-secret-" + "b" * 20
ATTEMPTS = 8  # failed joins to wait for; with the harness' retry timings about 2-3 s


def warnings(node, *words) -> list[str]:
    return [line for line in node.stderr().splitlines()
            if " WARNING " in line and all(word in line for word in words)]


def failed_joins(node) -> int:
    text = node.get("/metrics").text
    return sum(int(float(line.rsplit(" ", 1)[1])) for line in text.splitlines()
               if line.startswith("dcounter_peer_requests_total{")
               and 'path="/nodes/join"' in line and 'outcome="failed"' in line)


def wait_failed_joins(node, count=ATTEMPTS, timeout=30.0) -> None:
    poll(lambda: failed_joins(node) >= count, timeout,
         message=f"{node.name} to fail {count} joins")


def test_different_cluster_secrets_are_named_on_both_sides_once(cluster):
    a = cluster.node("a", in_memory=True, extra=["--cluster-secret", SECRET_A]).start()
    b = cluster.node("b", in_memory=True, peers=[a.node_id],
                     extra=["--cluster-secret", SECRET_B]).start()
    wait_failed_joins(b)
    caller = warnings(b, f"peer {a.node_id} refused our signature: do the nodes share "
                         "--cluster-secret and a clock within --max-clock-skew?")
    refuser = warnings(a, b.node_id, "signed with another secret", "--cluster-secret")
    assert len(caller) == 1, b.stderr()
    assert len(refuser) == 1, a.stderr()
    assert a.nodes() == [] and b.nodes() == []


def test_an_unreachable_seed_is_named_once_with_the_cause(cluster):
    with socket.socket() as held:  # bound and never listening: every connection is refused
        held.bind(("127.0.0.1", 0))
        seed = f"localhost:{held.getsockname()[1]}"
        b = cluster.node("b", in_memory=True, peers=[seed]).start()
        wait_failed_joins(b)
        lines = warnings(b, f"seed {seed} unreachable: connection refused")
    assert len(lines) == 1, b.stderr()
    assert len(warnings(b)) == 1, b.stderr()


def test_another_cluster_is_named_on_both_sides_once(cluster):
    a = cluster.node("a", in_memory=True, extra=["--cluster", "alpha"]).start()
    b = cluster.node("b", in_memory=True, peers=[a.node_id], extra=["--cluster", "beta"]).start()
    wait_failed_joins(b)
    caller = warnings(b, f"peer {a.node_id} refused us", "'alpha'", "--cluster")
    refuser = warnings(a, f"refused {b.node_id}", "'beta'", "--cluster")
    assert len(caller) == 1, b.stderr()
    assert len(refuser) == 1, a.stderr()


def joined_lines(node) -> list[str]:
    return [line for line in node.stderr().splitlines() if "joined" in line]


def test_a_join_is_logged_once_on_each_side(cluster):
    a, b = cluster.start(2, in_memory=True)
    poll(lambda: joined_lines(a) and joined_lines(b), 10, message="both joins logged")
    # A few heartbeats later: still one line each.
    wait_heartbeats(b, 5)
    # "joined A" as a rule; "peer A joined" when a's first heartbeat overtakes the join reply.
    assert len(joined_lines(b)) == 1 and a.node_id in joined_lines(b)[0], b.stderr()
    assert len(joined_lines(a)) == 1 and f"peer {b.node_id} joined" in a.stderr(), a.stderr()


def wait_heartbeats(node, count):
    def sent():
        text = node.get("/metrics").text
        return sum(int(float(line.rsplit(" ", 1)[1])) for line in text.splitlines()
                   if line.startswith("dcounter_peer_requests_total{")
                   and 'path="/nodes/heartbeat"' in line) >= count
    poll(sent, 15, message=f"{node.name} to send {count} heartbeats")


def test_a_listing_refused_past_max_peers_is_not_logged_as_joined(cluster):
    a = cluster.node("a", in_memory=True).start()
    c = cluster.node("c", in_memory=True).start()
    b = cluster.node("b", in_memory=True, peers=[a.node_id, c.node_id],
                     extra=["--max-peers", "1"]).start()
    poll(lambda: warnings(b, "--max-peers"), 15, message="b to say it lists no more peers")
    listed = b.nodes()
    assert len(listed) == 1
    other = ({a.node_id, c.node_id} - set(listed)).pop()
    assert f"joined {other}" not in b.stderr(), b.stderr()
    assert len(joined_lines(b)) == 1, b.stderr()
    assert other in warnings(b, "--max-peers")[0]


def test_urllib3_connection_chatter_stays_out_of_debug_logs(cluster):
    with socket.socket() as held:
        held.bind(("127.0.0.1", 0))
        a = cluster.node("a", in_memory=True, extra=["--log-level", "debug"]).start()
        b = cluster.node("b", in_memory=True,
                         peers=[a.node_id, f"localhost:{held.getsockname()[1]}"],
                         extra=["--log-level", "debug"]).start()
        cluster.wait_membership([a, b])
        wait_heartbeats(b, 3)
        wait_failed_joins(b, 3)
    assert " DEBUG dcounter.node: join " in b.stderr()  # debug is on
    assert "urllib3" not in b.stderr() and "urllib3" not in a.stderr()


def test_json_logs_are_one_object_a_line(cluster):
    with socket.socket() as held:
        held.bind(("127.0.0.1", 0))
        seed = f"localhost:{held.getsockname()[1]}"
        a = cluster.node("a", in_memory=True, peers=[seed],
                         extra=["--log-format", "json", "--log-level", "debug"])
        a.start(wait=False)

        def records():
            lines = (a.stdout() + a.stderr()).splitlines()
            return [json.loads(line) for line in lines if line.strip()]
        started = poll(lambda: [r for r in records() if "listening on" in r["message"]], 15,
                       message="the listening line")[0]
        a.port = int(re.search(r":(\d+) ", started["message"]).group(1))
        poll(lambda: [r for r in records() if r["level"] == "WARNING"], 15,
             message="a warning about the seed")
        assert a.terminate() == 0
    every = records()
    for line in (a.stdout() + a.stderr()).splitlines():
        assert line.strip() and isinstance(json.loads(line), dict), line
    for record in every:
        assert {"time", "level", "logger", "message"} <= set(record), record
    warning = [r for r in every if r["level"] == "WARNING"][0]
    assert warning["logger"].startswith("dcounter") and seed in warning["message"]
    assert "connection refused" in warning["message"]
    assert any(r["message"] == "shutting down" for r in every)


# -- TLS -----------------------------------------------------------------------------------------

needs_openssl = pytest.mark.skipif(shutil.which("openssl") is None, reason="needs the openssl CLI")


@pytest.fixture(scope="module")
def two_cas(tmp_path_factory):
    """A node certificate signed by one CA, and another CA that did not sign it."""
    from tests.integration.test_tls import openssl
    d = tmp_path_factory.mktemp("warn-certs")
    ec = ["-newkey", "ec", "-pkeyopt", "ec_paramgen_curve:prime256v1", "-nodes"]
    for ca in ("ca", "other"):
        openssl("req", "-x509", *ec, "-keyout", f"{ca}.key", "-out", f"{ca}.pem", "-days", "2",
                "-subj", f"/CN=dcounter {ca} CA", "-addext", "basicConstraints=critical,CA:TRUE",
                "-addext", "keyUsage=critical,keyCertSign,cRLSign", cwd=d)
    openssl("req", *ec, "-keyout", "node.key", "-out", "node.csr", "-subj", "/CN=localhost",
            cwd=d)
    (d / "ext.cnf").write_text("subjectAltName=DNS:localhost,IP:127.0.0.1\n"
                               "basicConstraints=critical,CA:FALSE\n"
                               "extendedKeyUsage=serverAuth,clientAuth\n")
    openssl("x509", "-req", "-in", "node.csr", "-CA", "ca.pem", "-CAkey", "ca.key",
            "-CAcreateserial", "-out", "node.pem", "-days", "2", "-extfile", "ext.cnf", cwd=d)
    return {"cert": str(d / "node.pem"), "key": str(d / "node.key"), "ca": str(d / "ca.pem"),
            "other": str(d / "other.pem")}


@needs_openssl
def test_an_untrusted_certificate_is_named_on_both_sides_once(cluster, two_cas):
    tls = ["--tls-cert", two_cas["cert"], "--tls-key", two_cas["key"]]
    a = cluster.node("a", in_memory=True, extra=tls + ["--tls-ca", two_cas["ca"]])
    a.scheme, a.session.verify = "https", two_cas["ca"]
    a.start()
    b = cluster.node("b", in_memory=True, peers=[a.node_id],
                     extra=tls + ["--tls-ca", two_cas["other"]])
    b.scheme, b.session.verify = "https", two_cas["ca"]
    b.start()
    wait_failed_joins(b)
    caller = warnings(b, f"seed {a.node_id} unreachable: certificate not trusted: set --tls-ca")
    refuser = warnings(a, "does not trust this node's certificate", "--tls-ca")
    assert len(caller) == 1, b.stderr()
    assert len(refuser) == 1, a.stderr()
    assert a.nodes() == [] and b.nodes() == []
