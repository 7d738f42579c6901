"""The counter core: events, watermarks, held events, idempotency keys, transactions."""

import itertools

import pytest

from dcounter.api import MAX_ORIGINS_PER_PULL, decode_digest
from dcounter.counter import RETIRED_ENTRY, Counter, Event, KeyRecord, OriginState
from dcounter.errors import Unprocessable
from dcounter.reset import Reset
from dcounter.validation import INT64_MAX, INT64_MIN
from dcounter.wire import decode_snapshot
from tests.fakes import FakeClock

LOCAL = "local0"


def make_counter(**kwargs) -> Counter:
    names = (f"fresh{i}" for i in itertools.count(1))
    kwargs.setdefault("new_origin", lambda: next(names))
    return Counter(LOCAL, **kwargs)


def run(counter: Counter, fn):
    """Stage with `fn(txn)` and install, as the writer does."""
    txn = counter.begin()
    try:
        result = fn(txn)
    except BaseException:
        counter.abort(txn)
        raise
    counter.install(txn)
    return result


def local(counter, name="c", delta=1, key=None, now=0.0):
    return run(counter, lambda txn: txn.local(name, delta, key, now))


def remote(counter, *events, now=0.0):
    return run(counter, lambda txn: txn.remote(list(events), now))


def adopt(counter, origin, watermark, counters):
    return run(counter, lambda txn: txn.adopt(origin, watermark, counters))


def ev(seq, delta=1, origin="peer", name="c", key=None) -> Event:
    return Event(origin, seq, name, delta, key)


# -- local events ---------------------------------------------------------------------------------

def test_local_events_take_consecutive_seqs_and_count():
    c = make_counter()
    first = local(c, delta=5)
    second = local(c, delta=-2)
    assert first.event_id == f"{LOCAL}:1" and first.count == 5 and not first.replayed
    assert second.event_id == f"{LOCAL}:2" and second.count == 3
    assert second.event == Event(LOCAL, 2, "c", -2)
    assert c.count("c") == 3
    assert c.digest() == {LOCAL: 2}
    assert c.held_total() == 0


def test_staged_changes_are_invisible_until_install():
    c = make_counter()
    txn = c.begin()
    txn.local("c", 4, None, 0.0)
    assert txn.total("c") == 4
    assert c.count("c") == 0 and c.digest() == {}
    c.install(txn)
    assert c.count("c") == 4


def test_aborted_transaction_leaves_no_trace_and_consumes_no_seq():
    c = make_counter()
    local(c)
    txn = c.begin()
    txn.local("c", 7, "k1", 0.0)
    txn.local("other", 1, None, 0.0)
    txn.remote([ev(1), ev(2)], 0.0)
    txn.adopt("third", 3, {"c": 3})
    c.abort(txn)
    assert c.counters() == {"c": 1}
    assert c.digest() == {LOCAL: 1}
    assert c.key("k1", 0.0) is None
    assert c.held_total() == 0
    result = local(c)
    assert result.event_id == f"{LOCAL}:2"


def test_rollback_to_a_savepoint_restores_everything_staged_after_it():
    clock = FakeClock()
    c = make_counter(key_ttl=10.0)
    local(c, key="old", now=clock.time())
    remote(c, ev(3, 30))  # held: peer:3
    clock.advance(11)  # "old" has expired
    txn = c.begin()
    kept = txn.local("c", 2, "kept", clock.time())
    sp = txn.savepoint()
    txn.local("c", 7, "dropped", clock.time())
    txn.local("new-counter", 1, None, clock.time())
    txn.remote([ev(1), ev(2, key="remote-key"), ev(5, origin="other")], clock.time())
    txn.adopt("third", 3, {"c": 3})
    txn.remote([Event(LOCAL, 9, "c", 1)], clock.time())  # takes a fresh origin
    txn.expire_keys(clock.time())
    txn.rollback_to(sp)
    assert txn.local_origin == LOCAL and txn.reorigined_from is None
    assert [e.id for e in txn.outbound] == [kept.event_id]
    assert txn.total("c") == 33 and txn.total("new-counter") is None
    c.install(txn)

    assert c.counters() == {"c": 33} and c.local_origin == LOCAL
    assert c.digest() == {LOCAL: 2}
    assert c.held_total() == 1 and c.key_count() == 2  # "old" not expired: that was rolled back
    assert c.key("dropped", clock.time()) is None and c.key("remote-key", clock.time()) is None
    assert local(c, delta=1, now=clock.time()).event_id == f"{LOCAL}:3"
    assert remote(c, ev(1), ev(2)).applied == [ev(1), ev(2)]
    assert c.counters() == {"c": 36}  # 1 + 2 + 1 local, 30 + 1 + 1 from peer (3 folds in)


