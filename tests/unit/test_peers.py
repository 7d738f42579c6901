"""Membership: liveness, expiry, leave, seeds and second-hand ids, candidate backoff."""

import pytest

from dcounter.peers import PeerStore
from dcounter.retry import RetryPolicy
from tests.fakes import FakeClock

SELF = "self:1"


@pytest.fixture
def clock():
    return FakeClock()


def make_store(seeds=(), timeout=6.0, **kwargs) -> PeerStore:
    return PeerStore(SELF, peer_timeout=timeout, policy=RetryPolicy(0.1, 10.0), seeds=seeds,
                     **kwargs)


def test_heard_from_makes_a_peer_alive_once(clock):
    peers = make_store()
    assert peers.heard_from("a:1", clock.monotonic(), origin="oa") is True
    assert peers.heard_from("a:1", clock.monotonic()) is False
    assert peers.alive() == ["a:1"] and peers.is_alive("a:1")
    assert peers.origin_of("a:1") == "oa"


def test_self_is_never_alive(clock):
    peers = make_store()
    assert peers.heard_from(SELF, clock.monotonic()) is False
    assert peers.add_candidates([SELF], clock.monotonic()) == []
    assert peers.alive() == [] and peers.due_candidates(clock.monotonic()) == []


def test_mark_self_removes_an_alias_everywhere(clock):
    peers = make_store(seeds=("alias:1",))
    peers.heard_from("alias:1", clock.monotonic())
    peers.mark_self("alias:1")
    assert peers.is_self("alias:1")
    assert peers.alive() == [] and peers.due_candidates(clock.monotonic()) == []
    assert peers.heard_from("alias:1", clock.monotonic()) is False
    assert peers.add_candidates(["alias:1"], clock.monotonic()) == []


def test_expire_removes_silent_peers_after_the_timeout_and_keeps_them_as_candidates(clock):
    peers = make_store(timeout=6.0)
    peers.heard_from("a:1", clock.monotonic())
    peers.heard_from("b:1", clock.monotonic())
    clock.advance(4)
    peers.heard_from("b:1", clock.monotonic())
    clock.advance(2)
    assert peers.expire(clock.monotonic()) == []  # a: exactly 6 s, not more
    clock.advance(0.5)
    assert peers.expire(clock.monotonic()) == ["a:1"]
    assert peers.alive() == ["b:1"]
    assert peers.due_candidates(clock.monotonic()) == ["a:1"]
    assert peers.contact_succeeded("a:1", clock.monotonic()) is True
    assert peers.alive() == ["a:1", "b:1"]
    assert peers.due_candidates(clock.monotonic()) == []


def test_last_seen_never_goes_back(clock):
    peers = make_store()
    peers.heard_from("a:1", clock.monotonic() + 5)
    peers.heard_from("a:1", clock.monotonic())
    assert peers.last_seen_ages(clock.monotonic() + 5) == {"a:1": 0.0}


def test_leave_drops_a_peer_at_once_and_forgets_it(clock):
    peers = make_store()
    peers.heard_from("a:1", clock.monotonic())
    assert peers.leave("a:1") is True
    assert peers.alive() == [] and peers.due_candidates(clock.monotonic()) == []
    assert peers.leave("a:1") is False


def test_seeds_are_candidates_from_the_start_and_stay_after_leave(clock):
    peers = make_store(seeds=("seed:1", SELF))
    assert peers.seeds == ("seed:1",)
    assert peers.due_candidates(clock.monotonic()) == ["seed:1"]
    peers.contact_succeeded("seed:1", clock.monotonic())
    assert peers.due_candidates(clock.monotonic()) == []
    peers.leave("seed:1")
    assert peers.alive() == []
    assert peers.due_candidates(clock.monotonic()) == ["seed:1"]


