"""The simulator's durable disk and its writer: what `store.py` keeps in SQLite, kept in dicts
(`MemoryStore`), written from each committed `Txn` by the same rules (`Store._write_locked`) and
loaded the same way, plus the notes the checker (simcheck.py) reads beside it; and writer.py's
group commit on the virtual clock (`SimWriter`).

A crash that keeps the disk keeps its `MemoryStore`; a wipe drops it; a backup is a deep copy.
Jobs submitted while a commit is under way (`COMMIT_TIME`) form one group in one `Txn`, a
savepoint per job, decided by the real `commitgroup.GroupCommit`; a failed store write (the
failing-commit fault) fails every job of the group.
"""

from __future__ import annotations

import copy

from dcounter.counter import KeyRecord, OriginState
from dcounter.errors import NodeError, StorageFailure

COMMIT_TIME = 0.002  # virtual seconds a group commit takes: jobs submitted meanwhile join it
MAX_GROUP = 16       # jobs in one group at most


class MemoryStore:
    """A durable node's disk: what `store.py` keeps in SQLite, kept in dicts, written from a
    `Txn` by the same rules (`Store._write_locked`) and loaded the same way."""

    def __init__(self, origin: str):
        self.origin = origin
        self.watermarks: dict[str, int] = {}
        self.prefixes: dict[str, dict[str, int]] = {}
        self.held: dict[str, dict[int, tuple]] = {}
        self.keys: dict[str, KeyRecord] = {}
        self.covers: dict[str, dict[str, tuple[int, int]]] = {}  # counter -> origin -> cover
        self.deleted: set[str] = set()
        # Origin retirement (retirement.py): the live origins' activity, the retired origins'
        # final watermarks (in the order they retired: a reset's cover of the base covers the
        # first of them) and their base.
        self.activity: dict[str, tuple[int, float]] = {}
        self.retired: dict[str, int] = {}
        self.base: dict[str, int] = {}
        # Not stored by store.py, only the checker's: per retired origin, the covers of it (per
        # counter) that the base folded in when the origin retired, here or at the node whose
        # base this one adopted. A reset's cover beyond them never applied (the README's window).
        self.base_covers: dict[str, dict[str, tuple[int, int]]] = {}
        # Set on a copy taken by `dcounter-node backup` and restored by `dcounter-node restore`:
        # the store takes a fresh origin when it next opens (`Store._leave_backup_origin`).
        self.backup_of: str | None = None

    def leave_backup_origin(self, new_origin) -> None:
        if self.backup_of is not None:
            self.origin, self.backup_of = new_origin(), None

    def write(self, txn) -> None:
        for origin, staged in txn.origins.items():
            self.watermarks[origin] = staged.watermark
            prefix = self.prefixes.setdefault(origin, {})
            if staged.replace_prefix:
                prefix.clear()
            prefix.update(staged.prefix)
            held = self.held.setdefault(origin, {})
            for seq in staged.held_del:
                held.pop(seq, None)
            held.update(staged.held_add)
        for key in txn.keys_del:
            self.keys.pop(key, None)
        self.keys.update(txn.keys_add)
        if txn.reorigined_from is not None:
            self.origin = txn.local_origin
        self.write_retirement(txn)
        self.write_resets(txn)

    def write_retirement(self, txn) -> None:
        """What `Store._write_retirement_locked` writes."""
        for origin, activity in txn.activity.items():
            if origin not in txn.origins_dropped:
                self.activity[origin] = activity
        for origin in txn.origins_dropped:
            for table in (self.watermarks, self.prefixes, self.held, self.activity):
                table.pop(origin, None)
        self.retired.update(txn.retired_add)
        if txn.base is not None:
            self.base = dict(txn.base)

    def write_resets(self, txn) -> None:
        """The covers and tombstones of resets, as `Store._write_resets_locked` writes them."""
        for (name, origin), cover in txn.cover_add.items():
            if cover is None:
                self.covers.get(name, {}).pop(origin, None)
            else:
                self.covers.setdefault(name, {})[origin] = cover
        self.deleted |= txn.deleted_add

    def retirement(self) -> tuple[dict[str, int], dict[str, int], dict[str, tuple]]:
        """`Counter.load`'s retired, base and activity, as `Store.load_retirement` reads them."""
        return dict(self.retired), dict(self.base), dict(self.activity)

    def resets(self) -> dict:
        """`Counter.load`'s covers and deleted, as `Store.load_resets` reads them."""
        return {"covers": {name: dict(per_origin) for name, per_origin in self.covers.items()
                           if per_origin},
                "deleted": set(self.deleted)}

    def load(self) -> tuple[str, dict[str, OriginState], dict[str, KeyRecord]]:
        origins = {o: OriginState(w, dict(self.prefixes.get(o, {})), dict(self.held.get(o, {})))
                   for o, w in self.watermarks.items()}
        return self.origin, origins, dict(self.keys)

    def holds(self, origin: str, seq: int) -> bool:
        """Whether the event is stored here: in a live origin's prefix or held, or in the base
        (a retired origin's events up to its final watermark)."""
        return self.watermarks.get(origin, 0) >= seq or seq in self.held.get(origin, {}) or \
            self.retired.get(origin, 0) >= seq

    def copy(self) -> "MemoryStore":
        return copy.deepcopy(self)


class Job:
    """One job for the group commit, and what to do with its outcome."""
    __slots__ = ("fn", "result", "error", "done")

    def __init__(self, fn, done):
        self.fn, self.done = fn, done
        self.result = None
        self.error: BaseException | None = None


class SimWriter:
    """One incarnation's writer: commits to `node.disk` (failing while `node.failing`), then
    installs in `node.counter` and hands the new events to `node.links`, as writer.py does."""

    def __init__(self, node):
        self.node = node
        self.jobs: list[Job] = []
        self.armed = False

    def submit(self, fn, done) -> None:
        self.jobs.append(Job(fn, done))
        self._arm()

    def _arm(self) -> None:
        if self.jobs and not self.armed:
            self.armed = True
            self.node.timer(COMMIT_TIME, self.commit_group)

    def commit_group(self) -> None:
        node = self.node
        group, self.jobs = self.jobs[:MAX_GROUP], self.jobs[MAX_GROUP:]
        self.armed = False
        txn, _ = node.sim.group_commit.run(node.counter, group, self._write)
        if txn is not None:
            node.counter.install(txn)
            node.sim.note_retirement(node.node_id, txn)
            if txn.outbound:
                node.links.enqueue(txn.outbound)
        for job in group:
            if job.error is not None and not isinstance(job.error, NodeError):
                raise job.error  # a bug: the run fails loudly
            job.done(job)
        self._arm()

    def _write(self, txn) -> None:
        if self.node.failing:
            raise StorageFailure("storage failure: injected by the simulator")
        self.node.disk.write(txn)
