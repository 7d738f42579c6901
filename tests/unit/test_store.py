"""SQLite persistence, against a database under tmp_path, with the real Writer and Counter."""

import concurrent.futures
import sqlite3

import pytest

from dcounter.counter import Counter, Event
from dcounter.errors import StartupError, StorageFailure, Unprocessable
from dcounter.store import DB_NAME, Store
from dcounter.writer import Writer
from tests.fakes import FakeClock


class Opened:
    """A store, a counter loaded from it and a running writer: what a node opens."""

    def __init__(self, directory, **counter_options):
        self.store = Store(str(directory), sync="normal")
        self.store.open()
        self.origin, origins, keys = self.store.load()
        counter_options.setdefault("key_ttl", 60.0)
        self.counter = Counter(self.origin, **counter_options)
        self.counter.load(origins, keys, *self.store.load_retirement(),
                          *self.store.load_resets())
        self.committed: list[Event] = []
        self.writer = Writer(self.counter, self.store, on_commit=self.committed.extend)
        self.writer.start()

    def local(self, name="c", delta=1, key=None, now=0.0):
        return self.writer.submit(lambda txn: txn.local(name, delta, key, now))

    def remote(self, *events, now=0.0):
        return self.writer.submit(lambda txn: txn.remote(list(events), now))

    def close(self):
        self.writer.stop()
        self.store.close()


@pytest.fixture
def opened(tmp_path):
    handles = []

    def open_(directory=None, **counter_options):
        handle = Opened(directory or tmp_path / "data", **counter_options)
        handles.append(handle)
        return handle

    yield open_
    for handle in handles:
        handle.close()


def state_of(counter: Counter):
    return (counter.local_origin, counter.counters(), counter.digest(), counter.held_total(),
            counter.key_count(), counter.snapshot(list(counter.digest())))


def test_state_round_trips_through_a_reopen(opened, tmp_path):
    clock = FakeClock()
    first = opened()
    first.local(delta=5, key="k1", now=clock.time())
    first.local(name="big", delta=2**53 - 1)
    first.remote(Event("peer", 1, "c", 10), Event("peer", 3, "d", 7, "k2"), now=clock.time())
    first.writer.submit(lambda txn: txn.adopt("third", 4, {"c": 40}))
    first.writer.submit(lambda txn: txn.local("big", 2**53 - 1, None, 0.0))  # > 2^53 in total
    before = state_of(first.counter)
    first.close()

    second = opened()
    assert state_of(second.counter) == before
    assert second.counter.count("big") == 2 * (2**53 - 1)
    replay = second.local(delta=5, key="k1", now=clock.time())
    assert replay.replayed and replay.count == 5
    assert second.counter.key("k2", clock.time()).event_id == "peer:3"
    second.remote(Event("peer", 2, "c", 1))  # closes the held gap after the restart
    assert second.counter.watermark("peer") == 3 and second.counter.held_total() == 0
    clock.advance(61)  # keys expire by the wall clock, across restarts too
    assert second.counter.key("k1", clock.time()) is None


def test_keys_evicted_past_max_keys_stay_forgotten_after_a_restart(opened, tmp_path):
    first = opened(max_keys=2)
    for i in range(4):
        first.local(key=f"k{i}", now=float(i))
    first.close()
    rows = sqlite3.connect(str(tmp_path / "data" / DB_NAME)).execute(
        "SELECT key FROM keys ORDER BY key").fetchall()
    assert rows == [("k2",), ("k3",)]
    second = opened(max_keys=2)
    assert second.counter.key_count() == 2
    assert not second.local(key="k0", now=5.0).replayed  # evicted: counts again
    assert second.local(key="k3", now=5.0).replayed


def test_a_lowered_max_keys_is_applied_and_stored_by_the_expiry_sweep(opened, tmp_path):
    first = opened()
    for i in range(5):
        first.local(key=f"k{i}", now=float(i))
    first.close()
    second = opened(max_keys=3)
    second.writer.submit(lambda txn: txn.expire_keys(10.0))
    second.close()
    third = opened(max_keys=3)
    assert third.counter.key_count() == 3 and third.counter.key("k4", 10.0) is not None