def test_a_rollback_undoes_key_evictions_and_retirements_staged_after_the_savepoint():
    clock = FakeClock()
    c = make_counter(key_ttl=1000.0, max_keys=1, origin_retire_after=10.0)
    local(c, key="first", now=clock.time())
    remote(c, ev(1, origin="idle"))
    txn = c.begin()
    txn.retire_origins(clock.time(), [], set())  # stamps the idle origin's activity
    c.install(txn)
    clock.advance(11)
    txn = c.begin()
    sp = txn.savepoint()
    txn.local("c", 1, "second", clock.time())  # past max_keys: "first" is evicted
    assert txn.retire_origins(clock.time(), [], set()) == ["idle"]
    txn.rollback_to(sp)
    assert txn.empty() and txn.keys_evicted == 0
    c.install(txn)
    assert c.key("first", clock.time()) is not None and c.keys_evicted == 0
    assert c.retired_count() == 0 and "idle" in c.digest()


def test_a_savepoint_can_be_rolled_back_to_again_and_a_new_one_replaces_it():
    c = make_counter()
    txn = c.begin()
    sp = txn.savepoint()
    txn.local("c", 1, None, 0.0)
    txn.rollback_to(sp)
    txn.local("c", 2, None, 0.0)
    txn.rollback_to(sp)
    assert txn.empty() and txn.outbound == []
    txn.local("c", 3, None, 0.0)
    second = txn.savepoint()
    txn.local("c", 4, None, 0.0)
    txn.rollback_to(second)
    c.install(txn)
    assert c.counters() == {"c": 3} and c.digest() == {LOCAL: 1}


def test_only_one_transaction_at_a_time():
    c = make_counter()
    txn = c.begin()
    with pytest.raises(RuntimeError):
        c.begin()
    c.abort(txn)
    c.abort(c.begin())


# -- remote events: dedup, held events, gap cap ----------------------------------------------------

def test_remote_duplicates_count_once():
    c = make_counter()
    first = remote(c, ev(1, 3), ev(2, 4))
    assert [e.id for e in first.applied] == ["peer:1", "peer:2"] and first.duplicates == 0
    again = remote(c, ev(1, 3), ev(2, 4))
    assert again.applied == [] and again.duplicates == 2
    assert c.count("c") == 7


def test_duplicate_inside_one_batch_counts_once():
    c = make_counter()
    result = remote(c, ev(1), ev(1), ev(3), ev(3))
    assert len(result.applied) == 2 and result.duplicates == 2
    assert c.count("c") == 2


def test_out_of_order_events_are_held_and_fold_when_the_gap_closes():
    c = make_counter()
    remote(c, ev(3, 30), ev(5, 500, name="d"))
    assert c.counters() == {"c": 30, "d": 500}  # held events count at once
    assert c.watermark("peer") == 0 and c.held_total() == 2
    assert remote(c, ev(3, 30)).duplicates == 1  # a held event is a duplicate too
    remote(c, ev(1, 1))
    assert c.watermark("peer") == 1 and c.held_total() == 2
    remote(c, ev(2, 2))
    assert c.watermark("peer") == 3 and c.held_total() == 1
    remote(c, ev(4, 4))
    assert c.watermark("peer") == 5 and c.held_total() == 0
    assert c.counters() == {"c": 37, "d": 500}
    assert c.snapshot(["peer"]) == {"peer": {"watermark": 5, "counters": {"c": 37, "d": 500}}}


def test_gap_closing_inside_one_transaction_folds_everything():
    c = make_counter()
    remote(c, ev(4), ev(2), ev(3), ev(1))
    assert c.watermark("peer") == 4 and c.held_total() == 0 and c.count("c") == 4


def test_events_beyond_the_gap_cap_are_deferred_not_applied():
    c = make_counter(gap_cap=3)
    result = remote(c, ev(3), ev(4))
    assert len(result.applied) == 1 and result.deferred == 1
    assert c.count("c") == 1 and c.held_total() == 1
    remote(c, ev(1))
    # watermark 1: seq 4 is now within the cap
    assert remote(c, ev(4)).deferred == 0
    assert c.count("c") == 3 and c.held_total() == 2


def test_origins_are_independent():
    c = make_counter()
    remote(c, ev(1, origin="a"), ev(1, origin="b"), ev(2, origin="b"))
    assert c.digest() == {"a": 1, "b": 2}
    assert c.behind({"a": 1, "b": 5, "z": 1, "zero": 0}) == ["b", "z"]


# -- adopt (anti-entropy) ------------------------------------------------------------------------

def test_adopt_replaces_a_prefix_that_is_behind():
    c = make_counter()
    remote(c, ev(1, 1), ev(2, 2))
    assert adopt(c, "peer", 10, {"c": 50, "d": 5}) is True
    assert c.watermark("peer") == 10
    assert c.counters() == {"c": 50, "d": 5}


def test_adopt_ignores_a_prefix_that_is_not_ahead():
    c = make_counter()
    remote(c, ev(1, 1), ev(2, 2))
    assert adopt(c, "peer", 2, {"c": 999}) is False
    assert adopt(c, "peer", 1, {"c": 999}) is False
    assert c.count("c") == 3


