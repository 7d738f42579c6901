"""The shapes of the messages between nodes and their bounds: nothing else parses a peer's JSON.

Every decoder takes the decoded JSON value and returns it checked (or an `Event`), or raises
`BadRequest` with a message a user can act on. A peer's request that fails is answered 400 by the
route (`api.py`); a peer's reply that fails is logged as a warning and ignored (`gossip.py`,
`pulls.py`, `forwarding.py`). Either way nothing changes.

Bounds (the README's "Range" section), chosen so that everything accepted can be stored exactly
(SQLite keeps watermarks and sequence numbers as 64-bit INTEGERs, totals as text):

* sequence numbers in event ids and watermarks in a snapshot: 1 to 2^63-1. A
  digest's watermarks may also be 0 ("knows the origin, holds none of its events"): no node
  sends it today, and it never starts a pull, so it is accepted rather than refusing a whole
  heartbeat.
* deltas: within +-(2^53-1) and not 0 (what a client may send; see validation.py).
* an origin's per-counter total in a snapshot: at most `watermark x (2^53-1)` in absolute
  value, the most `watermark` deltas can add up to. It may leave signed 64 bits (origins can
  offset each other), and the store keeps it exactly. The base's (`RETIRED_ENTRY`, whose
  watermark counts the retired origins): within +-2^127, as in covers.
* origins in a digest, a pull or a snapshot: at most MAX_ORIGINS_PER_PULL; entries in a peer
  list: at most MAX_PEER_LIST.
* items in a bulk event: 2 to MAX_ITEMS (protocol 2; a single item is a plain event).
* covers of a reset event (protocol 2, reset.py): at most MAX_ORIGINS_PER_PULL + 1 origins (the
  base is `RETIRED_ENTRY`), each `[watermark, total]` bounded like a snapshot's prefix (the base's
  total: within +-2^127, a sum of many origins); the covers and deleted names of a state reply:
  at most MAX_COVERED_COUNTERS counters each.
* a run of the compact replicate body (protocol 2): at least one event, and its last sequence
  number (`first` plus its events, less one) within 2^63-1.
* held events (protocol 2): a heartbeat's summary per origin `[count, max seq, fingerprint]`,
  count and max seq 1 to 2^63-1 with count <= max, fingerprint 0 to 2^63-1; in a snapshot, at
  most the number the puller asked for (its --gap-cap) per origin, each an event of that origin
  above the snapshot's watermark.

This module imports nothing of the node: only `validation`, `errors` and the `Event` and
`HeldSummary` types.
"""

from __future__ import annotations

import re

from dcounter import validation
from dcounter.counter import MAX_ITEMS, Event, HeldSummary
from dcounter.reset import Reset
from dcounter.retirement import RETIRED_ENTRY
from dcounter.errors import BadRequest
from dcounter.validation import INT64_MAX, MAX_DELTA

MAX_SEQ = INT64_MAX  # sequence numbers and watermarks: SQLite's INTEGER
MAX_ORIGINS_PER_PULL = 10_000
MAX_PEER_LIST = 1024
MAX_COVERED_COUNTERS = 100_000
MAX_BASE_TOTAL = 2 ** 127


def check_fields(data: dict, required=(), optional=(), where: str = "body") -> None:
    missing = [name for name in required if name not in data]
    if missing:
        raise BadRequest(f"missing field{'s' if len(missing) > 1 else ''} in {where}: "
                         + ", ".join(missing))
    unknown = sorted(set(data) - set(required) - set(optional))
    if unknown:
        raise BadRequest(f"unknown field{'s' if len(unknown) > 1 else ''} in {where}: "
                         + ", ".join(unknown))


def _is_int(value) -> bool:
    return isinstance(value, int) and not isinstance(value, bool)


def decode_digest(value) -> dict[str, int]:
    """`{origin: watermark}` with watermarks 0 to 2^63-1."""
    if not isinstance(value, dict) or len(value) > MAX_ORIGINS_PER_PULL:
        raise BadRequest("digest must be an object of origin -> watermark")
    for origin, watermark in value.items():
        validation.origin(origin, "digest origin")
        if not _is_int(watermark) or not 0 <= watermark <= MAX_SEQ:
            raise BadRequest("digest watermarks must be integers from 0 to 2^63-1")
    return value


