"""Consistent copies of a node's database, restoring one, and the `dcounter-node backup` and
`dcounter-node restore` commands.

Theory of operation. A copy is made with SQLite's online backup API (`Connection.backup`) from a
connection of its own to the database file, never the node's: the node's connection belongs to
the writer thread, and sharing it would mean taking the writer's commit lock for as long as the
copy runs. A separate connection needs no lock of the node at all. The database is in WAL mode,
where a reader sees one committed snapshot for as long as its read transaction lasts while the
writer goes on committing; the copy runs in one step (`pages=-1`), that is one read
transaction, so it holds every commit group wholly or not at all: a prefix of what the node
acknowledged. The connection is opened read-write without create (`mode=rw`) and switched to
`query_only`: a read-only connection would leave `-wal`/`-shm` files behind, owned by whoever
ran the backup, where the node's user may not be able to open them; a read-write one removes
them on close when it is the last connection, as the node does.

After the copy completes, the copy (never the source) is marked: meta rows `backup_of_origin`
(the origin it was taken from) and `backup_taken_at`. A node that opens a marked database takes
a fresh origin (store.py), so a restored backup never reuses sequence numbers its peers hold.
The copy is switched to a rollback journal, so it is one self-contained file.

A copy is written beside its final name and linked into place only when complete and fsynced: a
crash or a full disk never leaves a half-written file under the name asked for, and an existing
file is never replaced (it might be a live database).

A node answers `GET /backup` from such a copy made under its temporary directory and unlinked
at once (`backup_file`): it is sent from the open file in chunks, never held in memory, and its
space is freed when the file is closed. A node makes one such copy at a time (node.py): each is
a full copy on disk and competes with the writer for I/O.

An offline backup of a data directory that a node is using is fine: it is the same reader as a
hot backup. A restore refuses a directory a running node holds (its lock), and one that already
holds a database unless `--force`.
"""

from __future__ import annotations

import argparse
import datetime
import fcntl
import os
import sqlite3
import sys
import tempfile
import time
import urllib.parse
from typing import BinaryIO

from dcounter.store import BACKUP_OF, BACKUP_TAKEN, DB_NAME, LOCK_NAME

PROG = "dcounter-node"
SQLITE_MAGIC = b"SQLite format 3\x00"


class BackupError(Exception):
    """The copy or restore cannot be made; the message is one line for the user."""


class BackupBusy(BackupError):
    """Another backup of this node is being made or sent; one runs at a time."""


def _connect_source(path: str) -> sqlite3.Connection:
    """A reading connection of our own to an existing dcounter database."""
    if not os.path.isfile(path):
        raise BackupError(f"{path}: no such file" if not os.path.exists(path)
                          else f"{path}: not a regular file")
    # Read-write without create where we may write (see above); a read-only file, a backup on
    # read-only media say, is read read-only: it is in rollback-journal mode and needs no -shm.
    writable = os.access(path, os.W_OK) and os.access(os.path.dirname(os.path.abspath(path)),
                                                      os.W_OK)
    uri = ("file:" + urllib.parse.quote(os.path.abspath(path))
           + ("?mode=rw" if writable else "?mode=ro"))
    try:
        conn = sqlite3.connect(uri, uri=True, isolation_level=None)
    except sqlite3.Error as exc:
        raise BackupError(f"{path}: cannot open ({exc})") from None
    try:
        conn.execute("PRAGMA query_only=1")
        _check_dcounter(conn, path)
    except BaseException:
        conn.close()
        raise
    return conn


def _check_dcounter(conn: sqlite3.Connection, path: str) -> str:
    """The database's origin; BackupError unless it looks like a dcounter database."""
    try:
        tables = {row[0] for row in conn.execute(
            "SELECT name FROM sqlite_master WHERE type='table'")}
        row = conn.execute("SELECT value FROM meta WHERE name='origin'").fetchone() \
            if "meta" in tables else None
    except sqlite3.Error as exc:
        raise BackupError(f"{path}: not a readable SQLite database ({exc})") from None
    if row is None:
        raise BackupError(f"{path}: not a dcounter database")
    return row[0]


