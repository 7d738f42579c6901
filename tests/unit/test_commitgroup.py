"""Group commit's decisions without a thread or a disk: a job that raises leaves nothing staged
and the others go on; a failed write fails every job and installs nothing."""

from dcounter.commitgroup import GroupCommit
from dcounter.counter import Counter
from dcounter.errors import StorageFailure, Unprocessable


class Job:
    def __init__(self, fn):
        self.fn, self.result, self.error = fn, None, None


def counter():
    return Counter("aaaaaaaaaaaaaaaa", key_ttl=60.0)


def test_a_job_that_raises_is_rolled_back_and_the_others_are_written():
    c, written = counter(), []

    def refused(txn):
        txn.local("x", 100, None, 0.0)
        raise Unprocessable("no")

    jobs = [Job(lambda txn: txn.local("x", 1, "k", 0.0)), Job(refused),
            Job(lambda txn: txn.local("y", 2, None, 0.0))]
    txn, failure = GroupCommit().run(c, jobs, written.append)
    assert failure is None and written == [txn]
    c.install(txn)
    assert c.counters() == {"x": 1, "y": 2}
    assert isinstance(jobs[1].error, Unprocessable)
    assert jobs[0].error is None and jobs[2].result.event.seq == 2


def test_a_failed_write_fails_every_job_and_changes_nothing():
    c = counter()

    def write(txn):
        raise OSError("disk full")

    jobs = [Job(lambda txn: txn.local("x", 1, None, 0.0)),
            Job(lambda txn: (_ for _ in ()).throw(Unprocessable("refused on its own")))]
    txn, failure = GroupCommit().run(c, jobs, write)
    assert txn is None and isinstance(failure, StorageFailure)
    assert isinstance(jobs[0].error, StorageFailure) and jobs[0].result is None
    assert isinstance(jobs[1].error, Unprocessable)  # keeps its own answer
    assert c.counters() == {} and c.digest() == {}
    txn, failure = GroupCommit().run(c, [Job(lambda txn: txn.local("x", 1, None, 0.0))],
                                     lambda txn: None)
    assert txn.outbound[0].seq == 1  # no sequence number was used by the failed group


def test_an_empty_group_is_not_written():
    written = []
    txn, failure = GroupCommit().run(counter(), [Job(lambda txn: None)], written.append)
    assert txn is not None and failure is None and written == []
