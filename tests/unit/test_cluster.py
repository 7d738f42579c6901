"""Several real nodes connected by the in-memory FakeNetwork, driven step by step.

Nothing runs by itself (`open()` only, never `start()`; no sender or writer thread): the test
calls `rejoin_once`, `heartbeat_once`, `cleanup_once`, `pull_once` and `retry_once` itself,
moves a FakeClock, and sends replication with the senders' own steps: `Cluster.pump` sends what
every link has due now (`Replicator.step`), `Cluster.drain_replication` also moves the clock
past backoffs until every link is idle. A send "in flight" is one the test took
(`PeerLink.take`) and completes later (`PeerLink.send`), with whatever should happen meanwhile
in between. No test waits or polls: each runs the same way every time.
"""

import dataclasses
import json
import shutil

import pytest

from dcounter.api import MAX_ORIGINS_PER_PULL
from dcounter.config import Config
from dcounter.counter import Event
from dcounter.keyhome import home
from dcounter.node import Node
from tests.fakes import FakeClock, FakeNetwork, make_request

BASE = Config(port=0, in_memory=True, batch_linger=0, drain_timeout=0)
ROUNDS = 200            # clock moves a drain may take before the test fails (a bound, not a wait)
SENDS_AT_ONCE = 10_000  # batches one instant may send before the test fails


class Cluster:
    def __init__(self, size: int, *, seed: int = 0, **config):
        self.clock = FakeClock()
        self.net = FakeNetwork(seed=seed)
        self.ids = [f"n{i}:700{i}" for i in range(1, size + 1)]
        self.nodes: dict[str, Node] = {}
        self.acknowledged: dict[str, int] = {}
        for node_id in self.ids:
            seeds = () if node_id == self.ids[0] else (self.ids[0],)
            cfg = dataclasses.replace(BASE, advertise=node_id, peers=seeds, **config)
            self.add(node_id, cfg)

    def add(self, node_id: str, cfg: Config) -> Node:
        node = Node(cfg, clock=self.clock, transport=self.net.transport(node_id))
        node.open()  # nothing runs: the test drives every step, replication's too
        self.net.attach(node)
        self.nodes[node_id] = node
        return node

    def add_member(self, node_id: str, cfg: Config) -> Node:
        """A node added later that every other should list (counted in `ids`)."""
        self.ids.append(node_id)
        return self.add(node_id, cfg)

    def __getitem__(self, node_id: str) -> Node:
        return self.nodes[node_id]

    def close(self):
        for node in self.nodes.values():
            node.stop(leave=False)

    # -- client side ------------------------------------------------------------------------------
    def increment(self, node_id: str, counter: str = "c", delta: int = 1, key=None) -> dict | None:
        """An increment at a node through its route table; counted when acknowledged."""
        body = {"counter": counter, "delta": delta}
        headers = {"Idempotency-Key": key} if key else None
        response = self[node_id].app.handle(make_request("POST", "/counter/increment", body,
                                                         headers=headers))
        if response.status != 200:
            return None
        if response.headers.get("Idempotent-Replayed") != "true":
            self.acknowledged[counter] = self.acknowledged.get(counter, 0) + delta
        return response

    def counts(self, counter: str = "c") -> dict[str, int]:
        return {node_id: node.count(counter) for node_id, node in self.nodes.items()}

    # -- driving the steps ------------------------------------------------------------------------
    def form(self, rounds: int = 3) -> None:
        for _ in range(rounds):
            for node in self.nodes.values():
                node.rejoin_once()

    def alive(self) -> dict[str, list[str]]:
        return {node_id: node.peers.alive() for node_id, node in self.nodes.items()}

    def fully_connected(self) -> bool:
        return all(alive == sorted(set(self.ids) - {node_id})
                   for node_id, alive in self.alive().items())

    def links(self, skip=()):
        """The status of every link (but those to the peers in `skip`)."""
        for node in self.nodes.values():
            yield from (link for peer, link in node.replicator.backlogs().items()
                        if peer not in skip)

    def replication_settled(self, skip=()) -> bool:
        return all(link["state"] == "idle" and link["backlog"] == 0 for link in self.links(skip))

    def pump(self, skip=()) -> int:
        """Send what every link has due at the clock's now, as the sender threads would, until
        no link has more (a failed send backs off; a success lets the next batch go). Links to
        the peers in `skip` send nothing: their events wait. Returns how many batches went."""
        total = 0
        for _ in range(SENDS_AT_ONCE):
            sent = sum(node.replicator.step(skip) for node in self.nodes.values())
            if not sent:
                return total
            total += sent
        raise AssertionError(f"replication keeps sending at one instant: {list(self.links())}")

    def drain_replication(self, skip=()) -> None:
        """Deliver everything queued (but to `skip`): send what is due, and while a link is not
        idle (backing off), move the fake clock by the retry cap, so that every scheduled retry
        is due, and fire the retries as the retry loop would."""
        for _ in range(ROUNDS):
            self.pump(skip)
            if self.replication_settled(skip):
                return
            self.clock.advance(10.0)
            for node in self.nodes.values():
                node.retry_once()
        raise AssertionError(f"replication did not settle: {list(self.links(skip))}")

    def anti_entropy_round(self) -> None:
        """Rejoins, then heartbeats a heartbeat interval apart: a lead that lasted that long
        with the puller's watermark unchanged is pulled."""
        for node in self.nodes.values():
            node.rejoin_once()
        for node in self.nodes.values():
            node.heartbeat_once()
        self.clock.advance(BASE.heartbeat_interval)
        for node in self.nodes.values():
            node.heartbeat_once()
        for node in self.nodes.values():
            node.pull_once()

    def converged(self, counter: str = "c") -> bool:
        return set(self.counts(counter).values()) == {self.acknowledged.get(counter, 0)}


