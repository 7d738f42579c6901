"""Anti-entropy's I/O: the pulls of prefixes a node makes (`POST /counter/state`) and the replies
it gives, carried out for the decisions of antientropy.py.

Owns: making the pulls that are due (`pull_once`, which the node's sync loop calls), reading a
state reply, committing what it brings in one writer job (prefixes, held events, then the
covers and tombstones of resets: `adopt_job`), and the reply to a peer's pull (`reply`). Which
origins to pull from whom, and when, is antientropy.py's; the leads come in with heartbeats
(gossip.py). The plain functions (`due_pulls`, `pulled`, `pull_request`, `read_state`,
`adopt_job`, `state_reply`) are what a pull decides and carries, without I/O: the simulator
(simnode.py) runs them too. It logs as `dcounter.node`, the name operators filter the node's
lines by.
"""

from __future__ import annotations

import logging

from dcounter.antientropy import AntiEntropy
from dcounter.config import Config
from dcounter.counter import Counter
from dcounter.errors import BadRequest, PeerRefused, PeerUnreachable
from dcounter.metrics import Metrics
from dcounter.protocol import PeerProtocols
from dcounter.transport import Transport
from dcounter.wire import decode_covers, decode_deleted, decode_snapshot
from dcounter.writer import Writer

log = logging.getLogger("dcounter.node")


def due_pulls(anti_entropy: AntiEntropy, counter: Counter, now: float) -> dict[str, list[str]]:
    """The pulls due at `now` (a peer's lead lasted a heartbeat interval with our watermark
    unchanged): {peer: origins}."""
    return anti_entropy.due_pulls(counter.digest_reached(), now,
                                  local_origin=counter.local_origin,
                                  own_held=counter.held_summaries(),
                                  retired=counter.retired_origins())


def pulled(anti_entropy: AntiEntropy, counter: Counter, peer: str, origins: list[str],
           now: float, ok: bool) -> None:
    """A pull ended (`ok`: it answered usefully and what it brought was committed)."""
    anti_entropy.pulled(peer, origins, counter.digest_reached(), now, ok=ok,
                        own_held=counter.held_summaries())


def pull_request(node_id: str, origins: list[str], held: int) -> dict:
    """The body of `POST /counter/state`: `held` held events per origin at most (protocol 2;
    0 asks for none)."""
    request = {"node_id": node_id, "origins": origins}
    if held:
        request["held"] = held
    return request


def read_state(reply: dict, held: int) -> tuple[dict, dict, list[str]]:
    """A state reply to a pull that asked for `held` held events: (snapshot, covers, deleted).
    Raises BadRequest for a malformed one."""
    return (decode_snapshot(reply.get("origins"), max_held=held),
            decode_covers(reply.get("covers", {})), decode_deleted(reply.get("deleted", [])))


def state_reply(counter: Counter, node_id: str, origins: list[str], held: int = 0) -> dict:
    """The reply to a pull: the prefixes asked for (with up to `held` held events per origin),
    the digest, and every cover and tombstone of a reset (reset.py: a prefix may contain resets
    the puller never got), only when there are some."""
    covers, deleted = counter.covers_wire()
    reply = {"node_id": node_id, "origins": counter.snapshot(origins, held),
             "digest": counter.digest()}
    if covers or deleted:
        reply["covers"] = covers
        reply["deleted"] = deleted
    return reply


def adopt_job(snapshot: dict, covers, deleted, now: float):
    """The writer job that adopts a decoded state reply: each origin's prefix if still ahead,
    its held events merged, then the covers and tombstones; returns how many origins changed."""

    def job(txn):
        changed = 0
        for o, s in snapshot.items():
            adopted = txn.adopt(o, s["watermark"], s["counters"], s.get("retired"))
            merged = txn.adopt_held(o, s["held"], now) if s.get("held") else 0
            changed += bool(adopted or merged)
        txn.adopt_covers(covers, deleted)  # after the base: covers of retired are skipped
        return changed

    return job


class Pulls:
    def __init__(self, *, node_id: str, config: Config, clock, transport: Transport,
                 counter: Counter, writer: Writer, anti_entropy: AntiEntropy,
                 protocols: PeerProtocols, metrics: Metrics):
        self.node_id = node_id
        self.config = config
        self.clock = clock
        self.transport = transport
        self.counter = counter
        self.writer = writer
        self.anti_entropy = anti_entropy
        self.protocols = protocols
        self.metrics = metrics

    def pull_once(self) -> int:
        """Make the pulls that are due (a peer's lead lasted a heartbeat interval with our
        watermark unchanged); returns origins adopted."""
        if not self.anti_entropy.waiting():
            return 0
        due = due_pulls(self.anti_entropy, self.counter, self.clock.monotonic())
        adopted = 0
        for peer, origins in due.items():
            count = None
            try:
                count = self._pull(peer, origins)
            finally:
                pulled(self.anti_entropy, self.counter, peer, origins,
                       self.clock.monotonic(), ok=count is not None)
            adopted += count or 0
        return adopted

    def _pull(self, peer: str, origins: list[str]) -> int | None:
        """Pull `origins`' prefixes from `peer`, with their held events (up to --gap-cap per
        origin) when it speaks protocol 2; returns how many origins changed, None when the
        peer did not answer usefully."""
        held = self.config.gap_cap if self.protocols.for_events(peer) >= 2 else 0
        try:
            reply = self.transport.post(peer, "/counter/state",
                                        pull_request(self.node_id, origins, held))
            snapshot, covers, deleted = read_state(reply, held)
        except (PeerUnreachable, PeerRefused) as exc:
            log.debug("anti-entropy pull from %s failed: %s", peer, exc)
            return None
        except BadRequest as exc:
            log.warning("ignoring malformed state from %s: %s", peer, exc.message)
            return None
        self.metrics.inc("dcounter_anti_entropy_pulls_total")

        before = self.counter.local_origin
        count = self.writer.submit(adopt_job(snapshot, covers, deleted, self.clock.time()))
        if self.counter.local_origin != before:
            log.warning("peer %s holds events of our origin %s above our watermark (a "
                        "restored backup or cloned disk?); new events use origin %s",
                        peer, before, self.counter.local_origin)
        if count:
            log.info("caught up %d origin(s) from %s", count, peer)
            self.metrics.inc("dcounter_anti_entropy_adopted_total", count)
        return count

    def reply(self, origins: list[str], held: int = 0) -> dict:
        """The reply to a pull (`state_reply`)."""
        return state_reply(self.counter, self.node_id, origins, held)
