"""HTTPS between clients and nodes and among nodes, with certificates made by the `openssl` CLI
at test time."""

import shutil
import socket
import ssl
import subprocess

import pytest
import requests

from dcounter.client import main as client_main
from tests.integration.harness import poll

pytestmark = pytest.mark.skipif(shutil.which("openssl") is None, reason="needs the openssl CLI")

SECRET = "tls-cluster-secret-" + "5" * 16


def openssl(*args, cwd):
    subprocess.run(["openssl", *args], cwd=cwd, check=True, capture_output=True, timeout=60)


@pytest.fixture(scope="module")
def certs(tmp_path_factory):
    """A private CA and one node certificate for localhost and 127.0.0.1, signed by it."""
    d = tmp_path_factory.mktemp("certs")
    ec = ["-newkey", "ec", "-pkeyopt", "ec_paramgen_curve:prime256v1", "-nodes"]
    openssl("req", "-x509", *ec, "-keyout", "ca.key", "-out", "ca.pem", "-days", "2",
            "-subj", "/CN=dcounter test CA",
            "-addext", "basicConstraints=critical,CA:TRUE",
            "-addext", "keyUsage=critical,keyCertSign,cRLSign", cwd=d)
    openssl("req", *ec, "-keyout", "node.key", "-out", "node.csr", "-subj", "/CN=localhost",
            cwd=d)
    (d / "ext.cnf").write_text(
        "subjectAltName=DNS:localhost,IP:127.0.0.1\n"
        "basicConstraints=critical,CA:FALSE\n"
        "keyUsage=critical,digitalSignature,keyEncipherment\n"
        "extendedKeyUsage=serverAuth,clientAuth\n"
        "authorityKeyIdentifier=keyid,issuer\n"
        "subjectKeyIdentifier=hash\n")
    openssl("x509", "-req", "-in", "node.csr", "-CA", "ca.pem", "-CAkey", "ca.key",
            "-CAcreateserial", "-out", "node.pem", "-days", "2", "-extfile", "ext.cnf", cwd=d)
    return {"ca": str(d / "ca.pem"), "cert": str(d / "node.pem"), "key": str(d / "node.key")}


def tls_node(cluster, name, certs, peers=(), ca=True, extra=()):
    flags = ["--tls-cert", certs["cert"], "--tls-key", certs["key"]]
    if ca:
        flags += ["--tls-ca", certs["ca"]]
    node = cluster.node(name, peers=list(peers), in_memory=True, extra=flags + list(extra))
    node.scheme = "https"
    node.session.verify = certs["ca"]
    return node


def test_a_tls_cluster_of_three_converges(cluster, certs):
    a = tls_node(cluster, "a", certs, extra=["--cluster-secret", SECRET]).start()
    b = tls_node(cluster, "b", certs, peers=[a.node_id],
                 extra=["--cluster-secret", SECRET]).start()
    c = tls_node(cluster, "c", certs, peers=[a.node_id],
                 extra=["--cluster-secret", SECRET]).start()
    cluster.wait_membership([a, b, c])
    for i in range(9):
        assert [a, b, c][i % 3].incr(delta=i + 1).status_code == 200
    assert cluster.wait_converged([a, b, c], 45) == 45

    # Plain HTTP on the TLS port gets no answer, and a client that does not trust the CA
    # refuses the node's certificate.
    with pytest.raises(requests.RequestException):
        requests.get(f"http://127.0.0.1:{a.port}/healthz", timeout=5)
    with pytest.raises(requests.exceptions.SSLError):
        requests.get(f"https://127.0.0.1:{a.port}/healthz", timeout=5)
    assert a.get("/healthz").status_code == 200


def test_without_tls_ca_peers_verify_against_the_public_cas(cluster, certs):
    """A node given no --tls-ca does not trust a private CA: its join fails on the
    certificate, and it never lists the other node."""
    a = tls_node(cluster, "a", certs).start()
    b = tls_node(cluster, "b", certs, peers=[a.node_id], ca=False).start()

    def join_refused_on_certificate():
        contacts = b.get("/status").json()["recent_contacts"]
        return any(not c["ok"] and "certificate not trusted" in c["detail"] for c in contacts)

    poll(join_refused_on_certificate, 15, message="b's join to fail certificate verification")
    assert b.nodes() == [] and a.nodes() == []


