"""The writer's group commit: a group is installed whole or fails whole, a job that raises leaves
nothing staged, and a failure between the commit and the install stops the node.

Groups are formed deterministically: jobs are queued behind a first one and the group step is
called directly, as the writer thread or an in-place committer would call it.
"""

import pytest

from dcounter.counter import Counter
from dcounter.errors import StorageFailure, Unavailable, Unprocessable
from dcounter.store import Store
from dcounter.writer import Writer, _Job


class Opened:
    """A store, a counter loaded from it and a writer whose thread is not started: groups are
    committed by `group()` (or by `submit` in the calling thread)."""

    def __init__(self, directory, counter_class=Counter):
        self.directory = directory
        self.store = Store(str(directory), sync="normal")
        self.store.open()
        self.origin, origins, keys = self.store.load()
        self.counter = counter_class(self.origin, key_ttl=60.0)
        self.counter.load(origins, keys)
        self.committed = []
        self.fatal = []
        self.writer = Writer(self.counter, self.store, on_commit=self.committed.extend,
                             on_fatal=self.fatal.append)

    def group(self, *fns):
        """Commit `fns` as one group; returns their jobs (result or error set)."""
        jobs = [_Job(fn) for fn in fns]
        for job in jobs[1:]:
            self.writer._queue.put(job)
        with self.writer._commit_lock:
            self.writer._commit_from(jobs[0])
        return jobs

    def state(self):
        c = self.counter
        return (c.local_origin, c.counters(), c.digest(), c.held_total(), c.key_count(),
                c.snapshot(list(c.digest())))

    def reopen(self):
        self.store.close()
        return Opened(self.directory)

    def close(self):
        self.store.close()


@pytest.fixture
def opened(tmp_path):
    handles = []

    def open_(counter_class=Counter):
        handle = Opened(tmp_path / "data", counter_class)
        handles.append(handle)
        return handle

    yield open_
    for handle in handles:
        handle.close()


def local(name="c", delta=1, key=None):
    return lambda txn: txn.local(name, delta, key, 0.0)


def test_a_group_that_fails_to_commit_fails_every_job_and_acknowledges_nothing(opened):
    handle = opened()
    first = handle.writer.submit(local(delta=1, key="before"))
    before = handle.state()
    # SQLite refuses a watermark of 2^63 (OverflowError, not an sqlite3.Error).
    jobs = handle.group(local(delta=2, key="k"),
                        lambda txn: txn.adopt("peer", 2**63, {"c": 5}),
                        local(delta=3))
    for job in jobs:
        assert isinstance(job.error, StorageFailure) and job.error.status == 503
        assert job.result is None
    assert handle.state() == before
    assert [e.id for e in handle.committed] == [first.event_id]  # nothing new advertised

    # The failed group consumed no sequence number and acknowledged none: the next increment
    # takes seq 2, and no two answered increments share an event id.
    after = handle.writer.submit(local(delta=2, key="k"))
    assert after.event_id == f"{handle.origin}:2" and not after.replayed
    assert handle.counter.count("c") == 3
    assert handle.reopen().state() == handle.state()


def test_a_job_that_raises_after_staging_leaves_nothing_staged(opened):
    handle = opened()

    def refused_after_staging(txn):
        txn.local("c", 10, "half", 0.0)
        raise Unprocessable("refused after staging")

    def broken_after_staging(txn):
        txn.remote([], 0.0)
        txn.adopt("peer", 3, {"c": 100})
        txn.local("d", 1, None, 0.0)
        raise RuntimeError("a bug")

    jobs = handle.group(local(delta=1), refused_after_staging, broken_after_staging,
                        local(delta=2, key="k"))
    assert isinstance(jobs[1].error, Unprocessable)
    assert isinstance(jobs[2].error, RuntimeError)
    assert [job.result.event_id for job in (jobs[0], jobs[3])] == \
        [f"{handle.origin}:1", f"{handle.origin}:2"]
    assert handle.counter.counters() == {"c": 3}
    assert handle.counter.digest() == {handle.origin: 2}
    assert handle.counter.key("half", 0.0) is None
    assert [e.id for e in handle.committed] == [f"{handle.origin}:1", f"{handle.origin}:2"]
    assert handle.reopen().state() == handle.state()


def test_a_job_that_raises_in_memory_leaves_nothing_staged():
    counter = Counter("mem", key_ttl=60.0)
    committed = []
    writer = Writer(counter, None, on_commit=committed.extend)

    def broken(txn):
        txn.local("c", 10, "half", 0.0)
        raise RuntimeError("a bug")

    with pytest.raises(RuntimeError):
        writer.submit(broken)
    assert counter.counters() == {} and counter.key("half", 0.0) is None and committed == []
    assert writer.submit(local(delta=2, key="half")).event_id == "mem:1"
    assert counter.counters() == {"c": 2}


class InstallFails(Counter):
    """A counter whose next install raises, as a bug or an exhausted memory would."""
    fail_next = False

    def install(self, txn):
        if self.fail_next:
            raise MemoryError("no memory")
        super().install(txn)


def test_a_failure_between_commit_and_install_stops_the_node(opened):
    handle = opened(InstallFails)
    handle.writer.submit(local(delta=1))
    handle.counter.fail_next = True
    jobs = handle.group(local(delta=2), local(delta=3))

    assert len(handle.fatal) == 1 and "memory and disk" in handle.fatal[0]
    for job in jobs:  # never acknowledged: the node stops
        assert isinstance(job.error, Unavailable) and job.result is None
    with pytest.raises(Unavailable):  # nothing more is staged over a state that disagrees
        handle.writer.submit(local(delta=4))
    # What was committed is on disk; a restart serves it.
    assert handle.reopen().counter.count("c") == 6


def test_a_failing_on_commit_callback_does_not_fail_committed_jobs(opened):
    handle = opened()

    def broken_on_commit(events):
        raise RuntimeError("a bug")

    handle.writer.on_commit = broken_on_commit
    jobs = handle.group(local(delta=1), local(delta=2))
    assert [job.result.count for job in jobs] == [1, 3]
    assert handle.counter.count("c") == 3 and handle.fatal == []