def decode_held_summaries(value) -> dict[str, HeldSummary]:
    """`{origin: [count, max seq, fingerprint]}` (protocol 2's `held` of a heartbeat), as
    tuples."""
    if not isinstance(value, dict) or len(value) > MAX_ORIGINS_PER_PULL:
        raise BadRequest("held must be an object of origin -> [count, max seq, fingerprint]")
    summaries = {}
    for origin, summary in value.items():
        validation.origin(origin, "held origin")
        if not (isinstance(summary, list) and len(summary) == 3
                and all(_is_int(n) and 0 <= n <= MAX_SEQ for n in summary)
                and 1 <= summary[0] <= summary[1]):
            raise BadRequest("each held summary must be [count, max seq, fingerprint]: integers "
                             "up to 2^63-1, 1 <= count <= max seq")
        summaries[origin] = tuple(summary)
    return summaries


def decode_peer_list(value) -> list[str]:
    if not isinstance(value, list) or len(value) > MAX_PEER_LIST:
        raise BadRequest("peers must be a list of host:port strings")
    return [validation.node_id(peer, "peers entry") for peer in value]


def decode_event(value) -> Event:
    """`{"id": "<origin>:<seq>", "counter", "delta"[, "key"]}` with seq 1 to 2^63-1, or a bulk
    event (`decode_bulk_event`)."""
    if not isinstance(value, dict):
        raise BadRequest("each event must be an object")
    if "items" in value:
        return decode_bulk_event(value)
    if "reset" in value:
        return decode_reset_event(value)
    check_fields(value, required=("id", "counter", "delta"), optional=("key",), where="event")
    parts = validation.split_event_id(value["id"])
    if parts is None or not 1 <= parts[1] <= MAX_SEQ:
        raise BadRequest("event id must be '<origin>:<seq>' with seq from 1 to 2^63-1")
    key = value.get("key")
    if key is not None:
        validation.idempotency_key(key, "event key")
    return Event(parts[0], parts[1], validation.counter_name(value["counter"], "event counter"),
                 validation.delta(value["delta"], "event delta"), key)


# The common event, `{"id", "counter", "delta"}` with an ordinary id, checked in one match: an
# origin (validation's own pattern, which has no ":", so this is the id's last ":"), then a seq
# of at most 19 digits without a leading zero. Anything else takes `decode_event`, which
# accepts or refuses it; tests/unit/test_wire.py compares the two on random input.
_PLAIN_EVENT_ID = re.compile(f"({validation._ORIGIN_RE.pattern}):([1-9][0-9]{{0,18}})")
_COUNTER_NAME = validation._COUNTER_RE


def decode_events(values: list) -> list[Event]:
    """`[decode_event(v) for v in values]`, with the same results and the same errors, faster
    for a replicate batch: an event of the common shape is checked inline and a counter name
    already seen in the batch is not matched again (every event of a busy node's batch usually
    names the same few counters)."""
    events = []
    names: set[str] = set()
    plain_id = _PLAIN_EVENT_ID.fullmatch
    for value in values:
        if type(value) is dict and len(value) == 3:
            ident, name, delta = value.get("id"), value.get("counter"), value.get("delta")
            if type(ident) is str and type(name) is str and type(delta) is int \
                    and delta != 0 and -MAX_DELTA <= delta <= MAX_DELTA:
                match = plain_id(ident)
                if match is not None:
                    seq = int(match[2])
                    if seq <= MAX_SEQ and (name in names or _COUNTER_NAME.fullmatch(name)):
                        names.add(name)
                        events.append(Event(match[1], seq, name, delta, None))
                        continue
        events.append(decode_event(value))
    return events


