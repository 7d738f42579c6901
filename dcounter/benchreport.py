"""The benchmark's report: from the measured runs to medians, ratios, tables and JSON rows.

Pure: `RunResult`s in, rows (dicts, the JSON's "summary") and text out. Runs are paired with
their neighbours (`paired_ratios`, `paired_cpu`) so that drift on a shared machine affects both
sides of a ratio alike; `summarise` takes the medians per configuration; `render_compact` is the
terminal table, `render_table` the Markdown one with every column. It starts no process and
sends no request.
"""

from __future__ import annotations

import math
import os
import platform
import statistics
from dataclasses import dataclass


# -- one measured run --------------------------------------------------------------------------

@dataclass
class RunResult:
    config: str
    kind: str
    nodes: int
    durable: bool | None
    increments_per_s: float
    acknowledged: int
    non2xx: int
    errors: int
    p50_ms: float | None
    p99_ms: float | None
    converge_ms: float | None
    final_counts: list[int]
    counts_match: bool
    internal_per_increment: float | None
    rss_warm_kib: list[int | None]
    rss_after_kib: list[int | None]
    replication_ms: list[float]  # probes: increment sent -> read showing it at every peer
    replication_missed: int
    delivery_p99_ms: float | None  # the nodes' histogram: commit -> acknowledged by a peer
    delivered_within_100ms: float | None
    cpu_us_per_increment: float | None = None  # µs of CPU, all node processes, per acked inc
    commit_ms_mean: float | None = None  # durable: mean time of a group commit, all nodes
    commit_group_mean: float | None = None  # durable: mean requests per group commit
    heartbeat_per_increment: float | None = None  # the heartbeats' share of internal/inc
    events_per_batch: float | None = None  # events per replicate request delivered
    rep: int = 0
    keyed: bool = False  # every increment carried its own Idempotency-Key
    forwarded_share: float | None = None  # keyed: acked increments forwarded to the key's home


def forwarded_share(forwarded: float, acknowledged: int) -> float | None:
    """The share of acknowledged increments that the node receiving them forwarded to their
    key's home (with N nodes about (N - 1) / N: keys' homes are spread evenly)."""
    return forwarded / acknowledged if acknowledged else None


# -- summary ---------------------------------------------------------------------------------

def _median(values):
    values = [v for v in values if v is not None]
    return statistics.median(values) if values else None


def _p99(samples: list[float]) -> float | None:
    if not samples:
        return None
    ordered = sorted(samples)
    return ordered[min(len(ordered) - 1, math.ceil(0.99 * len(ordered)) - 1)]


def paired_ratios(runs: list[RunResult]) -> tuple[dict[int, float], dict[int, float]]:
    """Per dcounter run (by index): its rate over the mean of the bare runs just before and
    just after it, and (clusters) over the one-node run of the same mode and repetition.
    Neighbours share the machine's drift, so the ratios are steadier than ratios of medians."""
    bare = [i for i, run in enumerate(runs) if run.kind == "bare"]
    to_bare, to_one = {}, {}
    for i, run in enumerate(runs):
        if run.kind == "bare":
            continue
        around = [j for j in bare if j < i][-1:] + [j for j in bare if j > i][:1]
        reference = statistics.mean(runs[j].increments_per_s for j in around) if around else 0
        if reference > 0:
            to_bare[i] = run.increments_per_s / reference
        if run.nodes > 1:
            single = [r for r in runs if r.kind == "dcounter" and r.nodes == 1
                      and r.durable == run.durable and r.rep == run.rep]
            if single and single[0].increments_per_s > 0:
                to_one[i] = run.increments_per_s / single[0].increments_per_s
    return to_bare, to_one


