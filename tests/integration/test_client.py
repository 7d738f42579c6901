"""The `dcounter` command, called in-process (`dcounter.client.main`) against real nodes."""

import dataclasses
import json
import signal
import threading
import time

import pytest

from dcounter.client import main
from dcounter.config import Config
from tests.integration.harness import poll


def run(capsys, *argv, env=None):
    """(exit code, stdout, stderr) of one command; the caller's environment is not used."""
    code = main(list(argv), environ=dict(env or {}))
    out, err = capsys.readouterr()
    return code, out, err


def assert_one_line_error(err: str) -> None:
    lines = err.strip().splitlines()
    assert len(lines) == 1 and lines[0].startswith("dcounter: error: "), err
    assert "Traceback" not in err


def test_incr_get_counters_nodes(cluster, capsys):
    a, b = cluster.start(2, in_memory=True)
    at_a = ["--node", a.node_id]

    assert run(capsys, "incr", *at_a, "--counter", "apples", "--by", "3") == \
        (0, "apples 3\n", "")
    code, out, _ = run(capsys, "incr", *at_a, "--counter", "apples", "--key", "k-1", "--json")
    first = json.loads(out)
    assert code == 0 and first["count"] == 4 and first["key"] == "k-1"
    assert first["replayed"] is False
    # The same key again counts once.
    code, out, _ = run(capsys, "incr", *at_a, "--counter", "apples", "--key", "k-1", "--json")
    again = json.loads(out)
    assert code == 0 and again["replayed"] is True and again["event_id"] == first["event_id"]
    assert run(capsys, "incr", *at_a)[0] == 0  # the default counter, by 1

    cluster.wait_converged([a, b], 4, counter="apples")
    cluster.wait_converged([a, b], 1)  # the default counter's increment may still be on its way
    # DCOUNTER_NODE instead of --node, and http:// spelled out.
    env = {"DCOUNTER_NODE": f"http://127.0.0.1:{b.port}"}
    assert run(capsys, "get", "--counter", "apples", env=env) == (0, "4\n", "")
    code, out, _ = run(capsys, "get", "--json", env=env)
    assert code == 0 and json.loads(out) == {"counter": "default", "count": 1}

    code, out, _ = run(capsys, "counters", "--node", b.node_id)
    assert code == 0 and out.split("\n") == ["apples   4", "default  1", ""]
    code, out, _ = run(capsys, "counters", "--node", b.node_id, "--json")
    assert json.loads(out) == {"counters": {"apples": 4, "default": 1}}

    assert run(capsys, "nodes", *at_a) == (0, f"{b.node_id}\n", "")
    code, out, _ = run(capsys, "nodes", "--json", *at_a)
    assert code == 0 and json.loads(out) == [b.node_id]


def test_incr_retries_a_paused_node_with_the_same_key_and_counts_once(cluster, capsys):
    node = cluster.node("paused", in_memory=True).start()
    node.signal(signal.SIGSTOP)
    resume = threading.Timer(1.5, node.signal, args=(signal.SIGCONT,))
    resume.start()
    try:
        code, out, err = run(capsys, "incr", "--node", node.node_id, "--request-timeout", "0.5",
                             "--retries", "8")
    finally:
        resume.cancel()
        node.signal(signal.SIGCONT)
    assert code == 0, err
    assert "retrying with the same key" in err
    assert out == "default 1\n"
    # Every attempt reached the node (the first ones while it was paused); one counted.
    deadline = time.monotonic() + 1.0
    while time.monotonic() < deadline:
        assert node.count() == 1
        time.sleep(0.1)


def test_status_exits_1_while_nodes_disagree_and_0_once_converged(cluster, capsys):
    # `green` lists `blue` as its seed, but blue is another cluster and refuses it: two nodes
    # that know of each other and cannot exchange events, with different counts.
    blue = cluster.node("blue", extra=["--cluster", "blue"]).start()
    green = cluster.node("green", peers=[blue.node_id], extra=["--cluster", "green"]).start()
    assert blue.incr().status_code == 200
    assert green.incr(delta=2).status_code == 200
    poll(lambda: green.get("/status").json()["candidates"][blue.node_id]["attempts"] >= 1, 15,
         message="green to try its seed")
    at_green = ["--node", green.node_id]

    code, out, err = run(capsys, "status", *at_green)
    assert code == 1, out + err
    lines = out.splitlines()
    assert lines[0].split() == ["NODE", "STATE", "default", "PEERS", "BACKLOG"]
    rows = {line.split()[0]: line.split() for line in lines[1:3]}
    assert rows[blue.node_id][2] == "1" and rows[green.node_id][2] == "2"
    assert "DISAGREE:" in out
    assert f"default: {blue.node_id}=1, {green.node_id}=2" in out or \
        f"default: {green.node_id}=2, {blue.node_id}=1" in out
    assert "cluster names differ" in out

    code, out, _ = run(capsys, "status", *at_green, "--json")
    report = json.loads(out)
    assert code == 1 and report["agree"] is False
    assert {n["node"]: n["counters"] for n in report["nodes"]} == {
        blue.node_id: {"default": 1}, green.node_id: {"default": 2}}

    code, _, err = run(capsys, "wait-converged", *at_green, "--timeout", "0.5")
    assert code == 1 and "not converged after 0.5 s" in err

    # Blue comes back on the same port and data in green's cluster; green's rejoin attempts
    # reach it and anti-entropy brings both to 3.
    blue.terminate()
    blue.restart(extra=["--cluster", "green"])
    code, out, err = run(capsys, "wait-converged", *at_green, "--timeout", "30")
    assert code == 0, err
    assert out.startswith("converged: 2 of 2 nodes agree (default=3)")
    code, out, _ = run(capsys, "status", *at_green)
    assert code == 0, out
    assert out.rstrip().endswith("agree: 2 nodes")
    assert blue.count() == green.count() == 3


