"""Durable state: what a node acknowledged survives SIGKILL, bad data directories stop it at
start, a failing disk refuses increments instead of acknowledging them, SIGTERM leaves
gracefully."""

import os
import shutil
import signal
import sqlite3
import subprocess
import sys
import threading
import time
from concurrent.futures import ThreadPoolExecutor

import pytest
import requests

from tests.integration.harness import ROOT, poll


def _hammer(node, count, counter=None):
    """`count` increments from 4 threads; returns how many got 2xx."""
    def worker(n):
        session = requests.Session()
        ok = 0
        for _ in range(n):
            body = {"counter": counter} if counter else {}
            response = session.post(f"{node.base}/counter/increment", json=body, timeout=10)
            ok += response.status_code == 200
        session.close()
        return ok
    with ThreadPoolExecutor(4) as pool:
        return sum(pool.map(worker, [count // 4] * 4))


def test_acknowledged_increments_survive_sigkill(cluster):
    node = cluster.node("solo").start()
    assert _hammer(node, 500) == 500
    node.kill()
    node.restart()
    assert node.count() == 500
    # The origin and its sequence continue: the next event id is number 501.
    response = node.incr()
    assert response.json()["event_id"].endswith(":501")
    assert response.json()["count"] == 501


def test_sigkill_under_load_converges_between_acknowledged_and_attempted(cluster):
    nodes = cluster.start(3)
    stop = threading.Event()
    acked, attempted = [0] * 6, [0] * 6

    def client(i):
        node = nodes[i % 3]
        session = requests.Session()
        deadline = time.monotonic() + 20
        while not stop.is_set() and time.monotonic() < deadline:
            attempted[i] += 1
            try:
                response = session.post(f"{node.base}/counter/increment", timeout=3)
            except requests.RequestException:
                time.sleep(0.02)
                continue
            acked[i] += response.status_code == 200
        session.close()

    threads = [threading.Thread(target=client, args=(i,)) for i in range(6)]
    for thread in threads:
        thread.start()
    poll(lambda: sum(acked) >= 300, 20, message="load to get going")
    nodes[1].kill()
    poll(lambda: sum(acked) >= 600, 20, message="load to continue on the other nodes")
    stop.set()
    for thread in threads:
        thread.join(30)
    nodes[1].restart()
    cluster.wait_membership(nodes)
    value = cluster.wait_converged(nodes, timeout=30)
    assert sum(acked) <= value <= sum(attempted)


def test_idempotency_key_counts_once_on_same_node_other_node_and_after_restart(cluster):
    a, b = cluster.start(2)
    first = a.incr("orders", 3, headers={"Idempotency-Key": "order-17"})
    assert first.status_code == 200
    assert "Idempotent-Replayed" not in first.headers
    again = a.incr("orders", 3, headers={"Idempotency-Key": "order-17"})
    assert again.status_code == 200
    assert again.headers["Idempotent-Replayed"] == "true"
    assert again.json() == first.json()
    # Same key, different request: 422 and nothing counted.
    other = a.incr("orders", 4, headers={"Idempotency-Key": "order-17"})
    assert other.status_code == 422
    assert "error" in other.json()
    # The key's home may be b: then the event reaches a by replication.
    poll(lambda: a.count("orders") == 3, message="the increment at a")

    # The key travelled with its event: a retry at another node counts once too.
    poll(lambda: b.count("orders") == 3, message="replication to b")
    at_b = b.incr("orders", 3, headers={"Idempotency-Key": "order-17"})
    assert at_b.status_code == 200
    assert at_b.headers["Idempotent-Replayed"] == "true"
    assert at_b.json()["event_id"] == first.json()["event_id"]
    assert at_b.json()["count"] == 3

    # Concurrent requests with one key count once.
    with ThreadPoolExecutor(8) as pool:
        responses = list(pool.map(
            lambda _: a.incr("orders", 1, headers={"Idempotency-Key": "burst"}), range(16)))
    assert all(r.status_code == 200 for r in responses)
    assert len({r.json()["event_id"] for r in responses}) == 1
    poll(lambda: a.count("orders") == 4, message="the burst's one increment at a")

    # Keys survive a restart.
    a.kill()
    a.restart()
    replay = a.incr("orders", 3, headers={"Idempotency-Key": "order-17"})
    assert replay.headers.get("Idempotent-Replayed") == "true"
    # The same event, counted once. The count may be today's: if the key's home is b, a just
    # restarted may not list b yet and answer itself from the key it learned by replication,
    # with its current count.
    assert replay.json()["event_id"] == first.json()["event_id"]
    assert replay.json()["count"] in (3, 4)
    cluster.wait_membership([a, b])
    assert cluster.wait_converged([a, b], 4, counter="orders") == 4


@pytest.mark.parametrize("key", ["", "x" * 256, "tab\there", "caf\u00e9", "del\x7f"])
def test_malformed_idempotency_key_is_refused(cluster, key):
    node = cluster.node(in_memory=True).start()
    response = node.post("/counter/increment", {}, headers={"Idempotency-Key": key.encode()})
    assert response.status_code == 400
    assert "Idempotency-Key" in response.json()["error"]
    assert node.count() == 0


def _run_node(tmp_path, *args, timeout=20):
    env = dict(os.environ, PYTHONPATH=str(ROOT))
    return subprocess.run([sys.executable, "-m", "dcounter", "--port", "0", *args],
                          cwd=tmp_path, env=env, capture_output=True, text=True,
                          timeout=timeout, stdin=subprocess.DEVNULL)


def test_corrupt_database_stops_the_node_with_one_line(tmp_path, cluster):
    data = tmp_path / "corrupt"
    data.mkdir()
    (data / "dcounter.sqlite3").write_bytes(b"this is not a database" * 200)
    result = _run_node(tmp_path, "--data-dir", str(data))
    assert result.returncode != 0
    lines = result.stderr.strip().splitlines()
    assert len(lines) == 1 and "corrupt" in lines[0], result.stderr
    assert "Traceback" not in result.stderr


def test_schema_version_from_the_future_stops_the_node(tmp_path, cluster):
    node = cluster.node("old", data_dir=tmp_path / "versioned").start()
    assert node.incr().status_code == 200
    assert node.terminate() == 0
    db = sqlite3.connect(tmp_path / "versioned" / "dcounter.sqlite3")
    db.execute("UPDATE meta SET value='99' WHERE name='schema_version'")
    db.commit()
    db.close()
    result = _run_node(tmp_path, "--data-dir", str(tmp_path / "versioned"))
    assert result.returncode != 0
    assert "schema version 99" in result.stderr
    assert len(result.stderr.strip().splitlines()) == 1


def test_unwritable_data_directory_stops_the_node(tmp_path):
    blocker = tmp_path / "a-file"
    blocker.write_text("not a directory")
    result = _run_node(tmp_path, "--data-dir", str(blocker / "data"))
    assert result.returncode != 0
    assert "data directory" in result.stderr
    assert len(result.stderr.strip().splitlines()) == 1
    if os.geteuid() != 0:  # root ignores permission bits
        locked = tmp_path / "locked"
        locked.mkdir(mode=0o500)
        result = _run_node(tmp_path, "--data-dir", str(locked / "data"))
        assert result.returncode != 0


def test_directory_in_use_refuses_a_second_node(tmp_path, cluster):
    first = cluster.node("first", data_dir=tmp_path / "shared").start()
    result = _run_node(tmp_path, "--data-dir", str(tmp_path / "shared"))
    assert result.returncode == 1
    assert "in use by another node" in result.stderr
    assert first.incr().status_code == 200


def test_port_in_use_is_one_line_and_exit_1(tmp_path, cluster):
    first = cluster.node("first", in_memory=True).start()
    result = _run_node(tmp_path, "--in-memory", "--port", str(first.port))
    assert result.returncode == 1
    assert "cannot listen" in result.stderr
    assert len(result.stderr.strip().splitlines()) == 1


def test_invalid_timings_are_refused_with_one_line(tmp_path):
    result = _run_node(tmp_path, "--in-memory", "--heartbeat-interval", "5",
                       "--peer-timeout", "3")
    assert result.returncode == 2
    assert "--peer-timeout must be greater than --heartbeat-interval" in result.stderr
    assert len(result.stderr.strip().splitlines()) == 1


def test_sigterm_leaves_at_once_and_loses_nothing(cluster):
    # Default heartbeat interval (2 s): the leave must beat it.
    slow = ["--heartbeat-interval", "2", "--peer-timeout", "6", "--cleanup-interval", "5"]
    a = cluster.node("a", fast=False, extra=slow).start()
    b = cluster.node("b", fast=False, extra=slow, peers=[a.node_id]).start()
    c = cluster.node("c", fast=False, extra=slow, peers=[a.node_id]).start()
    cluster.wait_membership([a, b, c])
    acked = _hammer(c, 200)
    assert acked == 200
    started = time.monotonic()
    c.signal(signal.SIGTERM)
    poll(lambda: c.node_id not in a.nodes() and c.node_id not in b.nodes(), 2.0, 0.02,
         message="peers to drop the leaving node within one heartbeat interval")
    assert time.monotonic() - started < 2.0
    assert c.proc.wait(10) == 0
    assert cluster.wait_converged([a, b], 200) == 200
    assert "Traceback" not in c.stderr()


def _mount_tmpfs(path, size):
    path.mkdir()
    result = subprocess.run(["mount", "-t", "tmpfs", "-o", f"size={size}", "tmpfs", str(path)],
                            capture_output=True)
    return result.returncode == 0


@pytest.mark.skipif(os.geteuid() != 0 or shutil.which("mount") is None,
                    reason="needs root to mount a small tmpfs")
def test_full_disk_refuses_increments_and_acknowledges_only_what_is_stored(tmp_path, cluster):
    mount = tmp_path / "small"
    if not _mount_tmpfs(mount, "2m"):
        pytest.skip("cannot mount tmpfs here")
    node = None
    try:
        node = cluster.node("full", data_dir=mount / "data").start()
        acked = sum(node.incr(headers={"Idempotency-Key": f"k{i}"}).status_code == 200
                    for i in range(20))
        assert acked == 20
        # Fill the disk.
        filler = mount / "filler"
        # Unbuffered: a buffered file that the disk filled in the middle of a write raises
        # again when it is closed (its rest is still in the buffer), depending only on how many
        # bytes happened to be free.
        with open(filler, "wb", buffering=0) as out:
            try:
                while True:
                    out.write(b"\0" * 65536)
                    out.flush()
            except OSError:
                pass
        statuses = []
        for i in range(400):
            response = node.incr(headers={"Idempotency-Key": f"full-{i}-" + "p" * 200})
            statuses.append(response.status_code)
            if response.status_code == 503:
                assert "storage" in response.json()["error"]
                break
        assert 503 in statuses, statuses[-5:]
        acked += statuses.count(200)
        assert node.count() == acked
        # Space comes back: the node works again and nothing acknowledged is missing.
        filler.unlink()
        poll(lambda: node.incr().status_code == 200, 10, message="writes to work again")
        acked += 1
        node.kill()
        node.restart()
        assert node.count() == acked
    finally:
        if node is not None:
            node.kill()
        subprocess.run(["umount", "-l", str(mount)], capture_output=True)
