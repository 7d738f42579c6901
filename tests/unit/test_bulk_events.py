"""Bulk events in the pure core: one event, one sequence number, every item or none; held,
folded, adopted and replayed like single events."""

import pytest

from dcounter.counter import MAX_ITEMS, Event
from dcounter.errors import Unprocessable
from dcounter.validation import INT64_MAX
from tests.unit.test_counter import LOCAL, make_counter, run


def bulk(counter, items, key=None, now=0.0):
    return run(counter, lambda txn: txn.local_many(tuple(items), key, now))


def remote(counter, *events, now=0.0):
    return run(counter, lambda txn: txn.remote(list(events), now))


def bev(seq, items, origin="peer", key=None) -> Event:
    return Event(origin, seq, None, 0, key, tuple(items))


def test_a_bulk_increment_is_one_event_with_its_items_and_the_counts_after_it():
    c = make_counter()
    run(c, lambda txn: txn.local("a", 10, None, 0.0))
    result = bulk(c, [("a", 1), ("b", 2), ("a", 3)])
    assert result.event_id == f"{LOCAL}:2" and not result.replayed
    assert result.results == (("a", 14), ("b", 2), ("a", 14))
    assert result.event == Event(LOCAL, 2, None, 0, None, (("a", 1), ("b", 2), ("a", 3)))
    assert result.payload() == {"event_id": f"{LOCAL}:2", "results": [
        {"counter": "a", "count": 14}, {"counter": "b", "count": 2},
        {"counter": "a", "count": 14}]}
    assert c.counters() == {"a": 14, "b": 2}
    assert c.digest() == {LOCAL: 2}
    assert c.snapshot([LOCAL]) == {LOCAL: {"watermark": 2, "counters": {"a": 14, "b": 2}}}


def test_a_single_item_is_a_plain_event():
    c = make_counter()
    result = bulk(c, [("a", 5)])
    assert result.event == Event(LOCAL, 1, "a", 5)
    assert result.event.to_wire() == {"id": f"{LOCAL}:1", "counter": "a", "delta": 5}


def test_the_wire_form_of_a_bulk_event():
    event = bev(3, [("a", 1), ("b", -2)], key="k")
    assert event.to_wire() == {"id": "peer:3", "items": [["a", 1], ["b", -2]], "key": "k"}
    assert event.parts == (("a", 1), ("b", -2))


@pytest.mark.parametrize("items,index,message", [
    ([("a", 1), ("b", INT64_MAX)], 1, "64-bit"),
    ([("b", 1), ("new1", 1), ("new2", 1)], 2, "too many counters"),
])
def test_a_bad_item_refuses_the_whole_request_naming_it(items, index, message):
    c = make_counter(max_counters=3)
    run(c, lambda txn: txn.local("a", 1, None, 0.0))
    run(c, lambda txn: txn.local("b", 1, None, 0.0))
    with pytest.raises(Unprocessable, match=rf"increments\[{index}\]: .*{message}"):
        bulk(c, items, key="k")
    assert c.counters() == {"a": 1, "b": 1}
    assert c.digest() == {LOCAL: 2}
    assert c.key("k", 0.0) is None
    assert bulk(c, [("a", 1)]).event_id == f"{LOCAL}:3"  # the refusal consumed no seq


def test_a_counter_repeated_in_one_request_is_one_new_counter():
    c = make_counter(max_counters=1)
    assert bulk(c, [("a", 1), ("a", 2)]).results == (("a", 3), ("a", 3))


def test_the_item_bound():
    c = make_counter()
    assert bulk(c, [("a", 1)] * MAX_ITEMS).results[0] == ("a", MAX_ITEMS)
    with pytest.raises(ValueError):
        bulk(c, [("a", 1)] * (MAX_ITEMS + 1))


def test_a_key_covers_the_whole_request_and_replays_with_current_counts():
    c = make_counter()
    first = bulk(c, [("a", 1), ("b", 2)], key="k", now=1.0)
    run(c, lambda txn: txn.local("a", 10, None, 1.0))
    again = bulk(c, [("a", 1), ("b", 2)], key="k", now=2.0)
    assert again.replayed and again.event is None
    assert again.event_id == first.event_id
    assert again.results == (("a", 11), ("b", 2))
    assert c.counters() == {"a": 11, "b": 2}
    for other in ([("a", 1)], [("a", 1), ("b", 3)], [("b", 2), ("a", 1)]):
        with pytest.raises(Unprocessable, match="different request"):
            bulk(c, other, key="k", now=2.0)
    with pytest.raises(Unprocessable, match="bulk request of 2 items"):
        run(c, lambda txn: txn.local("a", 1, "k", 2.0))


def test_a_single_item_request_and_a_plain_increment_share_a_key():
    c = make_counter()
    run(c, lambda txn: txn.local("a", 4, "k", 1.0))
    assert bulk(c, [("a", 4)], key="k", now=2.0).replayed
    assert bulk(c, [("b", 5)], key="j", now=2.0).results == (("b", 5),)
    replay = run(c, lambda txn: txn.local("b", 5, "j", 2.0))
    assert replay.replayed and replay.count == 5


