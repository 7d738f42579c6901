"""Anti-entropy decisions: a lead is pulled only after it lasted a heartbeat interval with the
own watermark unchanged; one peer per origin; readiness; what a pull carries and adopts."""

from dcounter import pulls
from dcounter.antientropy import AntiEntropy
from dcounter.counter import Counter, Event
from tests.fakes import FakeClock

SETTLE = 2.0


def make():
    return AntiEntropy(settle=SETTLE), FakeClock()


def test_a_lead_is_pulled_only_after_it_lasted_the_settle_time():
    ae, clock = make()
    own = {"o1": 3}
    assert ae.observe("p", {"o1": 5}, own, clock.monotonic()) == ["o1"]
    assert ae.due_pulls(own, clock.monotonic()) == {}
    clock.advance(SETTLE - 0.1)
    assert ae.due_pulls(own, clock.monotonic()) == {}
    assert ae.next_due() == clock.monotonic() + 0.1
    clock.advance(0.1)
    assert ae.due_pulls(own, clock.monotonic()) == {"p": ["o1"]}


def test_pushes_that_arrive_restart_the_wait_and_reaching_the_lead_ends_it():
    ae, clock = make()
    ae.observe("p", {"o1": 10}, {"o1": 3}, clock.monotonic())
    clock.advance(SETTLE - 0.5)
    assert ae.due_pulls({"o1": 6}, clock.monotonic()) == {}  # a push arrived: wait again
    clock.advance(SETTLE - 0.5)
    assert ae.due_pulls({"o1": 6}, clock.monotonic()) == {}
    clock.advance(0.5)
    assert ae.due_pulls({"o1": 6}, clock.monotonic()) == {"p": ["o1"]}
    assert ae.due_pulls({"o1": 10}, clock.monotonic()) == {}  # reached: the lead is over
    assert not ae.waiting()


def test_a_digest_seen_again_keeps_the_wait_and_a_lead_no_longer_shown_is_forgotten():
    ae, clock = make()
    ae.observe("p", {"o1": 5, "o2": 5}, {}, clock.monotonic())
    clock.advance(SETTLE)
    ae.observe("p", {"o1": 7}, {}, clock.monotonic())  # o2 no longer ahead there
    assert ae.due_pulls({}, clock.monotonic()) == {"p": ["o1"]}


def test_the_own_watermark_moving_between_digests_restarts_the_wait():
    ae, clock = make()
    ae.observe("p", {"o1": 9}, {"o1": 1}, clock.monotonic())
    clock.advance(SETTLE)
    ae.observe("p", {"o1": 9}, {"o1": 4}, clock.monotonic())
    assert ae.due_pulls({"o1": 4}, clock.monotonic()) == {}
    clock.advance(SETTLE)
    assert ae.due_pulls({"o1": 4}, clock.monotonic()) == {"p": ["o1"]}


def test_each_origin_is_pulled_from_the_peer_furthest_ahead():
    ae, clock = make()
    ae.observe("a", {"o1": 5, "o2": 9}, {}, clock.monotonic())
    ae.observe("b", {"o1": 8, "o2": 9}, {}, clock.monotonic())
    clock.advance(SETTLE)
    assert ae.due_pulls({}, clock.monotonic()) == {"a": ["o2"], "b": ["o1"]}


def test_after_a_pull_the_origin_waits_again_and_a_failing_peer_is_not_hammered():
    ae, clock = make()
    ae.observe("p", {"o1": 5}, {}, clock.monotonic())
    clock.advance(SETTLE)
    assert ae.due_pulls({}, clock.monotonic()) == {"p": ["o1"]}
    ae.pulled("p", ["o1"], {}, clock.monotonic(), ok=False)
    assert ae.due_pulls({}, clock.monotonic()) == {}
    clock.advance(SETTLE)
    assert ae.due_pulls({}, clock.monotonic()) == {"p": ["o1"]}
    ae.pulled("p", ["o1"], {"o1": 5}, clock.monotonic(), ok=True)
    assert not ae.waiting()


def test_caught_up_after_a_comparison_with_nothing_to_pull():
    ae, clock = make()
    assert not ae.caught_up()
    ae.observe("p", {"o1": 5}, {}, clock.monotonic())
    assert not ae.caught_up()
    clock.advance(SETTLE)
    ae.pulled("p", ae.due_pulls({}, clock.monotonic())["p"], {"o1": 5}, clock.monotonic(),
              ok=True)
    assert ae.caught_up()
    other, _ = make()
    other.observe("p", {"o1": 5}, {"o1": 5}, clock.monotonic())
    assert other.caught_up()


