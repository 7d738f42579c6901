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
"""

from __future__ import annotations

import argparse
import http.client
import json
import math
import os
import platform
import re
import shutil
import signal
import socket
import statistics
import subprocess
import sys
import tempfile
import threading
import time
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass, field
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer

PROG = "dcounter-bench"
ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
INTERNAL_ROUTES = ("/counter/replicate", "/nodes/heartbeat", "/nodes/join", "/counter/state",
                   "/nodes/leave")
BENCH_COUNTER = "bench"
WARMUP_COUNTER = "warmup"
PROBE_COUNTER = "probe"
QUANTILES = 1000  # latency quantile points each load process reports


# -- the bare server (run as its own process) ------------------------------------------------

class _BareHandler(BaseHTTPRequestHandler):
    protocol_version = "HTTP/1.1"

    def setup(self) -> None:
        super().setup()
        self.connection.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)

    def do_POST(self) -> None:
        length = int(self.headers.get("Content-Length") or 0)
        if length:
            self.rfile.read(length)
        server = self.server
        with server.lock:
            server.value += 1
            value = server.value
        self._reply(b'{"count":%d}' % value)

    def do_GET(self) -> None:
        with self.server.lock:
            value = self.server.value
        self._reply(b'{"count":%d}' % value)

    def _reply(self, body: bytes) -> None:
        self.send_response(200)
        self.send_header("Content-Type", "application/json")
        self.send_header("Content-Length", str(len(body)))
        self.end_headers()
        self.wfile.write(body)

    def log_message(self, format, *args) -> None:
        pass


def serve_bare() -> int:
    """A counter that is a lock and an int; prints its port, serves until SIGTERM."""
    server = ThreadingHTTPServer(("127.0.0.1", 0), _BareHandler)
    server.daemon_threads = True
    server.lock = threading.Lock()
    server.value = 0
    signal.signal(signal.SIGTERM, lambda *_: threading.Thread(target=server.shutdown).start())
    print(f"bare listening on 127.0.0.1:{server.server_address[1]}", flush=True)
    server.serve_forever()
    return 0


# -- processes -----------------------------------------------------------------------------

class Processes:
    """Every process the benchmark starts; `stop_all` ends them by pid."""

    def __init__(self):
        self._procs: list[subprocess.Popen] = []
        self._lock = threading.Lock()

    def spawn(self, args, **kwargs) -> subprocess.Popen:
        kwargs.setdefault("stdin", subprocess.DEVNULL)
        proc = subprocess.Popen(args, **kwargs)
        with self._lock:
            self._procs.append(proc)
        return proc

    def stop(self, procs, timeout: float = 10.0) -> None:
        procs = [p for p in procs if p.poll() is None]
        for proc in procs:
            try:
                os.kill(proc.pid, signal.SIGTERM)
            except ProcessLookupError:
                pass
        deadline = time.monotonic() + timeout
        for proc in procs:
            try:
                proc.wait(max(0.1, deadline - time.monotonic()))
            except subprocess.TimeoutExpired:
                os.kill(proc.pid, signal.SIGKILL)
                proc.wait(5)
        with self._lock:
            self._procs = [p for p in self._procs if p.poll() is None]

    def stop_all(self) -> None:
        with self._lock:
            procs = list(reversed(self._procs))
        self.stop(procs, timeout=5.0)


def _python_env() -> dict:
    env = dict(os.environ)
    env["PYTHONPATH"] = ROOT + (os.pathsep + env["PYTHONPATH"] if env.get("PYTHONPATH") else "")
    for name in list(env):
        if name.startswith("DCOUNTER_"):
            del env[name]
    return env


def _wait_listening(proc, out_path: str, marker: str, timeout: float = 20.0) -> int:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        with open(out_path, errors="replace") as f:
            for line in f:
                if marker in line and "listening on" in line:
                    return int(line.split("listening on", 1)[1].split()[0].rsplit(":", 1)[1])
        if proc.poll() is not None:
            raise RuntimeError(f"process exited with {proc.returncode} before listening "
                               f"(see {out_path})")
        time.sleep(0.02)
    raise RuntimeError(f"process not listening after {timeout}s (see {out_path})")


def cpu_seconds(pid: int) -> float | None:
    """User plus system CPU time of a process so far (its threads included), from /proc."""
    try:
        with open(f"/proc/{pid}/stat") as f:
            fields = f.read().rsplit(")", 1)[1].split()
    except (OSError, IndexError):
        return None
    # After the command name: state is field 3, utime and stime are fields 14 and 15.
    return (int(fields[11]) + int(fields[12])) / os.sysconf("SC_CLK_TCK")


def rss_kib(pid: int) -> int | None:
    try:
        with open(f"/proc/{pid}/status") as f:
            for line in f:
                if line.startswith("VmRSS:"):
                    return int(line.split()[1])
    except OSError:
        pass
    return None


# -- a tiny keep-alive client ----------------------------------------------------------------

class Client:
    def __init__(self, port: int, timeout: float = 5.0):
        self.port = port
        self.timeout = timeout
        self._conn: http.client.HTTPConnection | None = None

    def request(self, method: str, path: str, body: bytes | None = None) -> tuple[int, bytes]:
        for attempt in (1, 2):
            if self._conn is None:
                self._conn = http.client.HTTPConnection("127.0.0.1", self.port,
                                                        timeout=self.timeout)
                self._conn.connect()
                self._conn.sock.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)
            try:
                headers = {"Content-Type": "application/json"} if body is not None else {}
                self._conn.request(method, path, body=body, headers=headers)
                response = self._conn.getresponse()
                return response.status, response.read()
            except (OSError, http.client.HTTPException):
                self.close()
                if attempt == 2 or method != "GET":
                    raise
        raise AssertionError("unreachable")

    def count(self, counter: str) -> int:
        status, body = self.request("GET", f"/counter/count?counter={counter}")
        if status != 200:
            raise RuntimeError(f"count on port {self.port}: HTTP {status}")
        return json.loads(body)["count"]

    def increment(self, counter: str) -> int:
        status, _ = self.request("POST", "/counter/increment",
                                 json.dumps({"counter": counter}).encode())
        return status

    def close(self) -> None:
        if self._conn is not None:
            self._conn.close()
            self._conn = None


# -- targets: the bare server or a cluster ---------------------------------------------------

@dataclass
class Target:
    name: str
    pids: list[int]
    ports: list[int]
    procs: list = field(default_factory=list)
    kind: str = "dcounter"  # or "bare"
    offset: int = 0  # the bare server counts every increment in one int, warm-up included

    def clients(self) -> list[Client]:
        return [Client(port) for port in self.ports]


def start_bare(procs: Processes, workdir: str) -> Target:
    out = os.path.join(workdir, "bare.out")
    with open(out, "wb") as f:
        proc = procs.spawn([sys.executable, "-m", "dcounter.bench", "--serve-bare"], stdout=f,
                           stderr=subprocess.STDOUT, cwd=workdir, env=_python_env())
    port = _wait_listening(proc, out, "bare")
    return Target("bare", [proc.pid], [port], [proc], kind="bare")


def config_name(size: int, durable: bool, keyed: bool = False) -> str:
    """A cluster row's name: "3 nodes, durable", or "3 nodes, durable, keyed" for the runs
    whose every increment carries its own Idempotency-Key."""
    name = f"{size} node{'s' if size > 1 else ''}, {'durable' if durable else 'in-memory'}"
    return name + ", keyed" if keyed else name


def start_cluster(procs: Processes, workdir: str, size: int, durable: bool,
                  extra: list[str] | None = None, keyed: bool = False) -> Target:
    name = config_name(size, durable, keyed)
    run_dir = tempfile.mkdtemp(prefix=f"n{size}{'d' if durable else 'm'}-", dir=workdir)
    started, outputs = [], []

    def spawn(i: int, seed: str | None) -> None:
        args = [sys.executable, "-m", "dcounter", "--port", "0", "--log-level", "WARNING"]
        args += ["--data-dir", os.path.join(run_dir, f"data-{i}")] if durable \
            else ["--in-memory"]
        if seed:
            args += ["--peers", seed]
        args += extra or []
        out = os.path.join(run_dir, f"node-{i}.out")
        with open(out, "wb") as f:
            started.append(procs.spawn(args, stdout=f, stderr=subprocess.STDOUT, cwd=run_dir,
                                       env=_python_env()))
        outputs.append(out)

    try:
        # The first node is every other node's seed; the others start side by side.
        spawn(0, None)
        ports = [_wait_listening(started[0], outputs[0], "dcounter")]
        for i in range(1, size):
            spawn(i, f"localhost:{ports[0]}")
        ports += [_wait_listening(p, o, "dcounter") for p, o in zip(started[1:], outputs[1:])]
        target = Target(name, [p.pid for p in started], ports, started)
        wait_membership(target)
        return target
    except BaseException:
        procs.stop(started)
        raise


def wait_membership(target: Target, timeout: float = 30.0) -> None:
    if len(target.ports) == 1:
        return
    clients = target.clients()
    deadline = time.monotonic() + timeout
    try:
        while time.monotonic() < deadline:
            complete = True
            for client in clients:
                status, body = client.request("GET", "/nodes")
                if status != 200 or len(json.loads(body)) != len(clients) - 1:
                    complete = False
                    break
            if complete:
                return
            time.sleep(0.05)
    finally:
        for client in clients:
            client.close()
    raise RuntimeError(f"{target.name}: nodes did not all see each other within {timeout}s")


DELAY = "dcounter_replication_delay_seconds"


@dataclass
class Scrape:
    """What the benchmark reads from the nodes' /metrics, summed over the nodes."""
    internal: float = 0.0  # dcounter_http_requests_total over INTERNAL_ROUTES
    delay_buckets: dict[float, float] = field(default_factory=dict)  # le -> cumulative count
    commits: float = 0.0  # dcounter_commit_seconds_count: groups committed
    commit_seconds: float = 0.0  # dcounter_commit_seconds_sum
    committed_jobs: float = 0.0  # dcounter_commit_group_size_sum: requests in those groups
    forwarded: float = 0.0  # dcounter_increments_forwarded_total: keyed, sent to their home
    heartbeats: float = 0.0  # dcounter_http_requests_total of /nodes/heartbeat (in internal)
    batches_sent: float = 0.0  # dcounter_replicate_batches_sent_total
    events_sent: float = 0.0  # dcounter_replicate_events_sent_total

    def __sub__(self, other: "Scrape") -> "Scrape":
        return Scrape(self.internal - other.internal,
                      {le: n - other.delay_buckets.get(le, 0)
                       for le, n in self.delay_buckets.items()},
                      self.commits - other.commits, self.commit_seconds - other.commit_seconds,
                      self.committed_jobs - other.committed_jobs,
                      self.forwarded - other.forwarded,
                      self.heartbeats - other.heartbeats,
                      self.batches_sent - other.batches_sent,
                      self.events_sent - other.events_sent)


