"""The status page (`GET /`): one self-contained HTML document showing this node's view.

No external assets and no build step: the CSS and the script are inline. The page is rendered
once here from `Node.status()`, so it is useful without JavaScript (a `<noscript>` refresh
reloads it); its script then fetches `/status` every two seconds and redraws the same tables
from the JSON.

Counter names, peer ids and error details come from outside. They are escaped with
`html.escape` here and set with `textContent` in the script (never `innerHTML`), and nothing
from the status is ever placed inside the script. A Content-Security-Policy with a fresh nonce
per response admits only the page's own inline style and script, and fetches to the same
origin.

Owns the markup only: it renders a status dict and imports nothing from the node.
"""

from __future__ import annotations

import html
import secrets

REFRESH_SECONDS = 2
MAX_ROWS = 500  # rows per table; the rest is summarised in one line


def security_headers(nonce: str) -> dict[str, str]:
    policy = ("default-src 'none'; "
              f"style-src 'nonce-{nonce}'; script-src 'nonce-{nonce}'; "
              "connect-src 'self'; img-src data:; base-uri 'none'; form-action 'none'; "
              "frame-ancestors 'none'")
    return {"Content-Security-Policy": policy, "X-Content-Type-Options": "nosniff",
            "Referrer-Policy": "no-referrer", "Cache-Control": "no-store"}


def render_page(status: dict) -> tuple[bytes, dict[str, str]]:
    """The page's body (UTF-8) and the response headers it needs."""
    nonce = secrets.token_urlsafe(16)
    return render(status, nonce).encode("utf-8"), security_headers(nonce)


# -- server-side rendering (the script below mirrors it) ----------------------------------------

def _esc(value) -> str:
    return html.escape(str(value), quote=True)


def format_age(seconds) -> str:
    try:
        seconds = float(seconds)
    except (TypeError, ValueError):
        return "?"
    if seconds < 10:
        return f"{seconds:.1f} s"
    if seconds < 60:
        return f"{seconds:.0f} s"
    minutes, rest = divmod(int(seconds), 60)
    if minutes < 60:
        return f"{minutes} min {rest} s"
    return f"{minutes // 60} h {minutes % 60} min"


def table_rows(status: dict) -> dict[str, list[list[tuple[str, str]]]]:
    """Rows of each table as lists of (text, css class) cells."""
    counters = status.get("counters") or {}
    peers = status.get("peers") or {}
    links = status.get("replication") or {}
    candidates = status.get("candidates") or {}
    attempts = status.get("recent_contacts") or []
    rows = {
        "counters": [[(name, "name"), (str(counters[name]), "num")] for name in sorted(counters)],
        "peers": [],
        "candidates": [],
        "attempts": [],
    }
    for peer in sorted(set(peers) | set(links)):
        seen = peers.get(peer, {}).get("last_seen_seconds")
        link = links.get(peer, {})
        backlog = link.get("backlog", 0)
        rows["peers"].append([
            (peer, "name"),
            (f"{format_age(seen)} ago" if seen is not None else "not alive", ""),
            (str(backlog), "num warn" if backlog else "num"),
            (str(link.get("state", "-")), ""),
            (str(link.get("attempts", 0)), "num warn" if link.get("attempts") else "num"),
            (str(link.get("dropped", 0)), "num"),
        ])
    for peer in sorted(candidates):
        info = candidates[peer]
        rows["candidates"].append([
            (peer, "name"),
            (str(info.get("attempts", 0)), "num"),
            (f"in {format_age(info.get('next_try_in', 0))}", ""),
            (str(info.get("last_error") or ""), "detail"),
        ])
    for attempt in reversed(attempts):
        ok = bool(attempt.get("ok"))
        rows["attempts"].append([
            (f"{format_age(attempt.get('age_seconds'))} ago", ""),
            (str(attempt.get("peer", "")), "name"),
            ("joined" if ok else "failed", "ok" if ok else "bad"),
            (str(attempt.get("detail") or ""), "detail"),
        ])
    return rows


