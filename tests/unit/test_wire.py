"""The decoders of messages between nodes, at and just past their bounds."""

import random

import pytest

from dcounter.counter import MAX_ITEMS, Counter, Event
from dcounter.retirement import RETIRED_ENTRY
from dcounter.errors import BadRequest
from dcounter.validation import INT64_MAX, MAX_DELTA
from dcounter.wire import (MAX_BASE_TOTAL, MAX_ORIGINS_PER_PULL, MAX_PEER_LIST, MAX_SEQ, decode_digest,
                           decode_event, decode_events, decode_held_summaries, decode_peer_list,
                           decode_runs, decode_snapshot, encode_runs)


# -- digests --------------------------------------------------------------------------------------

@pytest.mark.parametrize("digest", [{}, {"o": 0}, {"o": 1}, {"o": INT64_MAX},
                                    {f"o{i}": i for i in range(MAX_ORIGINS_PER_PULL)}])
def test_digests_within_bounds(digest):
    assert decode_digest(digest) == digest


@pytest.mark.parametrize("digest", [
    [], "o", {"o": -1}, {"o": INT64_MAX + 1}, {"o": 2**100}, {"o": 1.0}, {"o": True},
    {"o": None}, {"o": "1"}, {"bad origin": 1},
    {f"o{i}": 1 for i in range(MAX_ORIGINS_PER_PULL + 1)},
])
def test_digests_out_of_bounds(digest):
    with pytest.raises(BadRequest):
        decode_digest(digest)


# -- peer lists -----------------------------------------------------------------------------------

def test_peer_lists():
    peers = [f"n{i}:7000" for i in range(MAX_PEER_LIST)]
    assert decode_peer_list(peers) == peers
    for bad in (peers + ["n:7001"], "n1:7000", ["n1"], [1], None):
        with pytest.raises(BadRequest):
            decode_peer_list(bad)


# -- events ---------------------------------------------------------------------------------------

@pytest.mark.parametrize("wire,event", [
    ({"id": "o:1", "counter": "c", "delta": 1}, Event("o", 1, "c", 1)),
    ({"id": "o:" + "9" * 18, "counter": "c", "delta": -MAX_DELTA, "key": "k"},
     Event("o", 10**18 - 1, "c", -MAX_DELTA, "k")),
    ({"id": "o:7", "counter": "c", "delta": MAX_DELTA}, Event("o", 7, "c", MAX_DELTA)),
])
def test_events_within_bounds(wire, event):
    assert decode_event(wire) == event
    assert decode_event(event.to_wire()) == event


@pytest.mark.parametrize("wire", [
    {"id": "o:0", "counter": "c", "delta": 1},
    {"id": f"o:{INT64_MAX + 1}", "counter": "c", "delta": 1},
    {"id": "o:-1", "counter": "c", "delta": 1},
    {"id": "o:1", "counter": "c", "delta": MAX_DELTA + 1},
    {"id": "o:1", "counter": "c", "delta": -MAX_DELTA - 1},
    {"id": "o:1", "counter": "c", "delta": 0},
    {"id": "o:1", "counter": "c", "delta": 1.0},
    {"id": "o:1", "counter": "c", "delta": 1, "key": ""},
    {"id": "o:1", "counter": "c", "delta": 1, "other": 1},
    {"id": "o:1", "counter": "c"},
    ["o:1", "c", 1],
])
def test_events_out_of_bounds(wire):
    with pytest.raises(BadRequest):
        decode_event(wire)


# Pieces of events, most of them valid, some just past a bound, some of another type.
_ORIGINS = ["o", "a1b2c3d4e5f60718", "A_-z", "o" * 64, "o" * 65, "", "o:p", "o p", "ö", "o\n",
            None, 1]
_SEQS = ["1", "7", "10", str(MAX_SEQ), str(MAX_SEQ + 1), "9" * 19, "9" * 20, "0", "01", "-1",
         "+1", " 1", "1 ", "١", "1.0", "", "1e3"]