def test_reopen_keeps_the_origin_and_continues_its_sequence(opened):
    first = opened()
    origin = first.origin
    ids = [first.local().event_id for _ in range(3)]
    assert ids == [f"{origin}:1", f"{origin}:2", f"{origin}:3"]
    first.close()
    second = opened()
    assert second.origin == origin
    assert second.local().event_id == f"{origin}:4"
    assert [e.id for e in second.committed] == [f"{origin}:4"]


def test_a_fresh_directory_gets_a_fresh_origin(opened, tmp_path):
    assert opened(tmp_path / "a").origin != opened(tmp_path / "b").origin


def test_reorigin_is_stored(opened):
    first = opened()
    old = first.origin
    first.remote(Event(old, 2, "c", 1))  # a peer holds our origin above our watermark
    new = first.counter.local_origin
    assert new != old
    first.close()
    assert opened().origin == new


def test_a_second_store_on_the_same_directory_refuses_to_start(opened, tmp_path):
    opened()
    second = Store(str(tmp_path / "data"))
    with pytest.raises(StartupError, match="in use by another node"):
        second.open()


def test_the_lock_is_released_on_close(tmp_path):
    store = Store(str(tmp_path))
    store.open()
    store.close()
    again = Store(str(tmp_path))
    again.open()
    again.close()


def _create(directory) -> str:
    store = Store(str(directory))
    store.open()
    store.close()
    return str(directory / DB_NAME)


def test_another_schema_version_refuses_to_start(tmp_path):
    path = _create(tmp_path)
    with sqlite3.connect(path) as conn:
        conn.execute("UPDATE meta SET value='99' WHERE name='schema_version'")
    with pytest.raises(StartupError, match="schema version 99"):
        Store(str(tmp_path)).open()
    # The failed open released the directory lock: the same error again, not "in use".
    with pytest.raises(StartupError, match="schema version 99"):
        Store(str(tmp_path)).open()


def test_a_file_that_is_not_a_database_refuses_to_start(tmp_path):
    (tmp_path / DB_NAME).write_bytes(b"this is not sqlite, just some text\n" * 200)
    with pytest.raises(StartupError, match="unreadable or corrupt"):
        Store(str(tmp_path)).open()
    assert (tmp_path / DB_NAME).read_bytes().startswith(b"this is not sqlite")


def test_a_database_with_damaged_pages_refuses_to_start(opened, tmp_path):
    handle = opened()
    for i in range(300):
        handle.remote(*[Event(f"o{i}", s, f"counter-{i}-{s}", 1) for s in range(1, 4)])
    handle.close()
    path = tmp_path / "data" / DB_NAME
    data = bytearray(path.read_bytes())
    assert len(data) > 8 * 4096
    for offset in range(4096, len(data), 4096):  # every page but the header page
        data[offset + 8: offset + 400] = b"\xa5" * 392
    path.write_bytes(bytes(data))
    with pytest.raises(StartupError):
        Store(str(tmp_path / "data")).open()


def test_a_sqlite_database_that_is_not_ours_refuses_to_start(tmp_path):
    with sqlite3.connect(str(tmp_path / DB_NAME)) as conn:
        conn.execute("CREATE TABLE something (x)")
    with pytest.raises(StartupError, match="not a dcounter database"):
        Store(str(tmp_path)).open()


def _fail_writes(path: str):
    """Make every write to the origins table fail, as a full or read-only disk would."""
    with sqlite3.connect(path) as conn:
        conn.executescript("""
            CREATE TRIGGER fail_insert BEFORE INSERT ON origins
                BEGIN SELECT RAISE(ABORT, 'disk I/O error (injected)'); END;
            CREATE TRIGGER fail_update BEFORE UPDATE ON origins
                BEGIN SELECT RAISE(ABORT, 'disk I/O error (injected)'); END;
        """)


def _heal_writes(path: str):
    with sqlite3.connect(path) as conn:
        conn.executescript("DROP TRIGGER fail_insert; DROP TRIGGER fail_update;")


