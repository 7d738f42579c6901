"""Real dcounter node processes on loopback, for integration tests.

Every node gets `--port 0` (the OS picks a free port; the node prints it) unless a port is
given, a working directory and data directory under the test's temporary directory, and short
timings. Only processes started here are ever signalled, by pid. Waits poll with a deadline.
"""

from __future__ import annotations

import json
import os
import re
import signal
import subprocess
import sys
import time
from pathlib import Path

import requests

ROOT = Path(__file__).resolve().parents[2]
FAST = ["--heartbeat-interval", "0.3", "--cleanup-interval", "0.3", "--peer-timeout", "1.2",
        "--retry-base", "0.05", "--retry-max", "0.5", "--request-timeout", "1.0",
        "--log-level", "INFO"]
_LISTENING = re.compile(r"^dcounter (\S+) listening on \S+:(\d+)", re.M)


def poll(predicate, timeout: float = 15.0, interval: float = 0.05, message: str = ""):
    """Call `predicate` until it returns a truthy value; fail after `timeout` seconds."""
    deadline = time.monotonic() + timeout
    last = None
    while True:
        try:
            last = predicate()
        except (requests.RequestException, ValueError) as exc:
            last = exc
        else:
            if last:
                return last
        if time.monotonic() > deadline:
            raise AssertionError(f"timed out after {timeout}s: {message} (last: {last!r})")
        time.sleep(interval)


class NodeProcess:
    def __init__(self, workdir: Path, name: str, *, port: int = 0, peers=(), in_memory=False,
                 data_dir: Path | None = None, fast=True, extra=(), env=None):
        self.workdir = Path(workdir)
        self.name = name
        self.port = port
        self.peers = list(peers)
        self.in_memory = in_memory
        self.data_dir = data_dir if data_dir is not None else self.workdir / f"data-{name}"
        self.fast = fast
        self.extra = list(extra)
        self.env = env
        self.proc: subprocess.Popen | None = None
        self.node_id = ""
        self.scheme = "http"
        self.session = requests.Session()
        self.session.trust_env = False
        self.starts = 0

    # -- lifecycle -----------------------------------------------------------------------------
    def args(self) -> list[str]:
        args = [sys.executable, "-m", "dcounter", "--port", str(self.port)]
        if self.peers:
            args += ["--peers", ",".join(self.peers)]
        if self.in_memory:
            args.append("--in-memory")
        else:
            args += ["--data-dir", str(self.data_dir)]
        if self.fast:
            args += FAST
        return args + self.extra

    def start(self, wait: bool = True, timeout: float = 15.0) -> "NodeProcess":
        self.workdir.mkdir(parents=True, exist_ok=True)
        self.starts += 1
        self.stdout_path = self.workdir / f"{self.name}.{self.starts}.out"
        self.stderr_path = self.workdir / f"{self.name}.{self.starts}.err"
        env = dict(os.environ)
        env["PYTHONPATH"] = str(ROOT) + os.pathsep + env.get("PYTHONPATH", "")
        env.pop("DCOUNTER_CLUSTER_SECRET", None)
        env.pop("DCOUNTER_CLIENT_TOKEN", None)
        if self.env:
            env.update(self.env)
        with open(self.stdout_path, "wb") as out, open(self.stderr_path, "wb") as err:
            self.proc = subprocess.Popen(self.args(), stdout=out, stderr=err, cwd=self.workdir,
                                         env=env, stdin=subprocess.DEVNULL)
        if wait:
            self.wait_listening(timeout)
        return self

    def wait_listening(self, timeout: float = 15.0) -> None:
        def listening():
            if self.proc.poll() is not None:
                raise AssertionError(f"{self.name} exited with {self.proc.returncode}: "
                                     f"{self.stderr()}")
            match = _LISTENING.search(self.stdout())
            return match
        match = poll(listening, timeout, message=f"{self.name} to listen")
        self.node_id, self.port = match.group(1), int(match.group(2))

    def stdout(self) -> str:
        return self.stdout_path.read_text(errors="replace")

    def stderr(self) -> str:
        return self.stderr_path.read_text(errors="replace")

    def signal(self, sig) -> None:
        if self.proc is not None and self.proc.poll() is None:
            os.kill(self.proc.pid, sig)

    def kill(self) -> None:
        if self.proc is not None and self.proc.poll() is None:
            os.kill(self.proc.pid, signal.SIGCONT)
            os.kill(self.proc.pid, signal.SIGKILL)
            self.proc.wait(10)

    def terminate(self, timeout: float = 15.0) -> int:
        self.signal(signal.SIGTERM)
        return self.proc.wait(timeout)

    def restart(self, **changes) -> "NodeProcess":
        for key, value in changes.items():
            setattr(self, key, value)
        return self.start()

    @property
    def alive(self) -> bool:
        return self.proc is not None and self.proc.poll() is None

    # -- HTTP ------------------------------------------------------------------------------
    @property
    def base(self) -> str:
        return f"{self.scheme}://127.0.0.1:{self.port}"

    def get(self, path: str, **kwargs) -> requests.Response:
        kwargs.setdefault("timeout", 5)
        return self.session.get(self.base + path, **kwargs)

    def post(self, path: str, payload=None, **kwargs) -> requests.Response:
        kwargs.setdefault("timeout", 5)
        if payload is not None:
            kwargs["data"] = json.dumps(payload)
        return self.session.post(self.base + path, **kwargs)

    def count(self, counter: str | None = None) -> int:
        params = {"counter": counter} if counter else None
        response = self.get("/counter/count", params=params)
        response.raise_for_status()
        return response.json()["count"]

    def incr(self, counter: str | None = None, delta: int | None = None, **kwargs):
        body = {}
        if counter is not None:
            body["counter"] = counter
        if delta is not None:
            body["delta"] = delta
        return self.post("/counter/increment", body, **kwargs)

    def nodes(self) -> list[str]:
        return self.get("/nodes").json()


