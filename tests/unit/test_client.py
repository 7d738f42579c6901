"""The `dcounter` command's pure parts: where it connects, what it sends, how it compares."""

import subprocess
import sys
from pathlib import Path

from dcounter.client import build_parser, make_client
from dcounter.display import format_survey
from dcounter.survey import NodeView, Survey, _disagreements

ROOT = Path(__file__).resolve().parents[2]


def client_for(argv, environ):
    args = build_parser().parse_args(argv)
    return make_client(args, environ), args


def test_the_node_comes_from_the_flag_the_environment_or_the_default():
    client, args = client_for(["get"], {})
    assert args.node == "localhost:8080" and client.url(args.node, "/x") == \
        "http://localhost:8080/x"
    client, args = client_for(["get"], {"DCOUNTER_NODE": "vm1:9000"})
    assert client.url(args.node, "/x") == "http://vm1:9000/x"
    # Options before or after the subcommand.
    client, args = client_for(["--node", "a:1", "get"], {"DCOUNTER_NODE": "vm1:9000"})
    assert args.node == "a:1"
    client, args = client_for(["get", "--node", "b:2", "--json"], {})
    assert args.node == "b:2" and args.json is True


def test_https_with_a_ca_file_or_an_https_url_and_the_token_as_bearer(tmp_path):
    ca = tmp_path / "ca.pem"
    ca.write_text("")
    client, args = client_for(["get", "--node", "vm1:8080"],
                              {"DCOUNTER_TLS_CA": str(ca), "DCOUNTER_CLIENT_TOKEN": "tok"})
    assert client.url(args.node, "/status") == "https://vm1:8080/status"
    assert client.url("vm2:8080", "/status") == "https://vm2:8080/status"
    assert client.verify == str(ca)
    assert client._session().headers["Authorization"] == "Bearer tok"
    client, args = client_for(["get", "--node", "https://vm1:8080/"], {})
    assert client.url(args.node, "/status") == "https://vm1:8080/status"
    assert client.url("vm2:8080", "/status") == "https://vm2:8080/status"
    assert client.verify is True
    assert "Authorization" not in client._session().headers


def view(node, counters, digest=None, listed_alive=True, cluster="default"):
    return NodeView(node, node, listed_alive,
                    status={"node_id": node, "cluster": cluster, "counters": counters,
                            "digest": digest or {"o": 1}, "peers": {}, "replication": {},
                            "ready": {"ready": True, "reason": ""}})


def test_agreement_needs_equal_counts_and_equal_digests():
    assert _disagreements([view("a:1", {"x": 1}), view("b:1", {"x": 1, "y": 0})]) == []
    assert _disagreements([view("a:1", {"x": 1}), view("b:1", {"x": 2})]) == \
        ["x: a:1=1, b:1=2"]
    # The same totals from different events: not converged yet.
    problems = _disagreements([view("a:1", {"x": 1}, {"o1": 1}),
                               view("b:1", {"x": 1}, {"o2": 1})])
    assert problems and "not every node has seen the same events" in problems[0]
    down_member = NodeView("c:1", "c:1", True, error="c:1: no answer in time")
    down_candidate = NodeView("d:1", "d:1", False, error="d:1: connection refused")
    assert _disagreements([view("a:1", {"x": 1}), down_member]) == ["c:1: no answer in time"]
    assert _disagreements([view("a:1", {"x": 1}), down_candidate]) == []


def test_status_table():
    survey = Survey(nodes=[view("a:1", {"x": 1}), view("b:22", {"x": 2}),
                           NodeView("c:1", "c:1", True, error="c:1: no answer in time")])
    survey.problems = _disagreements(survey.nodes)
    assert format_survey(survey, None).splitlines() == [
        "NODE  STATE        x  PEERS  BACKLOG",
        "a:1   ok           1      0        0",
        "b:22  ok           2      0        0",
        "c:1   unreachable  -      -        -",
        "DISAGREE:",
        "  c:1: no answer in time",
        "  x: a:1=1, b:22=2",
    ]


def test_status_lists_the_values_of_counters_too_many_for_columns():
    many = {f"c{i}": i for i in range(1, 7)}
    survey = Survey(nodes=[view("a:1", many), view("b:1", {**many, "c6": 5})])
    survey.problems = _disagreements(survey.nodes)
    assert format_survey(survey, None).splitlines() == [
        "NODE  STATE  COUNTERS  PEERS  BACKLOG",
        "a:1   ok            6      0        0",
        "b:1   ok            6      0        0",
        "",
        "COUNTER    VALUE",
        "c1             1",
        "c2             2",
        "c3             3",
        "c4             4",
        "c5             5",
        "c6       differs",
        "DISAGREE:",
        "  c6: a:1=6, b:1=5",
    ]