@pytest.fixture
def cluster_of():
    clusters = []

    def make(size, **kwargs):
        cluster = Cluster(size, **kwargs)
        clusters.append(cluster)
        return cluster

    yield make
    for cluster in clusters:
        cluster.close()


def test_nodes_find_each_other_through_a_seed(cluster_of):
    c = cluster_of(3)
    c.form()
    assert c.fully_connected()
    for node in c.nodes.values():
        assert node.replicator.peers() == sorted(set(c.ids) - {node.node_id})


def test_increments_replicate_to_every_node(cluster_of):
    c = cluster_of(3)
    c.form()
    for i in range(30):
        c.increment(c.ids[i % 3], delta=i + 1)
    c.drain_replication()
    assert c.converged() and c.acknowledged["c"] == sum(range(1, 31))


def test_a_second_hand_peer_is_not_added_until_contacted(cluster_of):
    c = cluster_of(3)
    n1, n2, n3 = c.ids
    c.net.partition(n2, n3)
    c.form()
    # n3 heard of n2 from n1's join reply and from heartbeats, but never reached it.
    for node in c.nodes.values():
        node.heartbeat_once()
    assert c[n3].peers.alive() == [n1]
    assert c[n2].peers.alive() == [n1]
    assert n2 in c[n3].peers.candidates(c.clock.monotonic())
    assert n2 not in c[n3].replicator.peers()
    c.net.heal()
    c.clock.advance(10.0)  # past the candidate's backoff
    c[n3].rejoin_once()
    assert c[n3].peers.alive() == [n1, n2]
    assert c[n2].peers.alive() == [n1, n3]  # n3's join reached n2 directly