def test_status_exits_1_when_a_listed_peer_does_not_answer(cluster, capsys):
    a, b = cluster.start(2, in_memory=True, extra=["--peer-timeout", "60"])
    assert run(capsys, "status", "--node", a.node_id)[0] == 0
    b.signal(signal.SIGSTOP)
    try:
        code, out, _ = run(capsys, "status", "--node", a.node_id, "--request-timeout", "0.5")
    finally:
        b.signal(signal.SIGCONT)
    assert code == 1
    row = next(line.split() for line in out.splitlines() if line.startswith(b.node_id))
    assert row[1] == "unreachable"
    assert f"{b.node_id}: no answer in time" in out


def test_errors_are_one_line(cluster, capsys):
    node = cluster.node("one", in_memory=True).start()
    down = cluster.node("down", in_memory=True).start()
    down.kill()

    code, _, err = run(capsys, "get", "--node", down.node_id)
    assert code == 1
    assert_one_line_error(err)
    assert "connection refused" in err

    code, _, err = run(capsys, "status", "--node", down.node_id)
    assert code == 1
    assert_one_line_error(err)

    # What the node would refuse anyway is a usage error, found before anything is sent.
    for argv, words in [(["incr", "--by", "0"], "--by: must not be 0"),
                        (["incr", "--by", str(2**53)], "--by: must be within"),
                        (["incr", "--key", " "], "--key: must be 1-255 printable ASCII"),
                        (["get", "--counter", "no spaces"], "--counter: must be 1-128"),
                        (["incr", "--counter", ""], "--counter: must be 1-128"),
                        (["status", "--counter", "a/b"], "--counter: must be 1-128")]:
        code, _, err = run(capsys, *argv, "--node", node.node_id)
        assert code == 2, (argv, err)
        assert_one_line_error(err)
        assert words in err, err
    assert node.get("/counters").json() == {"counters": {}}

    for argv in (["frobnicate"], [], ["incr", "--by", "x"], ["get", "--node", "ftp://x:1"],
                 ["wait-converged", "--timeout", "-1"]):
        code, _, err = run(capsys, *argv)
        assert code == 2, argv
        assert_one_line_error(err)


@pytest.mark.skipif("client_token" not in {f.name for f in dataclasses.fields(Config)},
                    reason="this node has no --client-token")
def test_the_client_token_comes_from_the_environment(cluster, capsys):
    token = "s3cret-token-for-tests"
    node = cluster.node("guarded", in_memory=True,
                        extra=["--client-token", token, "--protect-reads"]).start()
    at = ["--node", node.node_id]
    code, _, err = run(capsys, "incr", *at)
    assert code == 1 and "answered 401" in err
    assert run(capsys, "incr", *at, env={"DCOUNTER_CLIENT_TOKEN": token}) == (0, "default 1\n", "")
    assert run(capsys, "get", *at, env={"DCOUNTER_CLIENT_TOKEN": token}) == (0, "1\n", "")
    assert run(capsys, "status", *at, env={"DCOUNTER_CLIENT_TOKEN": token})[0] == 0


def test_status_shows_every_counters_value(cluster, capsys):
    a, b = cluster.start(2, in_memory=True)
    names = ["c1", "c2", "c3", "c4", "c5", "c6"]
    for i, name in enumerate(names):
        assert a.incr(name, i + 1).status_code == 200
    cluster.wait_converged([a, b], 6, counter="c6")
    code, out, err = run(capsys, "wait-converged", "--node", a.node_id, "--timeout", "30")
    assert code == 0, err
    code, out, err = run(capsys, "status", "--node", a.node_id)
    assert code == 0, out + err
    lines = out.splitlines()
    at = lines.index(next(line for line in lines if line.split()[:2] == ["COUNTER", "VALUE"]))
    assert [line.split() for line in lines[at + 1:at + 7]] == \
        [[name, str(i + 1)] for i, name in enumerate(names)]