def test_bin_dcounter_runs_from_a_checkout():
    result = subprocess.run([sys.executable, str(ROOT / "bin" / "dcounter"), "--version"],
                            capture_output=True, text=True, timeout=30)
    assert result.returncode == 0 and result.stdout.startswith("dcounter ")


def test_numeric_options_take_ascii_digits_only():
    import pytest

    from dcounter.client import _UsageError
    for argv in (["incr", "--retries", "３"], ["incr", "--retries", "٣"],
                 ["incr", "--retries", "1_0"], ["--request-timeout", "٢", "get"],
                 ["--request-timeout", "inf", "get"], ["--request-timeout", "nan", "get"]):
        with pytest.raises(_UsageError, match="not a number|not an integer"):
            build_parser().parse_args(argv)
    assert build_parser().parse_args(["incr", "--retries", "3"]).retries == 3


def with_members(node_view, members=None, ready=True, reason=""):
    node_view.status["members"] = members or {}
    node_view.status["ready"] = {"ready": ready, "reason": reason}
    return node_view


def judged(nodes, expect=None) -> Survey:
    from dcounter.survey import _judge_members, check_expected
    survey = Survey(nodes=nodes)
    _judge_members(survey)
    survey.problems = _disagreements(survey.nodes)
    check_expected(survey, expect)
    return survey


def test_a_member_failed_at_a_node_is_missing_even_as_a_rejoin_candidate():
    a = with_members(view("a:1", {"x": 1}), {"c:1": {"state": "failed"}})
    down = NodeView("c:1", "c:1", False, error="c:1: connection refused")
    survey = judged([a, down])
    assert survey.problems == ["c:1: connection refused (failed at a:1)"]
    assert format_survey(survey, None).splitlines()[2].split() == ["c:1", "failed", "-", "-",
                                                                   "-"]
    # Reachable from here, but failed at a node: still missing.
    c = with_members(view("c:1", {"x": 1}))
    assert judged([a, c]).problems == ["c:1: answers, but is failed at a:1"]


def test_a_member_that_left_is_shown_not_counted():
    a = with_members(view("a:1", {"x": 1}), {"b:1": {"state": "alive"}, "c:1": {"state": "left"}})
    b = with_members(view("b:1", {"x": 1}), {"a:1": {"state": "alive"}, "c:1": {"state": "left"}})
    survey = judged([a, b])
    assert survey.agree and survey.left == ["c:1"]
    lines = format_survey(survey, None).splitlines()
    assert lines[3].split() == ["c:1", "left", "-", "-", "-"]
    assert lines[-1] == "agree: 2 nodes (1 left)"


def test_a_member_not_ready_or_behind_is_a_disagreement():
    a = with_members(view("a:1", {"x": 1}, {"o1": 2}))
    b = with_members(view("b:1", {"x": 1}, {"o1": 2}), ready=False,
                     reason="no anti-entropy round with a peer yet")
    assert judged([a, b]).problems == [
        "b:1: not ready (no anti-entropy round with a peer yet)"]
    c = with_members(view("c:1", {"x": 1}, {"o1": 1}))
    survey = judged([a, c])
    assert survey.problems == ["not every node has seen the same events yet: c:1 behind"]
    assert format_survey(survey, None).splitlines()[2].split()[:2] == ["c:1", "behind"]


def test_expect_counts_the_members_that_answer():
    a = with_members(view("a:1", {"x": 1}))
    assert judged([a], expect=1).agree
    survey = judged([a], expect=3)
    assert survey.problems == ["expected 3 members to agree, 1 answered"]
    assert build_parser().parse_args(["status", "--expect", "3"]).expect == 3
    assert build_parser().parse_args(["wait-converged", "--expect", "2"]).expect == 2
    import pytest

    from dcounter.client import _UsageError
    for bad in ("0", "-1", "x"):
        with pytest.raises(_UsageError):
            build_parser().parse_args(["status", "--expect", bad])
    with pytest.raises(_UsageError):
        build_parser().parse_args(["forget", "not a node id"])
    assert build_parser().parse_args(["forget", "vm3:8080"]).member == "vm3:8080"


def test_a_seed_that_left_is_shown_as_left():
    a = with_members(view("a:1", {"x": 1}), {"c:1": {"state": "left"}})
    seed = NodeView("c:1", "c:1", False, error="c:1: connection refused")  # a candidate
    survey = judged([a, seed])
    assert survey.agree and survey.left == ["c:1"]
    lines = format_survey(survey, None).splitlines()
    assert lines[2].split() == ["c:1", "left", "-", "-", "-"] and len(lines) == 4