def test_adopt_drops_held_events_at_or_below_the_new_watermark_and_folds_the_rest():
    c = make_counter()
    remote(c, ev(1, 1), ev(3, 3), ev(4, 4), ev(6, 6), ev(8, 8))
    assert c.count("c") == 22 and c.held_total() == 4
    # The peer's prefix up to 4 includes events 2, 3 and 4: 1+2+3+4.
    assert adopt(c, "peer", 4, {"c": 10}) is True
    assert c.held_total() == 2  # 6 and 8 stay held
    assert c.count("c") == 10 + 6 + 8
    remote(c, ev(5, 5))  # closes the gap: 5 and 6 fold, 8 stays held
    assert c.watermark("peer") == 6 and c.held_total() == 1
    assert c.count("c") == 10 + 5 + 6 + 8
    remote(c, ev(7, 7))
    assert c.watermark("peer") == 8 and c.held_total() == 0
    assert c.count("c") == 36


def test_adopt_folds_held_events_that_become_contiguous():
    c = make_counter()
    remote(c, ev(4, 4), ev(5, 5))
    adopt(c, "peer", 3, {"c": 6})
    assert c.watermark("peer") == 5 and c.held_total() == 0
    assert c.snapshot(["peer"]) == {"peer": {"watermark": 5, "counters": {"c": 15}}}
    assert c.count("c") == 15


def test_adopt_removes_counters_absent_from_the_new_prefix_from_totals():
    c = make_counter()
    remote(c, ev(1, 5, name="x"))
    adopt(c, "peer", 2, {"x": 5, "y": 7})
    assert c.counters() == {"x": 5, "y": 7}
    remote(c, ev(1, 2, origin="other", name="x"))
    adopt(c, "other", 1, {"x": 2})
    assert c.counters() == {"x": 7, "y": 7}


# -- reorigin --------------------------------------------------------------------------------------

def test_remote_event_of_our_origin_above_our_watermark_takes_a_fresh_origin():
    c = make_counter()
    local(c)
    local(c)
    # A restored backup: a peer holds our events 3 and 4 that we no longer have.
    txn = c.begin()
    txn.remote([ev(3, 10, origin=LOCAL), ev(4, 10, origin=LOCAL)], 0.0)
    assert txn.reorigined_from == LOCAL
    c.install(txn)
    assert c.local_origin == "fresh1"
    assert c.count("c") == 22
    result = local(c)
    assert result.event_id == "fresh1:1"  # never collides with LOCAL:3
    assert c.digest() == {LOCAL: 4, "fresh1": 1}


def test_remote_event_of_our_origin_at_or_below_our_watermark_is_a_duplicate():
    c = make_counter()
    local(c)
    result = remote(c, ev(1, origin=LOCAL))
    assert result.duplicates == 1 and c.local_origin == LOCAL


def test_adopt_of_our_origin_ahead_takes_a_fresh_origin():
    c = make_counter()
    local(c)
    assert adopt(c, LOCAL, 5, {"c": 5}) is True
    assert c.local_origin == "fresh1"
    assert c.count("c") == 5
    assert local(c).event_id == "fresh1:1"


def test_reorigin_in_an_aborted_transaction_is_forgotten():
    c = make_counter()
    txn = c.begin()
    txn.remote([ev(9, origin=LOCAL)], 0.0)
    c.abort(txn)
    assert c.local_origin == LOCAL
    assert local(c).event_id == f"{LOCAL}:1"


# -- idempotency keys -----------------------------------------------------------------------------

def test_same_key_same_request_replays_the_original_response():
    clock = FakeClock()
    c = make_counter()
    first = local(c, delta=3, key="k", now=clock.time())
    local(c, delta=10, now=clock.time())
    replay = local(c, delta=3, key="k", now=clock.time())
    assert replay.replayed and replay.event is None
    assert replay.event_id == first.event_id and replay.count == 3
    assert c.count("c") == 13
    assert c.digest() == {LOCAL: 2}


def test_same_key_different_request_is_422_and_stages_nothing():
    c = make_counter()
    local(c, delta=3, key="k")
    for name, delta in (("c", 4), ("other", 3)):
        txn = c.begin()
        with pytest.raises(Unprocessable) as info:
            txn.local(name, delta, "k", 0.0)
        assert info.value.status == 422
        assert txn.empty()
        c.abort(txn)
    assert c.counters() == {"c": 3}


def test_keys_expire_by_wall_clock():
    clock = FakeClock()
    c = make_counter(key_ttl=60.0)
    local(c, key="k", now=clock.time())
    clock.advance(59.9)
    assert local(c, key="k", now=clock.time()).replayed
    clock.advance(0.2)
    assert c.key("k", clock.time()) is None
    again = local(c, key="k", now=clock.time())
    assert not again.replayed and c.count("c") == 2


def test_expire_keys_forgets_expired_records():
    clock = FakeClock()
    c = make_counter(key_ttl=10.0)
    local(c, key="old", now=clock.time())
    clock.advance(5)
    local(c, key="new", now=clock.time())
    clock.advance(6)
    assert run(c, lambda txn: txn.expire_keys(clock.time())) == 1
    assert c.key_count() == 1 and c.key("new", clock.time()) is not None