def copy_database(source: str, dest: str, now: float) -> dict:
    """Copy the database at `source` to the new file `dest` and mark the copy as a backup.
    Returns {"origin", "counters", "bytes"}. Raises BackupError; `dest` is then left as it
    was (absent)."""
    directory = os.path.dirname(os.path.abspath(dest))
    if os.path.lexists(dest):
        raise BackupError(f"{dest} already exists; choose a new name")
    if not os.path.isdir(directory):
        raise BackupError(f"cannot write {dest}: directory {directory} does not exist")
    src = _connect_source(source)
    try:
        try:
            fd, tmp = tempfile.mkstemp(dir=directory, prefix="." + os.path.basename(dest) + ".",
                                       suffix=".partial")
        except OSError as exc:
            raise BackupError(f"cannot write in {directory}: {exc.strerror or exc}") from None
        os.close(fd)
        try:
            info = _copy_and_mark(src, tmp, now)
            _fsync_path(tmp)
            try:
                os.link(tmp, dest)  # never replaces: an existing name fails here
            except OSError as exc:
                raise BackupError(f"cannot write {dest}: {exc.strerror or exc}") from None
            _fsync_path(directory)
        finally:
            os.unlink(tmp)
    finally:
        src.close()
    info["bytes"] = os.path.getsize(dest)
    return info


def _copy_and_mark(src: sqlite3.Connection, tmp: str, now: float) -> dict:
    taken = datetime.datetime.fromtimestamp(now, datetime.timezone.utc)
    dst = sqlite3.connect(tmp, isolation_level=None)
    try:
        src.backup(dst)  # pages=-1: one step, one read transaction, one snapshot
        origin = dst.execute("SELECT value FROM meta WHERE name='origin'").fetchone()[0]
        # A copy of a copy keeps the first mark: it names the node that counted.
        dst.execute("INSERT OR IGNORE INTO meta VALUES (?, ?), (?, ?)",
                    (BACKUP_OF, origin, BACKUP_TAKEN, taken.isoformat(timespec="seconds")))
        dst.execute("PRAGMA journal_mode=DELETE")
        counters = dst.execute("SELECT COUNT(DISTINCT counter) FROM prefixes").fetchone()[0]
    except sqlite3.Error as exc:
        raise BackupError(f"copy failed: {exc}") from None
    finally:
        dst.close()
    return {"origin": origin, "counters": counters}


def _fsync_path(path: str) -> None:
    fd = os.open(path, os.O_RDONLY)
    try:
        os.fsync(fd)
    finally:
        os.close(fd)


def backup_file(db_path: str, now: float) -> BinaryIO:
    """A marked, consistent copy of the database at `db_path` (what `GET /backup` answers), as
    a file open for reading at its start. Made in a private temporary directory (mode 0700,
    under $TMPDIR) that is removed, copy and all, before this returns: the open file keeps the
    data, and nothing is left behind however the answer ends (sent, the client gone, the node
    killed); the disk space comes back when the file is closed."""
    with tempfile.TemporaryDirectory(prefix="dcounter-backup-") as scratch:
        path = os.path.join(scratch, DB_NAME)
        copy_database(db_path, path, now)
        try:
            return open(path, "rb")
        except OSError as exc:
            raise BackupError(f"cannot read the copy: {exc.strerror or exc}") from None


def restore(source: str, data_dir: str, now: float, *, force: bool = False) -> dict:
    """Put a marked copy of the database file `source` at `data_dir`/dcounter.sqlite3, removing
    any `-wal`/`-shm` beside it. Refuses a directory a running node holds, and one that holds a
    database unless `force`. A file that carries no mark (a plain copy of a database file) is
    marked too: whatever is restored starts with a fresh origin."""
    if not os.path.isfile(source):
        raise BackupError(f"{source}: no such file" if not os.path.exists(source)
                          else f"{source}: not a regular file")
    try:
        os.makedirs(data_dir, exist_ok=True)
    except OSError as exc:
        raise BackupError(f"cannot create data directory {data_dir}: "
                          f"{exc.strerror or exc}") from None
    lock = _lock(data_dir)
    try:
        target = os.path.join(data_dir, DB_NAME)
        leftovers = [target + suffix for suffix in ("", "-wal", "-shm", "-journal")]
        present = [p for p in leftovers if os.path.lexists(p)]
        if present and not force:
            raise BackupError(f"data directory {data_dir} already holds a database; restore "
                              "into an empty directory, or add --force to replace it")
        staged = os.path.join(data_dir, DB_NAME + ".restore")
        if os.path.lexists(staged):
            os.unlink(staged)
        info = copy_database(source, staged, now)
        try:
            _give_to_directory_owner(staged, data_dir)
            for path in present:
                if path != target:
                    os.unlink(path)
            os.replace(staged, target)
        except OSError as exc:
            raise BackupError(f"cannot install {target}: {exc.strerror or exc}") from None
        finally:
            if os.path.lexists(staged):
                os.unlink(staged)
        _fsync_path(data_dir)
    finally:
        if lock is not None:
            lock.close()
    return info


