"""Backups of real nodes: hot (`dcounter backup`, in-process) while increments run, offline
(`dcounter-node backup`, in-process), and restores that take a fresh origin and catch up."""

import os
import socket
import sqlite3
import struct
import threading

import pytest
import requests

from dcounter import cli
from dcounter.client import main as client_main
from tests.integration.harness import poll

TOKEN = "backup-test-token-0123456789"


def run(capsys, *argv, env=None):
    """(exit code, stdout, stderr) of one `dcounter` command; the caller's environment is not
    used."""
    code = client_main(list(argv), environ=dict(env or {}))
    out, err = capsys.readouterr()
    return code, out, err


def run_node_cli(capsys, *argv):
    code = cli.main(list(argv))
    out, err = capsys.readouterr()
    return code, out, err


def one_error_line(err: str, prog: str = "dcounter") -> str:
    lines = err.strip().splitlines()
    assert len(lines) == 1 and lines[0].startswith(f"{prog}: error: "), err
    return lines[0]


def read_copy(path):
    """(meta, {origin: watermark}, {(origin, counter): total}, held rows) of a backup file."""
    conn = sqlite3.connect(f"file:{path}?mode=ro", uri=True)
    try:
        assert conn.execute("PRAGMA integrity_check").fetchone()[0] == "ok"
        meta = dict(conn.execute("SELECT name, value FROM meta"))
        watermarks = dict(conn.execute("SELECT origin, watermark FROM origins"))
        totals = {(o, c): int(t) for o, c, t in conn.execute(
            "SELECT origin, counter, total FROM prefixes")}
        held = conn.execute("SELECT COUNT(*) FROM held").fetchone()[0]
    finally:
        conn.close()
    return meta, watermarks, totals, held


def origin_of(node) -> str:
    return node.get("/status").json()["origin"]


def increments(node, count, counter=None):
    for _ in range(count):
        assert node.incr(counter).status_code == 200


def test_hot_backup_while_increments_run_holds_an_acknowledged_prefix(cluster, tmp_path,
                                                                       capsys):
    node = cluster.node("solo").start()
    stop = threading.Event()
    acked, attempted = [0, 0], [0, 0]

    def client(i):
        session = requests.Session()
        session.trust_env = False
        while not stop.is_set():
            attempted[i] += 1
            try:
                response = session.post(f"{node.base}/counter/increment", timeout=10)
            except requests.RequestException:
                continue
            acked[i] += response.status_code == 200
        session.close()

    threads = [threading.Thread(target=client, args=(i,)) for i in range(2)]
    for thread in threads:
        thread.start()
    try:
        poll(lambda: sum(acked) >= 200, 30, message="increments to get going")
        before = sum(acked)
        copy = tmp_path / "hot.sqlite3"
        code, out, err = run(capsys, "backup", "--node", node.node_id, "--to", str(copy))
        after = sum(attempted)
        poll(lambda: sum(acked) >= after + 50, 30, message="increments to go on after the copy")
    finally:
        stop.set()
        for thread in threads:
            thread.join(30)
    assert code == 0, err
    assert out == f"backup of {node.node_id} ({copy.stat().st_size} bytes) written to {copy}\n"
    origin = origin_of(node)
    meta, watermarks, totals, held = read_copy(copy)
    assert meta["origin"] == origin and meta["backup_of_origin"] == origin
    # Every event of the origin up to its watermark and none above it: the count at one commit.
    assert held == 0 and totals[(origin, "default")] == watermarks[origin]
    # Acknowledged before the copy began: in it. Committed in it: sent before the command
    # returned.
    assert before <= watermarks[origin] <= after
    assert sum(acked) <= node.count() <= sum(attempted)  # the node counted on, unharmed
    assert sorted(os.listdir(tmp_path)) == sorted(
        ["hot.sqlite3", "data-solo", "solo.1.out", "solo.1.err"])  # no partial file left


