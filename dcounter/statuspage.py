"""The status page (`GET /`): one self-contained HTML document showing the cluster as this node
sees it.

Top to bottom: the readiness badge, green only while no member is suspect or failed (amber
then, red when this node is not ready); one summary line ("3 of 3 members up, all
caught up"); the members, each alive / suspect / failed / left with the time since it was last
heard, whether it is caught up, its backlog and its last error in words; a chart of the last ten
minutes (increments per second, replication delay); then the counters, the replication links,
the rejoin candidates and the latest join attempt per peer. Colour is never the only signal:
every coloured thing also says what it means in words.

No external assets and no build step: the CSS, the script and the chart (inline SVG) are in the
document. Everything is rendered here, by pure functions of the `Node.status()` dict. The script
only keeps the page fresh: every two seconds it fetches the page itself, parses it with
`DOMParser` and swaps the new view in, so the markup has one source and the script knows nothing
of the status' shape. Without JavaScript a `<noscript>` refresh reloads the page.

Counter names, peer ids and error details come from outside. They are escaped with
`html.escape` here; the script moves parsed nodes and never assigns markup, and nothing from the
status is ever placed inside the script. A Content-Security-Policy with a fresh nonce per
response admits only the page's own inline style and script, and fetches to the same origin.

Owns the markup only: it renders a status dict and imports nothing from the node. What the
members' states, the summary and the badge say is decided in health.py; the chart is drawn by
chart.py.
"""

from __future__ import annotations

import html
import math
import secrets

from dcounter.chart import line_chart
from dcounter.health import badge, describe_error, members_view, summary, summary_tone

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


# -- words ---------------------------------------------------------------------------------------

def _esc(value) -> str:
    return html.escape(str(value), quote=True)


def format_age(seconds) -> str:
    try:
        seconds = float(seconds)
    except (TypeError, ValueError):
        return "?"
    if not math.isfinite(seconds):
        return "?"
    if seconds < 10:
        return f"{seconds:.1f} s"
    if seconds < 60:
        return f"{seconds:.0f} s"
    minutes, rest = divmod(int(seconds), 60)
    if minutes < 60:
        return f"{minutes} min {rest} s"
    return f"{minutes // 60} h {minutes % 60} min"


# -- tables --------------------------------------------------------------------------------------

def _member_row(member: dict) -> list[tuple[str, str]]:
    heard = member["last_heard"]
    if heard is not None:
        heard_text = f"{format_age(heard)} ago"
    else:
        heard_text = "never" if member.get("heard_known", True) else "-"
    caught_up = member["caught_up"]
    if member["state"] in ("failed", "left"):
        caught_text, caught_cls = "-", ""
    elif caught_up is True:
        caught_text, caught_cls = "yes", "ok"
    elif caught_up is False:
        caught_text, caught_cls = "behind", "warn"
    else:
        caught_text, caught_cls = "not known yet", "muted"
    backlog = member["backlog"] or 0
    return [
        (member["id"], "name"),
        (member["state"], f"state {member['state']}"),
        (heard_text, ""),
        (caught_text, caught_cls),
        (str(backlog), "num warn" if backlog else "num"),
        (member["error"] or "", "detail"),
    ]


def _latest_attempts(status: dict, alive: set[str]) -> list[dict]:
    """The latest join attempt per peer, newest first; a failure is left out once the peer
    is alive again (it reached us since, or we reached it)."""
    latest: dict[str, dict] = {}
    for attempt in status.get("recent_contacts") or []:  # oldest first
        latest[str(attempt.get("peer", ""))] = attempt
    shown = [a for peer, a in latest.items() if a.get("ok") or peer not in alive]
    return sorted(shown, key=lambda a: _number(a.get("age_seconds")))


def _number(value) -> float:
    try:
        return float(value)
    except (TypeError, ValueError):
        return math.inf