def paired_cpu(runs: list[RunResult]) -> tuple[dict[int, float], dict[int, float],
                                                dict[int, float]]:
    """Per dcounter run (by index), from its CPU per increment: over the bare runs' just before
    and after it; and (clusters) against the one-node run of the same mode and repetition, the
    capacity of N separate machines (N x one-node cost / N-node cost, 1 per node is linear) and
    what one replicated event costs, sender and receiver together ((N-node - one-node) / (N-1))."""
    def cpu(run):
        return run.cpu_us_per_increment

    bare = [i for i, run in enumerate(runs) if run.kind == "bare" and cpu(run)]
    to_bare, capacity, per_event = {}, {}, {}
    for i, run in enumerate(runs):
        if run.kind == "bare" or not cpu(run):
            continue
        around = [j for j in bare if j < i][-1:] + [j for j in bare if j > i][:1]
        if around:
            to_bare[i] = cpu(run) / statistics.mean(cpu(runs[j]) for j in around)
        single = [r for r in runs if r.kind == "dcounter" and r.nodes == 1 and cpu(r)
                  and r.durable == run.durable and r.rep == run.rep]
        if single:
            capacity[i] = run.nodes * cpu(single[0]) / cpu(run)
            if run.nodes > 1:
                per_event[i] = (cpu(run) - cpu(single[0])) / (run.nodes - 1)
    return to_bare, capacity, per_event


def _spread(values) -> list[float] | None:
    values = [v for v in values if v is not None]
    return [min(values), max(values)] if values else None


def summarise(runs: list[RunResult]) -> list[dict]:
    configs: dict[str, list[int]] = {}
    for index, run in enumerate(runs):
        configs.setdefault(run.config, []).append(index)
    to_bare, to_one = paired_ratios(runs)
    cpu_to_bare, capacity, per_event = paired_cpu(runs)
    rows = []
    for name, indices in configs.items():
        group = [runs[i] for i in indices]
        rate = _median([r.increments_per_s for r in group])
        first = group[0]
        replication = [s for r in group for s in r.replication_ms]
        last = group[-1]
        rows.append({
            "config": name, "nodes": first.nodes, "durable": first.durable, "runs": len(group),
            "increments_per_s": rate,
            "ratio_to_bare": 1.0 if first.kind == "bare" else
            _median([to_bare.get(i) for i in indices]),
            "ratio_to_one_node": _median([to_one.get(i) for i in indices]),
            "p50_ms": _median([r.p50_ms for r in group]),
            "p99_ms": _median([r.p99_ms for r in group]),
            "converge_ms_median": _median([r.converge_ms for r in group]),
            "converge_ms_max": (None if any(r.converge_ms is None for r in group)
                                else max(r.converge_ms for r in group)),
            "internal_per_increment": _median([r.internal_per_increment for r in group]),
            "heartbeat_per_increment": _median([r.heartbeat_per_increment for r in group]),
            "events_per_batch": _median([r.events_per_batch for r in group]),
            "delivery_p99_ms": _median([r.delivery_p99_ms for r in group]),
            "delivery_p99_ms_max": max((r.delivery_p99_ms for r in group
                                        if r.delivery_p99_ms is not None), default=None),
            "delivered_within_100ms": min((r.delivered_within_100ms for r in group
                                           if r.delivered_within_100ms is not None),
                                          default=None),
            "replication_p99_ms": _p99(replication),
            "replication_samples": len(replication),
            "replication_missed": sum(r.replication_missed for r in group),
            "rss_warm_mib": [None if v is None else v / 1024 for v in last.rss_warm_kib],
            "rss_after_mib": [None if v is None else v / 1024 for v in last.rss_after_kib],
            "counts_match": all(r.counts_match for r in group),
            "cpu_us_per_increment": _median([r.cpu_us_per_increment for r in group]),
            "cpu_us_per_increment_spread": _spread([r.cpu_us_per_increment for r in group]),
            "cpu_vs_bare": _median([cpu_to_bare.get(i) for i in indices]),
            "cpu_vs_bare_spread": _spread([cpu_to_bare.get(i) for i in indices]),
            "capacity_of_n_machines": _median([capacity.get(i) for i in indices]),
            "capacity_of_n_machines_spread": _spread([capacity.get(i) for i in indices]),
            "cpu_us_per_replicated_event": _median([per_event.get(i) for i in indices]),
            "cpu_us_per_replicated_event_spread": _spread([per_event.get(i) for i in indices]),
            "commit_ms_mean": _median([r.commit_ms_mean for r in group]),
            "commit_ms_mean_spread": _spread([r.commit_ms_mean for r in group]),
            "commit_group_mean": _median([r.commit_group_mean for r in group]),
            "non2xx": sum(r.non2xx for r in group), "errors": sum(r.errors for r in group),
            "keyed": first.keyed,
            "forwarded_share": _median([r.forwarded_share for r in group]),
        })
    return rows


