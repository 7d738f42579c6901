"""The bulk check of `bin/dcounter-bench --bulk`: bulk increments (`POST /counter/increments`,
100 items over 10 counters a request) against one durable node and a three-node durable cluster.

What it reports per cluster: increments (items) acknowledged per second, CPU µs per item of every
node, the largest replication backlog any link showed during the load (sampled from `/metrics`
every 0.2 s), and whether every node showed the acknowledged total of every counter afterwards.
"""

from __future__ import annotations

import json
import threading
import time

from dcounter.benchload import Load
from dcounter.benchprocs import cpu_seconds, cpu_us_per, metric_samples, start_cluster
from dcounter.benchreport import fmt

COUNTERS = [f"bulk-{i}" for i in range(10)]
ITEMS = 100  # per request, spread round-robin over COUNTERS
BODY = json.dumps({"increments": [{"counter": COUNTERS[i % len(COUNTERS)], "delta": 1}
                                  for i in range(ITEMS)]}, separators=(",", ":"))


class BacklogWatch:
    """The largest `dcounter_replication_backlog_events` of any link while it runs."""

    def __init__(self, ports: list[int], interval: float = 0.2):
        self.ports = ports
        self.interval = interval
        self.largest = 0
        self.done = threading.Event()
        self.thread = threading.Thread(target=self._run, name="backlog-watch", daemon=True)
        self.thread.start()

    def _run(self) -> None:
        while not self.done.wait(self.interval):
            for port in self.ports:
                try:
                    samples = metric_samples(port)
                except Exception:  # a slow scrape under load: the next one counts
                    continue
                for name, value in samples:
                    if name.startswith("dcounter_replication_backlog_events"):
                        self.largest = max(self.largest, int(float(value)))

    def stop(self) -> int:
        self.done.set()
        self.thread.join(timeout=10)
        return self.largest


def bulk_run(bench, size: int) -> dict:
    """One bulk run against a fresh durable cluster of `size` nodes."""
    args = bench.args
    target = start_cluster(bench.procs, bench.workdir, size, True, args.node_args)
    try:
        cpu_before = [cpu_seconds(pid) for pid in target.pids]
        start = time.monotonic() + 0.3
        stop = start + args.duration
        watch = BacklogWatch(target.ports)
        load = Load(bench, target.ports, args.bulk_connections, start, stop,
                    path="/counter/increments", body=BODY)
        result = load.wait(args.duration + 60)
        per_counter = result.acknowledged * ITEMS // len(COUNTERS)
        shown = all(bench.wait_all_show(target, name, per_counter, 60.0) for name in COUNTERS)
        largest = watch.stop()
        items = result.acknowledged * ITEMS
        cpu_us = cpu_us_per(cpu_before, [cpu_seconds(pid) for pid in target.pids], items)
        return {"config": target.name, "nodes": size, "requests": result.acknowledged,
                "increments_per_s": items / args.duration, "cpu_us_per_increment": cpu_us,
                "largest_backlog_events": largest, "non2xx": result.non2xx,
                "errors": result.errors, "counts_match": shown}
    finally:
        bench.procs.stop(target.procs)


def bulk_check(bench) -> list[dict]:
    return [bulk_run(bench, size) for size in (1, 3)]


def render(results: list[dict]) -> str:
    lines = [f"Bulk increments ({ITEMS} items over {len(COUNTERS)} counters a request, "
             f"durable):"]
    for r in results:
        cpu = fmt(r["cpu_us_per_increment"], ".1f")
        lines.append(f"  {r['config']}: {r['increments_per_s']:.0f} increments/s "
                     f"({r['requests']} requests), CPU µs/increment {cpu}, largest replication "
                     f"backlog {r['largest_backlog_events']} events, non-2xx {r['non2xx']}, "
                     f"errors {r['errors']}, every node shows the total: "
                     f"{'yes' if r['counts_match'] else 'NO'}")
    return "\n".join(lines)