def test_key_arriving_with_a_replicated_event_recognises_a_retry():
    c = make_counter()
    remote(c, ev(1, 2, key="client-retry"), ev(2, 5))
    replay = local(c, delta=2, key="client-retry")
    assert replay.replayed and replay.event_id == "peer:1"
    assert replay.count == 7  # this node's current count
    assert c.count("c") == 7


def test_key_arriving_with_a_duplicate_event_is_remembered():
    # The event came first inside a prefix (which carries no keys), then by push with its key.
    c = make_counter()
    adopt(c, "peer", 1, {"c": 2})
    result = remote(c, ev(1, 2, key="client-retry"))
    assert result.applied == [] and result.duplicates == 1
    replay = local(c, delta=2, key="client-retry")
    assert replay.replayed and replay.event_id == "peer:1"
    assert c.count("c") == 2


def test_key_arriving_with_a_held_duplicate_or_a_deferred_event_is_remembered():
    c = make_counter(gap_cap=10)
    remote(c, ev(3, 1))
    result = remote(c, ev(3, 1, key="held-dup"), ev(50, 1, key="deferred"))
    assert result.duplicates == 1 and result.deferred == 1
    assert local(c, delta=1, key="held-dup").event_id == "peer:3"
    assert local(c, delta=1, key="deferred").event_id == "peer:50"
    assert c.count("c") == 1


def test_key_never_suppresses_a_distinct_replicated_event():
    c = make_counter()
    local(c, delta=1, key="shared")
    result = remote(c, ev(1, 1, key="shared"))
    assert len(result.applied) == 1 and c.count("c") == 2


# -- ranges and limits ----------------------------------------------------------------------------

def test_result_outside_signed_64_bits_is_422_and_changes_nothing():
    c = make_counter()
    remote(c, ev(1, INT64_MAX - 1))
    local(c, delta=1)
    assert c.count("c") == INT64_MAX
    with pytest.raises(Unprocessable):
        local(c, delta=1)
    assert c.count("c") == INT64_MAX and c.digest() == {"peer": 1, LOCAL: 1}
    local(c, name="neg", delta=-1)
    remote(c, ev(2, INT64_MIN + 1, name="neg"))
    assert c.count("neg") == INT64_MIN
    with pytest.raises(Unprocessable):
        local(c, name="neg", delta=-1)
    assert local(c, name="neg", delta=5).count == INT64_MIN + 5


def test_too_many_counters_is_422_for_a_new_name_only():
    c = make_counter(max_counters=2)
    local(c, name="a")
    local(c, name="b")
    with pytest.raises(Unprocessable):
        local(c, name="c")
    assert local(c, name="a").count == 2
    assert c.counters() == {"a": 2, "b": 1}


def test_counter_limit_counts_names_staged_in_the_same_transaction():
    c = make_counter(max_counters=2)
    txn = c.begin()
    txn.local("a", 1, None, 0.0)
    txn.local("b", 1, None, 0.0)
    with pytest.raises(Unprocessable):
        txn.local("c", 1, None, 0.0)
    c.install(txn)
    assert c.counters() == {"a": 1, "b": 1}


# -- memory does not grow with events -------------------------------------------------------------

def test_100000_in_order_events_leave_no_per_event_state():
    c = make_counter()
    origins = ["o1", "o2", "o3", "o4"]
    seqs = dict.fromkeys(origins, 0)
    keyed = 0
    for batch in range(100):  # 100 replicate batches of 1000 events
        events = []
        for i in range(1000):
            origin = origins[i % 4]
            seqs[origin] += 1
            key = f"key-{batch}-{i}" if i % 100 == 0 else None
            keyed += key is not None
            events.append(Event(origin, seqs[origin], f"n{i % 3}", 1, key))
        result = remote(c, *events)
        assert len(result.applied) == 1000
    assert sum(seqs.values()) == 100_000
    assert c.held_total() == 0
    assert c.origin_count() == 4
    assert c.digest() == seqs
    assert c.key_count() == keyed == 1000
    assert sum(c.counters().values()) == 100_000
    snapshot = c.snapshot(origins)
    assert all(len(s["counters"]) == 3 for s in snapshot.values())


def test_load_rebuilds_totals_from_prefixes_and_held_events():
    source = make_counter()
    remote(source, ev(1, 1), ev(2, 2), ev(4, 4, name="d"))
    local(source, delta=10, key="k")
    origins = {o: OriginState(s["watermark"], dict(s["counters"]))
               for o, s in source.snapshot(["peer", LOCAL]).items()}
    origins["peer"].held[4] = ("d", 4, None)
    copy = make_counter()
    copy.load(origins, {})
    assert copy.counters() == source.counters()
    assert copy.held_total() == 1


# -- the idempotency key bound --------------------------------------------------------------------