def test_gossip_does_not_bring_a_dead_node_back(cluster_of):
    c = cluster_of(3)
    n1, n2, n3 = c.ids
    c.form()
    c.net.detach(n3)  # n3 dies
    c.clock.advance(7.0)
    c[n2].heartbeat_once()  # n1 hears from n2; n2 has not swept n3 out yet
    assert c[n1].cleanup_once() == [n3]
    c[n1].heartbeat_once()  # n2's reply still lists n3 as alive
    assert c[n2].peers.alive() == [n1, n3]
    c[n1].rejoin_once()
    assert c[n1].peers.alive() == [n2]
    assert c[n1].peers.candidates(c.clock.monotonic())[n3]["attempts"] == 1
    assert n3 not in c[n1].replicator.peers()


def test_convergence_after_a_partition_heals(cluster_of):
    c = cluster_of(3)
    n1, n2, n3 = c.ids
    c.form()
    for i in range(9):
        c.increment(c.ids[i % 3])
    c.drain_replication()
    assert c.converged()

    c.net.isolate(n1)
    for i in range(20):
        c.increment(n1, delta=2)
        c.increment(n2 if i % 2 else n3, delta=3)
        c.increment(n1, counter="only-n1")
    c.pump()  # the sends across the partition fail
    for node_id, node in c.nodes.items():
        for peer, link in node.replicator.backlogs().items():
            assert link["state"] == ("backoff" if n1 in (node_id, peer) else "idle")
    c.clock.advance(c[n1].config.peer_timeout + 1)
    for node_id in (n2, n3):
        c[node_id].heartbeat_once()
    assert c[n1].cleanup_once() == [n2, n3]
    assert c[n2].cleanup_once() == [n1] and c[n3].cleanup_once() == [n1]
    assert c[n1].replicator.peers() == []  # its backlog is gone: anti-entropy must do it
    assert c.counts()[n1] != c.counts()[n2]

    c.net.heal()
    for _ in range(10):
        if c.converged() and c.converged("only-n1") and c.fully_connected():
            break
        c.clock.advance(10.0)
        c.anti_entropy_round()
    assert c.fully_connected()
    assert c.counts() == dict.fromkeys(c.ids, c.acknowledged["c"])
    assert c.counts("only-n1") == dict.fromkeys(c.ids, 20)
    # Replication works again after the heal, not only anti-entropy.
    c.increment(n1, delta=100)
    c.drain_replication()
    assert c.converged()


@pytest.mark.parametrize("seed", [1, 2, 3])
def test_dropped_duplicated_and_late_replicate_messages_still_count_exactly(cluster_of, seed):
    c = cluster_of(3, seed=seed)
    c.form()
    assert c.fully_connected()
    c.net.set_faults(drop_request=0.2, drop_reply=0.2, duplicate=0.3, delay=0.1)
    for i in range(180):
        c.increment(c.ids[i % 3], counter="c" if i % 4 else "d", delta=(i % 7) + 1)
        if i < 120:
            c.drain_replication()  # one event per message: hundreds of fault draws
    c.drain_replication()  # the last 60 went out in batches
    late = c.net.deliver_late()
    c.net.clear_faults()
    stats = c.net.stats
    assert stats["dropped_requests"] and stats["dropped_replies"] and stats["duplicated"]
    assert late
    # Replication alone (no anti-entropy step ran): every event once, everywhere.
    assert c.converged("c") and c.converged("d")
    for node in c.nodes.values():
        assert node.counter.held_total() == 0


def test_a_duplicated_batch_reaching_a_node_out_of_order_counts_once(cluster_of):
    c = cluster_of(2)
    n1, n2 = c.ids
    c.form()
    c.net.set_faults(delay=1.0)  # every replicate is held back: n1 sees failures
    for _ in range(5):
        c.increment(n1)
    c.pump()
    assert c[n1].replicator.backlogs()[n2]["state"] == "backoff"  # the send failed
    c.net.clear_faults()
    c.drain_replication()  # the retry delivers the backlog
    assert c.net.deliver_late() >= 1  # then the old attempts arrive, late
    assert c.counts() == {n1: 5, n2: 5}