def test_a_trickled_tls_handshake_is_cut_off(cluster, certs):
    a = tls_node(cluster, "a", certs, extra=["--request-deadline", "1"]).start()
    client = ssl.create_default_context(cafile=certs["ca"])
    incoming, outgoing = ssl.MemoryBIO(), ssl.MemoryBIO()
    tls = client.wrap_bio(incoming, outgoing, server_hostname="localhost")
    with pytest.raises(ssl.SSLWantReadError):
        tls.do_handshake()
    hello = outgoing.read()
    assert len(hello) > 100
    sock = socket.create_connection(("127.0.0.1", a.port))
    try:
        cut = False
        for byte in hello[:-1]:  # never the whole ClientHello
            try:
                sock.sendall(bytes([byte]))
                sock.settimeout(0.1)
                if sock.recv(1) == b"":
                    cut = True
                    break
            except socket.timeout:
                continue
            except OSError:
                cut = True
                break
        assert cut, "the server waited for the whole trickled handshake"
    finally:
        sock.close()
    assert a.get("/healthz").status_code == 200


def test_connections_over_the_cap_get_a_503_over_tls(cluster, certs):
    a = tls_node(cluster, "a", certs, extra=["--max-connections", "2"]).start()
    client = ssl.create_default_context(cafile=certs["ca"])
    get = b"GET /healthz HTTP/1.1\r\nHost: localhost\r\n\r\n"

    def connect():
        raw = socket.create_connection(("127.0.0.1", a.port), timeout=5)
        return client.wrap_socket(raw, server_hostname="localhost")

    def answer(sock) -> bytes:
        data = b""
        while b"\r\n\r\n" not in data:
            chunk = sock.recv(4096)
            if not chunk:
                break
            data += chunk
        return data

    held = [connect() for _ in range(2)]
    refused = []
    try:
        for sock in held:
            sock.sendall(get)
            assert answer(sock).startswith(b"HTTP/1.1 200")
        for _ in range(5):
            sock = connect()
            refused.append(sock)
            sock.sendall(get)
            assert answer(sock).startswith(b"HTTP/1.1 503")
    finally:
        for sock in held + refused:
            sock.close()
    poll(lambda: a.get("/healthz").status_code == 200, 10,
         message="the node to serve again once connections are released")


# -- the dcounter command against TLS nodes -------------------------------------------------------

def dcounter(capsys, *argv, env=None):
    """(exit code, stdout, stderr) of the `dcounter` command, in-process."""
    code = client_main(list(argv), environ=dict(env or {}))
    out, err = capsys.readouterr()
    return code, out, err


def one_line(err: str) -> str:
    lines = err.strip().splitlines()
    assert len(lines) == 1 and lines[0].startswith("dcounter: error: "), err
    for jargon in ("Max retries", "SSLCertVerificationError", "HTTPSConnectionPool",
                   "Connection aborted", "_ssl.c"):
        assert jargon not in err
    return lines[0]


def test_the_command_explains_tls_failures_with_the_fix(cluster, certs, capsys):
    node = tls_node(cluster, "a", certs).start()
    plain = cluster.node("plain", in_memory=True).start()
    address = f"localhost:{node.port}"

    # The certificate is signed by a CA the command does not know.
    code, _, err = dcounter(capsys, "get", "--node", f"https://{address}")
    line = one_line(err)
    assert code == 1
    assert "certificate is not trusted" in line and "DCOUNTER_TLS_CA" in line
    # Not retried: a certificate does not become trusted by asking again.
    code, _, err = dcounter(capsys, "incr", "--node", f"https://{address}")
    assert code == 1 and "retrying" not in err and "DCOUNTER_TLS_CA" in one_line(err)

    # Plain http to a node that serves TLS.
    code, _, err = dcounter(capsys, "get", "--node", address)
    line = one_line(err)
    assert code == 1
    assert f"https://{address}" in line and "DCOUNTER_TLS_CA" in line

    # https to a node that serves plain http.
    code, _, err = dcounter(capsys, "get", "--node", f"localhost:{plain.port}",
                            env={"DCOUNTER_TLS_CA": certs["ca"]})
    line = one_line(err)
    assert code == 1
    assert "does not speak TLS" in line and f"http://localhost:{plain.port}" in line

    # A name the certificate was not issued for (when this machine's name reaches the node's
    # loopback address at all).
    code, _, err = dcounter(capsys, "get", "--node", f"https://{socket.gethostname()}:{node.port}",
                            env={"DCOUNTER_TLS_CA": certs["ca"]})
    assert code == 1
    if "TLS" in err:
        assert "certificate is not valid for that name" in one_line(err)

    # A CA file that does not exist is a usage error.
    code, _, err = dcounter(capsys, "get", "--node", address,
                            env={"DCOUNTER_TLS_CA": str(certs["ca"]) + ".missing"})
    assert code == 2 and "DCOUNTER_TLS_CA" in one_line(err)

    # With the CA it works.
    assert dcounter(capsys, "incr", "--node", address, "--by", "2",
                    env={"DCOUNTER_TLS_CA": certs["ca"]}) == (0, "default 2\n", "")
