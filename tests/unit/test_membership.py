"""Membership decisions: what a contact carries and teaches, what it means for the listing,
which links the listing calls for, what a join reply lists, how often a refusal is logged."""

import pytest

from dcounter import membership
from dcounter.antientropy import AntiEntropy
from dcounter.counter import Counter, Event
from dcounter.membership import (Contact, WarnEvery, backoff_warnings, contact_from, contact_to,
                                 join_reply_peers, link_changes)
from dcounter.peers import PeerStore
from dcounter.replication import Replicator
from dcounter.retry import RetryPolicy, RetrySchedule
from tests.fakes import FakeClock

SELF, ORIGIN = "self:1", "selforigin"


def make_store(seeds=()) -> PeerStore:
    return PeerStore(SELF, peer_timeout=6.0, policy=RetryPolicy(0.1, 10.0), seeds=seeds)


def test_a_contact_lists_a_peer_once_then_refreshes_it():
    clock, peers = FakeClock(), make_store()
    assert contact_from(peers, SELF, ORIGIN, "a:1", "oa", clock.monotonic()) is Contact.NEW
    clock.advance(5.0)
    assert contact_from(peers, SELF, ORIGIN, "a:1", "oa", clock.monotonic()) is Contact.KNOWN
    clock.advance(5.0)
    assert peers.expire(clock.monotonic()) == []  # the second contact refreshed it


def test_a_contact_carrying_our_origin_or_id_is_never_listed():
    clock, peers = FakeClock(), make_store(seeds=("alias:1",))
    assert contact_from(peers, SELF, ORIGIN, SELF, None, clock.monotonic()) is Contact.SELF
    assert contact_to(peers, ORIGIN, "alias:1", ORIGIN, clock.monotonic()) is Contact.SELF
    assert contact_from(peers, SELF, ORIGIN, "alias:1", None, clock.monotonic()) is Contact.SELF
    assert peers.alive() == [] and peers.candidates(clock.monotonic()) == {}


def test_a_contact_we_made_lists_the_peer_and_ends_its_candidacy():
    clock, peers = FakeClock(), make_store(seeds=("a:1",))
    assert contact_to(peers, ORIGIN, "a:1", "oa", clock.monotonic()) is Contact.NEW
    assert contact_to(peers, ORIGIN, "a:1", "oa", clock.monotonic()) is Contact.KNOWN
    assert peers.alive() == ["a:1"] and peers.candidates(clock.monotonic()) == {}


def test_links_follow_the_listing():
    assert link_changes(["a", "b"], ["b", "c"]) == (["a"], ["c"])
    assert link_changes(["a"], ["a"]) == ([], [])


def test_a_join_reply_lists_the_responder_and_its_peers_but_not_the_joiner():
    assert join_reply_peers(SELF, ["a:1", "j:1"], "j:1") == [SELF, "a:1"]


def test_a_repeated_warning_is_due_once_per_period_and_key():
    clock, warn = FakeClock(), WarnEvery(60.0)
    assert warn.due("a", clock.monotonic()) and warn.due("b", clock.monotonic())
    clock.advance(59.0)
    assert not warn.due("a", clock.monotonic())
    clock.advance(1.0)
    assert warn.due("a", clock.monotonic())


def test_contact_failures_are_shown_in_words():
    from dcounter.membership import in_words
    assert in_words("localhost:9: ConnectionError") == \
        "could not connect (refused, or no route to the host)"
    assert in_words("vm2:8080: ReadTimeout") == "no answer in time"
    assert "set --tls-ca" in in_words("[::1]:8080: SSLError")
    # Words already pass through, without the peer's id (shown beside it).
    assert in_words("refused: this node belongs to cluster 'blue', not 'green'") == \
        "refused: this node belongs to cluster 'blue', not 'green'"
    assert in_words("vm2:8080: connection refused") == "connection refused"
    assert in_words(None) is None and in_words("") is None


def test_summary_counts_this_node_and_names_the_failed():
    from dcounter.membership import summary
    member = {"state": "alive", "caught_up": True}
    assert summary({}) == "1 of 1 member up, all caught up"
    assert summary({"b": member, "c": member}) == "3 of 3 members up, all caught up"
    assert summary({"b": {**member, "caught_up": False}, "c": {"state": "failed",
                                                                "caught_up": None},
                    "d": {"state": "left", "caught_up": None},
                    "e": {"state": "suspect", "caught_up": None}}) == \
        "3 of 4 members up (c failed), 1 behind, 1 not compared yet, 1 suspect, 1 left"


def warned_at(warn, clock, key, seconds):
    """The times (seconds from start) at which `key`'s warning is due, trying once a second."""
    start, times = clock.monotonic(), []
    for _ in range(seconds):
        if warn.due(key, clock.monotonic()):
            times.append(round(clock.monotonic() - start))
        clock.advance(1.0)
    return times