class TouchCountingDict(dict):
    """A dict of key records that counts how many records a caller looks at."""

    def __init__(self, *args):
        super().__init__(*args)
        self.touched = 0

    def get(self, key, default=None):
        self.touched += 1
        return super().get(key, default)

    def __getitem__(self, key):
        self.touched += 1
        return super().__getitem__(key)

    def items(self):
        for pair in super().items():
            self.touched += 1
            yield pair

    def values(self):
        for value in super().values():
            self.touched += 1
            yield value


def test_past_max_keys_the_oldest_keys_are_evicted_and_requests_still_succeed():
    clock = FakeClock()
    c = make_counter(key_ttl=3600.0, max_keys=3)
    for i in range(5):
        assert not local(c, key=f"k{i}", now=clock.time()).replayed
        clock.advance(1)
    assert c.key_count() == 3
    assert [k for k in ("k0", "k1") if c.key(k, clock.time())] == []
    assert local(c, key="k4", now=clock.time()).replayed  # the newest are kept
    assert c.keys_evicted == 2
    assert c.count("c") == 5


def test_replicated_events_past_max_keys_are_applied_and_evict_old_keys():
    c = make_counter(key_ttl=3600.0, max_keys=2)
    result = remote(c, ev(1, key="a"), ev(2, key="b"), ev(3, key="c"), now=10.0)
    assert len(result.applied) == 3 and c.count("c") == 3
    assert c.key_count() == 2 and c.key("a", 10.0) is None and c.key("c", 10.0) is not None


def test_eviction_follows_expiry_order_even_when_the_wall_clock_went_back():
    c = make_counter(key_ttl=100.0, max_keys=2)
    local(c, key="late", now=1000.0)
    local(c, key="early", now=500.0)  # the wall clock jumped back: this key expires first
    local(c, key="third", now=501.0)
    assert c.key("early", 502.0) is None
    assert c.key("late", 502.0) is not None and c.key("third", 502.0) is not None


def test_eviction_warns_once_per_interval_not_per_key(caplog):
    c = make_counter(key_ttl=3600.0, max_keys=1)
    with caplog.at_level("WARNING", logger="dcounter.counter"):
        for i in range(50):
            local(c, key=f"k{i}", now=float(i))
    warnings = [r for r in caplog.records if "max-keys" in r.getMessage()]
    assert len(warnings) == 1


def test_key_retention_shows_how_long_keys_are_really_kept():
    clock = FakeClock()
    c = make_counter(key_ttl=3600.0, max_keys=10)
    assert c.key_retention(clock.time()) == 0
    for i in range(20):
        local(c, key=f"k{i}", now=clock.time())
        clock.advance(1)
    assert c.key_retention(clock.time()) == 10  # the oldest kept key was made 10 s ago


def test_expire_keys_touches_only_the_expired_keys():
    keys = TouchCountingDict({f"k{i}": KeyRecord(f"peer:{i}", "c", 1, None, 100.0 + i)
                              for i in range(20_000)})
    c = make_counter()
    c.load({}, keys)
    keys.touched = 0
    assert run(c, lambda txn: txn.expire_keys(103.0)) == 4  # k0..k3 expire at 100..103
    assert keys.touched < 100
    assert c.key_count() == 19_996 and c.key("k4", 103.0) is not None


def test_a_lowered_max_keys_takes_effect_at_the_next_expiry_sweep():
    keys = {f"k{i}": KeyRecord(f"peer:{i}", "c", 1, None, 100.0 + i) for i in range(10)}
    c = make_counter(max_keys=4)
    c.load({}, keys)
    assert run(c, lambda txn: txn.expire_keys(0.0)) == 0
    assert c.key_count() == 4 and c.key("k9", 0.0) is not None and c.key("k5", 0.0) is None


# -- retired origins ------------------------------------------------------------------------------

WEEK = 604_800.0


def sweep(counter, clock, peers=(), live=()):
    return run(counter, lambda txn: txn.retire_origins(clock.time(), list(peers), set(live)))


def test_an_idle_origin_every_peer_showed_unchanged_is_folded_into_the_base():
    clock = FakeClock()
    c = make_counter(origin_retire_after=WEEK)
    remote(c, ev(1, 5, origin="old"), ev(2, 2, origin="old", name="d"))
    local(c, delta=1)
    c.note_digest("p1", {"old": 2, LOCAL: 1})
    assert sweep(c, clock, ["p1"]) == []  # first sight: its activity is stamped
    clock.advance(WEEK - 1)
    assert sweep(c, clock, ["p1"]) == []
    clock.advance(1)
    assert sweep(c, clock, ["p1"]) == ["old"]
    assert c.counters() == {"c": 6, "d": 2}
    assert c.digest() == {LOCAL: 1, RETIRED_ENTRY: 1}
    assert c.origin_count() == 1 and c.retired_count() == 1


