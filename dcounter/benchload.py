"""The benchmark's load: wrk or the Python generator, and the probes that run beside it.

* `Load`: one generator process per node, the connections split between them, POSTing between
  a shared start and deadline (or until a budget of requests is sent); every request sent gets
  its answer before the generator stops and reports (a `DCBENCH {...}` line), so the
  acknowledged increments are exact. wrk runs a Lua script (`wrk_script`); the Python generator
  is `load_worker` (run as `python -m dcounter.bench --load-worker SPEC`). Keyed loads give
  every increment its own Idempotency-Key.
* `Converge`: from the end of the load, how long until every node shows the final total.
* `Probe`: during the load, the replication latency of single increments.

Processes are started through the benchmark's `Processes` (benchprocs.py); nothing here
computes the report.
"""

from __future__ import annotations

import http.client
import json
import math
import os
import re
import shutil
import signal
import socket
import subprocess
import sys
import threading
import time
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass, field
from typing import TYPE_CHECKING

from dcounter.benchprocs import Client, python_env

if TYPE_CHECKING:
    from dcounter.bench import Bench

BENCH_COUNTER = "bench"
WARMUP_COUNTER = "warmup"
PROBE_COUNTER = "probe"
QUANTILES = 1000  # latency quantile points each load process reports


# -- load generation ---------------------------------------------------------------------------

WRK_SCRIPT = r"""
-- dcounter-bench: POST between a shared start and deadline (CLOCK_MONOTONIC), or until a
-- budget of requests is sent; every request sent gets its answer before wrk stops.
local ffi = require("ffi")
ffi.cdef[[
typedef struct { long tv_sec; long tv_nsec; } dcbench_timespec;
int clock_gettime(int clk_id, dcbench_timespec *tp);
]]
local ts = ffi.new("dcbench_timespec")
local function now()
  ffi.C.clock_gettime(1, ts)
  return tonumber(ts.tv_sec) + tonumber(ts.tv_nsec) / 1e9
end

wrk.method = "POST"
wrk.headers["Content-Type"] = "application/json"
local start_at, stop_at, budget, sent = 0, math.huge, 0, 0
KEYED_REQUEST

function init(args)
  start_at = tonumber(args[1])
  stop_at = tonumber(args[2])
  budget = tonumber(args[3])
  wrk.body = args[4]
end

function delay()
  local t = now()
  if t >= stop_at or (budget > 0 and sent >= budget) then
    return 3600000
  end
  sent = sent + 1
  if t < start_at then
    return (start_at - t) * 1000
  end
  return 0
end

function done(summary, latency, requests)
  local q = {}
  for i = 0, QUANTILES - 1 do
    q[#q + 1] = string.format("%d", latency:percentile((i + 0.5) * 100 / QUANTILES))
  end
  local e = summary.errors
  io.write(string.format('DCBENCH {"requests":%d,"non2xx":%d,"errors":%d,' ..
                         '"quantiles_us":[%s]}\n', summary.requests, e.status,
                         e.connect + e.read + e.write + e.timeout, table.concat(q, ",")))
end
"""

# Keyed runs: a unique Idempotency-Key per request, `<prefix>-<thread>-<n>` (the prefix is random
# per wrk process, the thread numbered in `setup`, n counts the thread's requests). Only keyed
# runs define `request()`: with it wrk builds every request anew, which plain runs need not pay.
# It comes before `init`, which sets the prefix: a local declared after it would stay empty.
WRK_KEYED = r"""
local threads = 0
function setup(thread)
  threads = threads + 1
  thread:set("thread_id", threads)
end

local key_prefix, keyed_sent = "", 0
function request()
  keyed_sent = keyed_sent + 1
  return wrk.format(nil, nil, {["Content-Type"] = "application/json",
    ["Idempotency-Key"] = string.format("%s-%d-%d", key_prefix, thread_id or 0, keyed_sent)})
end
"""