def _give_to_directory_owner(path: str, directory: str) -> None:
    """Run as root (a restore usually is), hand the file to the data directory's owner: a node
    running as its own user must be able to open it read-write."""
    if os.geteuid() != 0:
        return
    owner = os.stat(directory)
    os.chown(path, owner.st_uid, owner.st_gid)


def _lock(data_dir: str):
    """The data directory's lock, as a node takes it; BackupError when a node holds it. The
    LOCK file is not created here (a node running as another user must be able to open it)."""
    path = os.path.join(data_dir, LOCK_NAME)
    try:
        file = open(path, "r")
    except FileNotFoundError:
        return None
    except OSError as exc:
        raise BackupError(f"data directory {data_dir}: cannot open {LOCK_NAME}: "
                          f"{exc.strerror or exc}") from None
    try:
        fcntl.flock(file, fcntl.LOCK_EX | fcntl.LOCK_NB)
    except OSError:
        holder = file.read().strip() or "another process"
        file.close()
        raise BackupError(f"data directory {data_dir} is in use by a running node (pid "
                          f"{holder}); stop it first") from None
    return file


# -- the commands -------------------------------------------------------------------------------

class _UsageError(Exception):
    pass


class _Parser(argparse.ArgumentParser):
    def error(self, message):
        raise _UsageError(message)


def build_parser() -> argparse.ArgumentParser:
    parser = _Parser(prog=PROG, description="Copy or restore a node's data directory.")
    commands = parser.add_subparsers(dest="command", metavar="COMMAND", required=True)
    backup = commands.add_parser(
        "backup", help="copy a data directory's database (a running node's too) to a new file",
        description="Copy DIR's database to FILE with SQLite's online backup; works while a "
                    "node runs on DIR. A node started on a restored copy takes a fresh origin.")
    backup.add_argument("--data-dir", required=True, metavar="DIR", help="the node's data "
                                                                         "directory")
    backup.add_argument("--to", required=True, metavar="FILE", help="the new file (must not "
                                                                    "exist)")
    restore_ = commands.add_parser(
        "restore", help="put a backup into a data directory (the node must be stopped)",
        description="Copy FILE into DIR as its database and mark it, so the node started on DIR "
                    "takes a fresh origin and catches up from its peers.")
    restore_.add_argument("--from", dest="source", required=True, metavar="FILE",
                          help="a backup file")
    restore_.add_argument("--data-dir", required=True, metavar="DIR", help="the data directory")
    restore_.add_argument("--force", action="store_true",
                          help="replace a database already in DIR")
    return parser


def main(argv: list[str]) -> int:
    """`dcounter-node backup ...` and `dcounter-node restore ...`: 0, 1 on failure, 2 usage."""
    try:
        args = build_parser().parse_args(argv)
        for flag, name in (("--data-dir", "data_dir"), ("--to", "to"), ("--from", "source")):
            if getattr(args, name, None) == "":
                raise _UsageError(f"{flag} must not be empty")
    except _UsageError as exc:
        print(f"{PROG}: error: {exc}", file=sys.stderr)
        return 2
    except SystemExit as exc:  # --help
        return exc.code if isinstance(exc.code, int) else 0
    try:
        if args.command == "backup":
            source = os.path.join(args.data_dir, DB_NAME)
            if not os.path.isdir(args.data_dir):
                raise BackupError(f"data directory {args.data_dir} does not exist")
            if not os.path.exists(source):
                raise BackupError(f"data directory {args.data_dir} holds no database "
                                  f"({DB_NAME})")
            info = copy_database(source, args.to, time.time())
            print(f"backup of origin {info['origin']} ({info['counters']} counters, "
                  f"{info['bytes']} bytes) written to {args.to}")
        else:
            info = restore(args.source, args.data_dir, time.time(), force=args.force)
            print(f"restored a backup of origin {info['origin']} ({info['counters']} counters) "
                  f"into {args.data_dir}; the node started on it takes a fresh origin and "
                  "catches up from its peers")
    except BackupError as exc:
        print(f"{PROG}: error: {exc}", file=sys.stderr)
        return 1
    return 0