def test_second_hand_ids_become_alive_only_after_contact_succeeded(clock):
    peers = make_store()
    peers.heard_from("a:1", clock.monotonic())
    assert peers.add_candidates(["a:1", "b:1", "c:1"], clock.monotonic()) == ["b:1", "c:1"]
    assert peers.alive() == ["a:1"]
    assert not peers.is_alive("b:1")
    assert peers.due_candidates(clock.monotonic()) == ["b:1", "c:1"]
    peers.contact_failed("b:1", clock.monotonic(), "refused")
    assert peers.alive() == ["a:1"]
    assert peers.contact_succeeded("c:1", clock.monotonic(), origin="oc") is True
    assert peers.alive() == ["a:1", "c:1"]
    assert peers.add_candidates(["c:1"], clock.monotonic()) == []


def test_candidate_backoff_follows_the_retry_policy(clock):
    peers = make_store(seeds=("seed:1",))
    delays = []
    for _ in range(9):
        assert peers.due_candidates(clock.monotonic()) == ["seed:1"]
        delay = peers.contact_failed("seed:1", clock.monotonic(), "unreachable")
        delays.append(delay)
        clock.advance(delay - 0.01)
        assert peers.due_candidates(clock.monotonic()) == []
        clock.advance(0.01)
    assert delays == [0.1, 0.2, 0.4, 0.8, 1.6, 3.2, 6.4, 10.0, 10.0]
    info = peers.candidates(clock.monotonic())["seed:1"]
    assert info["attempts"] == 9 and info["last_error"] == "unreachable"
    assert peers.contact_failed("stranger:1", clock.monotonic()) is None


def test_a_peer_that_comes_back_after_expiry_starts_a_fresh_backoff(clock):
    peers = make_store()
    peers.add_candidates(["a:1"], clock.monotonic())
    peers.contact_failed("a:1", clock.monotonic())
    peers.contact_failed("a:1", clock.monotonic())
    clock.advance(1)
    peers.contact_succeeded("a:1", clock.monotonic())
    clock.advance(7)
    assert peers.expire(clock.monotonic()) == ["a:1"]
    assert peers.candidates(clock.monotonic())["a:1"]["attempts"] == 0


def test_candidates_are_bounded_and_seeds_are_never_evicted(clock):
    peers = make_store(seeds=("seed:1",), max_candidates=3)
    peers.add_candidates(["a:1", "b:1"], clock.monotonic())
    peers.contact_failed("a:1", clock.monotonic())
    peers.contact_failed("a:1", clock.monotonic())
    peers.contact_failed("b:1", clock.monotonic())
    peers.contact_failed("seed:1", clock.monotonic())
    peers.contact_failed("seed:1", clock.monotonic())
    peers.contact_failed("seed:1", clock.monotonic())
    assert peers.add_candidates(["c:1"], clock.monotonic()) == ["c:1"]
    assert set(peers.candidates(clock.monotonic())) == {"seed:1", "b:1", "c:1"}


def test_recent_attempts_are_bounded(clock):
    peers = make_store()
    for i in range(30):
        peers.contact_failed(f"p{i}:1", clock.monotonic(), "x")
    attempts = peers.recent_attempts()
    assert len(attempts) == 20 and attempts[-1][1] == "p29:1"


def test_refresh_keeps_a_listed_peer_alive_but_never_adds_one(clock):
    peers = make_store(seeds=("seed:1",))
    assert peers.refresh("a:1", clock.monotonic()) is False
    assert peers.refresh("seed:1", clock.monotonic()) is False
    assert peers.alive() == [] and peers.due_candidates(clock.monotonic()) == ["seed:1"]
    peers.heard_from("a:1", clock.monotonic())
    clock.advance(5)
    assert peers.refresh("a:1", clock.monotonic()) is True
    clock.advance(5)
    assert peers.expire(clock.monotonic()) == []
    peers.leave("a:1")
    assert peers.refresh("a:1", clock.monotonic()) is False and peers.alive() == []


# -- the cap on listed peers and candidates --------------------------------------------------------