def table_rows(status: dict, members: list[dict] | None = None
               ) -> dict[str, list[list[tuple[str, str]]]]:
    """Rows of each table as lists of (text, css class) cells."""
    members = members_view(status) if members is None else members
    counters = status.get("counters") or {}
    peers = status.get("peers") or {}
    links = status.get("replication") or {}
    candidates = status.get("candidates") or {}
    alive = {m["id"] for m in members if m["state"] in ("alive", "suspect")} | set(peers)
    rows = {
        "members": [_member_row(member) for member in members],
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
        if info.get("trying"):
            next_try = "trying now"
        elif info.get("next_try_in") is None:
            next_try = "-"
        else:
            next_try = f"in {format_age(info.get('next_try_in'))}"
        rows["candidates"].append([
            (peer, "name"),
            (str(info.get("attempts", 0)), "num"),
            (next_try, ""),
            (describe_error(info.get("last_error"), peer), "detail"),
        ])
    for attempt in _latest_attempts(status, alive):
        ok = bool(attempt.get("ok"))
        peer = str(attempt.get("peer", ""))
        rows["attempts"].append([
            (f"{format_age(attempt.get('age_seconds'))} ago", ""),
            (peer, "name"),
            ("joined" if ok else "failed", "ok" if ok else "bad"),
            (describe_error(attempt.get("detail"), peer), "detail"),
        ])
    return rows


_TABLES = [
    # (id, heading, column headings (text, css class), text when empty)
    ("members", "Members", [("member", ""), ("state", ""), ("last heard", ""),
                            ("caught up", ""), ("backlog", "num"), ("last error", "")],
     "No other members known: this node is alone."),
    ("counters", "Counters", [("counter", ""), ("value", "num")], "No counters yet."),
    ("peers", "Replication links", [("peer", ""), ("last seen", ""), ("backlog", "num"),
                                    ("link", ""), ("retry attempt", "num"),
                                    ("dropped", "num")], "No peers alive."),
    ("candidates", "Rejoin candidates", [("peer", ""), ("attempts", "num"), ("next try", ""),
                                         ("last error", "")], "None."),
    ("attempts", "Latest join attempt per peer", [("when", ""), ("peer", ""), ("result", ""),
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


def _table(table_id: str, heading: str, columns, empty: str, rows) -> str:
    head = "".join(f'<th class="{cls}">{_esc(text)}</th>' if cls else f"<th>{_esc(text)}</th>"
                   for text, cls in columns)
    return (f'<section><h2>{_esc(heading)} <span class="n" id="{table_id}-n">{len(rows)}'
            f'</span></h2><table id="{table_id}"><thead><tr>{head}</tr></thead>'
            f"<tbody>{_tbody(rows, len(columns), empty)}</tbody></table></section>")


# -- the chart -----------------------------------------------------------------------------------

def format_minutes(minutes: float) -> str:
    return f"{minutes:g} min" if minutes >= 1 else f"{minutes * 60:g} s"


def _last(values: list):
    return values[-1] if values else None


def chart(history) -> str:
    """Increments per second (acknowledged here, and applied from peers) and the replication
    delay's 99th percentile over the history the status carries."""
    if not isinstance(history, dict):
        return ('<section id="history"><h2>Last 10 minutes</h2><p class="muted">'
                'No history in this status.</p></section>')
    interval = _number(history.get("interval"))
    interval = interval if math.isfinite(interval) and interval > 0 else 5.0
    size = _number(history.get("size"))
    size = min(int(size), 10_000) if math.isfinite(size) and size >= 1 else 120
    local = list(history.get("increments_per_second") or [])[-size:]
    replicated = list(history.get("replicated_per_second") or [])[-size:]
    delay = list(history.get("replication_delay_p99_ms") or [])[-size:]
    minutes = round(interval * size / 60, 1)

    def now_text(value, unit):
        return "no data" if value is None else f"{value:g} {unit}"

    rates = (f"now {now_text(_last(local), '/s')} acknowledged here, "
             f"{now_text(_last(replicated), '/s')} from peers")
    delays = f"now {now_text(_last(delay), 'ms')}"
    span = f"{format_minutes(minutes)} ago"
    rate_chart = line_chart("Increments per second", "increments/s",
                            [(local, "local"), (replicated, "replicated")], size, span)
    delay_chart = line_chart("Replication delay, 99th percentile", "ms", [(delay, "delay")],
                             size, span)
    return (
        f'<section id="history"><h2>Last {_esc(format_minutes(minutes))}'
        f' <span class="n">one sample every {_esc(f"{interval:g}")} s</span></h2>'
        f'<div class="charts"><figure><figcaption>Increments per second '
        f'<span class="key local">acknowledged here</span> '
        f'<span class="key replicated">from peers</span><br>'
        f'<span class="muted" id="rate-now">{_esc(rates)}</span></figcaption>{rate_chart}'
        f'</figure><figure><figcaption>Replication delay, 99th percentile '
        f'<span class="key delay">to every peer</span><br>'
        f'<span class="muted" id="delay-now">{_esc(delays)}</span></figcaption>{delay_chart}'
        f"</figure></div></section>")


# -- the document --------------------------------------------------------------------------------

def render_view(status: dict) -> str:
    """Everything the script swaps on a refresh: header facts, members, chart, tables."""
    members = members_view(status)
    rows = table_rows(status, members)
    tone, badge_text, reason = badge(status, members)
    line = summary(status, members)
    tables = {table_id: _table(table_id, heading, columns, empty, rows[table_id])
              for table_id, heading, columns, empty in _TABLES}
    return (
        f'<div id="view">'
        f'<p class="meta">cluster <b id="cluster">{_esc(status.get("cluster", ""))}</b>'
        f' &middot; origin <code id="origin">{_esc(status.get("origin", ""))}</code>'
        f' &middot; <span id="storage">'
        f'{"durable" if status.get("durable") else "in memory"}</span></p>'
        f'<div class="health"><p id="ready" class="badge {tone}">{_esc(badge_text)}</p>'
        f'<span id="ready-reason" class="muted">{_esc(reason)}</span></div>'
        f'<p id="summary" class="summary {summary_tone(members)}">{_esc(line)}</p>'
        f'{tables["members"]}{chart(status.get("history"))}'
        f'{tables["counters"]}{tables["peers"]}{tables["candidates"]}{tables["attempts"]}'
        f"</div>")


def render(status: dict, nonce: str) -> str:
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
<header><h1>dcounter <span id="node-id">{node_id}</span></h1></header>
<main>
{render_view(status)}
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
  --card: #fff; --line: #dde1e6; --ok: #1a7f37; --bad: #c62828; --warn: #9a6700;
  --ok-bg: #dafbe1; --bad-bg: #ffebe9; --warn-bg: #fff8c5; --left: #6e7781;
  --series-a: #0969da; --series-b: #8250df; }
@media (prefers-color-scheme: dark) { :root { --fg: #e6e9ed; --muted: #9aa5b1; --bg: #14171a;
  --card: #1d2125; --line: #2f353b; --ok: #4ac26b; --bad: #ff6b6b; --warn: #d4a72c;
  --ok-bg: #12361f; --bad-bg: #4a1a1a; --warn-bg: #3d3000; --left: #8b949e;
  --series-a: #58a6ff; --series-b: #bc8cff; } }
* { box-sizing: border-box; }
body { margin: 0; padding: 1.5rem; background: var(--bg); color: var(--fg);
  font: 15px/1.45 system-ui, -apple-system, "Segoe UI", Roboto, sans-serif; }
header, main, footer { max-width: 62rem; margin: 0 auto; }
h1 { font-size: 1.4rem; margin: 0 0 .25rem; }
h1 span { font-family: ui-monospace, "SFMono-Regular", Menlo, Consolas, monospace;
  font-weight: 500; }
h2 { font-size: 1rem; margin: 0 0 .5rem; }
h2 .n { color: var(--muted); font-weight: 400; font-size: .85rem; margin-left: .25rem; }
.meta { margin: 0 0 .5rem; color: var(--muted); }
.meta b, .meta code { color: var(--fg); }
.muted { color: var(--muted); }
.health { display: flex; flex-wrap: wrap; align-items: baseline; gap: .6rem;
  margin: 0 0 .4rem; }
.badge { display: inline-block; margin: 0; padding: .2rem .75rem; border-radius: 1rem;
  font-weight: 600; border: 1px solid currentColor; }
.badge.ok { color: var(--ok); background: var(--ok-bg); }
.badge.warn { color: var(--warn); background: var(--warn-bg); }
.badge.bad { color: var(--bad); background: var(--bad-bg); }
.summary { font-size: 1.15rem; font-weight: 600; margin: 0 0 1rem; padding-left: .6rem;
  border-left: .3rem solid currentColor; }
.summary.ok { color: var(--ok); }
.summary.warn { color: var(--warn); }
.summary.bad { color: var(--bad); }
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
td.ok { color: var(--ok); }
td.bad { color: var(--bad); font-weight: 600; }
td.warn { color: var(--warn); font-weight: 600; }
td.muted { color: var(--muted); }
td.detail { white-space: normal; color: var(--muted); word-break: break-word; }
td.state { font-weight: 600; }
td.state::before { display: inline-block; width: 1.1em; }
td.state.alive { color: var(--ok); }
td.state.alive::before { content: "\\25cf"; }
td.state.suspect { color: var(--warn); }
td.state.suspect::before { content: "\\25b2"; }
td.state.failed { color: var(--bad); }
td.state.failed::before { content: "\\2716"; }
td.state.left { color: var(--left); font-weight: 400; }
td.state.left::before { content: "\\25cb"; }
tr.empty td { color: var(--muted); font-style: italic; }
.charts { display: grid; grid-template-columns: repeat(auto-fit, minmax(min(22rem, 100%), 1fr));
  gap: 1rem; }
figure { margin: 0; }
figcaption { font-size: .9rem; margin-bottom: .25rem; }
svg.chart { width: 100%; height: auto; display: block; }
svg .grid { stroke: var(--line); stroke-width: 1; }
svg .tick { fill: var(--muted); font-size: 11px; }
svg polyline { fill: none; stroke-width: 2; stroke-linejoin: round; }
svg .local { stroke: var(--series-a); fill: var(--series-a); }
svg polyline.local { fill: none; }
svg .replicated { stroke: var(--series-b); fill: var(--series-b); }
svg polyline.replicated { fill: none; stroke-dasharray: 5 3; }
svg .delay { stroke: var(--warn); fill: var(--warn); }
svg polyline.delay { fill: none; }
.key { font-size: .8rem; color: var(--muted); margin-left: .5rem; white-space: nowrap; }
.key::before { content: ""; display: inline-block; width: 1.4em; margin-right: .3em;
  vertical-align: middle; border-top: 2px solid; }
.key.local::before { border-color: var(--series-a); }
.key.replicated::before { border-top-style: dashed; border-color: var(--series-b); }
.key.delay::before { border-color: var(--warn); }
footer { color: var(--muted); font-size: .85rem; display: flex; flex-wrap: wrap;
  justify-content: space-between; gap: .5rem; }
footer a { color: inherit; }
#refresh.live::before { content: "\\25cf  "; color: var(--ok); }
#refresh.stale::before { content: "\\25cf  "; color: var(--warn); }
"""

# Keeps the page fresh: fetches the page itself and swaps the view rendered by the node. It
# moves parsed nodes only (no markup is assigned), so what came from outside stays escaped.
_SCRIPT = """
(function () {
  "use strict";
  var REFRESH_MS = %d;

  function state(cls, message) {
    var el = document.getElementById("refresh");
    el.className = cls;
    el.textContent = message;
  }

  function swap(id, fresh) {
    var now = document.getElementById(id), next = fresh.getElementById(id);
    if (!now || !next) { throw new Error("not a status page"); }
    now.parentNode.replaceChild(document.adoptNode(next), now);
  }

  var lastGood = null;
  function refresh() {
    fetch("./", {cache: "no-store", credentials: "same-origin",
                 headers: {"Accept": "text/html"}})
      .then(function (response) {
        if (!response.ok) { throw new Error("HTTP " + response.status); }
        return response.text();
      })
      .then(function (body) {
        var fresh = new DOMParser().parseFromString(body, "text/html");
        swap("view", fresh);
        swap("node-id", fresh);
        document.title = fresh.title;
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
""" % (REFRESH_SECONDS * 1000)