_COUNTERS = ["c", "bench", "a.b:c-d_e", "c" * 128, "c" * 129, "", "c d", "ç", "c\n", None, 1,
             ["c"]]
_DELTAS = [1, -1, 2, MAX_DELTA, -MAX_DELTA, MAX_DELTA + 1, -MAX_DELTA - 1, 0, 1.0, True, False,
           "1", None, 2**70]
_KEYS = ["k", "a key", " k", "k ", "k" * 255, "k" * 256, "", "ké", None, 1]


def _pick(rng: random.Random, pieces: list, valid: int):
    """Mostly one of the first `valid` pieces (valid ones), else any."""
    return rng.choice(pieces[:valid] if rng.random() < 0.85 else pieces)


def _random_event(rng: random.Random):
    if rng.random() < 0.03:
        return rng.choice([None, [], "o:1", 1, ["o:1", "c", 1]])
    origin, seq = _pick(rng, _ORIGINS, 4), _pick(rng, _SEQS, 4)
    ident = f"{origin}:{seq}" if isinstance(origin, str) else origin
    if rng.random() < 0.05:
        ident = rng.choice(["o1", "o::1", ":1", "o:1:2", 1, None])
    event = {"id": ident, "counter": _pick(rng, _COUNTERS, 4), "delta": _pick(rng, _DELTAS, 5)}
    if rng.random() < 0.2:
        event["key"] = _pick(rng, _KEYS, 5)
    if rng.random() < 0.05:
        del event[rng.choice(list(event))]
    if rng.random() < 0.05:
        event[rng.choice(["other", "ID", "keys"])] = 1
    return event


def _outcome(decode, value):
    try:
        return decode(value)
    except BadRequest as exc:
        return ("refused", exc.message)


@pytest.mark.parametrize("seed", range(20))
def test_batch_decoder_agrees_with_the_event_decoder(seed):
    """The replicate route's fast decoder accepts exactly what `decode_event` accepts, decodes
    it to the same events, and refuses the rest with the same message."""
    rng = random.Random(seed)
    for _ in range(200):
        batch = [_random_event(rng) for _ in range(rng.randint(0, 8))]
        if rng.random() < 0.5:  # the common case: a whole batch of valid events
            batch = [e for e in batch if not isinstance(_outcome(decode_event, e), tuple)]
        expected = _outcome(lambda b: [decode_event(e) for e in b], batch)
        assert _outcome(decode_events, batch) == expected, batch


# -- snapshots ------------------------------------------------------------------------------------

@pytest.mark.parametrize("snapshot", [
    {},
    {"o": {"watermark": 1, "counters": {}}},
    {"o": {"watermark": 1, "counters": {"c": MAX_DELTA, "d": -MAX_DELTA}}},
    {"o": {"watermark": 3, "counters": {"c": 3 * MAX_DELTA}}},
    # Beyond signed 64 bits: origins can offset each other, and the store keeps any total.
    {"o": {"watermark": INT64_MAX, "counters": {"c": INT64_MAX * MAX_DELTA,
                                                 "d": -INT64_MAX * MAX_DELTA}}},
])
def test_snapshots_within_bounds(snapshot):
    assert decode_snapshot(snapshot) == snapshot


@pytest.mark.parametrize("snapshot", [
    None, [], {"o": []},
    {"o": {"watermark": 0, "counters": {}}},
    {"o": {"watermark": -1, "counters": {}}},
    {"o": {"watermark": INT64_MAX + 1, "counters": {}}},
    {"o": {"watermark": True, "counters": {}}},
    {"o": {"watermark": 1}},
    {"o": {"watermark": 1, "counters": []}},
    {"o": {"watermark": 1, "counters": {"c": MAX_DELTA + 1}}},
    {"o": {"watermark": 3, "counters": {"c": -3 * MAX_DELTA - 1}}},
    {"o": {"watermark": 1, "counters": {"c": 1.0}}},
    {"o": {"watermark": 1, "counters": {"c": False}}},
    {"o": {"watermark": 1, "counters": {"bad name": 1}}},
    {"bad origin": {"watermark": 1, "counters": {}}},
    {f"o{i}": {"watermark": 1, "counters": {}} for i in range(MAX_ORIGINS_PER_PULL + 1)},
])
def test_snapshots_out_of_bounds(snapshot):
    with pytest.raises(BadRequest):
        decode_snapshot(snapshot)


