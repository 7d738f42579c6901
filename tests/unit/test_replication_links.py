"""Sender links over a scripted transport: a link survives what its transport throws, and an old
link's outcome never touches a new link's state.

Where the sender thread itself is under test (it survives errors, starts only with `start()`),
the threads run and the test polls what it waits for with a deadline. Elsewhere no thread runs:
the test drives the senders' own steps (`Replicator.step`, or `PeerLink.take` and, later,
`PeerLink.send` for a send in flight). The fake clock only moves when the test moves it, so a
retry happens when the test fires `retry_once`.
"""

import logging
import threading

from dcounter.counter import Event
from dcounter.errors import PeerUnreachable
from dcounter.replication import Replicator
from dcounter.retry import RetryPolicy, RetrySchedule
from dcounter.wire import decode_runs
from tests.fakes import FakeClock, wait_for

class ScriptedTransport:
    """`post` runs `script(call_number, peer, event_ids)` first: it may block or raise. A post
    the script lets through counts as delivered."""

    timeout = 1.0

    def __init__(self, script=lambda n, peer, ids: None):
        self.script = script
        self._lock = threading.Lock()
        self.attempts: list[tuple[str, list[str]]] = []
        self.delivered: list[tuple[str, str]] = []  # (peer, event id)

    def post(self, peer, path, payload, timeout=None):
        if "runs" in payload:  # protocol 2's compact body
            ids = [event.id for event in decode_runs(payload["runs"])]
        else:
            ids = [event["id"] for event in payload["events"]]
        with self._lock:
            self.attempts.append((peer, ids))
            n = len(self.attempts)
        self.script(n, peer, ids)
        with self._lock:
            self.delivered.extend((peer, i) for i in ids)
        return {}

    def delivered_to(self, peer: str) -> list[str]:
        with self._lock:
            return [i for p, i in self.delivered if p == peer]

    def attempted(self, event_id: str) -> int:
        with self._lock:
            return sum(event_id in ids for _, ids in self.attempts)


def make(transport, clock, *, start: bool = True, **kwargs) -> Replicator:
    replicator = Replicator("self:1", transport, RetrySchedule(RetryPolicy(0.1, 10.0)), clock,
                            max_backlog=1000, batch_max=100, batch_linger=0.0, **kwargs)
    if start:
        replicator.start()
    return replicator


def retry(replicator: Replicator, clock: FakeClock) -> None:
    """Move past the longest backoff (10 s is the cap) and fire the retries, as the retry loop
    would."""
    clock.advance(10.0)
    replicator.retry_once(clock.monotonic())


def event(seq: int) -> Event:
    return Event("o", seq, "c", 1)


def fire_due_retries(replicator: Replicator, clock: FakeClock):
    """A step for `wait_for`: a link in backoff gets its retry (10 s is the cap)."""
    def step():
        if any(v["state"] == "backoff" for v in replicator.backlogs().values()):
            clock.advance(10.0)
            replicator.retry_once(clock.monotonic())
    return step


def test_a_link_survives_an_unexpected_error_and_delivers_later():
    def script(n, peer, ids):
        if n == 1:
            raise RuntimeError("a bug in the send path")

    clock, transport = FakeClock(), ScriptedTransport(script)
    replicator = make(transport, clock)
    try:
        replicator.add_peer("p:1")
        replicator.enqueue([event(1)])
        wait_for(lambda: transport.attempted("o:1") >= 1, "the first attempt")
        replicator.enqueue([event(2)])
        wait_for(lambda: transport.delivered_to("p:1") == ["o:1", "o:2"],
                 "both events to arrive", step=fire_due_retries(replicator, clock))
        wait_for(lambda: replicator.backlogs()["p:1"]["state"] == "idle", "the link to idle")
        assert replicator.backlogs()["p:1"] == {"backlog": 0, "state": "idle", "attempts": 0,
                                                "dropped": 0}
    finally:
        replicator.stop()


def test_a_batch_that_always_fails_unexpectedly_is_dropped_and_later_events_still_go(caplog):
    def script(n, peer, ids):
        raise RuntimeError("a bug in the send path")

    clock, transport = FakeClock(), ScriptedTransport(script)
    replicator = make(transport, clock, start=False)
    replicator.add_peer("p:1")
    with caplog.at_level(logging.ERROR, logger="dcounter"):
        replicator.enqueue([event(1)])
        for attempt in range(1, 6):
            assert replicator.backlogs()["p:1"]["dropped"] == 0
            assert replicator.step() == 1
            assert transport.attempted("o:1") == attempt
            retry(replicator, clock)
    assert replicator.backlogs()["p:1"]["dropped"] == 1
    assert replicator.backlogs()["p:1"]["backlog"] == 0
    assert any(r.levelno == logging.ERROR and "p:1" in r.getMessage() and
               "dropping" in r.getMessage() for r in caplog.records)
    replicator.enqueue([event(2)])
    assert replicator.step() == 1
    assert transport.attempted("o:2") == 1
    assert transport.attempted("o:1") == 5  # the dropped one is left to anti-entropy


