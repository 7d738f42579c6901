"""`dcounter-bench`: how fast dcounter is next to the ceiling of its own architecture.

Theory of operation
-------------------
Everything runs on loopback, in processes this module starts and ends by pid:

* the *bare* server: a `ThreadingHTTPServer` holding a lock and an int (HTTP/1.1, keep-alive,
  TCP_NODELAY), the ceiling for a Python thread-per-connection server on this machine;
* dcounter clusters of 1, 3 and 5 nodes, durable (data directories in a temporary directory)
  and in-memory, each started fresh for a run and stopped after it;
* the load: `wrk` when it is installed (one process per node, connections split, a Lua script
  that POSTs between a shared start and deadline), else a multi-process Python keep-alive
  generator. Either way every request sent gets its answer before the generator stops, so the
  acknowledged increments (2xx) are exact.
* with `--keyed`, every cluster also runs with a unique Idempotency-Key per increment, as the
  client library sends them (rows "..., keyed"; their ratios are to the plain runs), and the
  share of increments forwarded to their key's home (`dcounter_increments_forwarded_total`).

Runs are interleaved (bare, cluster, cluster, bare, ...) and repeated, and the table quotes
medians; a ratio to the bare server is each run's rate over the bare runs just before and after
it (a ratio to one node: over the one-node run of the same repetition), the median of those,
so drift on a shared machine affects both sides of a ratio alike. Per run:
acknowledged increments/s, p50/p99 latency at saturation, the time from the end of the load
until every node shows the final total, internal HTTP requests per increment (from every
node's `dcounter_http_requests_total`), each node's resident memory after a warm-up and after
the run, the replication latency (a probe increments counter `probe` at one node every
`probe_interval` alongside the load and polls the other nodes until all show it; measured from
sending the increment to receiving the read that shows it, so it is an upper bound),
whether every node's final count equals the acknowledged increments, and the CPU time (user +
system, `/proc/PID/stat`) of every node process from just before the load until every node
shows the total, per acknowledged increment. From the CPU per increment, against the one-node
run of the same mode and repetition: the projected capacity of N separate machines (N x
one-node cost / N-node cost; N would be linear) and what one replicated event costs, sender and
receiver together ((N-node cost - one-node cost) / (N - 1)). A separate memory check
drives a three-node durable cluster with a fixed number of increments and compares resident
memory after a warm-up and after 100 000 and 200 000 more.

Every wait is bounded; on an exception or Ctrl-C the processes started here are stopped.

The parts: benchprocs.py starts and stops the processes and reads what they show (/proc,
/metrics); benchload.py drives the load and the probes beside it; benchreport.py turns the runs
into medians, ratios and tables. This module holds the command line and runs the plan.
"""

from __future__ import annotations

import argparse
import json
import math
import os
import shutil
import signal
import sys
import tempfile
import time
from concurrent.futures import ThreadPoolExecutor

from dcounter.benchload import (BENCH_COUNTER, WARMUP_COUNTER, Converge, Load, Probe,
                                load_worker, split, wrk_script, wrk_version)
from dcounter.benchprocs import (Client, Processes, Scrape, Target, cpu_seconds, cpu_us_per,
                                 histogram_quantile, rss_kib, scrape, serve_bare, start_bare,
                                 start_cluster)
from dcounter.benchreport import (RunResult, fmt, forwarded_share, machine, render_compact,
                                  render_table, summarise)

PROG = "dcounter-bench"


# -- the runs: warm-up, one measured run, the memory check ----------------------------------

