"""A read of the whole cluster: `GET /counter/count?consistency=all`.

Theory of operation
-------------------
The node asks every live peer, in parallel and within one deadline, for the prefixes of the
origins it knows (`POST /counter/state`, the anti-entropy route). A peer's reply also carries its
digest; origins this node did not know are asked for in a second request to that peer. Per
origin the furthest prefix seen (this node's or a peer's) is taken, plus this node's events held
above it. A peer's held (out-of-order) events are not in its snapshot, so the value covers every
event applied here and every answering peer's contiguous prefixes. Resets apply too: every
state reply carries the peer's covers, and per origin the furthest cover (this node's or a
peer's) is subtracted, as reset.py does when it merges them.

The rules this module keeps:

* Nothing changes at this node: the replies are read and merged, never adopted. Anti-entropy
  still brings the events here in its own time.
* `merge_count` is pure; `ClusterReader` only asks, over the node's transport, on its own
  bounded thread pool (so reads never delay heartbeats), and never waits past the deadline.
* A peer counts as answered only if every request to it succeeded; what a peer that failed half
  way did answer is still merged (more coverage never makes the value wrong).
"""

from __future__ import annotations

import concurrent.futures
import logging
from dataclasses import dataclass

from dcounter.errors import BadRequest, PeerRefused, PeerUnreachable
from dcounter.reset import further
from dcounter.retirement import RETIRED_ENTRY
from dcounter.wire import MAX_ORIGINS_PER_PULL, decode_covers, decode_digest, decode_snapshot

log = logging.getLogger(__name__)

DEFAULT_TIMEOUT = 2.0  # seconds a read of the whole cluster waits for its peers
MAX_TIMEOUT = 30.0

LocalView = dict[str, tuple[int, int, dict[int, int]]]  # origin -> (w, prefix total, held)
Prefixes = dict[str, tuple[int, int]]  # origin -> (watermark, prefix total of the counter)


Covers = dict[str, tuple[int, int]]  # origin -> (watermark, covered total) of one counter


def merge_count(local: LocalView, remote: list[Prefixes], covers: list[Covers] = ()) -> int:
    """The value of one counter covering `local` (this node: per origin its watermark, prefix
    total and held events `{seq: delta}`) and every peer's prefixes in `remote`: per origin the
    furthest prefix, plus the local held events above it (those at or below it are inside it),
    minus, per origin, the covered total of the furthest reset in `covers` (this node's and the
    peers', merged as reset.py merges them)."""
    furthest: Covers = {}
    for per_origin in covers:
        for origin, cover in per_origin.items():
            if origin not in furthest or further(cover, furthest[origin]):
                furthest[origin] = cover
    best: dict[str, tuple[int, int]] = {o: (w, total) for o, (w, total, _held) in local.items()}
    for prefixes in remote:
        for origin, (w, total) in prefixes.items():
            if w > best.get(origin, (0, 0))[0]:
                best[origin] = (w, total)
    value = sum(total for _w, total in best.values())
    for origin, (_w, _total, held) in local.items():
        covered = best[origin][0]
        value += sum(delta for seq, delta in held.items() if seq > covered)
    return value - sum(total for _w, total in furthest.values())


@dataclass(frozen=True)
class ClusterCount:
    count: int
    answered: int  # members whose events the value covers, this node included
    members: int   # this node and the peers it considers alive

    @property
    def complete(self) -> bool:
        return self.answered == self.members


class ClusterReader:
    """Asks the peers for their prefixes and merges them with this node's state."""

    def __init__(self, node_id: str, transport, clock, max_workers: int = 16):
        self.node_id = node_id
        self.transport = transport
        self.clock = clock
        self._pool = concurrent.futures.ThreadPoolExecutor(max_workers=max_workers,
                                                           thread_name_prefix="read")

    def read(self, counter, name: str, peers: list[str], timeout: float) -> ClusterCount:
        """`counter` is the node's `Counter` (read only); `peers` the live peers."""
        deadline = self.clock.monotonic() + timeout
        known = sorted(counter.digest())
        futures = [self._pool.submit(self._ask, peer, name, known, deadline) for peer in peers]
        done, _late = concurrent.futures.wait(futures, timeout=timeout)
        remote, covers, answered = [], [], 0
        for future in done:
            try:
                prefixes, peer_covers, complete = future.result()
            except Exception:  # a bug here must not fail the read: the peer did not answer
                log.exception("read of the whole cluster: asking a peer failed")
                continue
            remote.append(prefixes)
            covers.append(peer_covers)
            answered += complete
        # Taken last, so it covers everything applied here until the peers answered. Covers
        # of origins this node retired are left out: the base holds what they covered.
        view = counter.read_view(name)
        covers = [{o: c for o, c in peer.items() if o == RETIRED_ENTRY
                   or not counter.is_retired(o)} for peer in covers]
        value = merge_count(view, remote, [counter.cover_view(name), *covers])
        return ClusterCount(value, answered + 1, len(peers) + 1)

    def _ask(self, peer: str, name: str, known: list[str], deadline: float):
        """(the peer's prefixes of `name`, its covers of `name`, whether every request to it
        succeeded)."""
        prefixes: Prefixes = {}
        covers: Covers = {}
        try:
            digest = self._fetch(peer, name, known, deadline, prefixes, covers)
            unknown = sorted(o for o, w in digest.items() if w > 0 and o not in prefixes
                             and o not in known)
            if unknown:
                self._fetch(peer, name, unknown, deadline, prefixes, covers)
        except (PeerUnreachable, PeerRefused, TimeoutError) as exc:
            log.debug("read of the whole cluster: %s did not answer: %s", peer, exc)
            return prefixes, covers, False
        except BadRequest as exc:
            log.warning("ignoring malformed state from %s: %s", peer, exc.message)
            return prefixes, covers, False
        return prefixes, covers, True

    def _fetch(self, peer: str, name: str, origins: list[str], deadline: float,
               into: Prefixes, covers: Covers) -> dict[str, int]:
        """Ask `peer` for `origins` (in requests of at most MAX_ORIGINS_PER_PULL), adding its
        prefixes and covers of `name` to `into` and `covers`; returns the digest of its last
        reply."""
        digest: dict[str, int] = {}
        for start in range(0, max(len(origins), 1), MAX_ORIGINS_PER_PULL):
            remaining = deadline - self.clock.monotonic()
            if remaining <= 0:
                raise TimeoutError("no time left")
            reply = self.transport.post(
                peer, "/counter/state",
                {"node_id": self.node_id, "origins": origins[start:start + MAX_ORIGINS_PER_PULL]},
                timeout=remaining)
            for origin, prefix in decode_snapshot(reply.get("origins")).items():
                into[origin] = (prefix["watermark"], prefix["counters"].get(name, 0))
            covers.update(decode_covers(reply.get("covers", {})).get(name, {}))
            digest = decode_digest(reply.get("digest", {}))
        return digest

    def close(self) -> None:
        self._pool.shutdown(wait=False, cancel_futures=True)