def metric_samples(port: int) -> list[tuple[str, str]]:
    """(name with labels, value) of every sample in the node's `/metrics`."""
    client = Client(port)
    try:
        status, body = client.request("GET", "/metrics")
    finally:
        client.close()
    if status != 200:
        raise RuntimeError(f"/metrics on port {port}: HTTP {status}")
    return [(name, value) for name, _, value in
            (line.rpartition(" ") for line in body.decode().splitlines())]


def scrape(ports: list[int]) -> Scrape:
    result = Scrape()
    for port in ports:
        for name, value in metric_samples(port):
            if name.startswith("dcounter_http_requests_total{"):
                if any(f'route="{route}"' in name for route in INTERNAL_ROUTES):
                    result.internal += float(value)
                if 'route="/nodes/heartbeat"' in name:
                    result.heartbeats += float(value)
            elif name.startswith(DELAY + "_bucket{"):
                le = float(name.split('le="', 1)[1].split('"', 1)[0])
                result.delay_buckets[le] = result.delay_buckets.get(le, 0) + float(value)
            elif name == "dcounter_commit_seconds_count":
                result.commits += float(value)
            elif name == "dcounter_commit_seconds_sum":
                result.commit_seconds += float(value)
            elif name == "dcounter_commit_group_size_sum":
                result.committed_jobs += float(value)
            elif name == "dcounter_increments_forwarded_total":
                result.forwarded += float(value)
            elif name == "dcounter_replicate_batches_sent_total":
                result.batches_sent += float(value)
            elif name == "dcounter_replicate_events_sent_total":
                result.events_sent += float(value)
    return result


