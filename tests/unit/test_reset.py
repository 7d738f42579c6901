"""Resets and deletes on the pure core: covers, add wins, convergence, held and adopted resets,
savepoints, retirement, the store."""

import pytest

from dcounter.clusterread import merge_count
from dcounter.counter import RETIRED_ENTRY, Counter, Event
from dcounter.errors import BadRequest, NotFound, Unprocessable
from dcounter.reset import Reset
from dcounter.wire import decode_covers, decode_event, decode_events
from tests.unit.test_counter import run

ORIGINS = {"A": "orA", "B": "orB", "C": "orC"}


def node(name: str, **kwargs) -> Counter:
    return Counter(ORIGINS[name], **kwargs)


def incr(counter, delta=1, name="c", key=None):
    return run(counter, lambda txn: txn.local(name, delta, key, 0.0)).event


def reset(counter, name="c", delete=False, key=None):
    return run(counter, lambda txn: txn.local_reset(name, delete, key, 0.0))


def deliver(counter, *events):
    return run(counter, lambda txn: txn.remote(list(events), 0.0))


def pull(source: Counter, target: Counter):
    """Anti-entropy as node.py does it: every prefix of the source, then its covers."""
    snapshot = source.snapshot(list(source.digest()))
    covers, deleted = source.covers_wire()
    covers = decode_covers(covers)
    run(target, lambda txn: (
        [txn.adopt(o, s["watermark"], s["counters"], s.get("retired"))
         for o, s in snapshot.items()], txn.adopt_covers(covers, deleted)))


def test_a_reset_zeroes_what_this_node_observed_and_replicates_as_an_event():
    a, b = node("A"), node("B")
    events = [incr(a, 5), incr(a, 2)]
    deliver(b, *events)
    result = reset(a)
    assert result.count == 0 and result.event_id == "orA:3" and not result.replayed
    assert result.event.reset == Reset("c", (("orA", 2, 7),))
    assert a.count("c") == 0 and a.digest() == {"orA": 3}
    deliver(b, result.event)
    assert b.count("c") == 0
    assert deliver(b, result.event).duplicates == 1  # deduplicated like any event
    assert b.count("c") == 0
    incr(a, 4)
    assert a.count("c") == 4


def test_increments_the_reset_did_not_cover_survive_and_nodes_converge():
    a, b = node("A"), node("B")
    a1 = incr(a, 3)
    b1 = incr(b, 2)  # concurrent with the reset at A: A has not seen it
    r = reset(a).event
    assert a.count("c") == 0
    deliver(a, b1)
    deliver(b, a1, r)
    assert a.count("c") == b.count("c") == 2  # add wins


def test_concurrent_resets_merge_by_the_furthest_watermark_in_any_order():
    a, b, c = node("A"), node("B"), node("C")
    a1, b1 = incr(a, 3), incr(b, 2)
    deliver(a, b1)
    deliver(b, a1)
    a2 = incr(a, 4)
    ra = reset(a).event   # covers orA up to 2 (7), orB up to 1 (2)
    rb = reset(b).event   # covers orA up to 1 (3), orB up to 1 (2); concurrent
    b2 = incr(b, 10)      # after B's reset: survives both
    deliver(a, rb, b2)
    deliver(b, ra, a2)    # the reset before the event it covers: held, below zero for a while
    deliver(c, ra, rb, b2)
    assert c.count("c") == -7 + 10 - 2
    deliver(c, a1, b1, a2)
    assert a.count("c") == b.count("c") == c.count("c") == 10


def test_a_held_reset_applies_at_once_and_the_watermark_passes_it_later():
    a, b = node("A"), node("B")
    a1 = incr(a, 3)
    r = reset(a).event
    deliver(b, r)  # seq 2 of orA, held: orA:1 has not arrived
    assert b.held_total() == 1 and b.count("c") == -3
    deliver(b, a1)
    assert b.held_total() == 0 and b.digest() == {"orA": 2} and b.count("c") == 0


def test_events_held_above_the_prefix_are_not_covered_by_a_reset_here():
    a, b = node("A"), node("B")
    a1, a2, a3 = incr(a, 1), incr(a, 2), incr(a, 4)
    deliver(b, a1, a3)  # orA:3 held above the watermark 1
    r = reset(b).event
    assert r.reset.covers == (("orA", 1, 1),)
    assert b.count("c") == 4
    deliver(b, a2)
    deliver(a, r)
    assert a.count("c") == b.count("c") == 6


def test_a_node_that_adopts_a_prefix_learns_the_covers_of_its_resets():
    a, b = node("A"), node("B")
    incr(a, 5)
    reset(a)
    incr(a, 1)
    pull(a, b)  # never received a single event: the prefix holds the reset
    assert b.digest() == {"orA": 3} and b.count("c") == 1
    pull(a, b)  # again: nothing moves
    assert b.count("c") == 1