def test_reaching_every_lead_by_replication_counts_as_caught_up():
    ae, clock = make()
    ae.observe("p", {"o1": 5}, {"o1": 4}, clock.monotonic())
    assert ae.due_pulls({"o1": 5}, clock.monotonic()) == {}
    assert ae.caught_up() and not ae.waiting()


def test_a_forgotten_peer_is_not_pulled_from():
    ae, clock = make()
    ae.observe("p", {"o1": 5}, {}, clock.monotonic())
    ae.forget("p")
    clock.advance(SETTLE)
    assert ae.due_pulls({}, clock.monotonic()) == {} and ae.next_due() is None


def test_a_lead_on_our_own_origin_is_pulled_at_once_even_while_we_write():
    ae, clock = make()
    ae.observe("p", {"mine": 10, "o1": 5}, {"mine": 5}, clock.monotonic())
    assert ae.due_pulls({"mine": 6}, clock.monotonic(), local_origin="mine") == {"p": ["mine"]}


def test_covers_says_whether_a_peers_last_digest_has_every_event_of_ours():
    ae = AntiEntropy(settle=1.0)
    assert ae.covers("b", {"o1": 3}) is None
    ae.observe("b", {"o1": 2}, {"o1": 3}, 0.0)
    assert ae.covers("b", {"o1": 3}) is False
    ae.observe("b", {"o1": 3, "o2": 1}, {"o1": 3}, 1.0)
    assert ae.covers("b", {"o1": 3}) is True
    assert ae.covers("b", {"o1": 3, "o3": 1}) is False
    ae.forget("b")  # no longer listed: its last digest stays...
    assert ae.covers("b", {"o1": 3}) is True
    ae.retain_digests(["c"])  # ...until the member is dropped
    assert ae.covers("b", {"o1": 3}) is None


# -- held events -----------------------------------------------------------------------------------

A, B = (2, 9, 111), (2, 9, 222)  # two held summaries: same count and max seq, other events


def test_other_held_events_at_our_watermark_are_a_lead_pulled_after_the_settle_time():
    ae, clock = make()
    own, own_held = {"o1": 5}, {"o1": A}
    assert ae.observe("p", {"o1": 5}, own, clock.monotonic(), {"o1": B}, own_held) == ["o1"]
    assert ae.due_pulls(own, clock.monotonic(), own_held=own_held) == {}
    clock.advance(SETTLE)
    assert ae.due_pulls(own, clock.monotonic(), own_held=own_held) == {"p": ["o1"]}
    ae.pulled("p", ["o1"], own, clock.monotonic(), ok=True, own_held={"o1": B})
    assert not ae.waiting()  # we hold what the peer showed: the lead is over


def test_held_events_are_no_lead_when_equal_or_when_the_watermarks_differ():
    ae, clock = make()
    assert ae.observe("p", {"o1": 5}, {"o1": 5}, 0.0, {"o1": A}, {"o1": A}) == []
    assert ae.observe("p", {"o1": 4}, {"o1": 5}, 0.0, {"o1": B}, {}) == []  # the peer is behind
    # Ahead and holding: an ordinary lead, whose pull brings the held events too.
    assert ae.observe("p", {"o1": 6}, {"o1": 5}, 0.0, {"o1": B}, {}) == ["o1"]
    clock.advance(SETTLE)
    assert ae.due_pulls({"o1": 6}, clock.monotonic(), own_held={}) == {}
    # An origin we do not know at all, which the peer holds events of above watermark 0.
    assert ae.observe("p", {}, {}, 0.0, {"o2": A}, {}) == ["o2"]


def test_a_held_lead_waits_again_while_our_held_events_move_and_ends_past_the_peer():
    ae, clock = make()
    ae.observe("p", {"o1": 5}, {"o1": 5}, clock.monotonic(), {"o1": B}, {})
    clock.advance(SETTLE - 0.5)
    assert ae.due_pulls({"o1": 5}, clock.monotonic(), own_held={"o1": A}) == {}  # a push came
    clock.advance(SETTLE - 0.5)
    assert ae.due_pulls({"o1": 5}, clock.monotonic(), own_held={"o1": A}) == {}
    clock.advance(0.5)
    assert ae.due_pulls({"o1": 5}, clock.monotonic(), own_held={"o1": A}) == {"p": ["o1"]}
    assert ae.due_pulls({"o1": 7}, clock.monotonic(), own_held={}) == {}  # past the peer
    assert not ae.waiting()


