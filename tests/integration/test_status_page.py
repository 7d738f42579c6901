"""The status page (`GET /`), as a person sees it: rendered by headless Chromium after its
script ran, and as plain HTML without a script."""

import os
import shutil
import signal
import subprocess
from html.parser import HTMLParser

import pytest

from tests.integration.harness import poll

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


class Page(HTMLParser):
    """What a reader sees: the text of each table's body rows, and elements by id."""

    def __init__(self, markup: str):
        super().__init__()
        self.tables: dict[str, list[list[str]]] = {}
        self.ids: dict[str, dict] = {}
        self._table = None
        self._in_body = False
        self._cell = None
        self._id_stack: list = []
        self.feed(markup)

    def handle_starttag(self, tag, attrs):
        attrs = dict(attrs)
        if "id" in attrs:
            self.ids[attrs["id"]] = {"tag": tag, "class": attrs.get("class", ""), "text": ""}
            self._id_stack.append((tag, attrs["id"]))
        if tag == "table":
            self._table = attrs.get("id")
            self.tables[self._table] = []
        elif tag == "tbody":
            self._in_body = True
        elif tag == "tr" and self._in_body:
            self.tables[self._table].append([])
        elif tag == "td" and self._in_body:
            self._cell = ""

    def handle_endtag(self, tag):
        if self._id_stack and self._id_stack[-1][0] == tag:
            self._id_stack.pop()
        if tag == "td" and self._cell is not None:
            self.tables[self._table][-1].append(self._cell.strip())
            self._cell = None
        elif tag == "tbody":
            self._in_body = False

    def handle_data(self, data):
        if self._cell is not None:
            self._cell += data
        for _tag, element_id in self._id_stack:
            self.ids[element_id]["text"] += data


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
