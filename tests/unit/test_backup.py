"""Backup copies, the backup mark and restore, against databases under tmp_path; the route
through `App.handle` on a real opened node (no loops running)."""

import dataclasses
import os
import sqlite3
import tempfile

import pytest
import responses

from dcounter import backup
from dcounter.backup import BackupError, backup_file, copy_database, restore
from dcounter.client import main as client_main
from dcounter.config import Config
from dcounter.counter import Counter, Event
from dcounter.http_types import FileBody
from dcounter.node import Node
from dcounter.store import BACKUP_OF, BACKUP_TAKEN, DB_NAME, Store
from dcounter.writer import Writer
from tests.fakes import FakeClock, make_request

NOW = 1_790_000_000.0


class Opened:
    """A store, a counter loaded from it and a running writer: what a node opens."""

    def __init__(self, directory):
        self.directory = str(directory)
        self.store = Store(self.directory, sync="normal")
        self.store.open()
        self.origin, origins, keys = self.store.load()
        self.counter = Counter(self.origin, key_ttl=60.0)
        self.counter.load(origins, keys)
        self.writer = Writer(self.counter, self.store)
        self.writer.start()

    @property
    def path(self) -> str:
        return os.path.join(self.directory, DB_NAME)

    def local(self, name="c", delta=1, key=None):
        return self.writer.submit(lambda txn: txn.local(name, delta, key, NOW))

    def close(self):
        self.writer.stop()
        self.store.close()


@pytest.fixture
def opened(tmp_path):
    handles = []

    def open_(name="data"):
        handle = Opened(tmp_path / name)
        handles.append(handle)
        return handle

    yield open_
    for handle in handles:
        if handle.store.is_open:
            handle.close()


def meta(path) -> dict:
    with sqlite3.connect(path) as conn:
        return dict(conn.execute("SELECT name, value FROM meta"))


def totals(path) -> dict:
    with sqlite3.connect(path) as conn:
        return dict(conn.execute("SELECT counter, SUM(CAST(total AS INTEGER)) FROM prefixes "
                                 "GROUP BY counter"))


def test_a_copy_of_an_open_store_holds_its_state_and_the_mark(opened, tmp_path):
    node = opened()
    for _ in range(3):
        node.local()
    node.local("d", 5, key="k1")
    copy = str(tmp_path / "copy.sqlite3")

    info = copy_database(node.path, copy, NOW)

    assert info == {"origin": node.origin, "counters": 2, "bytes": os.path.getsize(copy)}
    assert totals(copy) == {"c": 3, "d": 5}
    marks = meta(copy)
    assert marks[BACKUP_OF] == node.origin and marks["origin"] == node.origin
    assert marks[BACKUP_TAKEN] == "2026-09-21T14:13:20+00:00"
    assert BACKUP_OF not in meta(node.path)  # the source is never marked
    with open(copy, "rb") as file:
        header = file.read(20)
    assert header[:16] == b"SQLite format 3\x00" and header[18] == 1  # rollback journal
    assert sorted(os.listdir(tmp_path)) == ["copy.sqlite3", "data"]  # no partial file left
    node.local()  # the node goes on committing after the copy
    assert node.counter.count("c") == 4


def test_the_copy_takes_no_lock_the_writer_needs_and_excludes_what_is_uncommitted(
        opened, tmp_path):
    node = opened()
    node.local()
    # A commit in progress on the node's connection (what the writer holds while it commits):
    # the copy does not wait for it, and holds the committed state only.
    conn = node.store._conn
    conn.execute("BEGIN IMMEDIATE")
    conn.execute("UPDATE prefixes SET total='999'")
    copy = str(tmp_path / "copy.sqlite3")
    copy_database(node.path, copy, NOW)
    conn.execute("COMMIT")
    assert totals(copy) == {"c": 1}


