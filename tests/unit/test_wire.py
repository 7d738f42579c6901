"""The decoders of messages between nodes, at and just past their bounds."""

import pytest

from dcounter.counter import MAX_ITEMS, Event
from dcounter.errors import BadRequest
from dcounter.validation import INT64_MAX, MAX_DELTA
from dcounter.wire import (MAX_ORIGINS_PER_PULL, MAX_PEER_LIST, decode_digest,
                           decode_event, decode_peer_list, decode_snapshot)


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