def test_a_base_whose_totals_pass_one_origins_bound_is_adopted_by_a_node_without_it():
    """The base (`_retired`, its watermark how many origins it holds) adds up whole origins:
    one retired origin of two events of the largest delta makes a total past 1 x MAX_DELTA. A
    node that lacks it (a late joiner) decodes the peer's snapshot and adopts it; only a total
    past the base's own bound (as in covers) is refused."""
    old, new = "aaaaaaaaaaaaaaaa", "bbbbbbbbbbbbbbbb"
    source = Counter(new, origin_retire_after=10.0)
    txn = source.begin()
    txn.remote([Event(old, 1, "c", MAX_DELTA, None), Event(old, 2, "c", MAX_DELTA, None)], 0.0)
    source.install(txn)
    for now in (0.0, 10.0):  # the first sweep stamps the origin, the second retires it
        txn = source.begin()
        txn.retire_origins(now, [], set())
        source.install(txn)
    assert source.is_retired(old) and source.digest() == {RETIRED_ENTRY: 1}
    snapshot = decode_snapshot(source.snapshot([RETIRED_ENTRY]))
    joiner = Counter("cccccccccccccccc")
    txn = joiner.begin()
    entry = snapshot[RETIRED_ENTRY]
    assert txn.adopt(RETIRED_ENTRY, entry["watermark"], entry["counters"], entry["retired"])
    joiner.install(txn)
    assert joiner.count("c") == 2 * MAX_DELTA and joiner.is_retired(old)
    with pytest.raises(BadRequest):
        decode_snapshot({RETIRED_ENTRY: {"watermark": 1, "counters": {"c": MAX_BASE_TOTAL + 1},
                                         "retired": {old: 2}}})


# -- held events (protocol 2) ---------------------------------------------------------------------

@pytest.mark.parametrize("held", [{}, {"o": [1, 1, 0]}, {"o": [2, MAX_SEQ, MAX_SEQ]},
                                  {f"o{i}": [1, 5, i] for i in range(MAX_ORIGINS_PER_PULL)}])
def test_held_summaries_within_bounds(held):
    assert decode_held_summaries(held) == {o: tuple(s) for o, s in held.items()}


@pytest.mark.parametrize("held", [
    [], {"o": []}, {"o": [1, 1]}, {"o": [1, 1, 0, 0]}, {"o": [0, 1, 0]}, {"o": [3, 2, 0]},
    {"o": [1, MAX_SEQ + 1, 0]}, {"o": [1, 1, -1]}, {"o": [1, 1, MAX_SEQ + 1]},
    {"o": [1, 1, True]}, {"o": [1.0, 1, 0]}, {"o": (1, 1, 0)}, {"bad origin": [1, 1, 0]},
    {f"o{i}": [1, 1, 0] for i in range(MAX_ORIGINS_PER_PULL + 1)},
])
def test_held_summaries_out_of_bounds(held):
    with pytest.raises(BadRequest):
        decode_held_summaries(held)


