"""SQLite persistence of the counter's state, in the node's data directory.

What is stored is O(origins x counters + held events + unexpired keys + retired origins), never
O(events): per origin its watermark and per-counter prefix totals, the held out-of-order events,
the idempotency keys that have not expired, and this node's origin id; for origin retirement
(see retirement.py) per live origin the watermark last seen and the wall time it last changed, the
retired origins' ids and final watermarks, and their per-counter totals (the base). Backlogs
are not stored: every event is in the prefix of the node that acknowledged it, and anti-entropy
re-sends it.

Schema versions: 1 lacked the retirement tables and the `items` columns of `held` and `keys`
(a bulk event's or bulk request's items, JSON `[[counter, delta], ...]`; NULL for a single
increment, whose `counter` and `delta` columns hold it), and what resets need (reset.py): the
`covers` (per counter and origin the furthest cover) and `deleted` (tombstones) tables, the
`reset` column of `held` (a held reset event, JSON as on the wire) and the `kind` column of
`keys` ("reset" or "delete" for those requests). A version-1 database is migrated on
open (in one transaction) by adding them, empty: its origins' activity is then unknown and
stamped with the time of the first sweep, so nothing retires sooner than `origin_retire_after`
after the upgrade. A version-2 database made before the `items` columns, the reset tables or
columns gains them the same way.

The directory is locked (flock) while a node uses it. A database that is corrupt, not ours, or
of another schema version stops the node at start (`StartupError`); it is never silently
replaced. A write that fails while running raises `StorageFailure` (503 to the client) and
leaves the state as it was.

Only the writer calls `write`, one group at a time (see writer.py); `load` runs before the node
serves.

A database copied by `dcounter backup` carries a backup mark (meta rows `backup_of_origin` and
`backup_taken_at`, see backup.py). `open` takes a fresh origin for a marked database and clears
the mark in the same transaction: the node the copy came from may have gone on counting, and
its later sequence numbers are already held by peers, so reusing its origin would lose new
increments as duplicates. Peers bring the old origin's events up to date through anti-entropy.
"""

import fcntl
import json
import logging
import os
import sqlite3

from dcounter.counter import KeyRecord, OriginState, Txn, new_origin_id
from dcounter.reset import Reset
from dcounter.errors import StartupError, StorageFailure

log = logging.getLogger(__name__)

SCHEMA_VERSION = 2
DB_NAME = "dcounter.sqlite3"
LOCK_NAME = "LOCK"
BACKUP_OF = "backup_of_origin"    # meta row in a backup copy: the origin it was copied from
BACKUP_TAKEN = "backup_taken_at"  # meta row in a backup copy: when (ISO 8601, UTC)

_SCHEMA = """
CREATE TABLE meta (name TEXT PRIMARY KEY, value TEXT NOT NULL) WITHOUT ROWID;
CREATE TABLE origins (origin TEXT PRIMARY KEY, watermark INTEGER NOT NULL) WITHOUT ROWID;
CREATE TABLE prefixes (origin TEXT NOT NULL, counter TEXT NOT NULL, total TEXT NOT NULL,
                       PRIMARY KEY (origin, counter)) WITHOUT ROWID;
CREATE TABLE held (origin TEXT NOT NULL, seq INTEGER NOT NULL, counter TEXT NOT NULL,
                   delta INTEGER NOT NULL, key TEXT, items TEXT, reset TEXT,
                   PRIMARY KEY (origin, seq)) WITHOUT ROWID;
CREATE TABLE keys (key TEXT PRIMARY KEY, event_id TEXT NOT NULL, counter TEXT NOT NULL,
                   delta INTEGER NOT NULL, count TEXT, expires REAL NOT NULL,
                   items TEXT, kind TEXT) WITHOUT ROWID;
CREATE TABLE activity (origin TEXT PRIMARY KEY, watermark INTEGER NOT NULL,
                       changed REAL NOT NULL) WITHOUT ROWID;
CREATE TABLE retired (origin TEXT PRIMARY KEY, watermark INTEGER NOT NULL) WITHOUT ROWID;
CREATE TABLE base (counter TEXT PRIMARY KEY, total TEXT NOT NULL) WITHOUT ROWID;
CREATE TABLE covers (counter TEXT NOT NULL, origin TEXT NOT NULL, watermark INTEGER NOT NULL,
                     total TEXT NOT NULL, PRIMARY KEY (counter, origin)) WITHOUT ROWID;
CREATE TABLE deleted (counter TEXT PRIMARY KEY) WITHOUT ROWID;
"""
_TABLES_V1 = {"origins", "prefixes", "held", "keys"}
_LATE_TABLES = ("covers", "deleted")  # version 2 tables an early version 2 database lacks
_TABLES = _TABLES_V1 | {"activity", "retired", "base"} | set(_LATE_TABLES)
_MIGRATE_1_TO_2 = _SCHEMA[_SCHEMA.index("CREATE TABLE activity"):]  # the tables version 2 added
# The columns version 2 added to version 1's tables: a bulk event's or request's items, a held
# reset event, a reset's or delete's key. Added by ALTER TABLE, they may stand in another order:
# rows are always written with their columns named.
_ADDED_COLUMNS = (("held", "items"), ("keys", "items"), ("held", "reset"), ("keys", "kind"))