def decode_snapshot(value, max_held: int = 0) -> dict[str, dict]:
    """`{origin: {"watermark": w, "counters": {name: total}[, "held": [event, ...]]}}`, the reply
    to a pull: w from 1 to 2^63-1, each total within +-(w x (2^53-1)) (the base of retired
    origins, `RETIRED_ENTRY`, within +-MAX_BASE_TOTAL: its w counts origins). `held` (protocol
    2) is accepted only when the pull asked for it (`max_held`, at most that many): events of the
    origin above w, returned decoded (`Event`s); an origin with held events may have w 0. The
    result is a new mapping: `value` is not changed."""
    if not isinstance(value, dict) or len(value) > MAX_ORIGINS_PER_PULL:
        raise BadRequest(f"origins must be an object of at most {MAX_ORIGINS_PER_PULL} origins")
    decoded = {}
    for origin, prefix in value.items():
        validation.origin(origin)
        if not isinstance(prefix, dict):
            raise BadRequest("each origin's state must be an object")
        w = prefix.get("watermark")
        counters = prefix.get("counters")
        if not _is_int(w) or not isinstance(counters, dict):
            raise BadRequest("state needs a watermark and counters")
        held = _decode_held(origin, w, prefix["held"], max_held) if "held" in prefix else []
        if not (1 if not held else 0) <= w <= MAX_SEQ:
            raise BadRequest("a state's watermark must be from 1 to 2^63-1 (0 only with held "
                             "events)")
        # The base's watermark counts the origins it holds, not events: its totals have the
        # base's own bound, as in covers.
        bound = MAX_BASE_TOTAL if origin == RETIRED_ENTRY else w * MAX_DELTA
        for name, total in counters.items():
            validation.counter_name(name)
            if not _is_int(total):
                raise BadRequest("counter totals must be integers")
            if not -bound <= total <= bound:
                raise BadRequest(f"total of {name!r} is more than {w} events can add up to"
                                 if origin != RETIRED_ENTRY else
                                 f"the base's total of {name!r} is out of range")
        decoded[origin] = dict(prefix, held=held) if held else prefix
    return decoded


def _decode_held(origin: str, watermark: int, value, max_held: int) -> list[Event]:
    """A snapshot's held events of `origin`: 1 to `max_held` events of the origin, each above
    the snapshot's watermark."""
    if not max_held:
        raise BadRequest("held events in a state that did not ask for them")
    if not isinstance(value, list) or not 1 <= len(value) <= max_held:
        raise BadRequest(f"held must be a list of 1 to {max_held} events")
    events = decode_events(value)
    for event in events:
        if event.origin != origin or event.seq <= watermark:
            raise BadRequest(f"held events of {origin} must be its events above the watermark")
    return events


def decode_bulk_event(value: dict) -> Event:
    """`{"id": "<origin>:<seq>", "items": [[counter, delta], ...][, "key"]}` (protocol 2): 2 to
    MAX_ITEMS items, each checked like a plain event's counter and delta."""
    check_fields(value, required=("id", "items"), optional=("key",), where="event")
    parts = validation.split_event_id(value["id"])
    if parts is None or not 1 <= parts[1] <= MAX_SEQ:
        raise BadRequest("event id must be '<origin>:<seq>' with seq from 1 to 2^63-1")
    items = _decode_items(value["items"], set())
    key = value.get("key")
    if key is not None:
        validation.idempotency_key(key, "event key")
    return Event(parts[0], parts[1], None, 0, key, items)


def _decode_items(items, names: set[str]) -> tuple:
    """A bulk event's items: 2 to MAX_ITEMS `[counter, delta]`. `names` holds counter names
    checked already (an event names few counters many times); it gains the new ones."""
    if not isinstance(items, list) or not 2 <= len(items) <= MAX_ITEMS:
        raise BadRequest(f"a bulk event's items must be a list of 2 to {MAX_ITEMS} items")
    decoded = []
    for item in items:
        if not isinstance(item, list) or len(item) != 2:
            raise BadRequest("each item of a bulk event must be [counter, delta]")
        name, delta = item
        if type(name) is not str or name not in names:
            names.add(validation.counter_name(name, "event counter"))
        if type(delta) is not int or not 0 < abs(delta) <= MAX_DELTA:
            validation.delta(delta, "event delta")
        decoded.append((name, delta))
    return tuple(decoded)