def test_a_restarted_node_catches_up_by_anti_entropy(cluster_of):
    c = cluster_of(2)
    n1, n2 = c.ids
    c.form()
    for _ in range(50):
        c.increment(n1)
    c.drain_replication()
    old = c.nodes.pop(n2)
    c.net.detach(n2)
    old.stop(leave=False)
    c.add(n2, dataclasses.replace(old.config))  # in memory: a new, empty node, same address
    assert c[n2].count("c") == 0
    for _ in range(3):
        c.clock.advance(10.0)
        c.anti_entropy_round()
    assert c.counts() == {n1: 50, n2: 50}
    assert c[n2].readiness()[0]


def test_an_idempotent_retry_at_another_node_counts_once(cluster_of):
    c = cluster_of(2)
    n1, n2 = c.ids
    c.form()
    first = c.increment(n1, delta=4, key="client-1")
    c.drain_replication()
    retry = c.increment(n2, delta=4, key="client-1")
    assert retry.headers["Idempotent-Replayed"] == "true"
    c.drain_replication()
    assert c.counts() == {n1: 4, n2: 4}
    assert json.loads(retry.body) == json.loads(first.body) | {"count": 4}
    # One event, made by the key's home (n1 or n2) whichever node took the first attempt.
    assert json.loads(retry.body)["event_id"] == json.loads(first.body)["event_id"]


def test_a_node_of_another_cluster_never_merges(cluster_of):
    c = cluster_of(2)
    n1, n2 = c.ids
    other = c.add("x1:7100", dataclasses.replace(BASE, advertise="x1:7100", cluster="other",
                                                 peers=(n1,)))
    c.form()
    other.rejoin_once()
    assert other.peers.alive() == []
    assert "x1:7100" not in c[n1].peers.alive()
    assert c[n1].peers.alive() == [n2]


def test_a_backlog_over_its_bound_is_dropped_and_anti_entropy_catches_up(cluster_of):
    c = cluster_of(2, max_backlog=5)
    n1, n2 = c.ids
    c.form()
    c.net.partition(n1, n2)
    for _ in range(12):
        c.increment(n1)
        c.pump()  # the first send fails; the link backs off and the backlog grows
    assert c[n1].replicator.backlogs()[n2]["dropped"] > 0
    assert c[n1].replicator.backlogs()[n2]["backlog"] <= 5
    c.net.heal()
    c.drain_replication()
    assert c[n2].count("c") < 12  # replication alone cannot bring back what was dropped
    c.anti_entropy_round()
    assert c.counts() == {n1: 12, n2: 12}


def test_a_node_restored_from_an_old_backup_takes_a_fresh_origin(cluster_of, tmp_path):
    c = cluster_of(2)
    n1, n2 = c.ids
    durable = dataclasses.replace(c[n1].config, in_memory=False, data_dir=str(tmp_path / "n1"),
                                  sync="normal")

    def restart_n1():
        old = c.nodes.pop(n1)
        c.net.detach(n1)
        old.stop(leave=False)
        node = c.add(n1, durable)  # without its writer thread each request commits its own group
        c[n2].heartbeat_once()  # n2 still lists n1: its heartbeat reconnects them
        return node

    restart_n1()
    c.form()
    for _ in range(5):
        c.increment(n1)
    c.drain_replication()
    old_origin = c[n1].counter.local_origin
    c[n1].stop(leave=False)  # closes the store cleanly before the copy
    shutil.copytree(tmp_path / "n1", tmp_path / "backup", ignore=shutil.ignore_patterns("LOCK"))
    restart_n1()
    for _ in range(5):
        c.increment(n1)
    c.drain_replication()
    assert c[n2].counter.watermark(old_origin) == 10

    c[n1].stop(leave=False)
    shutil.rmtree(tmp_path / "n1")
    shutil.copytree(tmp_path / "backup", tmp_path / "n1")
    n1_node = restart_n1()
    assert n1_node.counter.local_origin == old_origin
    assert n1_node.counter.watermark(old_origin) == 5
    c.clock.advance(10.0)
    c.anti_entropy_round()  # n1 sees its own origin ahead at n2
    assert n1_node.counter.local_origin != old_origin
    assert n1_node.count("c") == 10
    result = json.loads(c.increment(n1).body)
    assert result["event_id"] == f"{n1_node.counter.local_origin}:1"
    c.drain_replication()
    assert c.counts() == {n1: 11, n2: 11}