def test_an_origin_is_kept_until_every_listed_peer_showed_our_watermark():
    clock = FakeClock()
    c = make_counter(origin_retire_after=10.0)
    remote(c, ev(1, origin="old"), ev(2, origin="old"))
    sweep(c, clock, ["p1", "p2"])
    clock.advance(11)
    c.note_digest("p1", {"old": 2})
    assert sweep(c, clock, ["p1", "p2"]) == []  # p2 showed nothing yet
    c.note_digest("p2", {"old": 1})
    assert sweep(c, clock, ["p1", "p2"]) == []  # p2 is behind
    c.note_digest("p2", {"old": 2})
    assert sweep(c, clock, ["p1", "p2"]) == ["old"]


def test_a_peer_that_retired_the_origin_first_still_counts_as_having_shown_it():
    clock = FakeClock()
    c = make_counter(origin_retire_after=10.0)
    remote(c, ev(1, origin="old"))
    sweep(c, clock, ["p1"])
    c.note_digest("p1", {"old": 1})
    c.note_digest("p1", {RETIRED_ENTRY: 1})  # p1 retired it: its digest no longer shows it
    clock.advance(11)
    assert sweep(c, clock, ["p1"]) == ["old"]


def test_a_moving_origin_the_local_origin_and_a_listed_peers_origin_are_never_retired():
    clock = FakeClock()
    c = make_counter(origin_retire_after=10.0)
    local(c)
    remote(c, ev(1, origin="busy"), ev(1, origin="quiet"))
    sweep(c, clock)
    for _ in range(5):
        clock.advance(4)
        remote(c, ev(c.watermark("busy") + 1, origin="busy"))
        assert sweep(c, clock, live={"quiet"}) == []
    assert sorted(c.digest()) == ["busy", LOCAL, "quiet"]
    clock.advance(100)  # busy stopped; the quiet one's node is still listed
    assert sweep(c, clock, live={"quiet"}) == ["busy"]
    clock.advance(11)  # the quiet node is no longer listed
    assert sweep(c, clock) == ["quiet"]
    assert c.digest() == {LOCAL: 1, RETIRED_ENTRY: 2}


def test_an_origin_with_held_events_is_not_retired():
    clock = FakeClock()
    c = make_counter(origin_retire_after=10.0)
    remote(c, ev(1, origin="gap"), ev(3, origin="gap"))
    sweep(c, clock)
    clock.advance(11)
    assert sweep(c, clock) == []


def test_events_of_a_retired_origin_are_refused_without_failing_the_others(caplog):
    clock = FakeClock()
    c = make_counter(origin_retire_after=10.0)
    remote(c, ev(1, origin="old"))
    sweep(c, clock)
    clock.advance(11)
    assert sweep(c, clock) == ["old"]
    with caplog.at_level("WARNING", logger="dcounter"):
        result = remote(c, ev(2, origin="old"), ev(1, origin="new"), ev(3, origin="old"),
                        now=clock.time())
        remote(c, ev(4, origin="old"), now=clock.time())
    assert [e.id for e in result.applied] == ["new:1"]
    assert result.retired == 2 and result.duplicates == 2
    assert c.count("c") == 2 and c.retired_refused == 3
    assert len([r for r in caplog.records if "retired origins" in r.getMessage()]) == 1
    assert not adopt(c, "old", 9, {"c": 9})  # a prefix pulled before it retired
    assert c.count("c") == 2 and c.behind({"old": 9}) == []


def test_an_event_posing_as_the_retired_set_entry_is_refused():
    c = make_counter()
    assert remote(c, ev(1, origin=RETIRED_ENTRY)).retired == 1
    assert c.counters() == {} and c.digest() == {}


def test_retirement_past_the_old_digest_limit_keeps_the_digest_decodable():
    clock = FakeClock()
    c = make_counter(origin_retire_after=WEEK)
    many = MAX_ORIGINS_PER_PULL + 50
    for start in range(0, many, 1000):
        remote(c, *[ev(1, origin=f"o{i}") for i in range(start, min(start + 1000, many))])
    local(c)
    with pytest.raises(Exception):
        decode_digest(c.digest())  # what split the cluster: every heartbeat refused
    sweep(c, clock, ["p1"])
    c.note_digest("p1", c.digest())
    clock.advance(WEEK)
    assert len(sweep(c, clock, ["p1"])) == many
    assert decode_digest(c.digest()) == {LOCAL: 1, RETIRED_ENTRY: many}
    assert c.count("c") == many + 1


def retired_node(clock, origins, retire_after=10.0, **kwargs):
    """A counter that saw one event of each origin and retired them all."""
    c = make_counter(origin_retire_after=retire_after, **kwargs)
    remote(c, *[ev(1, 1, origin=o) for o in origins])
    sweep(c, clock)
    clock.advance(retire_after)
    assert sorted(sweep(c, clock)) == sorted(origins)
    return c


def pull(source, target, origins):
    snapshot = source.snapshot(origins)
    return run(target, lambda txn: sum(txn.adopt(o, s["watermark"], s["counters"],
                                                 s.get("retired"))
                                       for o, s in snapshot.items()))