def test_a_restored_copy_takes_a_fresh_origin_once_and_keeps_the_state(opened, tmp_path):
    source = opened("source")
    for _ in range(4):
        source.local()
    copy = str(tmp_path / "copy.sqlite3")
    copy_database(source.path, copy, NOW)
    restore(copy, str(tmp_path / "restored"), NOW)

    restored = opened("restored")
    assert restored.origin != source.origin
    assert restored.counter.count("c") == 4
    assert restored.counter.watermark(source.origin) == 4  # the old origin is a peer's now
    assert BACKUP_OF not in meta(restored.path) and BACKUP_TAKEN not in meta(restored.path)
    event = restored.local()
    assert event.event_id == f"{restored.origin}:1"
    # Events the source counted after the copy still apply: no sequence number was reused.
    applied = restored.writer.submit(
        lambda txn: txn.remote([Event(source.origin, 5, "c", 1)], NOW))
    assert applied.applied and restored.counter.count("c") == 6
    new_origin = restored.origin
    restored.close()
    assert opened("restored").origin == new_origin  # persisted: taken once, not per start


def test_a_marked_file_put_in_place_by_hand_takes_a_fresh_origin(opened, tmp_path):
    source = opened("source")
    source.local()
    (tmp_path / "manual").mkdir()
    copy_database(source.path, str(tmp_path / "manual" / DB_NAME), NOW)
    assert opened("manual").origin != source.origin


def test_restore_marks_a_plain_copy_and_removes_stale_wal_files(opened, tmp_path):
    source = opened("source")
    source.local()
    source.close()
    plain = tmp_path / "plain.sqlite3"
    plain.write_bytes((tmp_path / "source" / DB_NAME).read_bytes())  # no mark
    target = tmp_path / "target"
    target.mkdir()
    (target / (DB_NAME + "-wal")).write_bytes(b"stale")
    (target / (DB_NAME + "-shm")).write_bytes(b"stale")
    with pytest.raises(BackupError, match="already holds a database.*--force"):
        restore(str(plain), str(target), NOW)
    assert (target / (DB_NAME + "-wal")).read_bytes() == b"stale"  # refused: nothing changed

    restore(str(plain), str(target), NOW, force=True)
    assert sorted(os.listdir(target)) == [DB_NAME]
    assert meta(target / DB_NAME)[BACKUP_OF] == source.origin
    node = opened("target")
    assert node.origin != source.origin and node.counter.count("c") == 1


@pytest.mark.skipif(os.geteuid() != 0, reason="only root can hand files to another user")
def test_restore_as_root_gives_the_database_to_the_directory_owner(opened, tmp_path):
    source = opened("source")
    source.local()
    copy = str(tmp_path / "copy.sqlite3")
    copy_database(source.path, copy, NOW)
    target = tmp_path / "owned"
    target.mkdir()
    os.chown(target, 65534, 65534)
    restore(copy, str(target), NOW)
    assert (os.stat(target / DB_NAME).st_uid, os.stat(target / DB_NAME).st_gid) == \
        (65534, 65534)


def test_restore_refuses_a_directory_a_node_holds_even_with_force(opened, tmp_path):
    source = opened("source")
    source.local()
    copy = str(tmp_path / "copy.sqlite3")
    copy_database(source.path, copy, NOW)
    running = opened("running")
    running.local()
    with pytest.raises(BackupError, match="in use by a running node"):
        restore(copy, running.directory, NOW, force=True)
    assert running.local().count == 2 and BACKUP_OF not in meta(running.path)


@pytest.mark.parametrize("content", [b"", b"not a database at all" * 100])
def test_a_file_that_is_not_a_dcounter_database_is_refused(tmp_path, content):
    bad = tmp_path / "bad.sqlite3"
    bad.write_bytes(content)
    with pytest.raises(BackupError, match="not a (dcounter|readable SQLite) database"):
        copy_database(str(bad), str(tmp_path / "copy"), NOW)
    with pytest.raises(BackupError, match="not a (dcounter|readable SQLite) database"):
        restore(str(bad), str(tmp_path / "target"), NOW)
    assert not os.path.exists(tmp_path / "copy")
    assert os.listdir(tmp_path / "target") == []
    assert bad.read_bytes() == content