class Store:
    def __init__(self, directory: str, *, sync: str = "full"):
        self.directory = directory
        self.sync = sync
        self.path = os.path.join(directory, DB_NAME)
        self._lock_file = None
        self._conn: sqlite3.Connection | None = None

    # -- opening ---------------------------------------------------------------------------------
    def open(self) -> None:
        try:
            os.makedirs(self.directory, exist_ok=True)
        except OSError as exc:
            raise StartupError(f"cannot create data directory {self.directory}: "
                               f"{exc.strerror or exc}") from None
        self._lock_directory()
        try:
            if not os.path.exists(self.path):
                self._create()
            self._connect()
            self._check()
            self._leave_backup_origin()
        except sqlite3.Error as exc:
            self.close()
            raise StartupError(f"data directory {self.directory}: {DB_NAME} is unreadable or "
                               f"corrupt ({exc}); refusing to start with it") from None
        except StartupError:
            self.close()
            raise

    def _lock_directory(self) -> None:
        lock_path = os.path.join(self.directory, LOCK_NAME)
        try:
            self._lock_file = open(lock_path, "a+")
        except OSError as exc:
            raise StartupError(f"data directory {self.directory} is not writable: "
                               f"{exc.strerror or exc}") from None
        try:
            fcntl.flock(self._lock_file, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except OSError:
            self._lock_file.seek(0)
            holder = self._lock_file.read().strip() or "another process"
            self._lock_file.close()
            self._lock_file = None
            raise StartupError(f"data directory {self.directory} is in use by another node "
                               f"(pid {holder})") from None
        self._lock_file.seek(0)
        self._lock_file.truncate()
        self._lock_file.write(str(os.getpid()))
        self._lock_file.flush()

    def _create(self) -> None:
        """Build a new database beside the final name and rename it into place, so a crash
        during creation never leaves a half-made database behind."""
        tmp = self.path + ".new"
        if os.path.exists(tmp):
            os.unlink(tmp)
        conn = sqlite3.connect(tmp, isolation_level=None)
        try:
            conn.executescript("BEGIN;" + _SCHEMA + "COMMIT;")
            conn.execute("INSERT INTO meta VALUES ('schema_version', ?), ('origin', ?)",
                         (str(SCHEMA_VERSION), new_origin_id()))
        finally:
            conn.close()
        os.rename(tmp, self.path)
        dir_fd = os.open(self.directory, os.O_RDONLY)
        try:
            os.fsync(dir_fd)
        finally:
            os.close(dir_fd)

    def _connect(self) -> None:
        if not os.access(self.path, os.R_OK | os.W_OK):
            raise StartupError(f"data directory {self.directory}: {DB_NAME} is not readable "
                               "and writable")
        conn = sqlite3.connect(self.path, isolation_level=None, check_same_thread=False)
        self._conn = conn
        mode = conn.execute("PRAGMA journal_mode=WAL").fetchone()[0]
        if mode.lower() != "wal":
            raise StartupError(f"data directory {self.directory}: cannot enable WAL mode")
        conn.execute(f"PRAGMA synchronous={self.sync.upper()}")

    def _check(self) -> None:
        result = self._conn.execute("PRAGMA quick_check").fetchone()[0]
        if result != "ok":
            raise StartupError(f"data directory {self.directory}: {DB_NAME} failed its integrity "
                               f"check ({result}); refusing to start with it")
        tables = {row[0] for row in self._conn.execute(
            "SELECT name FROM sqlite_master WHERE type='table'")}
        if "meta" not in tables:
            raise StartupError(f"data directory {self.directory}: {DB_NAME} is not a dcounter "
                               "database")
        meta = dict(self._conn.execute("SELECT name, value FROM meta"))
        version = meta.get("schema_version")
        if version == "1" and _TABLES_V1 <= tables and "origin" in meta:
            self._migrate_from_1()
            tables |= _TABLES
            version = str(SCHEMA_VERSION)
        elif version == str(SCHEMA_VERSION) and _TABLES - set(_LATE_TABLES) <= tables and (
                self._missing_columns() or not _TABLES <= tables):
            self._migrate(self._add_late_tables, "an early schema version 2")
            tables |= _TABLES
        if version != str(SCHEMA_VERSION):
            raise StartupError(f"data directory {self.directory}: schema version {version} is "
                               f"not supported (this dcounter reads version {SCHEMA_VERSION})")
        if not _TABLES <= tables or "origin" not in meta:
            raise StartupError(f"data directory {self.directory}: {DB_NAME} is incomplete")

    def _migrate_from_1(self) -> None:
        def add_tables(conn):
            for statement in _MIGRATE_1_TO_2.split(";"):
                if statement.strip():
                    conn.execute(statement)
        self._migrate(add_tables, "schema version 1")

    def _missing_columns(self) -> list[tuple[str, str]]:
        return [(table, column) for table, column in _ADDED_COLUMNS
                if column not in {row[1] for row in self._conn.execute(
                    f"PRAGMA table_info({table})")}]

    @staticmethod
    def _add_late_tables(conn) -> None:
        tables = {row[0] for row in conn.execute("SELECT name FROM sqlite_master "
                                                 "WHERE type='table'")}
        for statement in _SCHEMA.split(";"):
            for table in _LATE_TABLES:
                if f"CREATE TABLE {table} " in statement and table not in tables:
                    conn.execute(statement)

    def _migrate(self, change, source: str) -> None:
        """`change(conn)`, the added columns, and the schema version: one transaction."""
        conn = self._conn
        conn.execute("BEGIN")
        try:
            change(conn)
            for table, column in self._missing_columns():
                conn.execute(f"ALTER TABLE {table} ADD COLUMN {column} TEXT")
            conn.execute("UPDATE meta SET value=? WHERE name='schema_version'",
                         (str(SCHEMA_VERSION),))
            conn.execute("COMMIT")
        except BaseException:
            if conn.in_transaction:
                conn.execute("ROLLBACK")
            raise
        log.info("data directory %s: migrated %s from %s to schema version %d", self.directory,
                 DB_NAME, source, SCHEMA_VERSION)

    def _leave_backup_origin(self) -> None:
        """A restored backup: take a fresh origin and clear the mark, in one transaction, so
        this happens once and a crash in between leaves the mark to try again."""
        conn = self._conn
        meta = dict(conn.execute("SELECT name, value FROM meta WHERE name IN (?, ?)",
                                 (BACKUP_OF, BACKUP_TAKEN)))
        if BACKUP_OF not in meta:
            return
        fresh = new_origin_id()
        conn.execute("BEGIN IMMEDIATE")
        try:
            conn.execute("UPDATE meta SET value=? WHERE name='origin'", (fresh,))
            conn.execute("DELETE FROM meta WHERE name IN (?, ?)", (BACKUP_OF, BACKUP_TAKEN))
            conn.execute("COMMIT")
        except BaseException:
            if conn.in_transaction:
                conn.execute("ROLLBACK")
            raise
        log.warning("data directory %s holds a restored backup of origin %s (taken %s): new "
                    "events use origin %s so they never collide with events the original node "
                    "counted after the copy; peers bring this node up to date",
                    self.directory, meta[BACKUP_OF], meta.get(BACKUP_TAKEN, "at an unknown time"),
                    fresh)

    # -- reading ---------------------------------------------------------------------------------
    def load(self) -> tuple[str, dict[str, OriginState], dict[str, KeyRecord]]:
        conn = self._conn
        try:
            origin = conn.execute("SELECT value FROM meta WHERE name='origin'").fetchone()[0]
            origins = {o: OriginState(w) for o, w in conn.execute(
                "SELECT origin, watermark FROM origins")}
            for o, name, total in conn.execute("SELECT origin, counter, total FROM prefixes"):
                origins.setdefault(o, OriginState()).prefix[name] = int(total)
            for o, seq, name, delta, key, items, reset in conn.execute(
                    "SELECT origin, seq, counter, delta, key, items, reset FROM held"):
                origins.setdefault(o, OriginState()).held[seq] = \
                    (None, (), key, _reset(reset)) if reset is not None else \
                    (name, delta, key) if items is None else (None, _items(items), key)
            keys = {key: KeyRecord(event_id, name, delta, None if count is None else int(count),
                                   expires, None, kind)
                    if items is None else
                    KeyRecord(event_id, None, 0, None, expires, _items(items))
                    for key, event_id, name, delta, count, expires, items, kind in conn.execute(
                        "SELECT key, event_id, counter, delta, count, expires, items, kind "
                        "FROM keys")}
        except (sqlite3.Error, ValueError, TypeError) as exc:
            raise StartupError(f"data directory {self.directory}: cannot read state ({exc})") \
                from None
        return origin, origins, keys

    def load_retirement(self) -> tuple[dict[str, int], dict[str, int],
                                       dict[str, tuple[int, float]]]:
        """The retired origins (id -> final watermark), their base (counter -> total) and the
        live origins' activity (id -> (watermark, wall time it last changed))."""
        conn = self._conn
        try:
            retired = dict(conn.execute("SELECT origin, watermark FROM retired"))
            base = {name: int(total) for name, total in conn.execute(
                "SELECT counter, total FROM base")}
            activity = {o: (w, changed) for o, w, changed in conn.execute(
                "SELECT origin, watermark, changed FROM activity")}
        except (sqlite3.Error, ValueError, TypeError) as exc:
            raise StartupError(f"data directory {self.directory}: cannot read state ({exc})") \
                from None
        return retired, base, activity

    def load_resets(self) -> tuple[dict[str, dict[str, tuple[int, int]]], set[str]]:
        """The covers of resets (counter -> origin -> (watermark, covered total)) and the
        deleted names (see reset.py)."""
        conn = self._conn
        try:
            covers: dict[str, dict[str, tuple[int, int]]] = {}
            for name, origin, w, total in conn.execute(
                    "SELECT counter, origin, watermark, total FROM covers"):
                covers.setdefault(name, {})[origin] = (w, int(total))
            deleted = {name for (name,) in conn.execute("SELECT counter FROM deleted")}
        except (sqlite3.Error, ValueError, TypeError) as exc:
            raise StartupError(f"data directory {self.directory}: cannot read state ({exc})") \
                from None
        return covers, deleted

    # -- writing (the writer only, one group at a time) -------------------------------------------
    def write(self, txn: Txn) -> None:
        """Write `txn` as one SQLite transaction. Any failure (an sqlite3 error, or a value
        SQLite refuses such as an integer beyond 64 bits) rolls it back and raises
        `StorageFailure`: nothing of `txn` is stored."""
        conn = self._conn
        try:
            conn.execute("BEGIN")
            try:
                self._write_locked(conn, txn)
                conn.execute("COMMIT")
            except BaseException:
                if conn.in_transaction:
                    conn.execute("ROLLBACK")
                raise
        except Exception as exc:
            raise StorageFailure(f"storage failure: {exc}") from exc

    @staticmethod
    def _write_locked(conn: sqlite3.Connection, txn: Txn) -> None:
        # One statement per kind of row for every origin of the group (a busy node's group
        # holds its own events and several peers'): each statement is a call into SQLite,
        # which costs more than its rows. A replaced prefix is deleted before any prefix row
        # is written, and held events are deleted before any is added, as per origin.
        origins = txn.origins.items()
        if origins:
            conn.executemany("INSERT INTO origins VALUES (?, ?) ON CONFLICT(origin) DO UPDATE "
                             "SET watermark=excluded.watermark",
                             [(origin, staged.watermark) for origin, staged in origins])
        replaced = [(origin,) for origin, staged in origins if staged.replace_prefix]
        if replaced:
            conn.executemany("DELETE FROM prefixes WHERE origin=?", replaced)
        prefixes = [(origin, name, str(total)) for origin, staged in origins
                    for name, total in staged.prefix.items()]
        if prefixes:
            conn.executemany("INSERT INTO prefixes VALUES (?, ?, ?) ON CONFLICT(origin, counter) "
                             "DO UPDATE SET total=excluded.total", prefixes)
        held_del = [(origin, seq) for origin, staged in origins for seq in staged.held_del]
        if held_del:
            conn.executemany("DELETE FROM held WHERE origin=? AND seq=?", held_del)
        held_add = [_held_row(origin, seq, entry) for origin, staged in origins
                    for seq, entry in staged.held_add.items()]
        if held_add:
            conn.executemany("INSERT OR REPLACE INTO held (origin, seq, counter, delta, key, "
                             "items, reset) VALUES (?, ?, ?, ?, ?, ?, ?)", held_add)
        if txn.keys_del:
            conn.executemany("DELETE FROM keys WHERE key=?", [(k,) for k in txn.keys_del])
        if txn.keys_add:
            conn.executemany(
                "INSERT OR REPLACE INTO keys (key, event_id, counter, delta, count, expires, "
                "items, kind) VALUES (?, ?, ?, ?, ?, ?, ?, ?)",
                [(key, r.event_id, r.counter or "", r.delta,
                  None if r.count is None else str(r.count), r.expires,
                  None if r.items is None else _items_text(r.items), r.kind)
                 for key, r in txn.keys_add.items()])
        if txn.reorigined_from is not None:
            conn.execute("UPDATE meta SET value=? WHERE name='origin'", (txn.local_origin,))
        Store._write_retirement_locked(conn, txn)
        Store._write_resets_locked(conn, txn)

    @staticmethod
    def _write_retirement_locked(conn: sqlite3.Connection, txn: Txn) -> None:
        if txn.activity:
            conn.executemany("INSERT OR REPLACE INTO activity VALUES (?, ?, ?)",
                             [(o, w, changed) for o, (w, changed) in txn.activity.items()
                              if o not in txn.origins_dropped])
        if txn.origins_dropped:
            dropped = [(o,) for o in txn.origins_dropped]
            for table in ("origins", "prefixes", "held", "activity"):
                conn.executemany(f"DELETE FROM {table} WHERE origin=?", dropped)
        if txn.retired_add:
            conn.executemany("INSERT OR REPLACE INTO retired VALUES (?, ?)",
                             list(txn.retired_add.items()))
        if txn.base is not None:
            conn.execute("DELETE FROM base")
            conn.executemany("INSERT INTO base VALUES (?, ?)",
                             [(name, str(total)) for name, total in txn.base.items()])

    @staticmethod
    def _write_resets_locked(conn: sqlite3.Connection, txn: Txn) -> None:
        if txn.cover_add:
            conn.executemany("DELETE FROM covers WHERE counter=? AND origin=?",
                             [key for key, cover in txn.cover_add.items() if cover is None])
            conn.executemany("INSERT OR REPLACE INTO covers VALUES (?, ?, ?, ?)",
                             [(name, origin, w, str(total))
                              for (name, origin), cover in txn.cover_add.items()
                              if cover is not None for w, total in (cover,)])
        if txn.deleted_add:
            conn.executemany("INSERT OR IGNORE INTO deleted VALUES (?)",
                             [(name,) for name in txn.deleted_add])

    @property
    def is_open(self) -> bool:
        return self._conn is not None

    def checkpoint(self) -> None:
        try:
            self._conn.execute("PRAGMA wal_checkpoint(TRUNCATE)")
        except sqlite3.Error as exc:
            log.warning("WAL checkpoint failed: %s", exc)

    def close(self) -> None:
        if self._conn is not None:
            try:
                self._conn.close()
            except sqlite3.Error:
                pass
            self._conn = None
        if self._lock_file is not None:
            self._lock_file.close()
            self._lock_file = None


def _held_row(origin: str, seq: int, entry: tuple) -> tuple:
    """A held event's row: (counter, delta, key), (None, items, key) or (None, (), key, reset)
    as counter.py holds them."""
    if len(entry) == 4:
        reset = entry[3]
        return (origin, seq, reset.counter, 0, entry[2], None,
                json.dumps(reset.wire(), separators=(",", ":")))
    name, delta, key = entry
    if name is not None:
        return (origin, seq, name, delta, key, None, None)
    return (origin, seq, "", 0, key, _items_text(delta), None)


def _reset(text: str) -> Reset:
    """A held reset as `_held_row` stored it; anything else is a corrupt database."""
    data = json.loads(text)
    return Reset(data["reset"], tuple(sorted((origin, int(w), int(total))
                                             for origin, (w, total) in data["covers"].items())),
                 bool(data["delete"]))


def _items_text(items) -> str:
    return json.dumps([[name, delta] for name, delta in items], separators=(",", ":"))


def _items(text: str) -> tuple[tuple[str, int], ...]:
    """Items as `_items_text` stored them; anything else is a corrupt database."""
    items = tuple((name, delta) for name, delta in json.loads(text))
    if not items or not all(isinstance(name, str) and isinstance(delta, int)
                            for name, delta in items):
        raise ValueError(f"malformed items {text[:80]!r}")
    return items