def test_remote_bulk_events_apply_whole_dedup_by_id_and_carry_their_key():
    c = make_counter()
    event = bev(1, [("a", 1), ("b", 2)], key="k")
    assert remote(c, event, event).applied == [event]
    assert remote(c, event).duplicates == 1
    assert c.counters() == {"a": 1, "b": 2}
    # a client's retry at this node finds the key that travelled with the event
    retry = bulk(c, [("a", 1), ("b", 2)], key="k")
    assert retry.replayed and retry.event_id == "peer:1"


def test_held_bulk_events_fold_when_the_gap_closes():
    c = make_counter()
    remote(c, bev(3, [("a", 1), ("b", 1)]), bev(2, [("a", 10), ("c", 5)]))
    assert c.digest() == {} and c.held_total() == 2
    assert c.counters() == {"a": 11, "b": 1, "c": 5}
    assert c.read_view("a") == {"peer": (0, 0, {2: 10, 3: 1})}
    assert c.read_view("c") == {"peer": (0, 0, {2: 5})}
    remote(c, Event("peer", 1, "a", 100))
    assert c.digest() == {"peer": 3} and c.held_total() == 0
    assert c.snapshot(["peer"]) == {"peer": {"watermark": 3,
                                             "counters": {"a": 111, "b": 1, "c": 5}}}
    assert c.counters() == {"a": 111, "b": 1, "c": 5}


def test_adopt_drops_held_bulk_events_the_prefix_contains():
    c = make_counter()
    remote(c, bev(2, [("a", 1), ("b", 1)]), bev(4, [("a", 2), ("b", 2)]))
    assert run(c, lambda txn: txn.adopt("peer", 2, {"a": 7, "b": 1}))
    assert c.digest() == {"peer": 2} and c.held_total() == 1
    assert c.counters() == {"a": 9, "b": 3}
    remote(c, Event("peer", 3, "b", 1))
    assert c.digest() == {"peer": 4}
    assert c.counters() == {"a": 9, "b": 4}


def test_a_refused_bulk_job_rolls_back_inside_a_group():
    c = make_counter()
    txn = c.begin()
    sp = txn.savepoint()
    txn.local_many((("a", 1), ("b", 1)), None, 0.0)
    txn.rollback_to(sp)
    sp = txn.savepoint()
    txn.local("c", 1, None, 0.0)
    c.install(txn)
    assert c.counters() == {"c": 1} and c.digest() == {LOCAL: 1}


def test_load_counts_held_bulk_events():
    from dcounter.counter import OriginState
    c = make_counter()
    c.load({"peer": OriginState(1, {"a": 1}, {3: (None, (("a", 2), ("b", 3)), None)})}, {})
    assert c.counters() == {"a": 3, "b": 3}


# -- batches of bulk events -------------------------------------------------------------------------

def test_a_batch_weighs_a_bulk_event_as_its_items():
    from dcounter.outbox import Outbox
    from dcounter.retry import RetryPolicy, RetrySchedule
    box = Outbox("p:1", RetrySchedule(RetryPolicy(0.1, 10.0)), max_backlog=1000, batch_max=100,
                 batch_linger=0.0)
    big = [bev(seq, [("a", 1)] * 60, origin="o") for seq in (1, 2)]
    huge = bev(3, [("a", 1)] * 150, origin="o")
    box.enqueue(big + [huge, Event("o", 4, "a", 1)], 0.0)
    batches = []
    for now in (1.0, 2.0, 3.0, 4.0):
        batch = box.take_batch(now)
        batches.append([event.seq for event, _ in batch])
        box.sent_ok(batch, now)
    # within batch_max items, and always at least one event even when it alone is heavier
    assert batches == [[1], [2], [3], [4]]


def test_a_held_bulk_event_of_an_origin_retired_in_a_pulled_base_is_not_counted_twice():
    from dcounter.counter import RETIRED_ENTRY
    from tests.fakes import FakeClock
    clock = FakeClock()
    old = make_counter(origin_retire_after=10.0)
    remote(old, Event("a", 1, "c", 1), bev(2, [("c", 2), ("d", 3)], origin="a"))
    run(old, lambda txn: txn.retire_origins(clock.time(), [], set()))
    clock.advance(10.0)
    assert run(old, lambda txn: txn.retire_origins(clock.time(), [], set())) == ["a"]
    joiner = make_counter()
    remote(joiner, bev(2, [("c", 2), ("d", 3)], origin="a"))  # held above a gap
    snapshot = old.snapshot([RETIRED_ENTRY])[RETIRED_ENTRY]
    assert run(joiner, lambda txn: txn.adopt(RETIRED_ENTRY, snapshot["watermark"],
                                             snapshot["counters"], snapshot["retired"]))
    assert joiner.counters() == old.counters() == {"c": 3, "d": 3}
    assert joiner.held_total() == 0


def test_items_given_as_lists_are_the_same_request_for_a_key():
    c = make_counter()
    bulk(c, [["a", 1], ["b", 2]], key="k")
    assert bulk(c, (("a", 1), ("b", 2)), key="k").replayed
