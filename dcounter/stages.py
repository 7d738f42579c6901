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
per group, events per replicate request) as arguments. The table and the floors are
`stagereport.py`'s.
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
from dcounter.retry import RetryPolicy, RetrySchedule
from dcounter.stagereport import (BENCH_BARE_US, BENCH_BATCH, BENCH_GROUP_ONE, analyse,
                                  render)
from dcounter.store import Store
from dcounter.wire import decode_runs, encode_runs

COUNTER = "bench"
BODY = json.dumps({"counter": COUNTER}, separators=(",", ":")).encode()
ORIGIN = "5e4d3c2b1a0f9e8d"  # the replicated events' origin (no node has it)
SENDER = "localhost:1"  # the replicate requests' sender (never contacted)

GROUP_SIZES = (1, 2, 7, 50)


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
        from dcounter.benchprocs import BareHandler
        self.server = ThreadingHTTPServer(("127.0.0.1", 0), timed_handler(BareHandler, meter))
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
    link = replicator.link(peer)
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