def test_held_events_in_a_snapshot_are_decoded_when_asked_for_and_the_input_is_kept():
    held = [{"id": "o:5", "counter": "c", "delta": 2, "key": "k"},
            {"id": "o:9", "items": [["c", 1], ["d", 1]]}]
    snapshot = {"o": {"watermark": 3, "counters": {"c": 3}, "held": held},
                "p": {"watermark": 0, "counters": {},
                      "held": [{"id": "p:1", "counter": "c", "delta": 1}]}}
    decoded = decode_snapshot(snapshot, max_held=2)
    assert decoded["o"]["held"] == [Event("o", 5, "c", 2, "k"),
                                    Event("o", 9, None, 0, None, (("c", 1), ("d", 1)))]
    assert decoded["o"]["watermark"] == 3 and decoded["p"]["held"] == [Event("p", 1, "c", 1)]
    assert snapshot["o"]["held"] is held  # decoding twice (a duplicated reply) still works
    assert decode_snapshot(snapshot, max_held=2) == decoded


@pytest.mark.parametrize("state,max_held", [
    ({"watermark": 3, "counters": {}, "held": [{"id": "o:5", "counter": "c", "delta": 1}]}, 0),
    ({"watermark": 3, "counters": {}, "held": [{"id": "o:5", "counter": "c", "delta": 1},
                                               {"id": "o:6", "counter": "c", "delta": 1}]}, 1),
    ({"watermark": 3, "counters": {}, "held": []}, 5),
    ({"watermark": 0, "counters": {}, "held": []}, 5),
    ({"watermark": 3, "counters": {}, "held": {"o:5": 1}}, 5),
    ({"watermark": 3, "counters": {}, "held": [{"id": "x:5", "counter": "c", "delta": 1}]}, 5),
    ({"watermark": 3, "counters": {}, "held": [{"id": "o:3", "counter": "c", "delta": 1}]}, 5),
    ({"watermark": 3, "counters": {}, "held": [{"id": "o:5", "counter": "c", "delta": 0}]}, 5),
    ({"watermark": -1, "counters": {}, "held": [{"id": "o:5", "counter": "c", "delta": 1}]}, 5),
])
def test_held_events_in_a_snapshot_out_of_bounds(state, max_held):
    with pytest.raises(BadRequest):
        decode_snapshot({"o": state}, max_held=max_held)


# -- bulk events (protocol 2) ---------------------------------------------------------------------

def test_bulk_events_within_bounds():
    items = [["c", 1], ["d", -MAX_DELTA]]
    event = decode_event({"id": "o:2", "items": items, "key": "k"})
    assert event == Event("o", 2, None, 0, "k", (("c", 1), ("d", -MAX_DELTA)))
    assert decode_event(event.to_wire()) == event
    most = decode_event({"id": "o:1", "items": [["c", 1]] * MAX_ITEMS})
    assert len(most.items) == MAX_ITEMS


@pytest.mark.parametrize("wire", [
    {"id": "o:1", "items": []},
    {"id": "o:1", "items": [["c", 1]]},  # one item is a plain event
    {"id": "o:1", "items": [["c", 1]] * (MAX_ITEMS + 1)},
    {"id": "o:1", "items": [["c", 1], ["d", 0]]},
    {"id": "o:1", "items": [["c", 1], ["d", MAX_DELTA + 1]]},
    {"id": "o:1", "items": [["c", 1], ["bad name", 1]]},
    {"id": "o:1", "items": [["c", 1], ["d", 1, 2]]},
    {"id": "o:1", "items": [["c", 1], {"counter": "d", "delta": 1}]},
    {"id": "o:1", "items": [["c", 1], ["d", True]]},
    {"id": "o:1", "items": {"c": 1, "d": 1}},
    {"id": "o:0", "items": [["c", 1], ["d", 1]]},
    {"id": "o:1", "items": [["c", 1], ["d", 1]], "counter": "c"},
    {"id": "o:1", "items": [["c", 1], ["d", 1]], "key": ""},
    {"items": [["c", 1], ["d", 1]]},
])
def test_bulk_events_out_of_bounds(wire):
    with pytest.raises(BadRequest):
        decode_event(wire)


# -- runs: the compact replicate body (protocol 2) ------------------------------------------------

