"""Member states seen through the `dcounter` command against real node processes: a member
killed by SIGKILL is failed, not gone, and `status` / `wait-converged` fail naming it until it
is back, has left, or is forgotten; `--expect`; `dcounter forget`."""

import json
import signal

import pytest

from dcounter.client import main
from tests.integration.harness import poll


def run(capsys, *argv):
    code = main(list(argv), environ={})
    out, err = capsys.readouterr()
    return code, out, err


def member_state(node, member):
    return node.get("/status").json()["members"].get(member, {}).get("state")


def test_a_killed_member_is_failed_and_fails_status_and_wait_converged(cluster, capsys):
    a, b, c = cluster.start(3)
    at_a = ["--node", a.node_id]
    assert a.incr().status_code == 200
    code, out, err = run(capsys, "wait-converged", *at_a, "--expect", "3", "--timeout", "30")
    assert (code, err) == (0, "")
    assert out.startswith("converged: 3 of 3 nodes agree (default=1)")
    poll(lambda: a.get("/status").json()["summary"] == "3 of 3 members up, all caught up",
         message="a's summary to show every member up")

    c.kill()  # SIGKILL: no goodbye
    poll(lambda: member_state(a, c.node_id) == "failed" and
         member_state(b, c.node_id) == "failed", 30, message="c to be failed at a and b")
    assert a.get("/status").json()["summary"].startswith(f"2 of 3 members up ({c.node_id} "
                                                         f"failed)")
    code, out, err = run(capsys, "status", *at_a, "--request-timeout", "1")
    assert code == 1, out + err
    row = next(line.split() for line in out.splitlines() if line.startswith(c.node_id))
    assert row[1] == "failed"
    holders = ", ".join(sorted([a.node_id, b.node_id]))
    assert f"{c.node_id}: connection refused (failed at {holders})" in out
    code, out, err = run(capsys, "wait-converged", *at_a, "--timeout", "1",
                         "--request-timeout", "0.5")
    assert code == 1 and "not converged after 1 s" in err and c.node_id in err
    code, out, _ = run(capsys, "status", *at_a, "--json")
    report = json.loads(out)
    assert code == 1 and report["agree"] is False
    assert {n["node"]: n["state"] for n in report["nodes"]}[c.node_id] == "failed"

    # Back on the same port with its data: a member again, and the cluster agrees.
    c.start()
    code, out, err = run(capsys, "wait-converged", *at_a, "--expect", "3", "--timeout", "30")
    assert code == 0, err
    assert out.startswith("converged: 3 of 3 nodes agree")


def test_a_lone_node_whose_only_seed_is_down_is_not_converged(cluster, capsys):
    seed = cluster.node("seed", in_memory=True).start()
    seed_id = seed.node_id
    seed.kill()
    lone = cluster.node("lone", in_memory=True, peers=[seed_id]).start()
    at = ["--node", lone.node_id]
    code, out, err = run(capsys, "wait-converged", *at, "--timeout", "1",
                         "--request-timeout", "0.5")
    assert code == 1 and seed_id in err, err
    code, out, err = run(capsys, "status", *at)
    assert code == 1
    row = next(line.split() for line in out.splitlines() if line.startswith(seed_id))
    assert row[1] == "failed"
    assert "DISAGREE:" in out and "not ready" in out
    seen = lone.get("/status").json()["members"][seed_id]
    assert {k: v for k, v in seen.items() if k != "error"} == {
        "state": "failed", "last_heard_seconds": None, "caught_up": None, "backlog": 0}
    assert seen["error"] is None or "Error" not in seen["error"]  # words, not a class name


def test_expect_fails_with_fewer_members(cluster, capsys):
    node = cluster.node("only", in_memory=True).start()
    at = ["--node", node.node_id]
    assert run(capsys, "status", *at, "--expect", "1")[0] == 0
    code, out, err = run(capsys, "status", *at, "--expect", "2")
    assert code == 1 and "expected 2 members to agree, 1 answered" in out
    code, out, err = run(capsys, "wait-converged", *at, "--expect", "2", "--timeout", "0.5")
    assert code == 1 and "expected 2 members to agree, 1 answered" in err
    assert run(capsys, "status", *at, "--expect", "0")[0] == 2


