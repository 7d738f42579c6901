"""Real processes for the scale figures (`python -m dcounter.simscale --real N`,
`--blackhole N,K`): what the simulator cannot show, since it models no CPU and no threads.

* `real_point`: N in-memory nodes (`python -m dcounter`, the default timings) on free loopback
  ports, idle; over a window, each node's served membership requests
  (`dcounter_http_requests_total` deltas), its CPU time (utime + stime from /proc), its
  connections in and sockets. The same for one node alone gives the fixed cost of an idle node,
  so what the members cost is the difference; divided by the peers, what one member costs.
* `blackhole`: N nodes, K of them stopped with SIGSTOP at once (their sockets accept and never
  answer, as over a dropped link), and whether the running nodes keep listing each other.

Processes are started and ended by pid through the benchmark's `Processes` (benchprocs.py);
stopped ones are continued before they are ended. Every wait is bounded.
"""

from __future__ import annotations

import json
import os
import shutil
import signal
import statistics
import tempfile
import time

from dcounter import benchprocs
from dcounter.simscale import supported_size

MEMBERSHIP_ROUTES = ("/nodes/heartbeat", "/nodes/join", "/nodes/leave")


def _node_sample(port: int, pid: int) -> dict:
    membership = other = 0.0
    for name, value in benchprocs.metric_samples(port):
        if name.startswith("dcounter_http_requests_total{"):
            if any(f'route="{route}"' in name for route in MEMBERSHIP_ROUTES):
                membership += float(value)
            else:
                other += float(value)
    return {"membership": membership, "other": other, "cpu": benchprocs.cpu_seconds(pid),
            "sockets": _sockets(pid), "incoming": _incoming(port)}


def _incoming(port: int) -> int:
    """Established connections to `port` (what counts against --max-connections)."""
    count = 0
    for table in ("/proc/net/tcp", "/proc/net/tcp6"):
        try:
            with open(table) as f:
                lines = f.readlines()[1:]
        except OSError:
            continue
        for line in lines:
            fields = line.split()
            if len(fields) > 3 and fields[3] == "01" and \
                    int(fields[1].rsplit(":", 1)[1], 16) == port:
                count += 1
    return count


def _sockets(pid: int) -> int:
    """Open sockets of a process (its listening socket, connections in and out)."""
    count = 0
    try:
        for fd in os.listdir(f"/proc/{pid}/fd"):
            try:
                if os.readlink(f"/proc/{pid}/fd/{fd}").startswith("socket:"):
                    count += 1
            except OSError:
                pass
    except OSError:
        return 0
    return count


def measure_processes(size: int, window: float = 30.0, settle: float = 5.0) -> dict:
    """Start `size` in-memory nodes with the default timings, wait until they list each other
    and `settle` seconds more, then measure `window` seconds of idling. Per node: membership
    requests served per second, CPU seconds per second, open sockets."""
    procs = benchprocs.Processes()
    workdir = tempfile.mkdtemp(prefix="dcounter-scale-")
    try:
        target = benchprocs.start_cluster(procs, workdir, size, durable=False)
        time.sleep(settle)  # joins and the first heartbeats are not the steady state
        pairs = list(zip(target.ports, target.pids))
        before = [_node_sample(port, pid) for port, pid in pairs]
        began = time.monotonic()
        time.sleep(window)
        after = [_node_sample(port, pid) for port, pid in pairs]
        seconds = time.monotonic() - began
    finally:
        procs.stop_all()
        shutil.rmtree(workdir, ignore_errors=True)
    membership = [(a["membership"] - b["membership"]) / seconds for a, b in zip(after, before)]
    cpu = [(a["cpu"] - b["cpu"]) / seconds for a, b in zip(after, before)]
    # The /metrics scrapes themselves are served too; everything else must be nothing.
    other = [(a["other"] - b["other"] - 1) / seconds for a, b in zip(after, before)]
    return {"nodes": size, "seconds": seconds,
            "membership_per_node_s": statistics.mean(membership),
            "cpu_per_node": statistics.mean(cpu), "cpu_max": max(cpu),
            "other_per_node_s": statistics.mean(other),
            "sockets_max": max(a["sockets"] for a in after),
            "incoming_max": max(a["incoming"] for a in after)}