def _take(c: Cluster, node_id: str, peer: str):
    """The batch `node_id`'s link to `peer` sends now, taken: it is in flight until the test
    calls `link.send(batch)`. -> (link, batch)"""
    link = c[node_id].replicator.link(peer)
    batch = link.take(c.clock.monotonic())
    assert batch is not None
    assert c[node_id].replicator.backlogs()[peer]["state"] == "sending"
    return link, batch


def _replicate_in_flight(cluster_of):
    """Two formed nodes; n1's replicate to n2 is in flight. -> (cluster, n1, n2, n1's link to
    n2, the batch)"""
    c = cluster_of(2)
    n1, n2 = c.ids
    c.form()
    c.increment(n1)
    return (c, n1, n2) + _take(c, n1, n2)


def test_a_late_replicate_reply_does_not_bring_back_a_peer_that_left(cluster_of):
    c, n1, n2, link, batch = _replicate_in_flight(cluster_of)
    leave = make_request("POST", "/nodes/leave", {"node_id": n2})
    assert c[n1].app.handle(leave).status == 200
    assert c[n1].peers.alive() == []
    assert c[n1].replicator.link(n2) is None
    assert link.send(batch)  # the reply arrives after the leave
    assert c[n2].count("c") == 1
    assert c[n1].peers.alive() == []  # a reply is no reason to list a peer that left
    c.increment(n1)
    assert c.pump() == 0 and c[n2].count("c") == 1  # nothing more goes to it


def test_a_late_replicate_reply_does_not_revive_an_expired_peer_without_a_link(cluster_of):
    c, n1, n2, link, batch = _replicate_in_flight(cluster_of)
    c.clock.advance(7.0)
    assert c[n1].cleanup_once() == [n2]
    assert c[n1].replicator.link(n2) is None  # the cleanup removed it
    assert link.send(batch)  # the reply arrives after the expiry
    # Either n2 is a rejoin candidate again, or it is alive *and* replicated to.
    alive = c[n1].peers.is_alive(n2)
    assert alive == (n2 in c[n1].replicator.peers())
    c.clock.advance(10.0)
    c.anti_entropy_round()
    assert c[n1].peers.alive() == [n2] and c[n1].replicator.peers() == [n2]
    c.increment(n1)
    c.drain_replication()
    assert c.counts() == {n1: 2, n2: 2}


def test_events_beyond_the_gap_cap_wait_for_anti_entropy(cluster_of):
    c = cluster_of(2, max_backlog=2, gap_cap=3)
    n1, n2 = c.ids
    c.form()
    c.net.partition(n1, n2)
    for _ in range(10):
        c.increment(n1)
        c.pump()
    assert c[n1].replicator.backlogs()[n2]["dropped"] > 0
    c.net.heal()
    c.drain_replication()
    for _ in range(10):  # seq 11..20: far above n2's watermark for n1's origin
        c.increment(n1)
        c.drain_replication()
    origin = c[n1].counter.local_origin
    assert c[n2].counter.watermark(origin) < 10
    assert c[n2].counter.held_total() <= 3  # the gap is capped; the rest was deferred
    assert c[n2].count("c") < 20
    c.anti_entropy_round()
    assert c.counts() == {n1: 20, n2: 20}
    assert c[n2].counter.held_total() == 0 and c[n2].counter.watermark(origin) == 20


