"""What the `dcounter` command prints: JSON, text tables, the `status` table of a cluster survey
and the note before a retry. Pure formatting over answers and `survey.Survey`; it asks no node.
"""

from __future__ import annotations

import json
import sys

from dcounter.survey import NodeView, Survey

PROG = "dcounter"
SHOWN_COUNTER_COLUMNS = 4  # `status` shows up to this many counters as columns


def print_json(value) -> None:
    print(json.dumps(value, indent=2, sort_keys=True))


def retry_note(error, node, delay: float) -> None:
    """The line on stderr before a keyed write is sent again (the library's `on_retry`)."""
    print(f"{PROG}: {error}; retrying with the same key in {delay:.1f} s", file=sys.stderr)


def table(rows: list[list[str]], right: set[int]) -> str:
    """Rows as columns two spaces apart; the columns in `right` aligned right."""
    widths = [max(len(row[i]) for row in rows) for i in range(len(rows[0]))]
    lines = []
    for row in rows:
        cells = [cell.rjust(widths[i]) if i in right else cell.ljust(widths[i])
                 for i, cell in enumerate(row)]
        lines.append("  ".join(cells).rstrip())
    return "\n".join(lines)


def _counter_values(reachable: list[NodeView], names: list[str]) -> str:
    """Too many counters for a column each: one row per counter, its value where the nodes agree
    (where they do not, the disagreements below list each node's value)."""
    rows = [["COUNTER", "VALUE"]]
    for name in names:
        values = {v.status.get("counters", {}).get(name, 0) for v in reachable}
        rows.append([name, str(values.pop()) if len(values) == 1 else "differs"])
    return table(rows, {1})


def format_survey(result: Survey, counter: str | None) -> str:
    reachable = [v for v in result.nodes if v.reachable]
    if counter is not None:
        columns = [counter]
    else:
        names = sorted(set().union(*(set(v.status.get("counters", {})) for v in reachable)))
        columns = names if len(names) <= SHOWN_COUNTER_COLUMNS else []
    header = ["NODE", "STATE", *columns]
    if not columns:
        header.append("COUNTERS")
    header += ["PEERS", "BACKLOG"]
    rows = [header]
    for view in result.nodes:
        if view.reachable:
            s = view.status
            counts = [str(s.get("counters", {}).get(name, 0)) for name in columns]
            if not columns:
                counts.append(str(len(s.get("counters", {}))))
            rows.append([view.node, view.state, *counts,
                         str(len(s.get("peers", {}))), str(view.backlog())])
        else:
            rows.append([view.node, view.state] + ["-"] * (len(header) - 2))
    asked = {view.node for view in result.nodes}
    for member in result.left:
        if member not in asked:
            rows.append([member, "left"] + ["-"] * (len(header) - 2))
    right = set(range(2, len(header)))
    text = table(rows, right)
    if not columns and names:
        text += "\n\n" + _counter_values(reachable, names)
    if result.agree:
        text += f"\nagree: {len(reachable)} node{'s' if len(reachable) != 1 else ''}"
        if result.left:
            text += f" ({len(result.left)} left)"
    else:
        text += "\nDISAGREE:\n" + "\n".join(f"  {p}" for p in result.problems)
    return text