def test_runs_group_consecutive_events_of_an_origin_and_decode_to_the_same_events():
    events = [Event("o", 1, "c", 1), Event("o", 2, "c", -3, "k"),
              Event("o", 3, None, 0, None, (("a", 1), ("b", 2))),
              Event("o", 4, None, 0, "bulk key", (("a", MAX_DELTA), ("a", -1))),
              Event("p", MAX_SEQ, "c", 1), Event("o", 6, "d", 2), Event("o", 5, "d", 2)]
    runs = encode_runs(events)
    assert runs == [
        {"origin": "o", "first": 1, "events": [
            ["c", 1], ["c", -3, "k"], {"items": [["a", 1], ["b", 2]]},
            {"items": [["a", MAX_DELTA], ["a", -1]], "key": "bulk key"}]},
        {"origin": "p", "first": MAX_SEQ, "events": [["c", 1]]},
        {"origin": "o", "first": 6, "events": [["d", 2]]},
        {"origin": "o", "first": 5, "events": [["d", 2]]},
    ]
    assert decode_runs(runs) == events
    assert encode_runs([]) == [] and decode_runs([]) == []


def _run(first=1, events=(("c", 1),), origin="o"):
    return {"origin": origin, "first": first, "events": [list(e) for e in events]}


@pytest.mark.parametrize("runs", [
    "runs", {"o": 1}, [None], [[]], [{}],
    [{"origin": "o", "first": 1}],
    [{**_run(), "other": 1}],
    [{"origin": "o", "first": 1, "event": [["c", 1]]}],
    [_run(origin="o:p")], [_run(origin="")], [_run(origin=1)], [_run(origin="o" * 65)],
    [_run(first=0)], [_run(first=-1)], [_run(first=MAX_SEQ + 1)], [_run(first=1.0)],
    [_run(first=True)], [_run(first="1")],
    [_run(first=MAX_SEQ, events=[("c", 1), ("c", 1)])],  # the second would be 2^63
    [_run(events=[])], [{"origin": "o", "first": 1, "events": {"c": 1}}],
    [_run(events=[("c", 0)])], [_run(events=[("c", MAX_DELTA + 1)])], [_run(events=[("c", True)])],
    [_run(events=[("c", 1.0)])], [_run(events=[("bad name", 1)])], [_run(events=[(1, 1)])],
    [_run(events=[("c",)])], [_run(events=[("c", 1, "k", 4)])], [_run(events=[("c", 1, "")])],
    [_run(events=[("c", 1, None)])], [_run(events=[("c", 1), ("c" * 129, 1)])],
    [{"origin": "o", "first": 1, "events": ["c"]}],
    [{"origin": "o", "first": 1, "events": [{"counter": "c", "delta": 1}]}],
    [{"origin": "o", "first": 1, "events": [{"items": [["c", 1]]}]}],
    [{"origin": "o", "first": 1, "events": [{"items": [["c", 1], ["d", 0]]}]}],
    [{"origin": "o", "first": 1, "events": [{"items": [["c", 1]] * (MAX_ITEMS + 1)}]}],
    [{"origin": "o", "first": 1, "events": [{"items": [["c", 1], ["d", 1]], "key": ""}]}],
    [{"origin": "o", "first": 1, "events": [{"items": [["c", 1], ["d", 1]], "id": "o:1"}]}],
    [_run(), _run(first=0)],  # a bad run after a good one refuses the whole batch
])
def test_runs_out_of_bounds(runs):
    with pytest.raises(BadRequest):
        decode_runs(runs)


def test_runs_at_their_bounds():
    longest = [("c", 1)] * 1000
    assert len(decode_runs([_run(first=MAX_SEQ - 999, events=longest)])) == 1000
    assert decode_runs([_run(first=MAX_SEQ)]) == [Event("o", MAX_SEQ, "c", 1)]
    assert decode_runs([_run(origin="o" * 64, events=[("c" * 128, -MAX_DELTA, "k" * 255)])]) \
        == [Event("o" * 64, 1, "c" * 128, -MAX_DELTA, "k" * 255)]
    most = decode_runs([{"origin": "o", "first": 1, "events": [{"items": [["c", 1]] * MAX_ITEMS}]}])
    assert len(most[0].items) == MAX_ITEMS


