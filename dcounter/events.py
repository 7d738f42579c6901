"""Events and what staging one returns: the values the rest of dcounter passes around.

An increment is an `Event` `(origin, seq, counter, delta, key)`; its id is `"<origin>:<seq>"`. A
bulk event carries several `(counter, delta)` items instead of one counter and delta: it takes
one sequence number and applies whole or not at all, wherever it applies (see `Event.items`). A
reset event (reset.py) carries a `Reset` instead. `LocalResult`, `BulkResult` and `RemoteResult`
are what a transaction's `local`, `local_many` and `remote` (txn.py) return. Plain values: no
state, no lock; nothing here imports the counter.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import TYPE_CHECKING

if TYPE_CHECKING:
    from dcounter.reset import Reset

MAX_ITEMS = 1_000  # items in one bulk event (and one bulk request)

Items = tuple[tuple[str, int], ...]  # (counter, delta) per item, in request order


@dataclass(frozen=True)
class Event:
    """One increment. A bulk event has `items` (two or more), `counter` None and `delta` 0: read
    what it changes through `parts`. A single item is always a plain event (`Event.of`). A
    reset event (reset.py) has `reset`, `counter` None, `delta` 0 and no parts."""
    origin: str
    seq: int
    counter: str | None
    delta: int
    key: str | None = None
    items: Items | None = None
    reset: Reset | None = None

    @classmethod
    def of(cls, origin: str, seq: int, items: Items, key: str | None = None) -> "Event":
        if len(items) == 1:
            return cls(origin, seq, items[0][0], items[0][1], key)
        return cls(origin, seq, None, 0, key, tuple(items))

    @property
    def id(self) -> str:
        return f"{self.origin}:{self.seq}"

    @property
    def parts(self) -> Items:
        if self.reset is not None:
            return ()
        return self.items if self.items is not None else ((self.counter, self.delta),)

    def to_wire(self) -> dict:
        if self.reset is not None:  # protocol 2 only: see protocol.py
            wire = {"id": self.id, **self.reset.wire()}
        elif self.items is not None:  # protocol 2 only: see protocol.py
            wire = {"id": self.id, "items": [[name, delta] for name, delta in self.items]}
        else:
            wire = {"id": self.id, "counter": self.counter, "delta": self.delta}
        if self.key is not None:
            wire["key"] = self.key
        return wire


@dataclass(frozen=True)
class LocalResult:
    counter: str
    count: int
    event_id: str
    replayed: bool
    event: Event | None  # the new event to replicate; None for a replay

    def payload(self) -> dict:
        return {"counter": self.counter, "count": self.count, "event_id": self.event_id}


@dataclass(frozen=True)
class BulkResult:
    event_id: str
    results: Items  # (counter, count after the event), in item order
    replayed: bool
    event: Event | None  # the new event to replicate; None for a replay

    def payload(self) -> dict:
        return {"event_id": self.event_id,
                "results": [{"counter": name, "count": count} for name, count in self.results]}


@dataclass
class RemoteResult:
    applied: list[Event]
    duplicates: int  # retired-origin events included: they are skipped the same way
    deferred: int
    retired: int = 0  # events of retired origins, refused
