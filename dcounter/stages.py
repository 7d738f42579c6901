"""`dcounter-bench --stages`: where the CPU of an increment and of a replicated event goes.

Theory of operation
-------------------
The benchmark measures whole processes (CPU per increment from /proc). This profile splits that
cost into stages, each measured as CPU time of the thread doing it (`time.thread_time`, so a
thread waiting for the interpreter lock, a socket or an fsync costs nothing), in one process:

* over HTTP on loopback, one kept-alive connection at a time, against real servers started
  here: the bare `ThreadingHTTPServer` counter of the benchmark, a durable node (data in a
  temporary directory, `--sync full`) and an in-memory node. A request's server thread is
  timed whole (`handle_one_request`), and inside it the application (`App.handle`), the
  writer's `submit` and the store's `write` (the SQLite transaction and its fsync'd COMMIT), so
  HTTP = whole - application, route = application - submit, writer = submit - write;
* a replicate request: the sender's real path (the `Replicator`'s outbox, `encode_runs`, the
  `requests` post, the delivery bookkeeping) in this thread, against a durable node whose
  server thread is timed as above, at a small and a large batch; two sizes give the cost per
  request and per event of each side (a straight line through them);
* in a loop, without sockets, what the HTTP runs cannot separate: the counter's transaction for
  a local increment and for replicated events, the receiver's JSON decoding and wire checks,
  the sender's body encoding, and the store's commit of groups of 1 to 50 increments.

Requests go one at a time: client threads in this process would compete with the servers'
threads for the interpreter lock, and every thread's CPU grows with the hand-offs. A thread
that sleeps between requests runs colder than under the benchmark's load, and one that
slept in an fsync colder still, so the stages cost more here than their share of the
benchmark's figures; the floors therefore compare dcounter's stages with the bare server
measured the same way, and take the benchmark's own figures (bare CPU per request, requests
per group, events per replicate request) as arguments.
"""

from __future__ import annotations

import argparse
import http.client
import json
import statistics
import sys
import tempfile
import threading
import time
from http.server import ThreadingHTTPServer

from dcounter.config import Config
from dcounter.counter import Counter, Event
from dcounter.outbox import LINGER_CAP
from dcounter.retry import RetryPolicy, RetrySchedule
from dcounter.store import Store
from dcounter.wire import decode_runs, encode_runs

COUNTER = "bench"
BODY = json.dumps({"counter": COUNTER}, separators=(",", ":")).encode()
ORIGIN = "5e4d3c2b1a0f9e8d"  # the replicated events' origin (no node has it)
SENDER = "localhost:1"  # the replicate requests' sender (never contacted)

# The benchmark run these defaults come from (README "Where the CPU goes"): bare CPU per
# request, requests per group commit of one durable node and of five, events per replicate
# request of five durable nodes.
BENCH_BARE_US = 169.0
BENCH_GROUP_ONE = 6.9
BENCH_GROUP_FIVE = 1.5
BENCH_BATCH = 44.0
GROUP_SIZES = (1, 2, 7, 50)
LONGEST_BATCH_WAIT = LINGER_CAP * Config.batch_linger  # seconds a busy link lets a batch grow


class Meter:
    """CPU seconds of threads, per stage: `add` from any thread."""

    def __init__(self):
        self._lock = threading.Lock()
        self.cpu: dict[str, float] = {}
        self.calls: dict[str, int] = {}

    def add(self, stage: str, seconds: float) -> None:
        with self._lock:
            self.cpu[stage] = self.cpu.get(stage, 0.0) + seconds
            self.calls[stage] = self.calls.get(stage, 0) + 1

    def snapshot(self) -> tuple[dict, dict]:
        with self._lock:
            return dict(self.cpu), dict(self.calls)

    def settle(self, stage: str, calls: int, timeout: float = 10.0) -> tuple[dict, dict]:
        """A snapshot once `stage` counts `calls` calls: a server thread adds its request's time
        just after the answer left, so the client may read the answer first."""
        deadline = time.monotonic() + timeout
        while True:
            snapshot = self.snapshot()
            if snapshot[1].get(stage, 0) >= calls or time.monotonic() > deadline:
                return snapshot
            time.sleep(0.001)

    def wrap(self, stage: str, fn):
        def timed(*args, **kwargs):
            started = time.thread_time()
            try:
                return fn(*args, **kwargs)
            finally:
                self.add(stage, time.thread_time() - started)
        return timed


