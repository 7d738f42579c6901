"""Member states: alive, suspect, failed (removed for silence), left (said goodbye); reaping;
forgetting. Pure PeerStore with a fake clock."""

from dcounter.peers import PeerStore, State
from dcounter.retry import RetryPolicy
from tests.fakes import FakeClock

SELF = "self:1"


def make_store(clock, seeds=(), timeout=6.0, reap_after=100.0, **kwargs) -> PeerStore:
    return PeerStore(SELF, peer_timeout=timeout, policy=RetryPolicy(0.1, 10.0), seeds=seeds,
                     reap_after=reap_after, now=clock.monotonic(), **kwargs)


def states(peers, clock, suspect_after=3.0):
    return {nid: m.state for nid, m in peers.members(clock.monotonic(), suspect_after).items()}


def test_a_silent_peer_turns_suspect_then_failed_and_stays_failed():
    clock = FakeClock()
    peers = make_store(clock)
    peers.heard_from("a:1", clock.monotonic())
    assert states(peers, clock) == {"a:1": State.ALIVE}
    clock.advance(3.5)
    assert states(peers, clock) == {"a:1": State.SUSPECT}
    clock.advance(3.0)
    assert peers.expire(clock.monotonic()) == ["a:1"]
    assert peers.alive() == []
    clock.advance(50)
    view = peers.members(clock.monotonic(), 3.0)
    assert view["a:1"].state is State.FAILED
    assert view["a:1"].last_heard == 56.5
    # Still a rejoin candidate; its failures show as its error.
    assert "a:1" in peers.candidates(clock.monotonic())
    peers.contact_failed("a:1", clock.monotonic(), "connection refused")
    assert peers.members(clock.monotonic(), 3.0)["a:1"].error == "connection refused"


def test_a_failed_member_that_answers_again_is_alive():
    clock = FakeClock()
    peers = make_store(clock)
    peers.heard_from("a:1", clock.monotonic())
    clock.advance(7)
    peers.expire(clock.monotonic())
    peers.contact_succeeded("a:1", clock.monotonic())
    assert states(peers, clock) == {"a:1": State.ALIVE}
    assert peers.members(clock.monotonic(), 3.0)["a:1"].error is None


def test_a_failed_member_is_reaped_after_reap_after():
    clock = FakeClock()
    peers = make_store(clock, reap_after=100.0)
    peers.heard_from("a:1", clock.monotonic())
    clock.advance(7)
    peers.expire(clock.monotonic())
    clock.advance(100)
    assert peers.reap(clock.monotonic()) == []
    clock.advance(1)
    assert peers.reap(clock.monotonic()) == ["a:1"]
    assert states(peers, clock) == {}
    assert "a:1" not in peers.candidates(clock.monotonic())


def test_a_graceful_leave_is_left_until_reaped():
    clock = FakeClock()
    peers = make_store(clock, reap_after=100.0)
    peers.heard_from("a:1", clock.monotonic())
    assert peers.left("a:1", clock.monotonic()) is True
    assert peers.alive() == [] and "a:1" not in peers.candidates(clock.monotonic())
    clock.advance(10)
    view = peers.members(clock.monotonic(), 3.0)
    assert view["a:1"].state is State.LEFT and view["a:1"].last_heard == 10
    clock.advance(91)
    assert peers.reap(clock.monotonic()) == ["a:1"]
    assert states(peers, clock) == {}


def test_a_leave_from_a_stranger_records_nothing_and_a_refusal_drops_without_record():
    clock = FakeClock()
    peers = make_store(clock)
    assert peers.left("stranger:1", clock.monotonic()) is False
    peers.heard_from("other-cluster:1", clock.monotonic())
    peers.leave("other-cluster:1")
    assert states(peers, clock) == {}


def test_a_failed_member_that_leaves_is_left():
    clock = FakeClock()
    peers = make_store(clock)
    peers.heard_from("a:1", clock.monotonic())
    clock.advance(7)
    peers.expire(clock.monotonic())
    peers.left("a:1", clock.monotonic())
    assert states(peers, clock) == {"a:1": State.LEFT}


def test_a_seed_never_reached_is_failed_with_no_last_contact():
    clock = FakeClock()
    peers = make_store(clock, seeds=("seed:1",))
    view = peers.members(clock.monotonic(), 3.0)
    assert view["seed:1"].state is State.FAILED and view["seed:1"].last_heard is None
    # Reaped from the members after reap_after, but still tried: it is configured.
    clock.advance(101)
    assert peers.reap(clock.monotonic()) == ["seed:1"]
    assert "seed:1" in peers.candidates(clock.monotonic())


def test_second_hand_candidates_are_not_members():
    clock = FakeClock()
    peers = make_store(clock)
    peers.add_candidates(["b:1"], clock.monotonic())
    assert states(peers, clock) == {}


def test_forget_removes_everywhere_and_blocks_gossip_but_not_a_direct_join():
    clock = FakeClock()
    peers = make_store(clock, seeds=("seed:1",), reap_after=100.0)
    peers.heard_from("a:1", clock.monotonic())
    clock.advance(7)
    peers.expire(clock.monotonic())
    assert peers.forget("a:1", clock.monotonic()) is True
    assert peers.forget("seed:1", clock.monotonic()) is True
    assert states(peers, clock) == {}
    assert peers.candidates(clock.monotonic()) == {}
    # Gossip does not bring it back...
    assert peers.add_candidates(["a:1", "seed:1"], clock.monotonic()) == []
    assert peers.is_forgotten("a:1")
    # ...a direct contact does.
    assert peers.heard_from("a:1", clock.monotonic()) is True
    assert not peers.is_forgotten("a:1")
    assert states(peers, clock) == {"a:1": State.ALIVE}
    # The tombstone lasts reap_after.
    clock.advance(101)
    peers.reap(clock.monotonic())
    assert peers.add_candidates(["seed:1"], clock.monotonic()) == ["seed:1"]


def test_forget_of_an_unknown_id_says_so():
    clock = FakeClock()
    peers = make_store(clock)
    assert peers.forget("nobody:1", clock.monotonic()) is False


def test_failed_and_left_records_are_bounded():
    clock = FakeClock()
    peers = make_store(clock, max_peers=2, max_candidates=3)
    for i in range(5):
        peers.heard_from(f"p:{i}", clock.monotonic())
        peers.left(f"p:{i}", clock.monotonic())
        clock.advance(1)
    assert sorted(states(peers, clock)) == ["p:2", "p:3", "p:4"]