def test_a_lead_made_of_pushes_in_flight_is_not_pulled_and_their_keys_arrive(cluster_of):
    c = cluster_of(2)
    n1, n2 = c.ids
    c.form()
    # A key whose home is n1, so that n1 applies it itself and pushes it to n2.
    key = next(k for k in (f"client-{n}" for n in range(100)) if home(k, c.ids) == n1)
    c.increment(n1, delta=3, key=key)
    link, batch = _take(c, n1, n2)  # n1's push to n2 is on its way
    c[n2].heartbeat_once()  # n1's reply shows it ahead
    c[n2].pull_once()  # too early: the push may still arrive
    assert link.send(batch)
    c.drain_replication()
    c.clock.advance(c[n2].config.heartbeat_interval)
    c[n2].heartbeat_once()
    c[n2].pull_once()
    assert c[n2].metrics.value("dcounter_anti_entropy_pulls_total") == 0
    # The key arrived with the push: n2 itself knows it (a retry sent to n2 as a client's
    # would be forwarded to n1, the home, so it is put to n2 as a forwarded request).
    retry = c[n2].app.handle(make_request("POST", "/counter/forward", {
        "node_id": n1, "counter": "c", "delta": 3, "key": key}))
    assert json.loads(retry.body)["replayed"] is True
    assert c.counts() == {n1: 3, n2: 3}


def test_origins_past_the_old_digest_limit_are_retired_and_a_late_joiner_counts_them(cluster_of):
    c = cluster_of(2, origin_retire_after=100.0)
    n1, n2 = c.ids
    c.form()
    c.increment(n1, delta=7)
    c.drain_replication()
    per_round, rounds = 4_000, 3  # 12 000 origins made, more than a digest may carry
    assert per_round * rounds > MAX_ORIGINS_PER_PULL
    for r in range(rounds):
        events = [Event(f"r{r}o{i}", 1, "c", 1) for i in range(per_round)]
        for node_id, other in ((n1, n2), (n2, n1)):
            c[node_id].replicate(other, events)
        c.acknowledged["c"] += per_round
        c.anti_entropy_round()
        for node in c.nodes.values():
            node.cleanup_once()  # first sight of the new origins: their activity is stamped
        c.clock.advance(101.0)
        c.anti_entropy_round()  # each shows the other the origins, unchanged
        for node in c.nodes.values():
            node.cleanup_once()
        assert [node.counter.digest() for node in c.nodes.values()] == [
            {c[n1].counter.local_origin: 1, "_retired": per_round * (r + 1)}] * 2
        assert c.fully_connected() and c.converged()
    assert c[n1].counter.retired_count() == per_round * rounds
    c.add_member("n3:7003", dataclasses.replace(BASE, advertise="n3:7003", peers=(n1,)))
    for _ in range(3):
        c.anti_entropy_round()
    assert c.fully_connected()
    assert c.counts() == {n1: 12_007, n2: 12_007, "n3:7003": 12_007}
    assert c.converged()
    refused = c[n1].replicate(n2, [Event("r0o1", 2, "c", 1), Event("fresh", 1, "c", 1)])
    assert refused.retired == 1 and len(refused.applied) == 1
    assert "dcounter_retired_origin_events_refused 1" in c[n1].metrics.render()


def test_an_event_held_above_a_gap_that_died_with_its_node_reaches_every_node(cluster_of):
    """n1's first event dies with it (in memory, never delivered); its second reached n3 only,
    which holds it above the gap. Anti-entropy gives it to n2 and to n1's next incarnation:
    every node shows the same value."""
    c = cluster_of(3)
    n1, n2, n3 = c.ids
    c.form()
    assert c.fully_connected()
    c.net.isolate(n1)
    c.increment(n1, delta=2)  # seq 1: waits in n1's links, which fail
    c.pump()
    assert [link["state"] for link in c[n1].replicator.backlogs().values()] == ["backoff"] * 2
    c.clock.advance(7.0)
    assert c[n1].cleanup_once() == [n2, n3]  # their links go, and seq 1 with them
    c.net.heal()
    c.net.partition(n1, n2)
    c.clock.advance(10.0)  # the rejoin backoff has passed
    c[n1].rejoin_once()
    assert c[n1].peers.alive() == [n3]
    c.increment(n1, delta=5)  # seq 2: a new link pushes it to n3, above its gap
    c.pump()
    assert c[n3].count("c") == 5
    assert c[n3].counter.held_total() == 1
    old = c.nodes.pop(n1)
    c.net.detach(n1)
    old.stop(leave=False)
    c.add(n1, dataclasses.replace(old.config))  # in memory: seq 1 died with it
    c.net.heal()
    for _ in range(3):
        c.clock.advance(10.0)
        c.anti_entropy_round()
    assert c.fully_connected()
    assert c.counts() == {n1: 5, n2: 5, n3: 5}


