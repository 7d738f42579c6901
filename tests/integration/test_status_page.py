"""The status page (`GET /`), as a person sees it: rendered by headless Chromium after its
script ran, and as plain HTML without a script."""

import os
import shutil
import signal
import subprocess

import pytest

from tests.integration.harness import poll
from tests.page import Page

CHROMIUM = shutil.which("chromium")
needs_chromium = pytest.mark.skipif(
    CHROMIUM is None, reason="Debian's chromium package is not installed "
                             "(apt-get install chromium; .ci/run installs it)")


def render_in_chromium(url: str, profile_dir) -> str:
    """The DOM after the page's script ran (Chromium's virtual time runs it for 5 s)."""
    args = [CHROMIUM, "--headless", "--no-sandbox", "--disable-gpu", "--disable-quic",
            "--no-first-run", "--disable-background-networking", "--disable-component-update",
            "--disable-sync", f"--user-data-dir={profile_dir}", "--virtual-time-budget=5000",
            "--dump-dom", url]
    # Its own session, so that on a timeout the browser's helper processes go with it.
    proc = subprocess.Popen(args, stdout=subprocess.PIPE, stderr=subprocess.PIPE,
                            stdin=subprocess.DEVNULL, start_new_session=True)
    try:
        out, err = proc.communicate(timeout=90)
    except subprocess.TimeoutExpired:
        os.killpg(proc.pid, signal.SIGKILL)
        proc.communicate()
        raise AssertionError(f"chromium did not finish rendering {url}")
    assert proc.returncode == 0, err.decode(errors="replace")[-2000:]
    return out.decode()


@needs_chromium
def test_status_page_shows_peers_and_counters_in_chromium(cluster, tmp_path):
    a, b = cluster.start(2, in_memory=True)
    for _ in range(3):
        assert a.incr("apples").status_code == 200
    assert b.incr("pears", 7).status_code == 200
    cluster.wait_converged([a, b], 3, counter="apples")
    cluster.wait_converged([a, b], 7, counter="pears")

    page = Page(render_in_chromium(f"{a.base}/", tmp_path / "profile"))

    # The script ran and redrew the page from /status.
    assert page.ids["refresh"]["class"] == "live", page.ids["refresh"]
    assert page.ids["refresh"]["text"].startswith("Live: updated")
    assert page.ids["node-id"]["text"] == a.node_id
    assert page.ids["ready"]["text"].startswith("ready")
    assert ["apples", "3"] in page.tables["counters"]
    assert ["pears", "7"] in page.tables["counters"]
    peers = {row[0]: row for row in page.tables["peers"]}
    assert list(peers) == [b.node_id]
    last_seen, backlog = peers[b.node_id][1], peers[b.node_id][2]
    assert last_seen.endswith(" s ago") and backlog == "0"


@needs_chromium
def test_status_page_escapes_what_came_from_outside(cluster, tmp_path):
    markup = '<i id="injected">x</i><script>document.title="owned"</script>'
    seed = cluster.node("seed", in_memory=True, extra=["--cluster", "other"]).start()
    node = cluster.node("odd", in_memory=True, peers=[seed.node_id],
                        extra=["--cluster", markup]).start()
    # The seed refuses the join (another cluster) and its refusal quotes the cluster name.
    poll(lambda: node.get("/status").json()["candidates"][seed.node_id]["attempts"] >= 1, 15,
         message="a refused join attempt")

    dom = render_in_chromium(f"{node.base}/", tmp_path / "profile")
    page = Page(dom)
    assert page.ids["refresh"]["class"] == "live"
    assert "injected" not in page.ids
    assert page.ids["cluster"]["text"] == markup
    assert "<title>dcounter " in dom and "owned" not in dom.split("</title>")[0]
    candidates = {row[0]: row for row in page.tables["candidates"]}
    assert markup in candidates[seed.node_id][3]
    failed = [row for row in page.tables["attempts"] if row[1] == seed.node_id]
    assert failed and failed[0][2] == "failed"


def test_status_page_without_a_script(cluster):
    a, b = cluster.start(2, in_memory=True)
    assert a.incr("apples").status_code == 200
    cluster.wait_converged([a, b], 1, counter="apples")
    response = a.get("/")
    assert response.status_code == 200
    assert response.headers["Content-Type"] == "text/html; charset=utf-8"
    policy = response.headers["Content-Security-Policy"]
    assert "default-src 'none'" in policy and "script-src 'nonce-" in policy
    page = Page(response.text)
    assert ["apples", "1"] in page.tables["counters"]
    assert [row[0] for row in page.tables["peers"]] == [b.node_id]
    # Self-contained: nothing is loaded from anywhere else.
    assert "src=" not in response.text.replace('href="data:,"', "")
    assert "http://" not in response.text and "https://" not in response.text
    assert a.get("/?x=1").status_code == 400


def _member_down(node, member_id: str) -> bool:
    """`member_id` is suspect or failed in `node`'s view (from its members view, or, in a
    status without one, no longer listed and tried in vain)."""
    status = node.get("/status").json()
    if "members" in status:
        return status["members"].get(member_id, {}).get("state") in ("suspect", "failed")
    return (member_id not in status["peers"]
            and status["candidates"].get(member_id, {}).get("attempts", 0) >= 1)


@needs_chromium
def test_status_page_shows_a_member_down_in_chromium(cluster, tmp_path):
    # Heartbeats every second: a loaded machine must not make the healthy member look suspect.
    slower = ["--heartbeat-interval", "1.0", "--peer-timeout", "4.0"]
    a, b, c = cluster.start(3, in_memory=True, extra=slower)
    assert a.incr("apples", 5).status_code == 200
    cluster.wait_converged([a, b, c], 5, counter="apples")

    c.kill()  # SIGKILL, by pid
    poll(lambda: _member_down(a, c.node_id), 30, message=f"{c.node_id} down at {a.name}")

    page = Page(render_in_chromium(f"{a.base}/", tmp_path / "profile"))
    assert page.ids["refresh"]["class"] == "live", page.ids["refresh"]
    members = {row[0]: row for row in page.tables["members"]}
    assert set(members) == {b.node_id, c.node_id}
    assert members[c.node_id][1] in ("suspect", "failed")
    assert members[b.node_id][1] in ("alive", "suspect")
    # Not green: ready (this node is fine) but saying what is wrong, in amber.
    badge = page.ids["ready"]
    assert badge["class"] == "badge warn", badge
    assert badge["text"].startswith("ready, 1 member ")
    summary = page.ids["summary"]["text"]
    assert "of 3 members up" in summary and ("failed" in summary or "suspect" in summary), summary
    assert page.ids["summary"]["class"] in ("summary warn", "summary bad")
    # The chart of the last minutes is part of the page.
    assert "history" in page.ids and "rate-now" in page.ids