def wrk_script(keyed: bool) -> str:
    """The Lua script for wrk; its arguments are the start, the deadline, the budget, the body
    and (keyed) the key prefix."""
    text = WRK_SCRIPT.replace("QUANTILES", str(QUANTILES))
    if not keyed:
        return text.replace("KEYED_REQUEST\n", "")
    text = text.replace("KEYED_REQUEST\n", WRK_KEYED)
    return text.replace("  wrk.body = args[4]\n", "  wrk.body = args[4]\n  key_prefix = args[5]\n")


def key_prefix() -> str:
    """A random prefix for one load process's idempotency keys, so no two runs share a key."""
    return os.urandom(6).hex()


def idempotency_key(prefix: str, thread: int, n: int) -> str:
    """The Python load generator's key for the n-th request of one connection thread."""
    return f"{prefix}-{thread}-{n}"


@dataclass
class LoadResult:
    requests: int = 0
    non2xx: int = 0
    errors: int = 0
    quantiles: list[tuple[float, float]] = field(default_factory=list)  # (µs, weight)

    @property
    def acknowledged(self) -> int:
        return self.requests - self.non2xx

    def add(self, report: dict) -> None:
        self.requests += report["requests"]
        self.non2xx += report["non2xx"]
        self.errors += report["errors"]
        points = report["quantiles_us"]
        if report["requests"] and points:
            weight = report["requests"] / len(points)
            self.quantiles.extend((float(v), weight) for v in points)

    def percentile(self, p: float) -> float | None:
        """Latency percentile in milliseconds, merged over every load process."""
        if not self.quantiles:
            return None
        points = sorted(self.quantiles)
        total = sum(w for _, w in points)
        rank, seen = p / 100 * total, 0.0
        for value, weight in points:
            seen += weight
            if seen >= rank:
                return value / 1000
        return points[-1][0] / 1000