def histogram_quantile(buckets: dict[float, float], q: float) -> float | None:
    """The q-quantile of a cumulative histogram, interpolated linearly inside its bucket (as
    Prometheus' histogram_quantile does); None without observations."""
    bounds = sorted(buckets)
    if not bounds or buckets[bounds[-1]] <= 0:
        return None
    rank = q * buckets[bounds[-1]]
    lower, below = 0.0, 0.0
    for bound in bounds:
        count = buckets[bound]
        if count >= rank:
            if math.isinf(bound):
                return lower
            return lower + (bound - lower) * (rank - below) / max(count - below, 1e-12)
        lower, below = bound, count
    return lower


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
                 keyed: bool = False):
        self.bench = bench
        self.ports = ports
        self.start_at = start
        self.stop_at = stop
        self.body = json.dumps({"counter": counter}, separators=(",", ":"))
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
                        f"http://127.0.0.1:{port}/counter/increment",
                        "--", repr(start), repr(stop if stop != math.inf else 1e12),
                        str(budgets[i]), self.body] + ([key_prefix()] if keyed else [])
            else:
                spec = {"port": port, "connections": conns[i], "start": start,
                        "stop": stop if stop != math.inf else 1e12, "budget": budgets[i],
                        "body": self.body, "hard_stop": time.monotonic() + run_for,
                        "key_prefix": key_prefix() if keyed else None}
                args = [sys.executable, "-m", "dcounter.bench", "--load-worker",
                        json.dumps(spec)]
            with open(out, "wb") as f:
                self.procs.append(bench.procs.spawn(args, stdout=f, stderr=subprocess.STDOUT,
                                                    env=_python_env()))

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
                conn.request("POST", "/counter/increment", body=body, headers=headers)
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
        cpu_after = [cpu_seconds(pid) for pid in target.pids]
        cpu_us = None
        if None not in cpu_before + cpu_after and result.acknowledged:
            cpu_us = 1e6 * (sum(cpu_after) - sum(cpu_before)) / result.acknowledged
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