def decode_reset_event(value: dict) -> Event:
    """`{"id", "reset": counter, "covers": {origin: [watermark, total]}, "delete": bool[, "key"]}`
    (protocol 2, reset.py)."""
    check_fields(value, required=("id", "reset", "covers", "delete"), optional=("key",),
                 where="event")
    parts = validation.split_event_id(value["id"])
    if parts is None or not 1 <= parts[1] <= MAX_SEQ:
        raise BadRequest("event id must be '<origin>:<seq>' with seq from 1 to 2^63-1")
    name = validation.counter_name(value["reset"], "reset counter")
    if not isinstance(value["delete"], bool):
        raise BadRequest("a reset's delete must be true or false")
    covers = _decode_cover_map(value["covers"], "a reset's covers")
    key = value.get("key")
    if key is not None:
        validation.idempotency_key(key, "event key")
    reset = Reset(name, tuple(sorted((o, w, total) for o, (w, total) in covers.items())),
                  value["delete"])
    return Event(parts[0], parts[1], None, 0, key, None, reset)


def _decode_cover_map(value, where: str) -> dict[str, tuple[int, int]]:
    """`{origin: [watermark, total]}` -> `{origin: (watermark, total)}`."""
    if not isinstance(value, dict) or len(value) > MAX_ORIGINS_PER_PULL + 1:
        raise BadRequest(f"{where} must be an object of at most {MAX_ORIGINS_PER_PULL + 1} "
                         "origin -> [watermark, total]")
    covers = {}
    for origin, cover in value.items():
        validation.origin(origin, f"{where}: origin")
        if not isinstance(cover, list) or len(cover) != 2 or not all(map(_is_int, cover)):
            raise BadRequest(f"{where}: each cover must be [watermark, total]")
        w, total = cover
        if not 1 <= w <= MAX_SEQ:
            raise BadRequest(f"{where}: a watermark must be from 1 to 2^63-1")
        bound = MAX_BASE_TOTAL if origin == RETIRED_ENTRY else w * MAX_DELTA
        if not -bound <= total <= bound:
            raise BadRequest(f"{where}: the total covered of {origin} is more than {w} events "
                             "can add up to")
        covers[origin] = (w, total)
    return covers


def decode_covers(value) -> dict[str, dict[str, tuple[int, int]]]:
    """The covers of a state reply: `{counter: {origin: [watermark, total]}}`."""
    if not isinstance(value, dict) or len(value) > MAX_COVERED_COUNTERS:
        raise BadRequest(f"covers must be an object of at most {MAX_COVERED_COUNTERS} counters")
    return {validation.counter_name(name, "covers counter"): _decode_cover_map(covers, "covers")
            for name, covers in value.items()}


def decode_deleted(value) -> list[str]:
    """The deleted names of a state reply."""
    if not isinstance(value, list) or len(value) > MAX_COVERED_COUNTERS:
        raise BadRequest(f"deleted must be a list of at most {MAX_COVERED_COUNTERS} counters")
    return [validation.counter_name(name, "deleted counter") for name in value]


def decode_forward(data: dict) -> tuple[str, str, int, str]:
    """A keyed increment forwarded to its key's home (`POST /counter/forward`):
    `{"node_id", "counter", "delta", "key"}` -> (sender, counter, delta, key)."""
    check_fields(data, required=("node_id", "counter", "delta", "key"))
    return (validation.node_id(data["node_id"]), validation.counter_name(data["counter"]),
            validation.delta(data["delta"]), validation.idempotency_key(data["key"]))


def decode_forward_reply(data: dict) -> tuple[str, int, str, bool]:
    """The home's answer to a forward: `{"counter", "count", "event_id", "replayed"}` ->
    (counter, count, event_id, replayed)."""
    check_fields(data, required=("counter", "count", "event_id", "replayed"), where="reply")
    if not _is_int(data["count"]):
        raise BadRequest("count must be an integer")
    if validation.split_event_id(data["event_id"]) is None:
        raise BadRequest("event_id must be '<origin>:<seq>'")
    if not isinstance(data["replayed"], bool):
        raise BadRequest("replayed must be true or false")
    return (validation.counter_name(data["counter"]), data["count"], data["event_id"],
            data["replayed"])