def test_adopting_a_prefix_keeps_the_cover_of_a_held_reset_it_contains():
    a, b = node("A"), node("B")
    incr(a, 5)
    r = reset(a).event
    deliver(b, r)  # held
    pull(a, b)     # the prefix now contains it: the held copy is dropped, its cover stays
    assert b.held_total() == 0 and b.count("c") == 0


def test_a_savepoint_rollback_undoes_a_reset():
    a = node("A")
    incr(a, 5)
    txn = a.begin()
    sp = txn.savepoint()
    txn.local_reset("c", True, "k", 0.0)
    txn.rollback_to(sp)
    assert txn.empty() and txn.outbound == []
    a.install(txn)
    assert a.count("c") == 5 and a.counters() == {"c": 5} and a.covers_wire() == ({}, [])
    assert a.key("k", 0.0) is None and a.digest() == {"orA": 1}


def test_a_keyed_reset_is_replayed_and_a_key_of_another_request_is_refused():
    a = node("A")
    incr(a, 5)
    first = reset(a, key="k")
    incr(a, 2)
    again = reset(a, key="k")
    assert again.replayed and again.event_id == first.event_id and again.count == 0
    assert a.count("c") == 2
    with pytest.raises(Unprocessable, match="a reset of counter 'c'"):
        reset(a, delete=True, key="k")
    with pytest.raises(Unprocessable, match="a reset"):
        incr(a, 1, key="k")


def test_a_reset_of_a_name_this_node_does_not_know_is_refused():
    a = node("A")
    with pytest.raises(NotFound, match="no counter 'nope'"):
        reset(a, "nope")
    assert a.digest() == {} and a.counters() == {}


def test_a_delete_hides_the_name_and_an_uncovered_increment_brings_it_back():
    a, b = node("A", max_counters=2), node("B")
    a1 = incr(a, 5, "x")
    incr(a, 1, "y")
    d = reset(a, "x", delete=True)
    assert d.count == 0 and a.counters() == {"y": 1} and a.counter_names() == 1
    incr(a, 1, "z")  # the hidden name does not count toward max_counters
    with pytest.raises(Unprocessable, match="too many counters"):
        incr(a, 1, "w")
    b1 = incr(b, 3, "x")  # not covered by the delete
    deliver(b, a1, d.event)
    assert b.counters() == {"x": 3}
    deliver(a, b1)  # replicated events are never refused for max_counters
    assert a.counters() == {"x": 3, "y": 1, "z": 1}


def test_deletes_past_max_deleted_are_refused_but_replicated_ones_apply():
    a, b = node("A", max_deleted=1), node("B", max_deleted=1)
    incr(a, 1, "x")
    incr(a, 1, "y")
    reset(a, "x", delete=True)
    reset(a, "x", delete=True)  # the same tombstone again: allowed
    with pytest.raises(Unprocessable, match="too many deleted counters"):
        reset(a, "y", delete=True)
    assert a.counters() == {"y": 1} and a.deleted_count() == 1
    by, bz = incr(b, 1, "y"), incr(b, 1, "z")
    deliver(a, by, bz)
    deliver(b, run(a, lambda txn: txn.local_reset("z", False, None, 0.0)).event)
    db = reset(b, "y", delete=True).event
    deliver(a, db)  # past max_deleted here, but replicated: applied
    assert a.deleted_count() == 2


def test_retiring_an_origin_folds_its_cover_into_the_base():
    a = node("A", origin_retire_after=10.0)
    b = node("B")
    deliver(a, *[incr(b, 4), incr(b, 3)])
    r = reset(a).event
    deliver(a, incr(b, 1))
    assert a.count("c") == 1
    run(a, lambda txn: txn.retire_origins(0.0, [], set()))
    assert run(a, lambda txn: txn.retire_origins(100.0, [], set())) == ["orB"]
    assert a.count("c") == 1 and a.snapshot([RETIRED_ENTRY])[RETIRED_ENTRY]["counters"] == {"c": 1}
    assert "orB" not in a.cover_view("c")
    # A cover of the retired origin that arrives late is ignored: the base has what it covered.
    deliver(a, Event("orC", 1, None, 0, None, None, Reset("c", (("orB", 3, 8),))))
    assert a.count("c") == 1
    assert r.reset.covers == (("orB", 2, 7),)


def test_a_reset_covers_the_base_of_retired_origins():
    a, b = node("A", origin_retire_after=10.0), node("B")
    deliver(a, incr(b, 4))
    run(a, lambda txn: txn.retire_origins(0.0, [], set()))
    run(a, lambda txn: txn.retire_origins(100.0, [], set()))
    incr(a, 1)
    r = reset(a).event
    assert r.reset.covers == (("_retired", 1, 4), ("orA", 1, 1))
    assert a.count("c") == 0