@pytest.mark.parametrize("seed", range(20))
def test_runs_and_event_lists_decode_the_same_events(seed):
    """The same random pieces (origin, seq, counter, delta, key, bulk items) as a list of event
    objects and as runs: both refuse, or both decode to the same events; and runs encoded from
    the decoded events decode to them again."""
    rng = random.Random(seed)
    for _ in range(200):
        as_events, as_runs = [], []
        for _ in range(rng.randint(0, 6)):
            origin = _pick(rng, _ORIGINS, 4) if rng.random() < 0.9 else "o"
            seq = rng.choice([1, 2, 7, MAX_SEQ] if rng.random() < 0.9 else [0, -1, MAX_SEQ + 1])
            # An origin that is no string has no event id: the id is that value itself.
            ident = f"{origin}:{seq}" if isinstance(origin, str) else origin
            key = _pick(rng, _KEYS, 5) if rng.random() < 0.2 else None
            if rng.random() < 0.15:
                items = [[_pick(rng, _COUNTERS, 4), _pick(rng, _DELTAS, 5)]
                         for _ in range(rng.choice([2, 3, 1, 0]))]
                old = {"id": ident, "items": items}
                new = {"items": items}
                if key is not None:
                    old["key"] = new["key"] = key
            else:
                counter, delta = _pick(rng, _COUNTERS, 4), _pick(rng, _DELTAS, 5)
                old = {"id": ident, "counter": counter, "delta": delta}
                new = [counter, delta]
                if key is not None:
                    old["key"] = key
                    new.append(key)
            as_events.append(old)
            as_runs.append({"origin": origin, "first": seq, "events": [new]})
        expected = _outcome(decode_events, as_events)
        got = _outcome(decode_runs, as_runs)
        if isinstance(expected, tuple):  # refused: the messages may differ
            assert isinstance(got, tuple), (as_events, got)
        else:
            assert got == expected, as_runs
            assert decode_runs(encode_runs(expected)) == expected


def test_random_runs_are_refused_with_a_bad_request_or_decoded():
    """Any JSON shape in a run's place gives events or a BadRequest, never another error."""
    rng = random.Random(7)
    atoms = [None, 1, -1, 0, 1.5, True, "", "o", "c", [], {}, MAX_SEQ, MAX_SEQ + 1, ["c", 1],
             {"items": [["c", 1], ["d", 1]]}, {"items": 1}]
    for _ in range(2000):
        run = {"origin": rng.choice(atoms + ["o"] * 5), "first": rng.choice(atoms + [1] * 5),
               "events": rng.choice([rng.choice(atoms), [rng.choice(atoms) for _ in range(3)]])}
        if rng.random() < 0.1:
            del run[rng.choice(list(run))]
        try:
            decode_runs([run])
        except BadRequest:
            pass


def test_resets_travel_in_runs_and_decode_to_the_same_events():
    from dcounter.reset import Reset
    reset = Reset("c", (("o", 2, 5), ("p", 7, -1)), delete=True)
    events = [Event("o", 3, "c", 1), Event("o", 4, None, 0, "k", None, reset),
              Event("o", 5, None, 0, None, None, Reset("d", ()))]
    runs = encode_runs(events)
    assert runs == [{"origin": "o", "first": 3, "events": [
        ["c", 1], {"reset": "c", "covers": {"o": [2, 5], "p": [7, -1]}, "delete": True,
                   "key": "k"},
        {"reset": "d", "covers": {}, "delete": False}]}]
    assert decode_runs(runs) == events
    bad = [{"origin": "o", "first": 1, "events": [{"reset": "c", "covers": {"o": [0, 1]},
                                                   "delete": False}]}]
    with pytest.raises(BadRequest):
        decode_runs(bad)