def test_a_new_peer_past_max_peers_is_refused_and_not_listed(clock):
    from dcounter.errors import TooManyPeers
    peers = make_store(max_peers=2)
    now = clock.monotonic()
    assert peers.heard_from("a:1", now) and peers.heard_from("b:1", now)
    with pytest.raises(TooManyPeers, match="--max-peers") as info:
        peers.heard_from("c:1", now)
    assert info.value.status == 503
    assert peers.alive() == ["a:1", "b:1"]
    # Peers already listed are still heard from; a freed slot can be taken.
    assert peers.heard_from("a:1", now + 1) is False
    clock.advance(6.5)
    peers.heard_from("a:1", clock.monotonic())
    assert peers.expire(clock.monotonic()) == ["b:1"]
    assert peers.heard_from("c:1", clock.monotonic()) is True
    assert peers.alive() == ["a:1", "c:1"]


def test_a_candidate_reached_past_max_peers_backs_off_and_stays_a_candidate(clock):
    peers = make_store(seeds=("seed:1",), max_peers=1)
    now = clock.monotonic()
    peers.heard_from("a:1", now)
    assert peers.contact_succeeded("seed:1", now) is False
    assert peers.alive() == ["a:1"]
    assert peers.due_candidates(now) == []  # backed off, not contacted again at once
    assert "--max-peers" in peers.candidates(now)["seed:1"]["last_error"]
    clock.advance(10)
    assert peers.due_candidates(clock.monotonic()) == ["seed:1"]


def test_candidates_are_capped_at_four_times_max_peers(clock):
    peers = make_store(seeds=("seed:1",), max_peers=2)
    assert peers.max_candidates == 8
    added = peers.add_candidates([f"c{i}:1" for i in range(100)], clock.monotonic())
    assert len(added) == 100  # the newest replace the oldest
    candidates = peers.candidates(clock.monotonic())
    assert len(candidates) == 8 and "seed:1" in candidates


def test_a_candidate_with_a_contact_in_flight_is_not_due(clock):
    peers = make_store(seeds=("a:1", "b:1"))
    assert peers.claim_due_candidates(clock.monotonic()) == ["a:1", "b:1"]
    clock.advance(60.0)
    assert peers.claim_due_candidates(clock.monotonic()) == []
    assert peers.due_candidates(clock.monotonic()) == []
    peers.contact_failed("a:1", clock.monotonic(), "unreachable")
    peers.contact_finished("a:1")
    assert peers.claim_due_candidates(clock.monotonic()) == []  # backing off now
    clock.advance(60.0)
    assert peers.claim_due_candidates(clock.monotonic()) == ["a:1"]
    assert peers.contacts_in_flight() == ["a:1", "b:1"]


def test_begin_contacts_claims_only_peers_without_a_contact_in_flight(clock):
    peers = make_store()
    assert peers.begin_contacts(["b:1", "a:1"]) == ["a:1", "b:1"]
    assert peers.begin_contacts(["a:1", "c:1"]) == ["c:1"]
    peers.contact_finished("a:1")
    assert peers.begin_contacts(["a:1"]) == ["a:1"]


def test_a_candidate_being_tried_says_so_rather_than_next_try_in_zero(clock):
    # A peer that hangs (or a dead host that never answers) keeps its join in flight for a
    # whole request timeout: the listing must not read "0 attempts, next try in 0.0 s".
    peers = make_store()
    peers.heard_from("a:1", clock.monotonic())
    clock.advance(7.0)
    assert peers.expire(clock.monotonic()) == ["a:1"]
    assert peers.candidates(clock.monotonic())["a:1"] == {
        "attempts": 0, "trying": False, "next_try_in": 0.0, "last_error": None}
    assert peers.claim_due_candidates(clock.monotonic()) == ["a:1"]
    clock.advance(2.0)
    view = peers.candidates(clock.monotonic())["a:1"]
    assert view["trying"] is True and view["next_try_in"] is None and view["attempts"] == 0
    peers.contact_failed("a:1", clock.monotonic(), "timed out")
    peers.contact_finished("a:1")
    view = peers.candidates(clock.monotonic())["a:1"]
    assert view == {"attempts": 1, "trying": False, "next_try_in": pytest.approx(0.1),
                    "last_error": "timed out"}