def test_a_backup_restored_as_a_new_node_takes_a_fresh_origin_and_converges(cluster, tmp_path,
                                                                          capsys):
    a, b = cluster.start(2)
    increments(a, 5)
    increments(b, 3)
    cluster.wait_converged([a, b], 8)
    copy = tmp_path / "a.sqlite3"
    assert run(capsys, "backup", "--node", a.node_id, "--to", str(copy))[0] == 0
    increments(a, 4)
    increments(b, 2)
    cluster.wait_converged([a, b], 14)

    restored_dir = tmp_path / "data-c"
    code, out, err = run_node_cli(capsys, "restore", "--from", str(copy),
                                  "--data-dir", str(restored_dir))
    assert code == 0, err
    assert "fresh origin" in out
    c = cluster.node("c", peers=[a.node_id], data_dir=restored_dir).start()
    assert origin_of(c) not in (origin_of(a), origin_of(b))
    assert "holds a restored backup of origin " + origin_of(a) in c.stderr()
    response = c.incr()
    assert response.status_code == 200
    assert response.json()["event_id"] == origin_of(c) + ":1"
    increments(c, 2)
    # c lists a as a peer (not as itself, although it started with a's data) and catches up.
    cluster.wait_membership([a, b, c])
    cluster.wait_converged([a, b, c], 17)


def test_a_node_restored_in_place_never_loses_increments_as_duplicates(cluster, tmp_path,
                                                                       capsys):
    a, b = cluster.start(2)
    increments(a, 5)
    cluster.wait_converged([a, b], 5)
    copy = tmp_path / "a.sqlite3"
    assert run(capsys, "backup", "--node", a.node_id, "--to", str(copy))[0] == 0
    old_origin = origin_of(a)
    increments(a, 5)  # a's events 6..10, which b holds
    cluster.wait_converged([a, b], 10)
    cluster.wait_replication_idle([a, b])
    a.kill()  # its disk is lost; the backup holds events 1..5 of its origin

    code, _, err = run_node_cli(capsys, "restore", "--from", str(copy),
                                "--data-dir", str(a.data_dir))
    assert code == 1 and "already holds a database" in one_error_line(err, "dcounter-node")
    code, _, err = run_node_cli(capsys, "restore", "--from", str(copy),
                                "--data-dir", str(a.data_dir), "--force")
    assert code == 0, err
    a.restart()  # same address, no seeds: nothing told it about events 6..10 yet
    new_origin = origin_of(a)
    assert new_origin != old_origin
    # Acknowledged before any contact with b: with the old origin these would be events 6..8,
    # which b already holds, and would be dropped there as duplicates.
    for _ in range(3):
        response = a.incr()
        assert response.status_code == 200
        assert response.json()["event_id"].startswith(new_origin + ":")
    cluster.wait_membership([a, b])
    cluster.wait_converged([a, b], 13)


def test_offline_backup_of_a_running_and_of_a_stopped_node(cluster, tmp_path, capsys):
    node = cluster.node("solo").start()
    increments(node, 7, "offline")
    running = tmp_path / "running.sqlite3"
    code, out, err = run_node_cli(capsys, "backup", "--data-dir", str(node.data_dir),
                                  "--to", str(running))
    assert code == 0, err
    assert out.startswith(f"backup of origin {origin_of(node)} (1 counters, ")
    increments(node, 1, "offline")
    assert node.terminate() == 0
    listing = sorted(os.listdir(node.data_dir))
    stopped = tmp_path / "stopped.sqlite3"
    assert run_node_cli(capsys, "backup", "--data-dir", str(node.data_dir),
                        "--to", str(stopped))[0] == 0
    assert sorted(os.listdir(node.data_dir)) == listing  # nothing left behind, no -wal/-shm
    for path, expected in ((running, 7), (stopped, 8)):
        meta, watermarks, totals, _ = read_copy(path)
        assert totals == {(meta["origin"], "offline"): expected}
        assert meta["backup_of_origin"] == meta["origin"]
    node.restart()
    assert node.count("offline") == 8  # the node's own directory was not marked