def test_a_failed_write_raises_storage_failure_and_changes_nothing(opened, tmp_path):
    handle = opened()
    origin = handle.origin
    handle.local(delta=2, key="kept")
    handle.remote(Event("peer", 2, "c", 5))
    before = state_of(handle.counter)
    _fail_writes(handle.store.path)

    with pytest.raises(StorageFailure) as info:
        handle.local(delta=3, key="lost")
    assert info.value.status == 503
    with pytest.raises(StorageFailure):
        handle.remote(Event("peer", 1, "c", 1))
    assert state_of(handle.counter) == before
    assert handle.counter.key("lost", 0.0) is None
    assert [e.id for e in handle.committed] == [f"{origin}:1"]  # nothing new advertised

    _heal_writes(handle.store.path)
    result = handle.local(delta=3, key="lost")
    assert result.event_id == f"{origin}:2"  # the failed commit consumed no seq
    assert handle.counter.count("c") == 10
    handle.close()
    assert state_of(opened().counter)[1] == {"c": 10}


def test_a_value_sqlite_refuses_is_a_storage_failure_and_rolls_back(opened):
    handle = opened()
    handle.local(delta=1)
    txn = handle.counter.begin()
    txn.local("c", 5, "k", 0.0)
    txn.adopt("peer", 2**63, {"c": 1})  # beyond SQLite's INTEGER: OverflowError
    with pytest.raises(StorageFailure, match="storage failure"):
        handle.store.write(txn)
    handle.counter.abort(txn)
    assert not handle.store._conn.in_transaction
    assert handle.local(delta=2).event_id == f"{handle.origin}:2"
    handle.close()
    reopened = opened()
    assert reopened.counter.counters() == {"c": 3} and reopened.counter.key("k", 0.0) is None


def test_a_refused_job_in_a_group_does_not_stop_the_others(opened):
    handle = opened()
    handle.local(delta=1, key="k")
    with pytest.raises(Unprocessable):
        handle.local(delta=2, key="k")
    assert handle.local(delta=2).count == 3


def test_concurrent_requests_with_one_key_count_once(opened):
    handle = opened()
    with concurrent.futures.ThreadPoolExecutor(max_workers=16) as pool:
        results = list(pool.map(lambda _: handle.local(delta=2, key="same"), range(64)))
    assert sum(not r.replayed for r in results) == 1
    assert {r.event_id for r in results} == {f"{handle.origin}:1"}
    assert handle.counter.count("c") == 2


def test_group_commit_applies_many_concurrent_increments_exactly(opened):
    handle = opened()
    with concurrent.futures.ThreadPoolExecutor(max_workers=16) as pool:
        results = list(pool.map(lambda i: handle.local(delta=i + 1), range(200)))
    seqs = sorted(int(r.event_id.rpartition(":")[2]) for r in results)
    assert seqs == list(range(1, 201))
    assert handle.counter.count("c") == sum(range(1, 201))
    handle.close()
    assert opened().counter.count("c") == sum(range(1, 201))


# -- retired origins ------------------------------------------------------------------------------

def test_retired_origins_and_their_base_survive_a_restart(opened, tmp_path):
    clock = FakeClock()
    first = opened(origin_retire_after=10.0)
    first.remote(Event("old", 1, "c", 5), Event("old", 2, "d", 2), Event("quiet", 1, "c", 1))
    first.local(delta=3)
    sweep = lambda txn: txn.retire_origins(clock.time(), [], set())  # noqa: E731
    first.writer.submit(sweep)
    first.close()

    second = opened(origin_retire_after=10.0)  # the activity stamps were stored
    clock.advance(11)
    assert sorted(second.writer.submit(sweep)) == ["old", "quiet"]
    second.close()
    db = sqlite3.connect(str(tmp_path / "data" / DB_NAME))
    assert db.execute("SELECT count(*) FROM prefixes WHERE origin IN ('old', 'quiet')"
                      ).fetchone() == (0,)
    db.close()

    third = opened(origin_retire_after=10.0)
    assert third.counter.counters() == {"c": 9, "d": 2}
    assert third.counter.retired_count() == 2 and third.counter.origin_count() == 1
    assert third.remote(Event("old", 3, "c", 100)).retired == 1
    assert third.counter.count("c") == 9