def test_reset_events_cross_the_wire_unchanged_and_bad_ones_are_refused():
    a = node("A")
    incr(a, 5)
    event = reset(a, delete=True, key="k").event
    assert decode_event(event.to_wire()) == event
    assert decode_events([event.to_wire()]) == [event]
    bad = [{**event.to_wire(), "covers": {"orA": [0, 1]}},
           {**event.to_wire(), "covers": {"orA": [1, 2 ** 60]}},
           {**event.to_wire(), "covers": {"or A": [1, 1]}},
           {**event.to_wire(), "delete": "yes"},
           {**event.to_wire(), "reset": ""},
           {**event.to_wire(), "extra": 1}]
    for value in bad:
        with pytest.raises(BadRequest):
            decode_event(value)


def test_a_read_of_the_whole_cluster_subtracts_the_furthest_cover():
    local = {"o1": (2, 7, {}), "o2": (1, 2, {3: 5})}
    assert merge_count(local, [{"o1": (3, 8)}], [{"o1": (1, 3)}, {"o1": (2, 7), "o2": (1, 2)}]) \
        == 8 - 7 + 2 - 2 + 5


def test_resets_deletes_and_keys_survive_a_restart(tmp_path):
    from tests.unit.test_store import Opened
    first = Opened(tmp_path / "d")
    origin = first.origin
    first.local("x", 5)
    first.local("y", 2)
    first.writer.submit(lambda txn: txn.local_reset("x", True, "k", 0.0))
    held = Event("peer", 2, None, 0, None, None, Reset("y", (("peer", 1, 4), (origin, 2, 2))))
    first.remote(held)
    before = first.counter.counters(), first.counter.covers_wire(), first.counter.digest()
    first.close()
    second = Opened(tmp_path / "d")
    assert (second.counter.counters(), second.counter.covers_wire(),
            second.counter.digest()) == before
    assert second.counter.counters() == {"y": -4}
    replay = second.writer.submit(lambda txn: txn.local_reset("x", True, "k", 1.0))
    assert replay.replayed
    second.remote(Event("peer", 1, "y", 4))
    assert second.counter.counters() == {"y": 0} and second.counter.held_total() == 0
    second.close()


def test_an_early_version_2_database_gains_the_reset_tables_and_columns(tmp_path):
    import sqlite3

    from dcounter.store import DB_NAME
    from tests.unit.test_store import Opened
    first = Opened(tmp_path / "d")
    first.local("x", 5)
    first.close()
    db = sqlite3.connect(str(tmp_path / "d" / DB_NAME), isolation_level=None)
    db.execute("DROP TABLE covers")
    db.execute("DROP TABLE deleted")
    db.execute("ALTER TABLE held DROP COLUMN reset")
    db.execute("ALTER TABLE keys DROP COLUMN kind")
    db.close()
    second = Opened(tmp_path / "d")
    assert second.counter.counters() == {"x": 5}
    second.writer.submit(lambda txn: txn.local_reset("x", True, "k", 0.0))
    second.close()
    third = Opened(tmp_path / "d")
    assert third.counter.counters() == {} and third.counter.count("x") == 0
    assert third.counter.key("k", 0.0).kind == "delete"
    third.close()


def test_a_reset_weighs_its_covers_in_a_replicate_batch():
    from collections import deque

    from dcounter.outbox import take_weighted
    big = Event("o", 1, None, 0, None, None,
                Reset("c", tuple((f"o{i}", 1, 1) for i in range(5))))
    backlog = deque([(Event("o", 0, "c", 1), None), (big, None), (Event("o", 2, "c", 1), None)])
    assert [queued[0] for queued in take_weighted(backlog, 10, 4)] == [Event("o", 0, "c", 1)]
    assert [queued[0] for queued in take_weighted(backlog, 10, 4)] == [big]


def test_max_deleted_must_be_a_positive_integer():
    from dcounter.config import Config
    assert Config(max_deleted=3).max_deleted == 3
    for bad in (0, -1, True, 1.5):
        with pytest.raises(ValueError, match="--max-deleted"):
            Config(max_deleted=bad)


def test_covers_of_the_base_at_the_same_count_break_ties_the_same_way_everywhere():
    # Two nodes that each retired one origin, not the same one, reset concurrently: their covers
    # of the base have the same count and different totals.
    a, b = node("A"), node("B")
    for counter in (a, b):
        incr(counter, 1)
    ra = Event("orA", 2, None, 0, None, None, Reset("c", ((RETIRED_ENTRY, 1, 4),)))
    rb = Event("orB", 2, None, 0, None, None, Reset("c", ((RETIRED_ENTRY, 1, 9),)))
    deliver(a, ra, rb)
    deliver(b, rb, ra)
    assert a.cover_view("c")[RETIRED_ENTRY] == b.cover_view("c")[RETIRED_ENTRY] == (1, 9)