def split(total: int, parts: int) -> list[int]:
    return [total // parts + (1 if i < total % parts else 0) for i in range(parts)]


class Load:
    """One load (a set of generator processes) against a target's ports."""

    def __init__(self, bench: "Bench", ports: list[int], connections: int, start: float,
                 stop: float, budget: int = 0, counter: str = BENCH_COUNTER,
                 keyed: bool = False, path: str = "/counter/increment",
                 body: str | None = None):
        self.bench = bench
        self.ports = ports
        self.start_at = start
        self.stop_at = stop
        self.body = body or json.dumps({"counter": counter}, separators=(",", ":"))
        self.procs: list[subprocess.Popen] = []
        self.outputs: list[str] = []
        conns = split(max(connections, len(ports)), len(ports))
        budgets = split(budget, len(ports)) if budget else [0] * len(ports)
        grace = bench.grace
        run_for = max(1, math.ceil(stop - time.monotonic() + grace)) if stop != math.inf \
            else 3600
        for i, port in enumerate(ports):
            out = os.path.join(bench.workdir, f"load-{bench.next_id()}.out")
            self.outputs.append(out)
            if bench.loadgen == "wrk":
                args = ["wrk", "-t1", f"-c{conns[i]}", f"-d{run_for}s", "--timeout", "30s",
                        "-s", bench.wrk_scripts[keyed],
                        f"http://127.0.0.1:{port}{path}",
                        "--", repr(start), repr(stop if stop != math.inf else 1e12),
                        str(budgets[i]), self.body] + ([key_prefix()] if keyed else [])
            else:
                spec = {"port": port, "connections": conns[i], "start": start,
                        "stop": stop if stop != math.inf else 1e12, "budget": budgets[i],
                        "body": self.body, "path": path,
                        "hard_stop": time.monotonic() + run_for,
                        "key_prefix": key_prefix() if keyed else None}
                args = [sys.executable, "-m", "dcounter.bench", "--load-worker",
                        json.dumps(spec)]
            with open(out, "wb") as f:
                self.procs.append(bench.procs.spawn(args, stdout=f, stderr=subprocess.STDOUT,
                                                    env=python_env()))

    def interrupt(self) -> None:
        """Stop early (budget loads): wrk and the Python workers report on SIGINT."""
        for proc in self.procs:
            if proc.poll() is None:
                os.kill(proc.pid, signal.SIGINT)

    def wait(self, timeout: float) -> LoadResult:
        deadline = time.monotonic() + timeout
        result = LoadResult()
        for proc, out in zip(self.procs, self.outputs):
            try:
                proc.wait(max(0.1, deadline - time.monotonic()))
            except subprocess.TimeoutExpired:
                self.bench.procs.stop([proc])
            with open(out, errors="replace") as f:
                text = f.read()
            reports = [line for line in text.splitlines() if line.startswith("DCBENCH ")]
            if not reports:
                raise RuntimeError(f"load generator gave no report (see {out}): {text[-500:]}")
            result.add(json.loads(reports[-1][len("DCBENCH "):]))
        return result


def load_worker(spec: dict) -> int:
    """The Python load generator: keep-alive connections, one thread each, POSTing between
    `start` and `stop` (monotonic) or until `budget` requests are sent."""
    stop_flag = threading.Event()
    signal.signal(signal.SIGINT, lambda *_: stop_flag.set())
    lock = threading.Lock()
    sent = [0]
    latencies: list[float] = []
    counts = {"requests": 0, "non2xx": 0, "errors": 0}
    body = spec["body"].encode()
    path = spec.get("path", "/counter/increment")

    def may_send() -> bool:
        if stop_flag.is_set() or time.monotonic() >= spec["stop"] or \
                time.monotonic() >= spec["hard_stop"]:
            return False
        with lock:
            if spec["budget"] and sent[0] >= spec["budget"]:
                return False
            sent[0] += 1
        return True

    def connection(thread: int) -> None:
        mine, ok, bad, errors = [], 0, 0, 0
        headers = {"Content-Type": "application/json"}
        prefix, n = spec.get("key_prefix"), 0
        conn = None
        pause = spec["start"] - time.monotonic()
        if pause > 0:
            time.sleep(pause)
        while may_send():
            try:
                if conn is None:
                    conn = http.client.HTTPConnection("127.0.0.1", spec["port"], timeout=30)
                    conn.connect()
                    conn.sock.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)
                if prefix:
                    n += 1
                    headers["Idempotency-Key"] = idempotency_key(prefix, thread, n)
                began = time.monotonic()
                conn.request("POST", path, body=body, headers=headers)
                response = conn.getresponse()
                response.read()
                mine.append(time.monotonic() - began)
                if 200 <= response.status < 300:
                    ok += 1
                else:
                    bad += 1
            except (OSError, http.client.HTTPException):
                errors += 1
                if conn is not None:
                    conn.close()
                conn = None
        if conn is not None:
            conn.close()
        with lock:
            latencies.extend(mine)
            counts["requests"] += ok + bad
            counts["non2xx"] += bad
            counts["errors"] += errors

    threads = [threading.Thread(target=connection, args=(i + 1,), daemon=True)
               for i in range(spec["connections"])]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join(max(0.1, spec["hard_stop"] + 30 - time.monotonic()))
    latencies.sort()
    quantiles = []
    if latencies:
        for i in range(QUANTILES):
            index = min(len(latencies) - 1, int((i + 0.5) / QUANTILES * len(latencies)))
            quantiles.append(int(latencies[index] * 1e6))
    counts["quantiles_us"] = quantiles
    print("DCBENCH " + json.dumps(counts), flush=True)
    return 0

# -- beside the load: convergence and replication probes -------------------------------------