class Cluster:
    """A set of node processes that a test starts; all are killed at teardown."""

    def __init__(self, workdir: Path):
        self.workdir = Path(workdir)
        self.nodes: list[NodeProcess] = []

    def node(self, name: str | None = None, **kwargs) -> NodeProcess:
        node = NodeProcess(self.workdir, name or f"n{len(self.nodes) + 1}", **kwargs)
        self.nodes.append(node)
        return node

    def start(self, count: int, **kwargs) -> list[NodeProcess]:
        """`count` nodes, each given the first as its seed; waits until all see each other."""
        started = []
        for i in range(count):
            peers = [started[0].node_id] if started else []
            started.append(self.node(peers=peers, **kwargs).start())
        self.wait_membership(started)
        return started

    def wait_membership(self, nodes, timeout: float = 20.0) -> None:
        for node in nodes:
            expected = sorted(n.node_id for n in nodes if n is not node)
            poll(lambda node=node, expected=expected: sorted(node.nodes()) == expected, timeout,
                 message=f"{node.name} to list {expected}")

    def wait_converged(self, nodes, expected: int | None = None, counter=None,
                       timeout: float = 30.0) -> int:
        def converged():
            counts = {n.count(counter) for n in nodes}
            if len(counts) != 1:
                return False
            value = counts.pop()
            return (expected is None or value == expected) and (value,)
        return poll(converged, timeout, message=f"convergence to {expected}")[0]

    def wait_replication_idle(self, nodes, timeout: float = 15.0) -> None:
        """Until no node has events waiting for, or in flight to, any peer."""
        def idle():
            return all(link["backlog"] == 0 and link["state"] == "idle"
                       for node in nodes
                       for link in node.get("/status").json()["replication"].values())
        poll(idle, timeout, message="replication to go idle")

    def close(self) -> None:
        for node in self.nodes:
            node.kill()
            node.session.close()