class Bench:
    def __init__(self, args):
        self.args = args
        self.procs = Processes()
        self.workdir = tempfile.mkdtemp(prefix="dcounter-bench-")
        self.loadgen = choose_loadgen(args.loadgen)
        self.wrk_scripts = {}  # keyed -> path
        for keyed in (False, True):
            self.wrk_scripts[keyed] = os.path.join(self.workdir,
                                                   f"increment{'-keyed' if keyed else ''}.lua")
            with open(self.wrk_scripts[keyed], "w") as f:
                f.write(wrk_script(keyed))
        self.grace = 0.5  # seconds for the answers still in flight at the deadline
        self._ids = 0

    def next_id(self) -> int:
        self._ids += 1
        return self._ids

    def close(self) -> None:
        self.procs.stop_all()
        shutil.rmtree(self.workdir, ignore_errors=True)

    def log(self, message: str) -> None:
        if not self.args.json:
            print(message, file=sys.stderr, flush=True)

    # -- warm-up ----------------------------------------------------------------------------
    def warm_up(self, target: Target) -> None:
        """`--warmup` increments spread over every node from a few keep-alive connections,
        then wait until every node shows all of them."""
        per_client = split(self.args.warmup, 2 * len(target.ports))
        clients = target.clients() + target.clients()

        def drive(client: Client, count: int) -> int:
            try:
                return sum(client.increment(WARMUP_COUNTER) == 200 for _ in range(count))
            finally:
                client.close()

        with ThreadPoolExecutor(max_workers=len(clients)) as pool:
            acknowledged = sum(pool.map(drive, clients, per_client))
        if target.kind == "bare":
            target.offset = acknowledged
        else:
            self.wait_all_show(target, WARMUP_COUNTER, acknowledged, 10.0)

    def wait_all_show(self, target: Target, counter: str, value: int, timeout: float) -> bool:
        clients = target.clients()
        deadline = time.monotonic() + timeout
        try:
            while time.monotonic() < deadline:
                if all(c.count(counter) == value for c in clients):
                    return True
                time.sleep(0.01)
            return False
        finally:
            for client in clients:
                client.close()

    # -- one run ------------------------------------------------------------------------------
    def run(self, kind: str, size: int = 1, durable: bool | None = None,
            keyed: bool = False) -> RunResult:
        if kind == "bare":
            target = start_bare(self.procs, self.workdir)
        else:
            target = start_cluster(self.procs, self.workdir, size, durable,
                                   self.args.node_args, keyed)
        try:
            return self._measure(target, size, durable, keyed)
        finally:
            self.procs.stop(target.procs)

    def _measure(self, target: Target, size: int, durable: bool | None,
                 keyed: bool = False) -> RunResult:
        args = self.args
        self.warm_up(target)
        rss_warm = [rss_kib(pid) for pid in target.pids]
        dcounter = target.kind == "dcounter"
        before = scrape(target.ports) if dcounter else Scrape()
        cpu_before = [cpu_seconds(pid) for pid in target.pids]
        start = time.monotonic() + 0.3
        stop = start + args.duration
        load = Load(self, target.ports, args.connections, start, stop, keyed=keyed)
        converge = Converge(target.ports, stop, limit=10.0)
        probe = Probe(target.ports, start, stop, args.probe_interval) \
            if dcounter and size > 1 else None
        result = load.wait(args.duration + 60)
        expected = result.acknowledged + target.offset
        converge_s = converge.finish(expected)
        if probe is not None:
            probe.join(10.0)
        # From before the load to every node showing the total: replication's cost included.
        cpu_us = cpu_us_per(cpu_before, [cpu_seconds(pid) for pid in target.pids],
                            result.acknowledged)
        clients = target.clients()
        try:
            finals = [c.count(BENCH_COUNTER) for c in clients]
        finally:
            for client in clients:
                client.close()
        internal, delay_p99, within = None, None, None
        heartbeats = per_batch = None
        commit_ms = group = forwarded = None
        if dcounter:
            moved = scrape(target.ports) - before
            if keyed:
                forwarded = forwarded_share(moved.forwarded, result.acknowledged)
            internal = moved.internal / max(1, result.acknowledged)
            heartbeats = moved.heartbeats / max(1, result.acknowledged)
            if moved.batches_sent > 0:
                per_batch = moved.events_sent / moved.batches_sent
            if moved.commits > 0:
                commit_ms = 1000 * moved.commit_seconds / moved.commits
                group = moved.committed_jobs / moved.commits
            if size > 1:
                delay_p99 = histogram_quantile(moved.delay_buckets, 0.99)
                total = moved.delay_buckets.get(math.inf, 0)
                within = moved.delay_buckets.get(0.1, 0) / total if total else None
        rss_after = [rss_kib(pid) for pid in target.pids]
        return RunResult(
            config=target.name, kind=target.kind, nodes=size, durable=durable,
            increments_per_s=result.acknowledged / args.duration,
            acknowledged=result.acknowledged, non2xx=result.non2xx, errors=result.errors,
            p50_ms=result.percentile(50), p99_ms=result.percentile(99),
            converge_ms=None if converge_s is None else converge_s * 1000,
            final_counts=finals, counts_match=all(v == expected for v in finals),
            internal_per_increment=internal, rss_warm_kib=rss_warm, rss_after_kib=rss_after,
            replication_ms=[s * 1000 for s in probe.samples] if probe else [],
            replication_missed=probe.missed if probe else 0,
            delivery_p99_ms=None if delay_p99 is None else delay_p99 * 1000,
            delivered_within_100ms=within, cpu_us_per_increment=cpu_us,
            commit_ms_mean=commit_ms, commit_group_mean=group, keyed=keyed,
            forwarded_share=forwarded, heartbeat_per_increment=heartbeats,
            events_per_batch=per_batch)

    # -- the memory check ---------------------------------------------------------------------
    def memory_check(self) -> dict:
        """A three-node durable cluster: RSS after a warm-up and after `memory_increments` and
        twice that many further increments."""
        args = self.args
        target = start_cluster(self.procs, self.workdir, 3, True, args.node_args)
        try:
            total = 0
            rss = {}
            steps = [("warm", args.memory_increments // 5),
                     ("first", args.memory_increments), ("second", args.memory_increments)]
            for label, count in steps:
                load = Load(self, target.ports, args.connections, time.monotonic() + 0.2,
                            math.inf, budget=count)
                total += count
                ok = self.wait_all_show(target, BENCH_COUNTER, total, count / 200 + 60)
                load.interrupt()
                result = load.wait(30)
                if not ok or result.acknowledged != count:
                    raise RuntimeError(f"memory check: {result.acknowledged} of {count} "
                                       f"increments acknowledged, nodes did not converge")
                rss[label] = [rss_kib(pid) for pid in target.pids]
            growth = [b - a for a, b in zip(rss["first"], rss["second"])]
            return {"cluster": target.name, "increments_per_step": args.memory_increments,
                    "rss_warm_kib": rss["warm"], "rss_first_kib": rss["first"],
                    "rss_second_kib": rss["second"], "growth_second_kib": growth,
                    "max_growth_kib": max(growth)}
        finally:
            self.procs.stop(target.procs)


def choose_loadgen(wanted: str) -> str:
    if wanted == "auto":
        return "wrk" if shutil.which("wrk") else "python"
    if wanted == "wrk" and not shutil.which("wrk"):
        raise SystemExit(f"{PROG}: error: wrk is not installed")
    return wanted


# -- main ------------------------------------------------------------------------------------

def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog=PROG, description="Benchmark dcounter clusters against a bare ThreadingHTTPServer "
                               "counter, all on loopback.")
    parser.add_argument("--quick", action="store_true",
                        help="one short repetition and a small memory check (about 70 s)")
    parser.add_argument("--json", action="store_true", help="print the results as JSON")
    parser.add_argument("--markdown", action="store_true",
                        help="print the full table (every column) in Markdown, as in the README")
    parser.add_argument("--duration", type=float, help="seconds of load per run (5; quick 2)")
    parser.add_argument("--reps", type=int, help="repetitions of every run (5; quick 1)")
    parser.add_argument("--warmup", type=int, help="warm-up increments per run (2000; "
                                                   "quick 1000)")
    parser.add_argument("--connections", type=int, default=32,
                        help="keep-alive connections in all, split over the nodes (32)")
    parser.add_argument("--bulk", action="store_true",
                        help="only the bulk check: 100-item bulk increments against one "
                             "durable node and three (about 30 s)")
    parser.add_argument("--bulk-connections", type=int, default=16,
                        help="with --bulk: keep-alive connections in all (16)")
    parser.add_argument("--sizes", default="1,3,5", help="cluster sizes (1,3,5)")
    parser.add_argument("--modes", default="durable,memory",
                        help="durable, memory or both (durable,memory)")
    parser.add_argument("--loadgen", choices=("auto", "wrk", "python"), default="auto",
                        help="load generator: wrk when installed (auto), or python")
    parser.add_argument("--probe-interval", type=float, default=0.1,
                        help="seconds between replication probes during the load (0.1)")
    parser.add_argument("--memory-increments", type=int,
                        help="increments per step of the memory check (100000; quick 10000; "
                             "0 skips it)")
    parser.add_argument("--node-args", type=str.split, default=[],
                        help="extra flags for every dcounter node, e.g. '--sync normal'")
    parser.add_argument("--keyed", action="store_true",
                        help="also run every cluster with a unique Idempotency-Key per increment "
                             "(rows \"..., keyed\"; such increments go to their key's home)")
    parser.add_argument("--memory-only", action="store_true",
                        help="run only the memory check")
    parser.add_argument("--stages", action="store_true",
                        help="profile the CPU per stage of an increment and a replicated event "
                             "instead (dcounter/stages.py; under a minute)")
    parser.add_argument("--serve-bare", action="store_true", help=argparse.SUPPRESS)
    parser.add_argument("--load-worker", help=argparse.SUPPRESS)
    return parser