def real_point(size: int = 10, window: float = 30.0) -> dict:
    """The idle cluster of `size` against one idle node: what one member costs each node."""
    alone = measure_processes(1, window)
    cluster = measure_processes(size, window)
    peers = size - 1
    per_member_cpu = (cluster["cpu_per_node"] - alone["cpu_per_node"]) / peers
    per_request = ((cluster["cpu_per_node"] - alone["cpu_per_node"])
                   / cluster["membership_per_node_s"]) if cluster["membership_per_node_s"] else None
    return {"alone": alone, "cluster": cluster, "per_member_cpu": per_member_cpu,
            "cpu_per_membership_request": per_request}


def blackhole(size: int, stopped: int, watch: float = 20.0) -> dict:
    """What a partition that silences `stopped` listed peers at once does to the rest: start
    `size` in-memory nodes, stop `stopped` of them with SIGSTOP (their sockets accept and
    never answer, as a dropped link does: each call to them takes --request-timeout), and for
    `watch` seconds poll every running node's `GET /nodes`. Returns how many times a running
    node was seen not listing another running node, and when that first happened."""
    procs = benchprocs.Processes()
    workdir = tempfile.mkdtemp(prefix="dcounter-blackhole-")
    paused: list[int] = []
    try:
        target = benchprocs.start_cluster(procs, workdir, size, durable=False)
        ids = [f"localhost:{port}" for port in target.ports]
        running = list(range(size - stopped, size))
        for i in range(size - stopped):
            os.kill(target.pids[i], signal.SIGSTOP)
            paused.append(target.pids[i])
        began = time.monotonic()
        misses, first = 0, None
        clients = {i: benchprocs.Client(target.ports[i], timeout=2.0) for i in running}
        while time.monotonic() - began < watch:
            for i in running:
                status, body = clients[i].request("GET", "/nodes")
                listed = set(json.loads(body)) if status == 200 else set()
                lost = [ids[j] for j in running if j != i and ids[j] not in listed]
                if lost:
                    misses += 1
                    first = first if first is not None else time.monotonic() - began
            time.sleep(0.2)
        for client in clients.values():
            client.close()
        return {"nodes": size, "stopped": stopped, "watch": watch, "misses": misses,
                "first_miss": first}
    finally:
        for pid in paused:
            try:
                os.kill(pid, signal.SIGCONT)
            except ProcessLookupError:
                pass
        procs.stop_all()
        shutil.rmtree(workdir, ignore_errors=True)


def render_real(point: dict) -> str:
    a, c = point["alone"], point["cluster"]
    size = c["nodes"]
    lines = [
        f"real processes, idle, {c['seconds']:.0f} s each:",
        f"  1 node:  CPU {a['cpu_per_node'] * 100:.2f} % of a core",
        f"  {size} nodes: membership requests served {c['membership_per_node_s']:.2f}/s per "
        f"node, CPU {c['cpu_per_node'] * 100:.2f} % of a core per node (max "
        f"{c['cpu_max'] * 100:.2f} %), other requests {c['other_per_node_s']:.2f}/s, "
        f"sockets at most {c['sockets_max']} per process, of them "
        f"{c['incoming_max']} connections in",
        f"  one member costs each node {point['per_member_cpu'] * 100:.3f} % of a core",
    ]
    if point["cpu_per_membership_request"] is not None:
        lines.append(f"  CPU per membership request served (and one sent): "
                     f"{point['cpu_per_membership_request'] * 1000:.2f} ms")
    if point["per_member_cpu"] > 0:
        lines.append(f"  members within 5 % of a core: {supported_size(point['per_member_cpu'])} "
                     "nodes")
    return "\n".join(lines)