def test_copy_refuses_an_existing_file_and_a_missing_directory(opened, tmp_path):
    node = opened()
    existing = tmp_path / "existing"
    existing.write_bytes(b"keep me")
    with pytest.raises(BackupError, match="already exists"):
        copy_database(node.path, str(existing), NOW)
    assert existing.read_bytes() == b"keep me"
    with pytest.raises(BackupError, match="directory .*nowhere does not exist"):
        copy_database(node.path, str(tmp_path / "nowhere" / "copy"), NOW)
    with pytest.raises(BackupError, match="no such file"):
        copy_database(str(tmp_path / "missing.sqlite3"), str(tmp_path / "copy"), NOW)


def test_backup_file_is_the_marked_file_open_and_already_removed(opened, tmp_path,
                                                                monkeypatch):
    scratch = tmp_path / "tmp"
    scratch.mkdir()
    monkeypatch.setattr(tempfile, "tempdir", str(scratch))
    node = opened()
    node.local()
    with backup_file(node.path, NOW) as file:
        # Nothing under the temporary directory, even while the copy is read: a node killed
        # mid-answer leaves no copy behind, and its space is given back when the file closes.
        assert list(scratch.iterdir()) == [] and os.fstat(file.fileno()).st_nlink == 0
        data = file.read()
    assert data.startswith(b"SQLite format 3\x00") and b"backup_of_origin" in data


# -- the command --------------------------------------------------------------------------------

def test_command_exit_codes(opened, tmp_path, capsys):
    node = opened()
    node.local()
    assert backup.main(["backup", "--data-dir", node.directory]) == 2
    assert "--to" in capsys.readouterr().err
    assert backup.main(["backup", "--data-dir", "", "--to", "x"]) == 2
    assert backup.main(["restore", "--data-dir", str(tmp_path / "t")]) == 2
    assert backup.main(["backup", "--data-dir", str(tmp_path / "nope"),
                        "--to", str(tmp_path / "f")]) == 1
    assert "data directory" in capsys.readouterr().err
    (tmp_path / "empty").mkdir()
    assert backup.main(["backup", "--data-dir", str(tmp_path / "empty"),
                        "--to", str(tmp_path / "f")]) == 1
    assert "holds no database" in capsys.readouterr().err
    out = tmp_path / "out.sqlite3"
    assert backup.main(["backup", "--data-dir", node.directory, "--to", str(out)]) == 0
    assert f"written to {out}" in capsys.readouterr().out
    assert backup.main(["restore", "--from", str(out), "--data-dir", str(tmp_path / "r")]) == 0
    assert backup.main(["restore", "--from", str(out), "--data-dir", str(tmp_path / "r")]) == 1
    err = capsys.readouterr().err
    assert err.count("\n") == 1 and "already holds a database" in err


def test_the_client_refuses_an_answer_that_is_not_a_database(tmp_path, capsys):
    with responses.RequestsMock() as mock:
        mock.get("http://vm1:8080/backup", body=b"SQLite format 3\x00" + b"\x00" * 200)
        mock.get("http://vm1:8080/backup", body=b"<html>a proxy page</html>")
        argv = ["backup", "--node", "vm1:8080", "--to"]
        assert client_main(argv + [str(tmp_path / "a")], environ={}) == 1
        assert "does not check out" in capsys.readouterr().err
        assert client_main(argv + [str(tmp_path / "b")], environ={}) == 1
        assert "not a SQLite database" in capsys.readouterr().err
    assert list(tmp_path.iterdir()) == []  # nothing written, no partial file


def test_the_client_refuses_an_answer_cut_short_of_its_length(tmp_path, capsys):
    with responses.RequestsMock() as mock:
        mock.get("http://vm1:8080/backup", body=b"SQLite format 3\x00" + b"\x00" * 200,
                 headers={"Content-Length": "5000"})
        argv = ["backup", "--node", "vm1:8080", "--to", str(tmp_path / "a")]
        assert client_main(argv, environ={}) == 1
    err = capsys.readouterr().err
    assert err.count("\n") == 1 and "cut off before its end" in err
    assert list(tmp_path.iterdir()) == []