_TABLES = [
    # (id, heading, column headings (text, css class), text when empty)
    ("counters", "Counters", [("counter", ""), ("value", "num")], "No counters yet."),
    ("peers", "Peers", [("peer", ""), ("last seen", ""), ("backlog", "num"), ("link", ""),
                        ("retry attempt", "num"), ("dropped", "num")], "No peers alive."),
    ("candidates", "Rejoin candidates", [("peer", ""), ("attempts", "num"), ("next try", ""),
                                         ("last error", "")], "None."),
    ("attempts", "Recent join attempts", [("when", ""), ("peer", ""), ("result", ""),
                                          ("detail", "")], "None yet."),
]


def _tbody(rows: list, columns: int, empty: str) -> str:
    if not rows:
        return f'<tr class="empty"><td colspan="{columns}">{_esc(empty)}</td></tr>'
    out = []
    for row in rows[:MAX_ROWS]:
        cells = "".join(f'<td class="{_esc(cls)}">{_esc(text)}</td>' if cls
                        else f"<td>{_esc(text)}</td>" for text, cls in row)
        out.append(f"<tr>{cells}</tr>")
    if len(rows) > MAX_ROWS:
        out.append(f'<tr class="empty"><td colspan="{columns}">and {len(rows) - MAX_ROWS} '
                   f"more</td></tr>")
    return "".join(out)


def render(status: dict, nonce: str) -> str:
    rows = table_rows(status)
    ready = status.get("ready") or {}
    is_ready = bool(ready.get("ready"))
    sections = []
    for table_id, heading, columns, empty in _TABLES:
        head = "".join(f'<th class="{cls}">{_esc(text)}</th>' if cls else f"<th>{_esc(text)}</th>"
                       for text, cls in columns)
        sections.append(
            f'<section><h2>{_esc(heading)} <span class="n" id="{table_id}-n">'
            f'{len(rows[table_id])}</span></h2>'
            f'<table id="{table_id}" data-empty="{_esc(empty)}"><thead><tr>{head}</tr></thead>'
            f"<tbody>{_tbody(rows[table_id], len(columns), empty)}</tbody></table></section>")
    node_id = _esc(status.get("node_id", ""))
    return f"""<!doctype html>
<html lang="en">
<head>
<meta charset="utf-8">
<meta name="viewport" content="width=device-width, initial-scale=1">
<title>dcounter {node_id}</title>
<link rel="icon" href="data:,">
<noscript><meta http-equiv="refresh" content="{REFRESH_SECONDS * 3}"></noscript>
<style nonce="{nonce}">{_CSS}</style>
</head>
<body>
<header>
<h1>dcounter <span id="node-id">{node_id}</span></h1>
<p class="meta">cluster <b id="cluster">{_esc(status.get("cluster", ""))}</b>
 &middot; origin <code id="origin">{_esc(status.get("origin", ""))}</code>
 &middot; <span id="storage">{"durable" if status.get("durable") else "in memory"}</span></p>
<p id="ready" class="badge {"ok" if is_ready else "bad"}">{"ready" if is_ready else "not ready"}:
 {_esc(ready.get("reason", ""))}</p>
</header>
<main>
{"".join(sections)}
</main>
<footer><span id="refresh" class="stale">Rendered by the node; reload to refresh.</span>
<span class="links">JSON <a href="status">/status</a> &middot; Prometheus
 <a href="metrics">/metrics</a></span></footer>
<script nonce="{nonce}">{_SCRIPT}</script>
</body>
</html>
"""