def test_a_late_joiner_pulls_the_base_and_counts_the_retired_origins():
    clock = FakeClock()
    old = retired_node(clock, ["a", "b"])
    joiner = make_counter()
    remote(joiner, ev(1, 1, origin="a"))  # it knew one of them live
    assert joiner.behind(old.digest()) == [RETIRED_ENTRY]
    assert pull(old, joiner, [RETIRED_ENTRY]) == 1
    assert joiner.counters() == old.counters() == {"c": 2}
    assert joiner.digest() == {RETIRED_ENTRY: 2} and joiner.origin_count() == 0
    assert remote(joiner, ev(2, origin="a")).retired == 1
    assert joiner.behind(old.digest()) == []


def test_a_base_is_not_adopted_when_it_would_lose_events_or_retired_origins():
    clock = FakeClock()
    old = retired_node(clock, ["a"])
    ahead = make_counter()
    remote(ahead, ev(1, origin="a"), ev(2, origin="a"))  # an event the base lacks
    assert pull(old, ahead, [RETIRED_ENTRY]) == 0
    assert ahead.count("c") == 2 and ahead.retired_count() == 0
    assert ahead.behind(old.digest()) == []  # not pulled again and again
    other = retired_node(FakeClock(), ["z"])
    remote(other, ev(1, origin="a"), ev(1, origin="b"))
    assert pull(retired_node(FakeClock(), ["a", "b"]), other, [RETIRED_ENTRY]) == 0
    assert other.count("c") == 3


def test_a_malformed_retired_set_from_a_peer_changes_nothing():
    c = make_counter()
    for bad in (None, {"a": 1}, {"a b": 1, "c": 2}, {"a": 0, "b": 1}, {"a": True, "b": 1}):
        assert not run(c, lambda txn: txn.adopt(RETIRED_ENTRY, 2, {"c": 5}, bad))
    assert c.counters() == {} and c.retired_count() == 0


def test_nodes_that_retired_different_origins_show_the_same_value_and_converge():
    clock = FakeClock()
    a, b = make_counter(origin_retire_after=10.0), make_counter(origin_retire_after=10.0)
    for node in (a, b):
        remote(node, ev(1, 3, origin="x"), ev(1, 4, origin="y"))
        sweep(node, clock, ["peer"])
    a.note_digest("peer", {"x": 1, "y": 1})
    b.note_digest("peer", {"x": 1, "y": 1})
    clock.advance(11)
    assert run(a, lambda txn: txn.retire_origins(clock.time(), ["peer"], {"y"})) == ["x"]
    assert run(b, lambda txn: txn.retire_origins(clock.time(), ["peer"], {"x"})) == ["y"]
    assert a.counters() == b.counters() == {"c": 7}
    assert a.behind(b.digest()) == [] and b.behind(a.digest()) == []
    clock.advance(11)  # the origins' nodes are gone
    assert sweep(a, clock, ["peer"]) == ["y"] and sweep(b, clock, ["peer"]) == ["x"]
    assert a.digest() == b.digest() == {RETIRED_ENTRY: 2}
    assert a.counters() == b.counters() == {"c": 7}


def test_a_base_naming_our_own_origin_gives_us_a_fresh_one():
    clock = FakeClock()
    old = retired_node(clock, [LOCAL])
    c = make_counter()
    local(c)
    assert pull(old, c, [RETIRED_ENTRY]) == 1
    assert c.local_origin != LOCAL and c.count("c") == 1
    assert local(c).event_id == f"{c.local_origin}:1"


def test_a_node_whose_origin_its_peers_retired_takes_a_fresh_one_even_if_it_cannot_adopt():
    clock = FakeClock()
    old = retired_node(clock, [LOCAL])
    c = make_counter()
    local(c)
    local(c)  # an increment made while cut off: the peers' base lacks it
    assert pull(old, c, [RETIRED_ENTRY]) == 0
    assert c.local_origin != LOCAL and c.count("c") == 2
    assert local(c).event_id == f"{c.local_origin}:1"


def test_a_group_with_more_new_keys_than_max_keys_keeps_the_newest():
    c = make_counter(key_ttl=3600.0, max_keys=2)
    local(c, key="old", now=0.0)
    run(c, lambda txn: [txn.local("c", 1, f"k{i}", 1.0 + i) for i in range(4)])
    assert c.key_count() == 2 and c.count("c") == 5
    assert c.key("k3", 5.0) is not None and c.key("k2", 5.0) is not None


# -- held events travel with anti-entropy ---------------------------------------------------------

def test_a_snapshot_asked_for_held_events_carries_them_lowest_first_within_the_bound():
    c = make_counter()
    remote(c, Event("peer", 1, "c", 1), Event("peer", 4, "c", 2, "k4"), Event("peer", 7, "d", 3),
           Event("only", 3, "c", 5))
    assert c.snapshot(["peer", "only"]) == {"peer": {"watermark": 1, "counters": {"c": 1}}}
    assert c.snapshot(["peer", "only"], held=2) == {
        "peer": {"watermark": 1, "counters": {"c": 1},
                 "held": [{"id": "peer:4", "counter": "c", "delta": 2, "key": "k4"},
                          {"id": "peer:7", "counter": "d", "delta": 3}]},
        "only": {"watermark": 0, "counters": {}, "held": [{"id": "only:3", "counter": "c",
                                                           "delta": 5}]}}
    assert c.snapshot(["peer"], held=1)["peer"]["held"] == [
        {"id": "peer:4", "counter": "c", "delta": 2, "key": "k4"}]


