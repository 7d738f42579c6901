"""The benchmark's processes: starting and stopping them, and what is read from them.

Everything here runs on loopback and is ended by pid (`Processes`):

* the *bare* server (`serve_bare`, run as `python -m dcounter.bench --serve-bare`): a
  `ThreadingHTTPServer` holding a lock and an int, the ceiling the benchmark compares against;
* dcounter clusters (`start_cluster`): N nodes on free ports (`--port 0`, each prints the port
  it got), the first one every other node's seed, ready once every node lists every other;
* what a process shows from outside: its CPU time and resident memory (/proc), and its
  `/metrics` (`metric_samples`, summed over a cluster by `scrape`);
* a tiny keep-alive HTTP client for all of the above.

The scale figures (scaleprocs.py) start and measure their nodes through this module too. It
imports no other part of the benchmark: no load generation and no report.
"""

from __future__ import annotations

import http.client
import json
import math
import os
import signal
import socket
import subprocess
import sys
import tempfile
import threading
import time
from dataclasses import dataclass, field
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
INTERNAL_ROUTES = ("/counter/replicate", "/nodes/heartbeat", "/nodes/join", "/counter/state",
                   "/nodes/leave")


# -- the bare server (run as its own process) ------------------------------------------------

class BareHandler(BaseHTTPRequestHandler):
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
    server = ThreadingHTTPServer(("127.0.0.1", 0), BareHandler)
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


def python_env() -> dict:
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


def cpu_us_per(before: list[float | None], after: list[float | None], count: int) -> float | None:
    """CPU µs of processes per unit of work, from `cpu_seconds` taken before and after (None when
    a process could not be read or nothing was done)."""
    if None in before + after or not count:
        return None
    return 1e6 * (sum(after) - sum(before)) / count


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
                           stderr=subprocess.STDOUT, cwd=workdir, env=python_env())
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
                                       env=python_env()))
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