def forwarded_share(forwarded: float, acknowledged: int) -> float | None:
    """The share of acknowledged increments that the node receiving them forwarded to their
    key's home (with N nodes about (N - 1) / N: keys' homes are spread evenly)."""
    return forwarded / acknowledged if acknowledged else None


def choose_loadgen(wanted: str) -> str:
    if wanted == "auto":
        return "wrk" if shutil.which("wrk") else "python"
    if wanted == "wrk" and not shutil.which("wrk"):
        raise SystemExit(f"{PROG}: error: wrk is not installed")
    return wanted


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


def _fmt(value, spec: str = ".0f", none: str = "-") -> str:
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
        converge = "never" if row["converge_ms_max"] is None else _fmt(row["converge_ms_median"])
        match = "yes" if row["counts_match"] else "NO"
        if row["non2xx"] or row["errors"]:
            match += f": {row['non2xx']} non-2xx, {row['errors']} errors"
        table.append([row["config"], _fmt(row["increments_per_s"]),
                      _fmt(row["ratio_to_bare"], ".2f"), _fmt(row["ratio_to_one_node"], ".2f"),
                      _fmt(row["p50_ms"], ".1f"), _fmt(row["p99_ms"], ".1f"), converge,
                      _fmt(row["delivery_p99_ms"]), match])

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
    text = _fmt(row.get(name), spec)
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
        converge = _fmt(row["converge_ms_median"])
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
            f"| {row['config']} | {_fmt(row['increments_per_s'])} | "
            f"{_fmt(row['ratio_to_bare'], '.2f')} | {_fmt(row['ratio_to_one_node'], '.2f')} | "
            f"{_fmt(row['p50_ms'], '.1f')} | {_fmt(row['p99_ms'], '.1f')} | {converge} | "
            f"{_fmt(row['internal_per_increment'], '.3f')} | {repl} | {rss} | {match} | "
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
    parser.add_argument("--connections", type=int, default=16,
                        help="keep-alive connections in all, split over the nodes (16)")
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
                              f"p99 {_fmt(run.p99_ms, '.1f')} ms, converge "
                              f"{_fmt(run.converge_ms)} ms, internal/inc "
                              f"{_fmt(run.internal_per_increment, '.3f')} (heartbeats "
                              f"{_fmt(run.heartbeat_per_increment, '.3f')}), events/batch "
                              f"{_fmt(run.events_per_batch, '.1f')}, CPU µs/inc "
                              f"{_fmt(run.cpu_us_per_increment)}, counts match "
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