def test_a_member_that_leaves_is_left_not_missing(cluster, capsys):
    # A goodbye that timed out would rightly leave c failed: give it time on a loaded machine.
    a, b, c = cluster.start(3, extra=["--request-timeout", "4"])
    assert c.terminate() == 0  # SIGTERM: a graceful stop says goodbye
    poll(lambda: member_state(a, c.node_id) == "left" and member_state(b, c.node_id) == "left",
         30, message="c to be left at a and b")
    code, out, err = run(capsys, "wait-converged", "--node", a.node_id, "--expect", "2",
                         "--timeout", "30")
    assert code == 0, err
    assert out.rstrip().endswith("1 left")
    code, out, err = run(capsys, "status", "--node", a.node_id)
    assert code == 0, out + err
    row = next(line.split() for line in out.splitlines() if line.startswith(c.node_id))
    assert row[1] == "left"
    assert out.rstrip().endswith("agree: 2 nodes (1 left)")


def test_forget_removes_a_dead_member_on_every_node(cluster, capsys):
    a, b, c = cluster.start(3)
    at_a = ["--node", a.node_id]
    code, _, err = run(capsys, "forget", c.node_id, *at_a)
    assert code == 1 and "live member" in err
    code, _, err = run(capsys, "forget", "localhost:1", *at_a)
    assert code == 1 and "not a member" in err

    c.kill()
    poll(lambda: member_state(a, c.node_id) == "failed" and
         member_state(b, c.node_id) == "failed", 30, message="c to be failed at a and b")
    assert run(capsys, "status", *at_a)[0] == 1
    code, out, err = run(capsys, "forget", c.node_id, *at_a)
    assert (code, err) == (0, "")
    assert out == f"forgot {c.node_id} at {a.node_id} and {b.node_id}\n"
    for node in (a, b):
        status = node.get("/status").json()
        assert c.node_id not in status["members"] and c.node_id not in status["candidates"]
    code, out, err = run(capsys, "wait-converged", *at_a, "--expect", "2", "--timeout", "30")
    assert code == 0, err
    assert out.startswith("converged: 2 of 2 nodes agree")

    # A node that joins again directly is a member again.
    c.start()
    poll(lambda: member_state(a, c.node_id) == "alive" and member_state(b, c.node_id) == "alive",
         30, message="c to be a member again")
    assert run(capsys, "wait-converged", *at_a, "--expect", "3", "--timeout", "30")[0] == 0


def test_forget_names_the_peers_that_did_not_confirm_and_may_be_run_again(cluster, capsys):
    a, b, c = cluster.start(3, extra=["--peer-timeout", "4"])
    c.kill()
    poll(lambda: member_state(a, c.node_id) == "failed", 30, message="c to be failed at a")
    b.signal(signal.SIGSTOP)  # still listed at a for a few seconds, but not answering
    try:
        code, out, err = run(capsys, "forget", c.node_id, "--node", a.node_id)
    finally:
        b.signal(signal.SIGCONT)
    assert code == 1
    assert out == f"forgot {c.node_id} at {a.node_id}\n"
    assert f"not confirmed by {b.node_id} (no answer in time)" in err
    assert len(err.strip().splitlines()) == 1
    poll(lambda: member_state(a, b.node_id) == "alive", 30, message="b to be back at a")
    # Run again: a has forgotten c already, and tells b.
    code, out, err = run(capsys, "forget", c.node_id, "--node", a.node_id)
    assert (code, err) == (0, "")
    assert c.node_id not in b.get("/status").json()["members"]


@pytest.mark.parametrize("with_secret", [True, False], ids=["signed", "token"])
def test_forget_needs_the_client_token_and_is_passed_on(cluster, capsys, with_secret):
    # Passed on signed with the cluster secret, or with the client token when there is none.
    secret, token = "cluster-secret-for-tests-0123", "client-token-for-tests-0123"
    extra = ["--client-token", token] + (["--cluster-secret", secret] if with_secret else [])
    a, b, c = cluster.start(3, extra=extra)
    c.kill()
    poll(lambda: member_state(a, c.node_id) == "failed" and
         member_state(b, c.node_id) == "failed", 30, message="c to be failed at a and b")
    code, _, err = run(capsys, "forget", c.node_id, "--node", a.node_id)
    assert code == 1 and "answered 401" in err
    assert member_state(a, c.node_id) == "failed"
    code = main(["forget", c.node_id, "--node", a.node_id],
                environ={"DCOUNTER_CLIENT_TOKEN": token})
    out, err = capsys.readouterr()
    assert (code, err) == (0, ""), err
    assert out == f"forgot {c.node_id} at {a.node_id} and {b.node_id}\n"
    assert c.node_id not in b.get("/status").json()["members"]