def test_backup_on_an_in_memory_node_and_with_a_client_token(cluster, tmp_path, capsys):
    memory = cluster.node("memory", in_memory=True).start()
    target = tmp_path / "out"
    target.mkdir()
    code, _, err = run(capsys, "backup", "--node", memory.node_id, "--to", str(target / "m"))
    assert code == 1
    assert "answered 409" in one_error_line(err) and "in memory" in err

    guarded = cluster.node("guarded", extra=["--client-token", TOKEN]).start()
    increments_ok = guarded.incr(headers={"Authorization": f"Bearer {TOKEN}"})
    assert increments_ok.status_code == 200
    assert guarded.get("/backup").status_code == 401
    code, _, err = run(capsys, "backup", "--node", guarded.node_id, "--to", str(target / "g"))
    assert code == 1 and "answered 401" in one_error_line(err)
    assert os.listdir(target) == []  # refused: nothing written, no partial file
    code, _, err = run(capsys, "backup", "--node", guarded.node_id, "--to", str(target / "g"),
                       env={"DCOUNTER_CLIENT_TOKEN": TOKEN})
    assert code == 0, err
    meta, _, totals, _ = read_copy(target / "g")
    assert totals == {(meta["origin"], "default"): 1}


def _closed_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return sock.getsockname()[1]


def test_bad_inputs_exit_with_one_clear_line(cluster, tmp_path, capsys):
    node = cluster.node("solo").start()
    at = ["--node", node.node_id]
    # Usage: 2.
    code, _, err = run(capsys, "backup", *at)
    assert code == 2 and "--to" in one_error_line(err)
    code, _, err = run(capsys, "backup", *at, "--to", "")
    assert code == 2 and "--to" in one_error_line(err)
    code, _, err = run_node_cli(capsys, "backup", "--to", str(tmp_path / "x"))
    assert code == 2 and "--data-dir" in one_error_line(err, "dcounter-node")
    code, _, err = run_node_cli(capsys, "restore", "--data-dir", str(tmp_path / "x"))
    assert code == 2 and "--from" in one_error_line(err, "dcounter-node")
    # Runtime: 1, and nothing written.
    code, _, err = run(capsys, "backup", *at, "--to", str(tmp_path / "missing" / "b.sqlite3"))
    assert code == 1 and "does not exist" in one_error_line(err)
    a_file = tmp_path / "a-file"
    a_file.write_text("keep")
    code, _, err = run(capsys, "backup", *at, "--to", str(a_file))
    assert code == 1 and "already exists" in one_error_line(err)
    assert a_file.read_text() == "keep"
    code, _, err = run(capsys, "backup", *at, "--to", str(a_file / "b.sqlite3"))
    assert code == 1 and "does not exist" in one_error_line(err)
    code, _, err = run(capsys, "backup", "--node", f"127.0.0.1:{_closed_port()}",
                       "--to", str(tmp_path / "b.sqlite3"))
    assert code == 1 and "connection refused" in one_error_line(err)
    code, _, err = run_node_cli(capsys, "backup", "--data-dir", str(tmp_path / "nowhere"),
                                "--to", str(tmp_path / "b.sqlite3"))
    assert code == 1 and "does not exist" in one_error_line(err, "dcounter-node")
    code, _, err = run_node_cli(capsys, "restore", "--from", str(a_file),
                                "--data-dir", str(tmp_path / "r"))
    assert code == 1 and "not a" in one_error_line(err, "dcounter-node")
    good = tmp_path / "good.sqlite3"
    assert run(capsys, "backup", *at, "--to", str(good))[0] == 0
    code, _, err = run_node_cli(capsys, "restore", "--from", str(good),
                                "--data-dir", str(node.data_dir), "--force")
    assert code == 1 and "in use by a running node" in one_error_line(err, "dcounter-node")
    assert not os.path.exists(tmp_path / "b.sqlite3")
    assert not os.path.exists(tmp_path / "r" / "dcounter.sqlite3")
    assert node.incr().status_code == 200 and node.count() == 1