def timed_handler(base, meter: Meter):
    """`base` whose every `handle_one_request` counts as stage "http" (read, route, answer)."""
    class Timed(base):
        def handle_one_request(self):
            started = time.thread_time()
            try:
                super().handle_one_request()
            finally:
                meter.add("http", time.thread_time() - started)
    return Timed


class _TimedApp:
    def __init__(self, app, meter: Meter):
        self.handle = meter.wrap("app", app.handle)


def _per_call(before: tuple, after: tuple, stage: str, calls_of: str) -> float:
    """µs of `stage` per call of `calls_of` between two snapshots."""
    cpu = after[0].get(stage, 0.0) - before[0].get(stage, 0.0)
    calls = after[1].get(calls_of, 0) - before[1].get(calls_of, 0)
    return cpu / calls * 1e6 if calls else float("nan")


def _post(conn: http.client.HTTPConnection, path: str, body: bytes) -> bytes:
    conn.request("POST", path, body=body, headers={"Content-Type": "application/json"})
    response = conn.getresponse()
    data = response.read()
    if response.status != 200:
        raise RuntimeError(f"{path}: {response.status} {data[:200]!r}")
    return data


def _loop_us(fn, count: int, blocks: int = 5) -> float:
    """Median over `blocks` of the CPU µs per call of `fn()`, called `count` times a block."""
    results = []
    for _ in range(blocks):
        started = time.thread_time()
        for _ in range(count):
            fn()
        results.append((time.thread_time() - started) / count * 1e6)
    return statistics.median(results)


# -- servers ------------------------------------------------------------------------------------

class _Bare:
    """The benchmark's bare counter, in a thread of this process."""

    def __init__(self, meter: Meter):
        from dcounter.bench import _BareHandler
        self.server = ThreadingHTTPServer(("127.0.0.1", 0), timed_handler(_BareHandler, meter))
        self.server.daemon_threads = True
        self.server.lock = threading.Lock()
        self.server.value = 0
        self.port = self.server.server_address[1]
        self.thread = threading.Thread(target=self.server.serve_forever, daemon=True)
        self.thread.start()

    def close(self) -> None:
        self.server.shutdown()
        self.server.server_close()


class _Node:
    """A dcounter node in this process, its request threads, writer and store timed."""

    def __init__(self, meter: Meter, directory: str | None):
        from dcounter.node import Node
        config = Config(port=0, in_memory=directory is None, data_dir=directory,
                        drain_timeout=2.0)
        self.node = node = Node(config)
        node.open()
        node.server.RequestHandlerClass = timed_handler(node.server.RequestHandlerClass, meter)
        node.server.app = _TimedApp(node.app, meter)
        node.writer.submit = meter.wrap("submit", node.writer.submit)
        if node.writer.store is not None:
            store = node.writer.store
            store.write = meter.wrap("write", store.write)
        node.start()
        self.port = node.port

    def close(self) -> None:
        self.node.stop(leave=False)


# -- the stages -----------------------------------------------------------------------------------

def _median_rows(rows: list[dict]) -> dict:
    """Per key, the median over blocks."""
    return {key: statistics.median(row[key] for row in rows) for key in rows[0]}