def test_a_held_reset_event_travels_in_a_snapshot_as_the_reset_it_is():
    """A reset event held above a gap is carried whole: a puller decodes it and holds it too."""
    c = make_counter()
    held = Event("peer", 3, None, 0, "k3", None, Reset("c", (("peer", 1, 5),)))
    remote(c, Event("peer", 1, "c", 5), held)
    snapshot = decode_snapshot(c.snapshot(["peer"], held=5), max_held=5)
    assert snapshot["peer"]["held"] == [held]
    puller = make_counter()
    assert run(puller, lambda txn: txn.adopt_held("peer", snapshot["peer"]["held"], 0.0)) == 1
    assert puller.held_summaries() == c.held_summaries()


def test_held_summaries_are_equal_exactly_when_the_held_events_are():
    a, b = make_counter(), make_counter()
    remote(a, Event("o", 2, "c", 1), Event("o", 5, "c", 1))
    remote(b, Event("o", 3, "c", 1), Event("o", 5, "c", 1))
    count, top, _ = a.held_summaries()["o"]
    assert (count, top) == (2, 5)
    assert a.held_summaries() != b.held_summaries()  # same count and max, other events
    remote(a, Event("o", 3, "c", 1))
    remote(b, Event("o", 2, "c", 1))
    assert a.held_summaries() == b.held_summaries()
    assert make_counter().held_summaries() == {}


def test_adopting_held_events_merges_them_once_and_folds_what_became_contiguous():
    c = make_counter(gap_cap=10)
    remote(c, Event("o", 1, "c", 1), Event("o", 3, "c", 10))
    events = [Event("o", 2, "c", 100), Event("o", 3, "c", 10), Event("o", 5, "d", 7, "k5"),
              Event("o", 30, "c", 1000)]  # 30 is past the gap cap: deferred
    assert run(c, lambda txn: txn.adopt_held("o", events, 0.0)) == 2
    assert c.watermark("o") == 3 and c.held_total() == 1
    assert c.counters() == {"c": 111, "d": 7}
    assert c.key("k5", 0.0).event_id == "o:5"
    assert run(c, lambda txn: txn.adopt_held("o", events, 0.0)) == 0  # applied once
    assert c.counters() == {"c": 111, "d": 7}


def test_adopting_a_prefix_and_held_events_in_one_transaction_rolls_back_whole():
    c = make_counter()
    remote(c, Event("o", 1, "c", 1))
    txn = c.begin()
    sp = txn.savepoint()
    txn.adopt("o", 4, {"c": 4})
    txn.adopt_held("o", [Event("o", 6, "c", 2), Event("o", 5, "c", 1)], 0.0)
    assert txn.watermark("o") == 6 and txn.total("c") == 7
    txn.rollback_to(sp)
    assert txn.watermark("o") == 1 and txn.total("c") == 1
    c.install(txn)
    assert c.counters() == {"c": 1} and c.held_total() == 0


def test_held_events_of_a_retired_origin_are_skipped_and_ours_above_our_watermark_reorigin():
    c = make_counter()
    local(c)
    assert run(c, lambda txn: txn.adopt_held(LOCAL, [Event(LOCAL, 3, "c", 5)], 0.0)) == 1
    assert c.local_origin != LOCAL and c.counters() == {"c": 6}
    txn = c.begin()
    txn.retired_add["gone"] = 4
    assert txn.adopt_held("gone", [Event("gone", 6, "c", 1)], 0.0) == 0
    c.abort(txn)


def test_a_refused_base_counts_as_reached_until_either_retired_set_grows():
    clock = FakeClock()
    old = retired_node(clock, ["a"])
    ahead = make_counter(origin_retire_after=10.0)
    remote(ahead, ev(1, origin="a"), ev(2, origin="a"))  # an event the base lacks
    assert ahead.digest_reached() == ahead.digest() == {"a": 2}
    assert pull(old, ahead, [RETIRED_ENTRY]) == 0
    # Anti-entropy compares peers' digests with this one: pulling that base again is futile.
    assert ahead.digest_reached() == {"a": 2, RETIRED_ENTRY: 1}
    assert ahead.digest() == {"a": 2}  # what peers are told is unchanged
    remote(ahead, ev(1, origin="z"))
    sweep(ahead, clock)
    clock.advance(10.0)
    assert sweep(ahead, clock) == ["a", "z"]  # its own set grew: a base may be adopted again
    assert ahead.digest_reached() == ahead.digest() == {RETIRED_ENTRY: 2}