def main(argv: list[str] | None = None) -> int:
    args = build_parser().parse_args(sys.argv[1:] if argv is None else argv)
    if args.serve_bare:
        return serve_bare()
    if args.load_worker:
        return load_worker(json.loads(args.load_worker))
    if args.stages:
        from dcounter import stages
        return stages.main(["--json"] if args.json else [])
    quick = args.quick
    args.duration = args.duration or (2.0 if quick else 5.0)
    args.reps = args.reps or (1 if quick else 5)
    args.warmup = args.warmup or (1000 if quick else 2000)
    if args.memory_increments is None:
        args.memory_increments = 10_000 if quick else 100_000
    sizes = [int(s) for s in args.sizes.split(",") if s.strip()]
    modes = [m.strip() for m in args.modes.split(",") if m.strip()]
    if not sizes or any(s < 1 for s in sizes) or not set(modes) <= {"durable", "memory"} or \
            not modes or args.duration <= 0 or args.reps < 1 or args.connections < 1:
        print(f"{PROG}: error: invalid --sizes, --modes, --duration, --reps or --connections",
              file=sys.stderr)
        return 2

    def interrupted(*_):
        raise KeyboardInterrupt

    signal.signal(signal.SIGTERM, interrupted)
    signal.signal(signal.SIGINT, signal.default_int_handler)  # even if started with it ignored
    bench = Bench(args)
    if args.bulk:
        from dcounter import benchbulk
        try:
            results = benchbulk.bulk_check(bench)
        except KeyboardInterrupt:
            print(f"{PROG}: interrupted; stopping the processes it started", file=sys.stderr)
            return 130
        finally:
            bench.close()
        print(json.dumps(results, indent=2) if args.json else benchbulk.render(results))
        return 0 if all(r["counts_match"] for r in results) else 1
    runs: list[RunResult] = []
    memory = None
    began = time.monotonic()
    try:
        bench.log(f"{PROG}: load generator {bench.loadgen}, {args.connections} connections, "
                  f"{args.duration:g} s per run, {args.reps} repetition(s)")
        for rep in range(0 if args.memory_only else args.reps):
            for size in sizes:
                plan = [("bare", 1, None, False)] + [("dcounter", size, mode == "durable", keyed)
                                                      for keyed in (False, True)[:1 + args.keyed]
                                                      for mode in modes]
                for kind, n, durable, keyed in plan:
                    run = bench.run(kind, n, durable, keyed)
                    run.rep = rep
                    runs.append(run)
                    bench.log(f"  rep {rep + 1}: {run.config}: {run.increments_per_s:.0f} inc/s, "
                              f"p99 {fmt(run.p99_ms, '.1f')} ms, converge "
                              f"{fmt(run.converge_ms)} ms, internal/inc "
                              f"{fmt(run.internal_per_increment, '.3f')} (heartbeats "
                              f"{fmt(run.heartbeat_per_increment, '.3f')}), events/batch "
                              f"{fmt(run.events_per_batch, '.1f')}, CPU µs/inc "
                              f"{fmt(run.cpu_us_per_increment)}, counts match "
                              f"{run.counts_match}")
        if args.memory_increments:
            bench.log(f"  memory check: {args.memory_increments:,} increments per step")
            memory = bench.memory_check()
    except KeyboardInterrupt:
        print(f"{PROG}: interrupted; stopping the processes it started", file=sys.stderr)
        return 130
    finally:
        bench.close()
    rows = summarise(runs)
    info = {"machine": machine(), "load_generator": bench.loadgen,
            "wrk": wrk_version() if bench.loadgen == "wrk" else None,
            "connections": args.connections, "duration_s": args.duration, "reps": args.reps,
            "elapsed_s": round(time.monotonic() - began, 1)}
    if args.json:
        print(json.dumps({**info, "summary": rows, "memory_check": memory,
                          "runs": [run.__dict__ for run in runs]}, indent=2))
    else:
        m = info["machine"]
        print(f"{m['nproc']} CPU(s), {m['cpu']}, Python {m['python']}; load generator: "
              f"{info['wrk'] or bench.loadgen}; {args.connections} connections; "
              f"{args.duration:g} s per run; medians of {args.reps} run(s); "
              f"{info['elapsed_s']} s in all")
        print()
        print(render_table(rows, memory) if args.markdown else render_compact(rows, memory))
    return 0


if __name__ == "__main__":
    sys.exit(main())