def test_a_watermark_lead_is_preferred_to_a_held_lead_on_the_same_origin():
    ae, clock = make()
    ae.observe("a", {"o1": 5}, {"o1": 5}, clock.monotonic(), {"o1": B}, {})
    ae.observe("b", {"o1": 8}, {"o1": 5}, clock.monotonic(), {}, {})
    clock.advance(SETTLE)
    assert ae.due_pulls({"o1": 5}, clock.monotonic(), own_held={}) == {"b": ["o1"]}


def test_an_origin_we_retired_is_no_lead_whatever_watermark_a_peer_shows():
    # A peer that has not retired it yet still carries it; one whose clock jumped may hold
    # events of it beyond the final watermark, which adopting refuses: pulling them is futile.
    ae, clock = make()
    retired = {"gone": 4}
    own = {"o1": 3, "_retired": 1}
    for theirs in (4, 9):
        assert ae.observe("p", {"gone": theirs, "o1": 3}, own, clock.monotonic(),
                          retired=retired) == []
        clock.advance(SETTLE)
        assert ae.due_pulls(own, clock.monotonic(), retired=retired) == {}
        assert not ae.waiting() and ae.next_due() is None
    assert ae.caught_up()


def test_a_lead_on_an_origin_retired_meanwhile_is_dropped_without_a_pull():
    ae, clock = make()
    assert ae.observe("p", {"gone": 4}, {"gone": 3}, clock.monotonic()) == ["gone"]
    clock.advance(SETTLE)  # due, but this node retired the origin (or adopted a base with it)
    assert ae.due_pulls({"_retired": 1}, clock.monotonic(), retired={"gone": 3}) == {}
    assert not ae.waiting() and ae.caught_up()


def test_a_peer_that_shows_an_origin_we_retired_at_its_final_watermark_covers_it():
    ae = AntiEntropy(settle=1.0)
    own, retired = {"o1": 3, "_retired": 2}, {"gone": 4, "old": 2}
    ae.observe("b", {"o1": 3, "gone": 4, "old": 2}, own, 0.0, retired=retired)  # retired none
    assert ae.covers("b", own, retired) is True
    ae.observe("b", {"o1": 3, "gone": 4, "_retired": 1}, own, 0.0, retired=retired)
    assert ae.covers("b", own, retired) is True  # retired the other one
    ae.observe("b", {"o1": 3, "_retired": 2}, own, 0.0, retired=retired)
    assert ae.covers("b", own, retired) is True  # retired both
    ae.observe("b", {"o1": 3, "gone": 3, "old": 2}, own, 0.0, retired=retired)
    assert ae.covers("b", own, retired) is False  # lacks an event of "gone"
    ae.observe("b", {"o1": 3, "gone": 4}, own, 0.0, retired=retired)
    assert ae.covers("b", own, retired) is False  # lacks "old" altogether


def test_a_pull_reply_read_and_adopted_brings_prefix_held_events_and_covers():
    """The plain functions the node's pulls and the simulator share, end to end."""
    source, puller = Counter("src"), Counter("dst")
    txn = source.begin()
    txn.remote([Event("o1", 1, "x", 5), Event("o1", 2, "x", 3), Event("o1", 4, "x", 1)], 0.0)
    source.install(txn)
    txn = source.begin()
    txn.local_reset("x", False, None, 0.0)  # covers o1 up to 2: 8 of the 9
    source.install(txn)
    request = pulls.pull_request("p:1", ["o1", "src"], 10)
    assert request == {"node_id": "p:1", "origins": ["o1", "src"], "held": 10}
    reply = pulls.state_reply(source, "s:1", request["origins"], request["held"])
    assert "covers" in reply
    snapshot, covers, deleted = pulls.read_state(reply, 10)
    txn = puller.begin()
    assert pulls.adopt_job(snapshot, covers, deleted, 0.0)(txn) == 2
    puller.install(txn)
    assert puller.count("x") == source.count("x") == 1
    assert puller.held_summaries() == source.held_summaries()
    assert puller.covers_wire() == source.covers_wire()
