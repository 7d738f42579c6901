"""`dcounter import-original` against a tiny stand-in for an original node (http.server on
loopback, answering `GET /counter/count` with `{"count": N}` as the original system does) and a
real dcounter node."""

import json
import threading
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer

import pytest

from dcounter.client import main


class Original:
    """Serves `{"count": count}` (or `body`, when set) on GET /counter/count."""

    def __init__(self):
        self.count = 0
        self.body = None
        self.requests = []
        original = self

        class Handler(BaseHTTPRequestHandler):
            def do_GET(self):
                original.requests.append((self.path, self.headers.get("Authorization")))
                if self.path != "/counter/count":
                    self.send_error(404)
                    return
                body = original.body or json.dumps({"count": original.count}).encode()
                self.send_response(200)
                self.send_header("Content-Type", "application/json")
                self.send_header("Content-Length", str(len(body)))
                self.end_headers()
                self.wfile.write(body)

            def log_message(self, *args):
                pass

        self.server = ThreadingHTTPServer(("127.0.0.1", 0), Handler)
        self.address = f"127.0.0.1:{self.server.server_address[1]}"
        self.thread = threading.Thread(target=self.server.serve_forever, daemon=True)
        self.thread.start()

    def close(self):
        self.server.shutdown()
        self.server.server_close()


@pytest.fixture
def original():
    server = Original()
    yield server
    server.close()


def run(capsys, *argv, env=None):
    code = main(list(argv), environ=dict(env or {}))
    out, err = capsys.readouterr()
    return code, out, err


def test_importing_twice_counts_once(cluster, original, capsys):
    a, b = cluster.start(2, in_memory=True)
    assert a.incr().status_code == 200  # dcounter's own increments stay
    original.count = 1234
    code, out, err = run(capsys, "import-original", "--from", original.address,
                         "--node", a.node_id)
    assert (code, err) == (0, "")
    assert out == f"imported 1234 from {original.address}: default 1235\n"
    code, out, err = run(capsys, "import-original", "--from", original.address,
                         "--node", a.node_id, "--json")
    result = json.loads(out)
    assert code == 0 and result["replayed"] is True and result["imported"] == 0
    assert result["key"] == f"import-original:{original.address}:1234"
    cluster.wait_converged([a, b], 1235)
    assert a.count() == 1235
    assert original.requests == [("/counter/count", None)] * 2  # no dcounter token sent there


def test_import_into_a_named_counter_with_the_client_token(cluster, original, capsys):
    token = "t" * 32
    (a,) = cluster.start(1, in_memory=True, extra=["--client-token", token])
    original.count = -7
    env = {"DCOUNTER_CLIENT_TOKEN": token, "DCOUNTER_NODE": a.node_id}
    code, out, err = run(capsys, "import-original", "--from", "http://" + original.address,
                         "--counter", "signups", env=env)
    assert (code, out, err) == (0, f"imported -7 from {original.address}: signups -7\n", "")
    assert a.count("signups") == -7
    assert original.requests == [("/counter/count", None)]


def test_nothing_to_import_and_answers_that_are_not_a_count(cluster, original, capsys):
    (a,) = cluster.start(1, in_memory=True)
    at_a = ["--node", a.node_id]
    code, out, err = run(capsys, "import-original", "--from", original.address, *at_a)
    assert (code, err) == (0, "") and "nothing to import" in out
    for body in (b'{"count": "12"}', b'{"count": true}', b"[]", b"not json", b'{"n": 3}',
                 b'{"count": 9007199254740992}'):
        original.body = body
        code, out, err = run(capsys, "import-original", "--from", original.address, *at_a)
        assert code == 1 and out == ""
        assert err.startswith("dcounter: error: ") and len(err.strip().splitlines()) == 1
    assert a.get("/counters").json()["counters"] == {}


def test_bad_or_unreachable_sources_are_one_line_errors(cluster, capsys):
    (a,) = cluster.start(1, in_memory=True)
    assert run(capsys, "import-original", "--node", a.node_id)[0] == 2  # --from is required
    for source in ("nohost", "host:0", "host:http", "ftp://host:80", "host:80/path"):
        code, out, err = run(capsys, "import-original", "--from", source, "--node", a.node_id)
        assert code == 1 and err.startswith("dcounter: error: --from"), (source, err)
    code, out, err = run(capsys, "import-original", "--from", "127.0.0.1:1", "--node",
                         a.node_id, "--request-timeout", "2")
    assert code == 1 and "127.0.0.1:1" in err and len(err.strip().splitlines()) == 1
    assert a.get("/counters").json()["counters"] == {}