class Converge:
    """Samples every node's count of `counter` from the end of the load until all show the
    final total (known once the load generator has reported), within a bound."""

    def __init__(self, ports: list[int], start_at: float, limit: float):
        self.ports = ports
        self.start_at = start_at
        self.limit = limit
        self.target: int | None = None
        self.first_seen: dict[int, float] = {}
        self.last: dict[int, int] = {}
        self._done = threading.Event()
        self._thread = threading.Thread(target=self._run, name="converge", daemon=True)
        self._thread.start()

    def _run(self) -> None:
        clients = [Client(port) for port in self.ports]
        try:
            pause = self.start_at - time.monotonic()
            if pause > 0:
                time.sleep(pause)
            history: dict[int, list[tuple[float, int]]] = {i: [] for i in range(len(clients))}
            while time.monotonic() < self.start_at + self.limit:
                for i, client in enumerate(clients):
                    try:
                        value = client.count(BENCH_COUNTER)
                    except (OSError, RuntimeError, http.client.HTTPException, ValueError):
                        continue
                    self.last[i] = value
                    history[i].append((time.monotonic(), value))
                target = self.target
                if target is not None and len(self.last) == len(clients) and \
                        all(v == target for v in self.last.values()):
                    for i, samples in history.items():
                        self.first_seen[i] = next(t for t, v in samples if v == target)
                    return
                time.sleep(0.001)
        finally:
            for client in clients:
                client.close()
            self._done.set()

    def finish(self, target: int) -> float | None:
        """Seconds from the end of the load until the last node showed `target`."""
        self.target = target
        self._done.wait(self.limit + 5)
        if len(self.first_seen) != len(self.ports):
            return None
        return max(self.first_seen.values()) - self.start_at


class Probe:
    """Every `interval`, increments `probe` at the next node and polls every other node until
    it shows the increment; records the time from sending it to the read that showed it."""

    def __init__(self, ports: list[int], start_at: float, stop_at: float, interval: float,
                 give_up: float = 5.0):
        self.ports = ports
        self.start_at = start_at
        self.stop_at = stop_at
        self.interval = interval
        self.give_up = give_up
        self.samples: list[float] = []
        self.missed = 0
        self._thread = threading.Thread(target=self._run, name="probe", daemon=True)
        self._thread.start()

    def _run(self) -> None:
        clients = [Client(port) for port in self.ports]
        pool = ThreadPoolExecutor(max_workers=len(clients))
        try:
            expected = 0
            next_at = self.start_at + self.interval / 2
            origin = 0
            while True:
                pause = next_at - time.monotonic()
                if pause > 0:
                    time.sleep(pause)
                if time.monotonic() >= self.stop_at:
                    return
                began = time.monotonic()
                try:
                    status = clients[origin].increment(PROBE_COUNTER)
                except (OSError, http.client.HTTPException):
                    status = 0
                if status == 200:
                    expected += 1
                    others = [c for i, c in enumerate(clients) if i != origin]
                    seen = list(pool.map(lambda c: self._poll(c, expected, began), others))
                    if None in seen:
                        self.missed += 1
                        # Wait for the laggard before the next probe; a bounded wait.
                        list(pool.map(lambda c: self._poll(c, expected, time.monotonic()),
                                      others))
                    else:
                        self.samples.append(max(seen) - began)
                origin = (origin + 1) % len(clients)
                next_at = max(next_at + self.interval, time.monotonic())
        finally:
            pool.shutdown(wait=True)
            for client in clients:
                client.close()

    def _poll(self, client: Client, expected: int, began: float) -> float | None:
        while (now := time.monotonic()) < began + self.give_up:
            try:
                if client.count(PROBE_COUNTER) >= expected:
                    return time.monotonic()
            except (OSError, RuntimeError, http.client.HTTPException, ValueError):
                pass
            # Reads every millisecond for a 100 ms delay are thousands of requests a second on
            # a five-node cluster, which would show in its rate and CPU per increment: poll
            # at a fifth of the time waited so far (1 to 10 ms), about 20 reads a probe.
            time.sleep(min(0.01, max(0.001, (now - began) / 5)))
        return None

    def join(self, timeout: float) -> None:
        self._thread.join(timeout)


# -- the tool's name --------------------------------------------------------------------------

def wrk_version() -> str | None:
    if not shutil.which("wrk"):
        return None
    try:
        out = subprocess.run(["wrk", "-v"], capture_output=True, text=True, timeout=5)
    except (OSError, subprocess.SubprocessError):
        return None
    return wrk_name(out.stdout + out.stderr)


def wrk_name(version_output: str) -> str | None:
    """"wrk 4.1.0 [epoll] Copyright (C) 2012 Will Glozer" -> "wrk 4.1.0": the header names
    the tool and its version, not its banner."""
    match = re.match(r"\s*(wrk\s+\S+)", version_output)
    return match.group(1) if match else None