def test_an_old_links_late_success_leaves_the_new_links_backoff_alone():
    """A peer is removed and re-added while the old link's send is in flight; the new link's
    send fails; then the old send succeeds. The new link must still get its retry."""
    def script(n, peer, ids):
        if n == 1:  # the first post: the new link's (the old link took its batch, unsent)
            raise PeerUnreachable("p:1: connection refused")

    clock, transport = FakeClock(), ScriptedTransport(script)
    replicator = make(transport, clock, start=False)
    replicator.add_peer("p:1")
    replicator.enqueue([event(1)])
    old = replicator.link("p:1")
    batch = old.take(clock.monotonic())  # the old link's send is in flight
    assert [e.id for e, _ in batch] == ["o:1"]
    replicator.remove_peer("p:1")
    replicator.add_peer("p:1")
    replicator.enqueue([event(2)])
    assert replicator.step() == 1  # the new link's send fails
    assert replicator.backlogs()["p:1"]["state"] == "backoff"
    assert replicator.backlogs()["p:1"]["attempts"] == 1
    assert old.send(batch)  # the old link's send succeeds
    assert transport.delivered_to("p:1") == ["o:1"]
    assert replicator.backlogs()["p:1"]["attempts"] == 1  # still the new link's count
    retry(replicator, clock)
    assert replicator.step() == 1  # the new link's retry
    assert transport.delivered_to("p:1") == ["o:1", "o:2"]
    assert replicator.backlogs()["p:1"] == {"backlog": 0, "state": "idle", "attempts": 0,
                                            "dropped": 0}


def sender_threads() -> set[str]:
    return {t.name for t in threading.enumerate() if t.name.startswith("link-")}


def test_sender_threads_start_only_with_start():
    clock, transport = FakeClock(), ScriptedTransport()
    replicator = Replicator("self:1", transport, RetrySchedule(RetryPolicy(0.1, 10.0)), clock,
                            max_backlog=1000, batch_max=100, batch_linger=0.0)
    try:
        replicator.add_peer("early:1")
        replicator.enqueue([event(1)])
        assert "link-early:1" not in sender_threads()
        assert replicator.backlogs()["early:1"]["backlog"] == 1
        replicator.start()
        wait_for(lambda: transport.delivered_to("early:1") == ["o:1"], "the queued event")
        replicator.add_peer("late:1")
        assert "link-late:1" in sender_threads()  # after start(): at once
        replicator.enqueue([event(2)])
        wait_for(lambda: transport.delivered_to("late:1") == ["o:2"], "the later event")
    finally:
        replicator.stop()
    wait_for(lambda: not {"link-early:1", "link-late:1"} & sender_threads(), "the senders to end")


def test_a_replicator_never_started_stops_and_drains():
    clock, transport = FakeClock(), ScriptedTransport()
    replicator = Replicator("self:1", transport, RetrySchedule(RetryPolicy(0.1, 10.0)), clock,
                            max_backlog=1000, batch_max=2, batch_linger=0.0)
    replicator.add_peer("p:1")
    replicator.enqueue(events := [event(1), event(2), event(3)])
    replicator.stop()
    replicator.add_peer("q:1")  # after stop(): listed, never started
    assert "link-q:1" not in sender_threads()
    assert replicator.drain(clock.monotonic() + 5.0) == 0
    assert transport.delivered_to("p:1") == [e.id for e in events]


def test_an_error_after_a_delivery_neither_resends_nor_stops_the_link():
    def on_success(peer):
        raise RuntimeError("a bug in the success callback")

    clock, transport = FakeClock(), ScriptedTransport()
    replicator = make(transport, clock, on_success=on_success)
    try:
        replicator.add_peer("p:1")
        replicator.enqueue([event(1)])
        wait_for(lambda: transport.delivered_to("p:1") == ["o:1"], "the first event")
        replicator.enqueue([event(2)])
        wait_for(lambda: transport.delivered_to("p:1") == ["o:1", "o:2"], "the second event")
        wait_for(lambda: replicator.backlogs()["p:1"]["state"] == "idle", "the link to idle")
        assert replicator.backlogs()["p:1"]["attempts"] == 0
    finally:
        replicator.stop()