def _http_block(meter: Meter, conns: list, path: str, bodies, requests: int) -> dict:
    """CPU µs per request of each timed stage ("http" whole, "app", "submit", "write") over
    `requests` requests spread over the kept-alive connections `conns`, each in a thread of
    its own when there are several, and "group": requests per store write."""
    before = meter.snapshot()
    share = max(1, requests // len(conns))

    def drive(conn) -> None:
        for _ in range(share):
            _post(conn, path, bodies())

    if len(conns) == 1:
        drive(conns[0])
    else:
        threads = [threading.Thread(target=drive, args=(conn,)) for conn in conns]
        for thread in threads:
            thread.start()
        for thread in threads:
            thread.join()
    after = meter.settle("http", before[1].get("http", 0) + share * len(conns))
    served = after[1].get("http", 0) - before[1].get("http", 0)
    row = {stage: (after[0].get(stage, 0.0) - before[0].get(stage, 0.0)) / served * 1e6
           for stage in ("http", "app", "submit", "write")}
    writes = after[1].get("write", 0) - before[1].get("write", 0)
    row["group"] = served / writes if writes else 0.0
    return row


def _requests(directory: str, requests: int, blocks: int, connections: int) -> dict:
    """The bare request, the durable and the in-memory increment, in turn block by block so
    that drift on a shared machine touches all three alike."""
    meters = {name: Meter() for name in ("bare", "durable", "memory")}
    servers = {}
    conns = {}
    try:
        servers["bare"] = _Bare(meters["bare"])
        servers["durable"] = _Node(meters["durable"], directory)
        servers["memory"] = _Node(meters["memory"], None)
        paths = {"bare": "/", "durable": "/counter/increment", "memory": "/counter/increment"}
        for name, server in servers.items():
            conns[name] = [http.client.HTTPConnection("127.0.0.1", server.port, timeout=10)
                           for _ in range(connections)]
            _http_block(meters[name], conns[name], paths[name], lambda: BODY,
                        max(1, requests // 5))  # warm-up
        rows: dict[str, list] = {name: [] for name in servers}
        for _ in range(blocks):
            for name in servers:
                rows[name].append(_http_block(meters[name], conns[name], paths[name],
                                              lambda: BODY, requests))
        return {name: _median_rows(rows[name]) for name in rows}
    finally:
        for each in conns.values():
            for conn in each:
                conn.close()
        for server in servers.values():
            server.close()


class _SteppedClock:
    """The sender's clock: one second passes at every reading, so every batch is ripe at once
    (the outbox's linger is wall time, not CPU) and no wait slows the run."""

    def __init__(self):
        self.now = 0.0

    def monotonic(self) -> float:
        self.now += 1.0
        return self.now

    def time(self) -> float:
        return 1.7e9 + self.monotonic()


def _replicate(directory: str, batches: dict[int, int], blocks: int) -> dict:
    """Per request at each batch size ({size: requests a block}): the sender's whole path in
    this thread ("send"), its `requests` post ("post"), and the receiver's timed stages:
    {batch: {"send", "post", "http", "app", "submit", "write"}}."""
    from dcounter.metrics import Metrics
    from dcounter.replication import Replicator
    from dcounter.transport import Transport
    meter = Meter()
    node = _Node(meter, directory)
    transport = Transport(timeout=10)
    peer = f"127.0.0.1:{node.port}"
    replicator = Replicator(SENDER, transport, RetrySchedule(RetryPolicy(0.1, 10.0)),
                            _SteppedClock(), max_backlog=100_000, batch_max=2_000,
                            batch_linger=0.02, metrics=Metrics())
    replicator.add_peer(peer)  # not started: this thread runs the link's steps
    link = replicator._links[peer]
    transport.post = meter.wrap("post", transport.post)
    seq = 0

    def block(batch: int, requests: int) -> dict:
        nonlocal seq
        before = meter.snapshot()
        cpu = 0.0
        for _ in range(requests):
            events = [Event(ORIGIN, seq + k + 1, COUNTER, 1) for k in range(batch)]
            seq += batch
            started = time.thread_time()
            replicator.enqueue(events)  # what a commit hands over
            taken = link.next_batch()
            if taken is None or len(taken) != batch or not link.send(taken):
                raise RuntimeError("replicate request failed")
            cpu += time.thread_time() - started
        after = meter.settle("http", before[1].get("http", 0) + requests)
        row = {"send": cpu / requests * 1e6, "post": _per_call(before, after, "post", "post")}
        for stage in ("http", "app", "submit", "write"):
            row[stage] = _per_call(before, after, stage, "http")
        return row

    try:
        for batch, requests in batches.items():
            block(batch, max(1, requests // 5))  # warm-up
        rows: dict[int, list] = {batch: [] for batch in batches}
        for _ in range(blocks):
            for batch, requests in batches.items():
                rows[batch].append(block(batch, requests))
        return {batch: _median_rows(rows[batch]) for batch in rows}
    finally:
        transport.close()
        node.close()


def _transactions(blocks: int, scale: float) -> dict:
    """The counter's transaction (stage, install) for a local increment and per replicated
    event, without a store; and the receiver's JSON and wire decoding per event."""
    counter = Counter("0123456789abcdef")
    now = 1.7e9

    def local():
        txn = counter.begin()
        sp = txn.savepoint()
        txn.local(COUNTER, 1, None, now)
        del sp
        counter.install(txn)

    batch = 200
    state = {"seq": 0}

    def remote():
        events = [Event(ORIGIN, state["seq"] + k + 1, COUNTER, 1) for k in range(batch)]
        state["seq"] += batch
        started = time.thread_time()
        txn = counter.begin()
        txn.savepoint()
        txn.remote(events, now)
        counter.install(txn)
        return time.thread_time() - started

    def remote_us() -> float:
        n = max(2, int(50 * scale))
        return statistics.median(sum(remote() for _ in range(n)) / (n * batch) * 1e6
                                 for _ in range(blocks))

    events = [Event(ORIGIN, k + 1, COUNTER, 1) for k in range(batch)]
    body = json.dumps({"node_id": SENDER, "runs": encode_runs(events)},
                      separators=(",", ":")).encode()
    data = json.loads(body)
    n = max(2, int(50 * scale))
    return {
        "local_txn": _loop_us(local, max(20, int(5000 * scale)), blocks),
        "remote_txn_event": remote_us(),
        "json_event": _loop_us(lambda: json.loads(body), n, blocks) / batch,
        "wire_event": _loop_us(lambda: decode_runs(data["runs"]), n, blocks) / batch,
        "encode_event": _loop_us(lambda: json.dumps({"node_id": SENDER,
                                                     "runs": encode_runs(events)},
                                                    separators=(",", ":")).encode(),
                                 n, blocks) / batch,
    }


def _commits(directory: str, sizes, scale: float) -> dict:
    """CPU µs of the store's write (BEGIN, the rows, COMMIT with fsync) of a group of `size`
    local increments, per group."""
    store = Store(directory, sync="full")
    store.open()
    try:
        origin, origins, keys = store.load()
        counter = Counter(origin)
        counter.load(origins, keys)
        samples: dict[int, list] = {size: [] for size in sizes}
        for i in range(max(6, int(150 * scale))):
            for size in sizes:  # in turn, so that drift touches every size alike
                txn = counter.begin()
                for _ in range(size):
                    txn.local(COUNTER, 1, None, 1.7e9)
                started = time.thread_time()
                store.write(txn)
                elapsed = time.thread_time() - started
                counter.install(txn)
                if i >= 2:  # the first commits warm the page cache and the WAL
                    samples[size].append(elapsed)
        return {size: statistics.median(values) * 1e6 for size, values in samples.items()}
    finally:
        store.close()


def measure(scale: float = 1.0, blocks: int = 5, connections: int = 1) -> dict:
    """Every stage, in µs of CPU. `scale` shrinks the counts (a test runs 0.01)."""
    requests = max(5, int(400 * scale))
    out: dict = {"requests_per_block": requests, "blocks": blocks, "connections": connections}
    with tempfile.TemporaryDirectory(prefix="dcounter-stages-") as tmp:
        out.update(_requests(f"{tmp}/local", requests, blocks, connections))
        out["replicate"] = _replicate(f"{tmp}/receiver", {1: max(3, int(100 * scale)),
                                                          200: max(2, int(8 * scale))}, blocks)
        out["commit"] = _commits(f"{tmp}/commits", GROUP_SIZES, scale)
    out.update(_transactions(blocks, scale))
    return out


# -- the report -----------------------------------------------------------------------------------

def _line(fit_small: float, fit_large: float, small: int, large: int) -> tuple[float, float]:
    """(per request, per event) of a cost measured per request at two batch sizes."""
    per_event = (fit_large - fit_small) / (large - small)
    return fit_small - per_event * small, per_event


def _fit(points: dict) -> tuple[float, float]:
    """(fixed, per unit) of the least-squares line through {size: cost}."""
    sizes = list(points)
    mean_x = statistics.fmean(sizes)
    mean_y = statistics.fmean(points.values())
    spread = sum((x - mean_x) ** 2 for x in sizes)
    slope = sum((x - mean_x) * (points[x] - mean_y) for x in sizes) / spread if spread else 0.0
    slope = max(0.0, slope)  # noise may tilt it below 0; more rows never cost less
    return mean_y - slope * mean_x, slope


def analyse(m: dict, bare_us: float = BENCH_BARE_US, group_one: float = BENCH_GROUP_ONE,
            group_five: float = BENCH_GROUP_FIVE, batch: float = BENCH_BATCH) -> dict:
    """The table's rows and the floors of the two goals: (name, µs, unit) rows and a dict."""
    d, mem, bare = m["durable"], m["memory"], m["bare"]["http"]
    rows = [("bare server: a request (read, parse, count, answer)", bare, "request")]
    local_txn = m["local_txn"]
    commit1 = d["write"]
    rows += [
        ("durable increment, over HTTP one at a time (group of 1)", d["http"], "increment"),
        ("  HTTP server: read, parse headers and body, answer", d["http"] - d["app"], "increment"),
        ("  route: JSON, checks, metrics, answer's JSON", d["app"] - d["submit"], "increment"),
        ("  counter transaction: stage and install", local_txn, "increment"),
        ("  writer: job, locks, group, hand-over", d["submit"] - d["write"] - local_txn,
         "increment"),
        ("  commit: SQLite BEGIN ... COMMIT with fsync", commit1, "group"),
    ]
    commits = m["commit"]
    for size, us in sorted(commits.items()):
        rows.append((f"  commit of a group of {size} (loop), per group / per increment",
                     (us, us / size), "group / inc"))
    rows += [
        ("in-memory increment, over HTTP one at a time", mem["http"], "increment"),
        ("  HTTP server", mem["http"] - mem["app"], "increment"),
        ("  route", mem["app"] - mem["submit"], "increment"),
        ("  counter transaction and writer", mem["submit"], "increment"),
    ]
    rep = m["replicate"]
    (small, rs), (large, rl) = sorted(rep.items())
    send_req, send_ev = _line(rs["send"], rl["send"], small, large)
    post_req, post_ev = _line(rs["post"], rl["post"], small, large)
    recv_req, recv_ev = _line(rs["http"], rl["http"], small, large)
    http_req, http_ev = _line(rs["http"] - rs["app"], rl["http"] - rl["app"], small, large)
    route_req, route_ev = _line(rs["app"] - rs["submit"], rl["app"] - rl["submit"], small, large)
    write_req, write_ev = _line(rs["write"], rl["write"], small, large)
    rows += [
        ("replicate, sender: whole path per request (outbox, requests)", send_req, "request"),
        ("  of which the `requests` post (+ json.dumps)", post_req, "request"),
        ("  sender per event: outbox, encoding, bookkeeping", send_ev, "event"),
        ("  of which the body's encoding (encode_runs + json.dumps)", m["encode_event"],
         "event"),
        ("replicate, receiver: per request", recv_req, "request"),
        ("  HTTP server", http_req, "request"),
        ("  route and writer (json_body, decode, submit), no events", route_req, "request"),
        ("  commit: SQLite BEGIN ... COMMIT with fsync", write_req, "request"),
        ("  receiver per event", recv_ev, "event"),
        ("    JSON decoding (json.loads)", m["json_event"], "event"),
        ("    wire checks (decode_runs)", m["wire_event"], "event"),
        ("    counter transaction (remote, install)", m["remote_txn_event"], "event"),
        ("    commit's share", write_ev, "event"),
        ("    the rest (reading the body, the route's loops, fit noise)",
         recv_ev - m["json_event"] - m["wire_event"] - m["remote_txn_event"] - write_ev,
         "event"),
    ]
    # Goal 1: CPU per replicated event, sender and receiver, at a batch of b events.
    per_request = send_req + recv_req
    per_event = send_ev + recv_ev
    target = 0.1 * bare_us

    def replicated(b: float) -> float:
        return per_request / b + per_event

    needed = per_request / (target - per_event) if per_event < target else None
    commit_fixed, commit_inc = _fit(commits)
    # What the benchmark's figure also holds: with 16 connections over five nodes a group
    # commit is shared by fewer increments than at one node, and (N-node - one-node) / (N - 1)
    # counts the difference as replication's.
    split_commits = (commit_fixed / group_five - commit_fixed / group_one) / 4
    # Goal 2: one durable node's CPU per increment against the bare server's, at the
    # benchmark's group size (the commit's cost shared by the group). The lower bound is the
    # in-memory increment plus the shared commit: the durable path costing nothing else.

    def durable(g: float) -> float:
        return d["http"] - commit1 + commit_fixed / g + commit_inc

    lower = mem["http"] + commit_fixed / group_one + commit_inc
    floors = {
        "target_replicated_us": target,
        "replicated_per_request_us": per_request, "replicated_per_event_us": per_event,
        "replicated_at_batch_us": {b: replicated(b) for b in (batch, 12.0, 200.0)},
        "batch_needed": needed,
        "events_per_s_needed": None if needed is None else needed / LONGEST_BATCH_WAIT,
        "split_commits_us": split_commits,
        "durable_at_group_us": {g: durable(g) for g in (group_one, group_five, 1.0)},
        "durable_ratio_here": durable(group_one) / bare,
        "durable_ratio_bench": (bare_us + durable(group_one) - bare) / bare_us,
        "durable_lower_us": lower,
        "durable_lower_ratio_here": lower / bare,
        "durable_lower_ratio_bench": (bare_us + lower - bare) / bare_us,
        "after_fsync_us": d["http"] - commit1 - mem["http"],
        "memory_ratio_here": mem["http"] / bare,
        "commit_fixed_us": commit_fixed, "commit_per_increment_us": commit_inc,
        "bare_us": bare_us, "bare_here_us": bare, "batch": batch, "group_one": group_one,
        "group_five": group_five,
    }
    return {"rows": rows, "floors": floors}


def render(report: dict) -> str:
    lines = [f"{'stage':<66} {'CPU µs':>13}  per"]
    for name, us, unit in report["rows"]:
        value = f"{us[0]:.1f} / {us[1]:.1f}" if isinstance(us, tuple) else f"{us:.1f}"
        lines.append(f"{name:<66} {value:>13}  {unit}")
    f = report["floors"]
    lines.append("")
    at = ", ".join(f"{us:.1f} µs at {b:g}" for b, us in f["replicated_at_batch_us"].items())
    if f["batch_needed"]:
        needed = (f"it takes batches of {f['batch_needed']:.0f} events, which a link collects "
                  f"within the longest batch wait ({LONGEST_BATCH_WAIT * 1000:.0f} ms) only "
                  f"when its node originates {f['events_per_s_needed']:.0f} events/s or more")
    else:
        needed = "no batch size reaches it: the per-event costs alone are above it"
    lines.append(f"Goal 1, CPU per replicated event <= 0.1 x bare ({f['target_replicated_us']:.1f}"
                 f" µs): floor {f['replicated_per_request_us']:.0f} µs per request / batch + "
                 f"{f['replicated_per_event_us']:.1f} µs per event = {at}; {needed}. The "
                 f"benchmark's five-node figure also counts {f['split_commits_us']:.0f} µs of "
                 f"commits shared by {f['group_five']:g} instead of {f['group_one']:g} "
                 "increments.")
    g = f["durable_at_group_us"]
    lines.append(f"Goal 2, one durable node <= 1.25 x bare CPU (and so >= 0.8 x its throughput "
                 f"when CPU-bound): commit {f['commit_fixed_us']:.0f} µs per group + "
                 f"{f['commit_per_increment_us']:.1f} per increment; a durable increment costs "
                 f"{g[f['group_one']]:.0f} µs at {f['group_one']:g} requests per group "
                 f"({g[1.0]:.0f} µs alone) = {f['durable_ratio_here']:.2f} x the bare request "
                 f"here ({f['bare_here_us']:.0f} µs), {f['durable_ratio_bench']:.2f} x when added "
                 f"to the benchmark's bare {f['bare_us']:g} µs. Lower bound, the in-memory "
                 f"increment plus the shared commit: {f['durable_lower_us']:.0f} µs = "
                 f"{f['durable_lower_ratio_here']:.2f} x here, "
                 f"{f['durable_lower_ratio_bench']:.2f} x the benchmark's bare; the rest, "
                 f"{f['after_fsync_us']:.0f} µs, is the same code running slower in a thread "
                 f"that slept in fsync (in memory: {f['memory_ratio_here']:.2f} x bare here).")
    return "\n".join(lines)


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="dcounter-bench --stages",
        description="CPU per stage of an increment and of a replicated event, in one process.")
    parser.add_argument("--json", action="store_true", help="print the figures as JSON")
    parser.add_argument("--scale", type=float, default=1.0,
                        help="multiply every count (1; smaller is faster and noisier)")
    parser.add_argument("--blocks", type=int, default=5,
                        help="blocks per measurement, whose median is taken (5)")
    parser.add_argument("--bare-us", type=float, default=BENCH_BARE_US,
                        help="the benchmark's bare CPU µs per request (goal 1's 10 %%)")
    parser.add_argument("--group", type=float, default=BENCH_GROUP_ONE,
                        help="requests per group commit of one durable node in the benchmark")
    parser.add_argument("--batch", type=float, default=BENCH_BATCH,
                        help="events per replicate request in the benchmark")
    return parser


def main(argv: list[str] | None = None) -> int:
    args = build_parser().parse_args(argv)
    if not args.scale > 0 or args.blocks < 1:
        print("dcounter-bench --stages: error: --scale must be more than 0 and --blocks at "
              "least 1", file=sys.stderr)
        return 2
    began = time.monotonic()
    figures = measure(args.scale, args.blocks)
    report = analyse(figures, bare_us=args.bare_us, group_one=args.group, batch=args.batch)
    if args.json:
        print(json.dumps({"figures": figures, **report}, indent=2, default=str))
    else:
        print(render(report))
        print(f"({time.monotonic() - began:.0f} s; CPU time of the thread doing each stage, "
              f"medians where looped)")
    return 0


if __name__ == "__main__":
    sys.exit(main())