_CSS = """
:root { color-scheme: light dark; --fg: #1d2125; --muted: #5f6b76; --bg: #f6f7f9;
  --card: #fff; --line: #dde1e6; --ok: #1a7f37; --bad: #c62828; --warn: #9a6700; }
@media (prefers-color-scheme: dark) { :root { --fg: #e6e9ed; --muted: #9aa5b1; --bg: #14171a;
  --card: #1d2125; --line: #2f353b; --ok: #4ac26b; --bad: #ff6b6b; --warn: #d4a72c; } }
* { box-sizing: border-box; }
body { margin: 0; padding: 1.5rem; background: var(--bg); color: var(--fg);
  font: 15px/1.45 system-ui, -apple-system, "Segoe UI", Roboto, sans-serif; }
header, main, footer { max-width: 60rem; margin: 0 auto; }
h1 { font-size: 1.4rem; margin: 0 0 .25rem; }
h1 span { font-family: ui-monospace, "SFMono-Regular", Menlo, Consolas, monospace;
  font-weight: 500; }
h2 { font-size: 1rem; margin: 0 0 .5rem; }
h2 .n { color: var(--muted); font-weight: 400; font-size: .85rem; margin-left: .25rem; }
.meta { margin: 0 0 .5rem; color: var(--muted); }
.meta b, .meta code { color: var(--fg); }
.badge { display: inline-block; margin: 0 0 1rem; padding: .15rem .6rem; border-radius: 1rem;
  font-size: .85rem; border: 1px solid currentColor; }
.badge.ok, td.ok { color: var(--ok); }
.badge.bad, td.bad { color: var(--bad); }
section { background: var(--card); border: 1px solid var(--line); border-radius: .5rem;
  padding: .9rem 1rem; margin-bottom: 1rem; overflow-x: auto; }
table { border-collapse: collapse; width: 100%; }
th, td { text-align: left; padding: .3rem .6rem .3rem 0; border-bottom: 1px solid var(--line);
  white-space: nowrap; }
th { color: var(--muted); font-weight: 500; font-size: .8rem; text-transform: uppercase;
  letter-spacing: .03em; }
tr:last-child td { border-bottom: 0; }
.num { text-align: right; font-variant-numeric: tabular-nums; }
td.name { font-family: ui-monospace, "SFMono-Regular", Menlo, Consolas, monospace; }
td.warn { color: var(--warn); font-weight: 600; }
td.detail { white-space: normal; color: var(--muted); word-break: break-word; }
tr.empty td { color: var(--muted); font-style: italic; }
footer { color: var(--muted); font-size: .85rem; display: flex; flex-wrap: wrap;
  justify-content: space-between; gap: .5rem; }
footer a { color: inherit; }
#refresh.live::before { content: "\\25cf  "; color: var(--ok); }
#refresh.stale::before { content: "\\25cf  "; color: var(--warn); }
"""