@pytest.mark.skipif(os.geteuid() == 0, reason="root writes into a read-only directory")
def test_an_unwritable_directory_is_refused_before_the_node_is_asked(cluster, tmp_path, capsys):
    node = cluster.node("solo").start()
    locked = tmp_path / "locked"
    locked.mkdir()
    locked.chmod(0o500)
    try:
        code, _, err = run(capsys, "backup", "--node", node.node_id,
                           "--to", str(locked / "b.sqlite3"))
    finally:
        locked.chmod(0o700)
    assert code == 1 and "cannot write in" in one_error_line(err)
    assert os.listdir(locked) == []


# -- a large store: streamed, one at a time, nothing left in the node's temporary directory ------

LARGE_KEYS = 40_000  # 200-character keys: about 11 MB, more than socket buffers hold


def build_store(data_dir, keys: int) -> None:
    """A data directory whose database remembers `keys` Idempotency-Keys, written as a node
    writes them (store, counter, writer) before any node runs on it."""
    import time

    from dcounter.counter import Counter
    from dcounter.store import Store
    from dcounter.writer import Writer

    store = Store(str(data_dir), sync="normal")
    store.open()
    origin, origins, known = store.load()
    counter = Counter(origin, key_ttl=86_400.0)
    counter.load(origins, known)
    writer = Writer(counter, store)
    writer.start()
    now = time.time()
    for start in range(0, keys, 5_000):
        def batch(txn, start=start):
            for i in range(start, min(keys, start + 5_000)):
                txn.local(f"c{i % 500}", 1, f"{i:08d}-" + "k" * 191, now)
        writer.submit(batch)
    writer.stop()
    store.close()


def held_backup(node) -> socket.socket:
    """A `GET /backup` whose client reads the head and then stops reading (a tiny receive
    buffer, so the node's send must wait)."""
    sock = socket.socket()
    sock.setsockopt(socket.SOL_SOCKET, socket.SO_RCVBUF, 4096)
    sock.settimeout(10)
    sock.connect(("127.0.0.1", node.port))
    sock.sendall(b"GET /backup HTTP/1.1\r\nHost: x\r\n\r\n")
    head = b""
    while b"\r\n\r\n" not in head:
        chunk = sock.recv(4096)
        assert chunk, head
        head += chunk
    assert head.startswith(b"HTTP/1.1 200 "), head
    return sock


def test_a_large_store_is_streamed_intact_one_backup_at_a_time(cluster, tmp_path, capsys):
    data_dir, scratch = tmp_path / "data-large", tmp_path / "node-tmp"
    scratch.mkdir()
    build_store(data_dir, LARGE_KEYS)
    node = cluster.node("large", data_dir=data_dir, env={"TMPDIR": str(scratch)}).start()
    copy = tmp_path / "large.sqlite3"
    code, out, err = run(capsys, "backup", "--node", node.node_id, "--to", str(copy))
    assert code == 0, err
    assert f"({copy.stat().st_size} bytes)" in out and copy.stat().st_size > 8 << 20
    conn = sqlite3.connect(f"file:{copy}?mode=ro", uri=True)
    try:
        assert conn.execute("PRAGMA integrity_check").fetchone()[0] == "ok"
        assert conn.execute("SELECT COUNT(*) FROM keys").fetchone()[0] == LARGE_KEYS
    finally:
        conn.close()

    first = held_backup(node)
    try:
        assert os.listdir(scratch) == []  # the copy being sent has no name left to leave
        busy = node.get("/backup")
        assert busy.status_code == 503 and "another backup" in busy.json()["error"]
        assert int(busy.headers["Retry-After"]) > 0
        code, _, err = run(capsys, "backup", "--node", node.node_id, "--to",
                           str(tmp_path / "second.sqlite3"))
        assert code == 1 and "another backup" in one_error_line(err)
    finally:
        # The client goes away halfway (a reset, as a killed client leaves).
        first.setsockopt(socket.SOL_SOCKET, socket.SO_LINGER, struct.pack("ii", 1, 0))
        first.close()
    # The slot is free again once the node notices; nothing was left behind.
    poll(lambda: node.get("/backup").status_code == 200, 30,
         message="a backup to be accepted after the client went away")
    assert os.listdir(scratch) == []
    assert node.count("c0") == LARGE_KEYS // 500  # the node served on, unharmed