# -- the route ----------------------------------------------------------------------------------

BASE = Config(port=0, advertise="n1:7001", batch_linger=0, drain_timeout=0)


@pytest.fixture
def make_node(tmp_path):
    nodes = []

    def make(**changes):
        if not changes.get("in_memory"):
            changes.setdefault("data_dir", str(tmp_path / f"node{len(nodes)}"))
        node = Node(dataclasses.replace(BASE, **changes), clock=FakeClock())
        node.open()
        nodes.append(node)
        return node

    yield make
    for node in nodes:
        node.stop(leave=False)


def fetched(response, path) -> str:
    """Write a backup answer's streamed body to `path` and close it, as the server does."""
    body = response.body
    assert isinstance(body, FileBody)  # sent from the file in chunks, never held in memory
    try:
        with open(path, "wb") as out:
            for chunk in body.chunks():
                out.write(chunk)
    finally:
        body.close()
    assert os.path.getsize(path) == body.length
    return str(path)


def test_route_answers_the_database_file_as_a_stream(make_node, tmp_path, monkeypatch):
    scratch = tmp_path / "tmp"
    scratch.mkdir()
    monkeypatch.setattr(tempfile, "tempdir", str(scratch))
    node = make_node()
    node.writer.start()
    node.increment("c", 7, None)
    response = node.app.handle(make_request("GET", "/backup"))
    assert response.status == 200 and response.content_type == "application/vnd.sqlite3"
    assert list(scratch.iterdir()) == []  # the copy has no name: nothing to leave behind
    path = fetched(response, tmp_path / "fetched.sqlite3")
    assert totals(path) == {"c": 7}
    assert meta(path)[BACKUP_OF] == node.counter.local_origin
    assert response.body.file.closed


def test_one_backup_at_a_time_a_second_is_told_to_retry(make_node, tmp_path):
    node = make_node()
    node.writer.start()
    first = node.app.handle(make_request("GET", "/backup"))
    assert first.status == 200
    second = node.app.handle(make_request("GET", "/backup"))
    assert second.status == 503 and second.headers["Retry-After"].isdigit()
    assert b"another backup" in second.body
    first.body.close()  # sent, or the client went away: the next one may start
    first.body.close()  # closing twice is harmless
    third = node.app.handle(make_request("GET", "/backup"))
    assert third.status == 200
    fetched(third, tmp_path / "third.sqlite3")


def test_a_failed_copy_frees_the_slot(make_node, monkeypatch):
    node = make_node()
    node.writer.start()

    def no_room(*args):
        raise BackupError("copy failed: database or disk is full")

    with monkeypatch.context() as patch:
        patch.setattr(backup, "backup_file", no_room)
        response = node.app.handle(make_request("GET", "/backup"))
    assert response.status == 503 and b"disk is full" in response.body
    response = node.app.handle(make_request("GET", "/backup"))
    assert response.status == 200
    response.body.close()


def test_route_on_an_in_memory_node_is_a_conflict(make_node):
    node = make_node(in_memory=True, data_dir=None)
    response = node.app.handle(make_request("GET", "/backup"))
    assert response.status == 409 and b"in memory" in response.body


def test_route_needs_the_client_token_when_one_is_set(make_node):
    token = "t" * 20
    node = make_node(client_token=token)
    node.writer.start()
    assert node.app.handle(make_request("GET", "/backup")).status == 401
    wrong = {"Authorization": "Bearer " + "x" * 20}
    assert node.app.handle(make_request("GET", "/backup", headers=wrong)).status == 401
    right = {"Authorization": f"Bearer {token}"}
    response = node.app.handle(make_request("GET", "/backup", headers=right))
    assert response.status == 200
    response.body.close()
    assert node.app.handle(make_request("GET", "/backup", query=[("x", "1")],
                                        headers=right)).status == 400