def pulls_made(node) -> int:
    line, = [line for line in node.metrics.render().splitlines()
             if line.startswith("dcounter_anti_entropy_pulls_total ")]
    return int(line.split()[1])


def test_a_node_never_pulls_an_origin_it_retired_from_a_peer_that_still_carries_it(cluster_of):
    c = cluster_of(1, origin_retire_after=100.0)
    n1, n2 = c.ids[0], "n2:7002"
    c[n1].replicate("n9:7009", [Event("gone", 1, "c", 5)])  # an origin whose node is gone
    c[n1].cleanup_once()  # first sight: its activity is stamped
    c.clock.advance(101.0)
    c[n1].cleanup_once()  # no peer listed: n1 decides alone
    assert c[n1].counter.retired_count() == 1
    # n2 still carries it, and has more of it than n1 folded in (its node came back to n2 only):
    # adopting refuses those, so pulling them is futile, and n2 refuses n1's base for them.
    c.add_member(n2, dataclasses.replace(BASE, advertise=n2, peers=(n1,)))
    c[n2].replicate("n9:7009", [Event("gone", 1, "c", 5), Event("gone", 2, "c", 1)])
    c.form()
    assert c.fully_connected()
    for _ in range(3):
        c[n1].heartbeat_once()
        c.clock.advance(BASE.heartbeat_interval)
        assert c[n1].pull_once() == 0
    assert pulls_made(c[n1]) == 0
    assert not c[n1].anti_entropy.waiting() and c[n1].readiness()[0]
    # n2 has every event n1 counts (all of the origin n1 folded in): it is caught up with n1.
    assert c[n1].status()["members"][n2]["caught_up"] is True


def test_a_base_a_node_refused_is_not_pulled_again_until_a_larger_one_shows(cluster_of):
    c = cluster_of(1, origin_retire_after=100.0)
    n1, n2 = c.ids[0], "n2:7002"
    c[n1].replicate("n9:7009", [Event("gone", 1, "c", 5)])
    c[n1].cleanup_once()
    c.clock.advance(101.0)
    c[n1].cleanup_once()
    c.add_member(n2, dataclasses.replace(BASE, advertise=n2, peers=(n1,)))
    c[n2].replicate("n9:7009", [Event("gone", 1, "c", 5), Event("gone", 2, "c", 1)])
    c.form()
    c.anti_entropy_round()
    assert pulls_made(c[n2]) == 1  # n1's base lacks gone:2, so n2 refused it
    for _ in range(3):
        c.anti_entropy_round()
    assert pulls_made(c[n2]) == 1 and c[n2].readiness()[0]
    assert c.counts() == {n1: 5, n2: 6}  # the limit README states, unchanged
    c[n1].replicate("n8:7008", [Event("later", 1, "c", 1)])  # n1 retires one more origin
    c[n2].replicate("n8:7008", [Event("later", 1, "c", 1)])
    c.anti_entropy_round()
    for node_id in (n1, n2):
        c[node_id].cleanup_once()
    c.clock.advance(101.0)
    c[n1].cleanup_once()
    assert c[n1].counter.retired_count() == 2
    c.anti_entropy_round()
    assert pulls_made(c[n2]) == 2  # a larger base shows: asked once more (and refused)