# -- the compact replicate body (protocol 2) ------------------------------------------------------
#
# `{"node_id", "runs": [{"origin": o, "first": seq, "events": [entry, ...]}, ...]}`: a run holds
# the events of one origin with consecutive sequence numbers from `first`, each entry
# `[counter, delta]`, `[counter, delta, key]`, a bulk event's `{"items": [...][, "key"]}`, or a
# reset's `{"reset", "covers", "delete"[, "key"]}` (reset.py).
# The origin and the sequence number are written once a run instead of once an event, and a
# list entry is cheaper to write and to read than an object with named fields.

def encode_runs(events: list[Event]) -> list[dict]:
    """The runs of `events`, in their order: a new run starts wherever the origin changes or a
    sequence number is not the previous one plus one."""
    runs: list[dict] = []
    entries: list = []
    origin, next_seq = None, None
    for event in events:
        if event.origin != origin or event.seq != next_seq:
            origin, entries = event.origin, []
            runs.append({"origin": origin, "first": event.seq, "events": entries})
        next_seq = event.seq + 1
        if event.reset is not None:  # {"reset", "covers", "delete"[, "key"]}
            entry = event.to_wire()
            del entry["id"]
        elif event.items is not None:
            entry = {"items": [[name, delta] for name, delta in event.items]}
            if event.key is not None:
                entry["key"] = event.key
        elif event.key is None:
            entry = [event.counter, event.delta]
        else:
            entry = [event.counter, event.delta, event.key]
        entries.append(entry)
    return runs


def decode_runs(values) -> list[Event]:
    """The events of a list of runs (`encode_runs`), in order, with the bounds of
    `decode_event`: origins as in event ids, sequence numbers 1 to 2^63-1 (the last of a run
    too), counters, deltas, keys and bulk items as in events. Checked in one pass: an origin or
    counter name already seen in the batch is not matched again."""
    if not isinstance(values, list):
        raise BadRequest("runs must be a list")
    events: list[Event] = []
    append = events.append
    names: set[str] = set()
    origins: set[str] = set()
    counter_ok = _COUNTER_NAME.fullmatch
    for run in values:
        if type(run) is not dict:
            raise BadRequest("each run must be an object")
        if len(run) != 3 or "origin" not in run or "first" not in run or "events" not in run:
            check_fields(run, required=("origin", "first", "events"), where="run")
        origin, seq, entries = run["origin"], run["first"], run["events"]
        if type(origin) is not str or origin not in origins:
            origins.add(validation.origin(origin, "run origin"))
        if type(seq) is not int or not 1 <= seq <= MAX_SEQ:
            raise BadRequest("a run's first sequence number must be an integer from 1 to 2^63-1")
        if type(entries) is not list or not entries:
            raise BadRequest("a run's events must be a non-empty list")
        if seq + len(entries) - 1 > MAX_SEQ:
            raise BadRequest("a run's sequence numbers must stay within 2^63-1")
        for entry in entries:
            if type(entry) is list and 2 <= len(entry) <= 3:
                name, delta = entry[0], entry[1]
                if type(name) is not str or (name not in names and not counter_ok(name)):
                    validation.counter_name(name, "event counter")  # raises
                names.add(name)
                if type(delta) is not int or not 0 < abs(delta) <= MAX_DELTA:
                    validation.delta(delta, "event delta")
                key = None
                if len(entry) == 3:
                    key = validation.idempotency_key(entry[2], "event key")
                append(Event(origin, seq, name, delta, key))
            elif type(entry) is dict and "reset" in entry:
                append(decode_reset_event({**entry, "id": f"{origin}:{seq}"}))
            elif type(entry) is dict:
                check_fields(entry, required=("items",), optional=("key",), where="bulk event")
                items = _decode_items(entry["items"], names)
                key = entry.get("key")
                if key is not None:
                    validation.idempotency_key(key, "event key")
                append(Event(origin, seq, None, 0, key, items))
            else:
                raise BadRequest("each event of a run must be [counter, delta], "
                                 "[counter, delta, key] or a bulk event {\"items\"[, \"key\"]}")
            seq += 1
    return events