# Mirrors table_rows() and render() above; reads /status, writes only through textContent.
_SCRIPT = """
(function () {
  "use strict";
  var REFRESH_MS = %d, MAX_ROWS = %d;

  function age(seconds) {
    var s = Number(seconds);
    if (!isFinite(s)) { return "?"; }
    if (s < 10) { return s.toFixed(1) + " s"; }
    if (s < 60) { return Math.round(s) + " s"; }
    var m = Math.floor(s / 60);
    if (m < 60) { return m + " min " + Math.floor(s %% 60) + " s"; }
    return Math.floor(m / 60) + " h " + (m %% 60) + " min";
  }

  function keys(obj) { return Object.keys(obj || {}).sort(); }

  function rowsOf(s) {
    var counters = s.counters || {}, peers = s.peers || {}, links = s.replication || {};
    var candidates = s.candidates || {}, attempts = (s.recent_contacts || []).slice().reverse();
    var peerIds = keys(Object.assign({}, peers, links));
    return {
      counters: keys(counters).map(function (name) {
        return [[name, "name"], [String(counters[name]), "num"]];
      }),
      peers: peerIds.map(function (id) {
        var seen = peers[id] ? peers[id].last_seen_seconds : null, link = links[id] || {};
        var backlog = link.backlog || 0, tries = link.attempts || 0;
        return [[id, "name"], [seen === null || seen === undefined ? "not alive"
                                                                  : age(seen) + " ago", ""],
                [String(backlog), backlog ? "num warn" : "num"], [String(link.state || "-"), ""],
                [String(tries), tries ? "num warn" : "num"], [String(link.dropped || 0), "num"]];
      }),
      candidates: keys(candidates).map(function (id) {
        var c = candidates[id];
        return [[id, "name"], [String(c.attempts || 0), "num"],
                ["in " + age(c.next_try_in || 0), ""], [String(c.last_error || ""), "detail"]];
      }),
      attempts: attempts.map(function (a) {
        return [[age(a.age_seconds) + " ago", ""], [String(a.peer || ""), "name"],
                [a.ok ? "joined" : "failed", a.ok ? "ok" : "bad"],
                [String(a.detail || ""), "detail"]];
      })
    };
  }

  function cell(text, cls, colspan) {
    var td = document.createElement("td");
    td.textContent = text;
    if (cls) { td.className = cls; }
    if (colspan) { td.colSpan = colspan; }
    return td;
  }

  function fill(id, rows) {
    var table = document.getElementById(id);
    var columns = table.tHead.rows[0].cells.length;
    var body = document.createElement("tbody");
    function note(text) {
      var tr = document.createElement("tr");
      tr.className = "empty";
      tr.appendChild(cell(text, "", columns));
      body.appendChild(tr);
    }
    if (!rows.length) { note(table.getAttribute("data-empty")); }
    rows.slice(0, MAX_ROWS).forEach(function (row) {
      var tr = document.createElement("tr");
      row.forEach(function (c) { tr.appendChild(cell(c[0], c[1])); });
      body.appendChild(tr);
    });
    if (rows.length > MAX_ROWS) { note("and " + (rows.length - MAX_ROWS) + " more"); }
    table.replaceChild(body, table.tBodies[0]);
    document.getElementById(id + "-n").textContent = String(rows.length);
  }

  function text(id, value) { document.getElementById(id).textContent = value; }

  function show(s) {
    var rows = rowsOf(s), ready = s.ready || {};
    Object.keys(rows).forEach(function (id) { fill(id, rows[id]); });
    text("node-id", s.node_id || "");
    document.title = "dcounter " + (s.node_id || "");
    text("cluster", s.cluster || "");
    text("origin", s.origin || "");
    text("storage", s.durable ? "durable" : "in memory");
    var badge = document.getElementById("ready");
    badge.textContent = (ready.ready ? "ready" : "not ready") + ": " + (ready.reason || "");
    badge.className = "badge " + (ready.ready ? "ok" : "bad");
  }

  function state(cls, message) {
    var el = document.getElementById("refresh");
    el.className = cls;
    el.textContent = message;
  }

  // Counter values are 64-bit: keep integers beyond 2^53 exact, as their source text.
  function parse(body) {
    return JSON.parse(body, function (key, value, context) {
      if (typeof value === "number" && !Number.isSafeInteger(value) && context &&
          typeof context.source === "string" && /^-?[0-9]+$/.test(context.source)) {
        return context.source;
      }
      return value;
    });
  }

  var lastGood = null;
  function refresh() {
    fetch("status", {cache: "no-store", credentials: "same-origin",
                     headers: {"Accept": "application/json"}})
      .then(function (response) {
        if (!response.ok) { throw new Error("HTTP " + response.status); }
        return response.text();
      })
      .then(function (body) {
        show(parse(body));
        lastGood = new Date();
        state("live", "Live: updated " + lastGood.toLocaleTimeString() + ", every " +
              (REFRESH_MS / 1000) + " s.");
      })
      .catch(function (error) {
        state("stale", "Could not refresh (" + error.message + "); showing the view from " +
              (lastGood ? lastGood.toLocaleTimeString() : "the first load") + ".");
      })
      .then(function () { window.setTimeout(refresh, REFRESH_MS); });
  }
  refresh();
}());
""" % (REFRESH_SECONDS * 1000, MAX_ROWS)
