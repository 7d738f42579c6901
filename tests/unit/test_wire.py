"""The decoders of messages between nodes, at and just past their bounds."""

import random

import pytest

from dcounter.counter import MAX_ITEMS, Event
from dcounter.errors import BadRequest
from dcounter.validation import INT64_MAX, MAX_DELTA
from dcounter.wire import (MAX_ORIGINS_PER_PULL, MAX_PEER_LIST, MAX_SEQ, decode_digest,
                           decode_event, decode_events, decode_held_summaries, decode_peer_list,
                           decode_snapshot)


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