V1_SCHEMA = """
CREATE TABLE meta (name TEXT PRIMARY KEY, value TEXT NOT NULL) WITHOUT ROWID;
CREATE TABLE origins (origin TEXT PRIMARY KEY, watermark INTEGER NOT NULL) WITHOUT ROWID;
CREATE TABLE prefixes (origin TEXT NOT NULL, counter TEXT NOT NULL, total TEXT NOT NULL,
                       PRIMARY KEY (origin, counter)) WITHOUT ROWID;
CREATE TABLE held (origin TEXT NOT NULL, seq INTEGER NOT NULL, counter TEXT NOT NULL,
                   delta INTEGER NOT NULL, key TEXT, PRIMARY KEY (origin, seq)) WITHOUT ROWID;
CREATE TABLE keys (key TEXT PRIMARY KEY, event_id TEXT NOT NULL, counter TEXT NOT NULL,
                   delta INTEGER NOT NULL, count TEXT, expires REAL NOT NULL) WITHOUT ROWID;
"""


def test_a_version_1_database_is_migrated_with_its_state_intact(opened, tmp_path):
    directory = tmp_path / "data"
    directory.mkdir()
    conn = sqlite3.connect(str(directory / DB_NAME), isolation_level=None)
    conn.executescript(V1_SCHEMA)
    conn.executescript("""
        INSERT INTO meta VALUES ('schema_version', '1'), ('origin', 'mine');
        INSERT INTO origins VALUES ('mine', 2), ('peer', 1);
        INSERT INTO prefixes VALUES ('mine', 'c', '7'), ('peer', 'c', '9000000000000000');
        INSERT INTO held VALUES ('peer', 3, 'd', 4, NULL);
        INSERT INTO keys VALUES ('k', 'mine:2', 'c', 3, '7', 100.0);
    """)
    conn.close()
    node = opened(directory, origin_retire_after=10.0)
    assert node.origin == "mine"
    assert node.counter.counters() == {"c": 9000000000000007, "d": 4}
    assert node.counter.digest() == {"mine": 2, "peer": 1}
    assert node.local(delta=3, key="k", now=50.0).replayed
    assert node.local(delta=1).event_id == "mine:3"
    # Activity was unknown: the first sweep stamps it, so nothing retires at once.
    assert node.writer.submit(lambda txn: txn.retire_origins(1e9, [], set())) == []
    node.close()
    db = sqlite3.connect(str(directory / DB_NAME))
    assert db.execute("SELECT value FROM meta WHERE name='schema_version'").fetchone() == ("2",)
    db.close()
    again = opened(directory)
    assert again.counter.count("c") == 9000000000000008
    # version 2 holds bulk events and keys: the migrated database does too
    again.remote(Event("peer", 5, None, 0, "b", (("c", 1), ("d", 1))))
    again.writer.submit(lambda txn: txn.local_many((("c", 1), ("e", 1)), "bk", 50.0))
    again.close()
    assert opened(directory).counter.counters() == {"c": 9000000000000010, "d": 5, "e": 1}


def test_held_bulk_events_and_bulk_keys_survive_a_restart(opened, tmp_path):
    first = opened()
    first.remote(Event("peer", 2, None, 0, "k2", (("a", 1), ("b", 2))))
    first.writer.submit(lambda txn: txn.local_many((("a", 5), ("c", 1)), "k1", 1.0))
    before = state_of(first.counter)
    first.close()

    second = opened()
    assert state_of(second.counter) == before
    assert second.counter.counters() == {"a": 6, "b": 2, "c": 1}
    replay = second.writer.submit(lambda txn: txn.local_many((("a", 5), ("c", 1)), "k1", 2.0))
    assert replay.replayed and replay.results == (("a", 6), ("c", 1))
    assert second.counter.key("k2", 2.0).items == (("a", 1), ("b", 2))
    second.remote(Event("peer", 1, "b", 1))  # the gap closes: the held bulk event folds
    assert second.counter.digest()["peer"] == 2 and second.counter.held_total() == 0
    assert second.counter.snapshot(["peer"])["peer"]["counters"] == {"a": 1, "b": 3}


def test_an_early_version_2_database_without_items_columns_is_migrated(opened, tmp_path):
    first = opened()
    first.remote(Event("peer", 3, "d", 4))
    first.close()
    db = sqlite3.connect(str(tmp_path / "data" / DB_NAME), isolation_level=None)
    for table in ("held", "keys"):
        db.execute(f"ALTER TABLE {table} DROP COLUMN items")
    db.close()
    second = opened()
    assert second.counter.counters() == {"d": 4}
    second.remote(Event("peer", 2, None, 0, None, (("a", 1), ("b", 2))))
    second.close()
    assert opened().counter.counters() == {"a": 1, "b": 2, "d": 4}