def fmt(value, spec: str = ".0f", none: str = "-") -> str:
    return none if value is None else format(value, spec)


def _span(values: list[float]) -> str:
    low, high = min(values), max(values)
    return f"{low:.1f}" if f"{low:.1f}" == f"{high:.1f}" else f"{low:.1f}–{high:.1f}"


def render_compact(rows: list[dict], memory: dict | None) -> str:
    """The terminal table: the columns that answer "how fast, how far from the ceiling, did it
    converge, did it count right" in under 100 characters; `--markdown` has every column."""
    table = [["config", "inc/s", "vs bare", "vs 1 node", "p50", "p99", "converge", "repl p99",
              "final = acked"]]
    for row in rows:
        converge = "never" if row["converge_ms_max"] is None else fmt(row["converge_ms_median"])
        match = "yes" if row["counts_match"] else "NO"
        if row["non2xx"] or row["errors"]:
            match += f": {row['non2xx']} non-2xx, {row['errors']} errors"
        table.append([row["config"], fmt(row["increments_per_s"]),
                      fmt(row["ratio_to_bare"], ".2f"), fmt(row["ratio_to_one_node"], ".2f"),
                      fmt(row["p50_ms"], ".1f"), fmt(row["p99_ms"], ".1f"), converge,
                      fmt(row["delivery_p99_ms"]), match])

    def columns(table):
        widths = [max(len(line[i]) for line in table) for i in range(len(table[0]))]
        return ["  ".join(cell.ljust(widths[i]) if i in (0, len(line) - 1) else
                          cell.rjust(widths[i]) for i, cell in enumerate(line)).rstrip()
                for line in table]

    lines = columns(table)
    if max(len(line) for line in lines) > 100:
        # Long names (the keyed rows) leave no room for a failure's detail: it goes below.
        details = [f"{line[0]}: {line[-1].partition(': ')[2]}" for line in table[1:]
                   if ": " in line[-1]]
        lines = columns([line[:-1] + [line[-1].partition(": ")[0]] for line in table]) + details
    lines.append("(p50, p99, converge and repl p99 in ms; --markdown prints every column)")
    lines += forwarded_notes(rows)
    if memory:
        def mib(values):
            return " ".join(f"{v / 1024:.1f}" for v in values)
        step = memory["increments_per_step"]
        growth = ", ".join(f"{g / 1024:+.2f}" for g in memory["growth_second_kib"])
        lines += ["", f"memory check ({memory['cluster']}), RSS MB per node: after warm-up "
                      f"{mib(memory['rss_warm_kib'])}",
                  f"  after {step:,} increments {mib(memory['rss_first_kib'])}, after "
                  f"{2 * step:,} {mib(memory['rss_second_kib'])}",
                  f"  growth over the second {step:,}: {growth}"]
    return "\n".join(lines)


def forwarded_notes(rows: list[dict]) -> list[str]:
    """One line per keyed row: the share of its increments forwarded to their key's home."""
    return [f"{row['config']}: {100 * row['forwarded_share']:.1f} % of increments forwarded to "
            f"their key's home"
            for row in rows if row.get("keyed") and row.get("forwarded_share") is not None]


def _with_spread(row: dict, name: str, spec: str) -> str:
    """A median with the range of its repetitions, e.g. `240 (231–262)`."""
    text = fmt(row.get(name), spec)
    spread = row.get(name + "_spread")
    if row.get(name) is not None and spread and row["runs"] > 1:
        text += f" ({format(spread[0], spec)}–{format(spread[1], spec)})"
    return text