def test_a_node_warns_at_once_then_after_1_2_4_8_minutes_then_every_10():
    clock, warn = FakeClock(), backoff_warnings()
    assert warned_at(warn, clock, ("p:1", "refused"), 2500) == [
        0, 60, 180, 420, 900, 1500, 2100]


def test_backoff_is_kept_per_key_and_counts_what_it_passed_over():
    clock, warn = FakeClock(), WarnEvery(10.0, factor=2.0, cap=30.0)
    now = clock.monotonic()
    assert warn.check(("a", "x"), now) == 0 and warn.check(("a", "y"), now) == 0
    assert warn.check(("b", "x"), now) == 0
    for _ in range(3):
        clock.advance(3.0)
        assert warn.check(("a", "x"), clock.monotonic()) is None
    clock.advance(1.0)
    assert warn.check(("a", "x"), clock.monotonic()) == 3  # at 10 s: three passed over


def test_a_cleared_cause_warns_at_once_when_it_comes_back():
    clock, warn = FakeClock(), backoff_warnings()
    assert warn.due(("p:1", "refused"), clock.monotonic())
    assert warn.due(("p:2", "refused"), clock.monotonic())
    clock.advance(5.0)
    assert not warn.due(("p:1", "refused"), clock.monotonic())
    warn.clear(lambda key: key[0] == "p:1")
    assert warn.due(("p:1", "refused"), clock.monotonic())
    assert not warn.due(("p:2", "refused"), clock.monotonic())


def test_the_table_of_keys_is_bounded():
    clock, warn = FakeClock(), WarnEvery(60.0, max_keys=3)
    for sender in ("a", "b", "c", "d"):
        assert warn.due(sender, clock.monotonic())
    assert len(warn._state) <= 3


def test_nonsense_periods_are_refused():
    for every, factor in ((0, 2.0), (-1, 2.0), (1.0, 0.5)):
        with pytest.raises(ValueError):
            WarnEvery(every, factor=factor)


# -- what a contact carries and teaches --------------------------------------------------------------
def _counter_holding(origin: str, *seqs: int) -> Counter:
    counter = Counter(ORIGIN)
    txn = counter.begin()
    txn.remote([Event(origin, seq, "x", 1) for seq in seqs], 0.0)
    counter.install(txn)
    return counter


def test_a_contact_carries_digest_peers_and_held_summaries_and_reads_back():
    clock, peers = FakeClock(), make_store()
    contact_from(peers, SELF, ORIGIN, "a:1", "oa", clock.monotonic())
    counter = _counter_holding("ob", 1, 3)  # 3 held above the gap
    body = membership.payload(SELF, "default", 2, counter, peers, held=True)
    assert body["digest"] == {"ob": 1} and body["peers"] == ["a:1"]
    assert body["held"] == {"ob": list(counter.held_summaries()["ob"])}
    assert membership.read_reply(body) == (ORIGIN, {"ob": 1}, ["a:1"],
                                           counter.held_summaries())
    assert "held" not in membership.payload(SELF, "default", 2, counter, peers)
    leave = membership.payload(SELF, "default", 1, counter, peers, digest=False)
    assert leave == {"node_id": SELF, "cluster": "default", "protocol": 1, "origin": ORIGIN}


def test_a_contact_teaches_candidates_and_leads_but_our_own_alias_no_leads():
    clock, peers = FakeClock(), make_store(seeds=("alias:1",))
    counter, anti_entropy = Counter(ORIGIN), AntiEntropy(settle=2.0)
    new, ahead = membership.learn(peers, counter, anti_entropy, "a:1", {"ob": 4},
                                  [SELF, "c:1"], {}, clock.monotonic())
    assert new == ["c:1"] and ahead == ["ob"]
    peers.mark_self("alias:1")
    assert membership.learn(peers, counter, anti_entropy, "alias:1", {"oc": 4}, [], {},
                            clock.monotonic()) == ([], [])


def test_the_links_follow_the_listing_and_a_removed_peer_is_no_lead():
    clock, peers = FakeClock(), make_store()
    links = Replicator(SELF, None, RetrySchedule(RetryPolicy(0.1, 10.0)), clock, max_backlog=10,
                       batch_max=5, batch_linger=0.0)
    anti_entropy = AntiEntropy(settle=2.0)
    for peer in ("a:1", "b:1"):
        contact_from(peers, SELF, ORIGIN, peer, None, clock.monotonic())
    assert membership.sync_links(peers, links, anti_entropy) == (["a:1", "b:1"], [])
    assert links.batch_goal == 24
    anti_entropy.observe("b:1", {"ob": 3}, {}, clock.monotonic())
    peers.left("b:1", clock.monotonic())
    assert membership.sync_links(peers, links, anti_entropy) == ([], ["b:1"])
    assert links.peers() == ["a:1"] and links.batch_goal == 12
    clock.advance(5.0)
    assert anti_entropy.due_pulls({}, clock.monotonic()) == {}
