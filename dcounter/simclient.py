"""The simulator's clients: what they send to which node and when, what they are answered, and
when they retry (`Clients`, driven by the `Simulation` in sim.py).

The workload of a seed: 220-280 increments of both signs at random nodes over `work_until`
seconds (four counters, seven in ten with an idempotency key), and a few resets and deletes:
two to four at random times and one during every fault of the plan (at the faulted node one time
in two), half of them keyed. A request reaches its node after a network delay; the answer comes
back the same way or is lost (1 % and the current loss rate), and a client that hears nothing
within `CLIENT_TIMEOUT` seconds counts the request as indeterminate. Keyed requests are retried
(eight in ten after a failure or no answer, one in ten after a success, three tries at most) with
the same key, at the same node or at a random one. Increments and their retries draw from the
seed's work stream, resets from a stream of their own.

Every attempt goes to the oracle (simcheck.py) with what it made and where: increments through
the node's increment route, which may forward a keyed one to its key's home (simnode.py).
"""

from __future__ import annotations

import random

from dcounter.simcheck import Attempt

COUNTERS = ("a", "b", "c", "d")
CLIENT_TIMEOUT = 3.0     # seconds a client waits for an answer


class Clients:
    def __init__(self, sim, rng: random.Random, reset_rng: random.Random):
        self.sim = sim
        self.rng = rng              # increments and their retries
        self.reset_rng = reset_rng  # resets and deletes and their retries
        self.ops = 0
        self.resets = 0             # reset and delete requests, retries included
        self.deletes = 0

    def plan(self, work_until: float, faults) -> None:
        sim, rng = self.sim, self.rng
        ids = list(sim.nodes)
        count = rng.randint(220, 280)
        for op in range(count):
            when = round(rng.uniform(0.5, work_until), 4)
            delta = rng.choice((-1, 1)) * rng.randint(1, 9)
            key = f"k{op}" if rng.random() < 0.7 else None
            attempt = Attempt(op, rng.choice(ids), rng.choice(COUNTERS), delta, key, 1)
            sim.world.at(when, self.send, attempt)
        rr = self.reset_rng
        times = [(rr.uniform(5.0, work_until), rr.choice(ids)) for _ in range(rr.randint(2, 4))]
        for fault in faults:
            node = fault.node if fault.node is not None and rr.random() < 0.5 else rr.choice(ids)
            times.append((rr.uniform(fault.start, fault.start + fault.duration), node))
        for op, (when, node) in enumerate(times, start=count):
            kind = "delete" if rr.random() < 0.3 else "reset"
            key = f"k{op}" if rr.random() < 0.5 else None
            attempt = Attempt(op, node, rr.choice(COUNTERS), 0, key, 1, kind)
            sim.world.at(round(when, 4), self.send, attempt)

    def send(self, attempt: Attempt) -> None:
        sim = self.sim
        if attempt.kind == "increment":
            self.ops += 1
        else:
            self.resets += 1
            self.deletes += attempt.kind == "delete"
        attempt.sent = sim.world.now
        sim.oracle.attempts.append(attempt)
        sim.world.after(sim.net.delay(), self.arrive, attempt)
        sim.world.after(CLIENT_TIMEOUT, self.answered, attempt, "indeterminate")

    def arrive(self, attempt: Attempt) -> None:
        sim = self.sim
        node = sim.nodes[attempt.node]
        if attempt.node in sim.restored:
            others = set(sim.nodes) - {attempt.node}
            if node.up and (node.compared >= others or (sim.eager_restored and node.compared)):
                sim.restored.discard(attempt.node)
            else:
                # A restored node reuses its origin: it gets traffic only after comparing digests
                # with every peer, so that it sees its origin ahead wherever that is.
                self.answered(attempt, "failed")
                return
        if not node.up:
            self.answered(attempt, "failed")  # connection refused: nothing happened
        elif node.paused:
            node.inbox.append((self.serve, (node, attempt)))
        else:
            self.serve(node, attempt)

    def serve(self, node, attempt: Attempt) -> None:
        sim = self.sim
        attempt.decided = sim.world.now
        if attempt.kind == "increment":
            attempt.view = tuple(node.peers.alive())
            node.client_increment(
                attempt.counter, attempt.delta, attempt.key,
                lambda outcome, _result: self.reply(attempt, outcome),
                lambda node_id, event: sim.oracle.committed(node_id, attempt, event))
            return
        node.reset(attempt.counter, attempt.kind == "delete", attempt.key,
                   lambda job: self.reset_done(node, attempt, job))

    def reset_done(self, node, attempt: Attempt, job) -> None:
        """A reset's group committed (or failed): the answer goes back."""
        if job.error is not None:
            outcome = "failed"
        else:
            result = job.result
            outcome = "replayed" if result.replayed else "new"
            if not result.replayed:
                self.sim.oracle.committed(node.node_id, attempt, result.event,
                                          node.disk.retired, node.disk.base_covers)
        self.reply(attempt, outcome)

    def reply(self, attempt: Attempt, outcome: str) -> None:
        """The node's answer on its way back: "unavailable" (a 503 after the key's home did not
        answer) leaves the outcome unknown to the client."""
        sim = self.sim
        if outcome == "unavailable":
            outcome = "indeterminate"
        if self.rng.random() < 0.01 + sim.net.loss:
            return  # the answer is lost: the client times out
        sim.world.after(sim.net.delay(), self.answered, attempt, outcome)

    def answered(self, attempt: Attempt, outcome: str) -> None:
        if attempt.state != "pending":
            return
        attempt.state = outcome
        attempt.done = self.sim.world.now
        self.sim.world.record(f"client {attempt.kind} op{attempt.op}@{attempt.node} {outcome}")
        rng = self.rng if attempt.kind == "increment" else self.reset_rng
        if attempt.key is None or attempt.tries >= 3:
            return
        retry = rng.random() < (0.1 if outcome in ("new", "replayed") else 0.8)
        if retry:
            node = attempt.node if rng.random() < 0.5 else rng.choice(list(self.sim.nodes))
            again = Attempt(attempt.op, node, attempt.counter, attempt.delta, attempt.key,
                            attempt.tries + 1, attempt.kind)
            self.sim.world.after(rng.uniform(0.2, 3.0), self.send, again)
