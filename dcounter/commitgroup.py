"""Group commit's decisions (pure): run a group of jobs into one transaction, each after a
savepoint, write it, and decide what each job gets when the write fails.

A job is any object with `fn` (`fn(txn) -> result`), `result` and `error`; `run` sets the last
two. The rules:

* A job that raises leaves nothing staged: it runs after `txn.savepoint()` and is rolled back
  to it, keeps its own exception, and the other jobs of the group go on.
* A group is written whole or fails whole: when the write raises (for any reason), the
  transaction is aborted and every job that was not refused on its own fails with a
  `StorageFailure` (503), so no job of a group that was not installed is answered with success.

Installing the written transaction, and what a failed install means, is the caller's (the
writer stops the node; see writer.py). No threads, locks or clocks here: the writer runs it
under its commit lock, the simulator runs it synchronously.
"""

from typing import Callable

from dcounter.counter import Counter, Txn
from dcounter.errors import StorageFailure


def stage(job, txn: Txn) -> None:
    """Run one job into `txn`; if it raises, undo what it staged and keep its exception."""
    sp = txn.savepoint()
    try:
        job.result = job.fn(txn)
    except BaseException as exc:
        txn.rollback_to(sp)
        job.error = exc


class GroupCommit:
    def run(self, counter: Counter, jobs: list, write: Callable[[Txn], None]
            ) -> tuple[Txn | None, StorageFailure | None]:
        """Stage `jobs` into one transaction and `write` it (unless empty). Returns (the
        transaction, to install, None) or, when staging or the write raised, (None, the
        failure), the transaction aborted and the jobs decided by `write_failed`."""
        txn = counter.begin()
        try:
            for job in jobs:
                stage(job, txn)
            if not txn.empty():
                write(txn)
        except BaseException as exc:
            counter.abort(txn)
            failure = exc if isinstance(exc, StorageFailure) else \
                StorageFailure(f"storage failure: {exc!r}")
            self.write_failed(jobs, failure)
            return None, failure
        return txn, None

    def write_failed(self, jobs: list, failure: BaseException) -> None:
        """Nothing of the group was written: every job that was not refused on its own gets
        `failure` instead of its result."""
        fail(jobs, failure)


def fail(jobs: list, failure: BaseException) -> None:
    """Every job that was not refused on its own gets `failure` instead of a result."""
    for job in jobs:
        if job.error is None:
            job.result, job.error = None, failure