def render_table(rows: list[dict], memory: dict | None) -> str:
    header = ("| config | inc/s | vs bare | vs 1 node | p50 ms | p99 ms | converge ms | "
              "internal req/inc | replication p99 ms: delivered (≤100 ms) / visible | "
              "RSS MB warm → after | final = acked | CPU µs/inc | CPU vs bare | "
              "capacity of N machines | CPU µs per replicated event | commit ms (group) |")
    lines = [header, "|" + "---|" * (header.count("|") - 1)]
    for row in rows:
        rss = "-"
        if row["config"] != "bare" and None not in row["rss_warm_mib"] + row["rss_after_mib"]:
            rss = f"{_span(row['rss_warm_mib'])} → {_span(row['rss_after_mib'])}"
        converge = fmt(row["converge_ms_median"])
        if row["converge_ms_max"] is not None and row["runs"] > 1:
            converge += f" (max {row['converge_ms_max']:.0f})"
        elif row["converge_ms_max"] is None:
            converge = "not converged"
        repl = "-"
        if row["delivery_p99_ms"] is not None:
            repl = f"{row['delivery_p99_ms']:.0f}"
            if row["runs"] > 1:
                repl += f" (max {row['delivery_p99_ms_max']:.0f})"
            repl += f" ({100 * row['delivered_within_100ms']:.1f} %)"
        if row["replication_samples"]:
            repl += f" / {row['replication_p99_ms']:.0f} (n={row['replication_samples']})"
        if row["replication_missed"]:
            repl += f", {row['replication_missed']} over 5 s"
        commit = _with_spread(row, "commit_ms_mean", ".1f")
        if row.get("commit_group_mean") is not None:
            commit += f" ({row['commit_group_mean']:.1f})"
        match = "yes" if row["counts_match"] else "NO"
        if row["non2xx"] or row["errors"]:
            match += f" ({row['non2xx']} non-2xx, {row['errors']} errors)"
        lines.append(
            f"| {row['config']} | {fmt(row['increments_per_s'])} | "
            f"{fmt(row['ratio_to_bare'], '.2f')} | {fmt(row['ratio_to_one_node'], '.2f')} | "
            f"{fmt(row['p50_ms'], '.1f')} | {fmt(row['p99_ms'], '.1f')} | {converge} | "
            f"{fmt(row['internal_per_increment'], '.3f')} | {repl} | {rss} | {match} | "
            f"{_with_spread(row, 'cpu_us_per_increment', '.0f')} | "
            f"{_with_spread(row, 'cpu_vs_bare', '.2f')} | "
            f"{_with_spread(row, 'capacity_of_n_machines', '.2f')} | "
            f"{_with_spread(row, 'cpu_us_per_replicated_event', '.0f')} | {commit} |")
    notes = forwarded_notes(rows)
    if notes:
        lines += [""] + notes
    if memory:
        growth = ", ".join(f"{g / 1024:+.2f}" for g in memory["growth_second_kib"])
        lines.append("")
        lines.append(
            f"Memory check ({memory['cluster']}): RSS MB per node after warm-up "
            + ", ".join(f"{v / 1024:.1f}" for v in memory["rss_warm_kib"])
            + f"; after {memory['increments_per_step']:,} more "
            + ", ".join(f"{v / 1024:.1f}" for v in memory["rss_first_kib"])
            + f"; after {2 * memory['increments_per_step']:,} more "
            + ", ".join(f"{v / 1024:.1f}" for v in memory["rss_second_kib"])
            + f"; growth over the second {memory['increments_per_step']:,}: {growth} MB.")
    return "\n".join(lines)


def machine() -> dict:
    model = platform.processor() or "unknown"
    try:
        with open("/proc/cpuinfo") as f:
            for line in f:
                if line.startswith("model name"):
                    model = line.split(":", 1)[1].strip()
                    break
    except OSError:
        pass
    return {"nproc": os.cpu_count(), "cpu": model,
            "python": platform.python_version(), "platform": platform.platform()}
