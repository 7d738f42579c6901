"""Scale figures: what a cluster's size costs each node (`python -m dcounter.simscale`).

Theory of operation
-------------------
Two sources, because the simulator models no CPU:

* **The simulator** (sim.py) with the default `Config`: N nodes form a cluster, then the
  requests each node sends are counted over a window of virtual time, idle and under a client
  load spread round-robin over the nodes, by kind: membership (join, heartbeat, leave),
  replication (replicate) and anti-entropy (state). Each request is one HTTP request and its
  response; on average a node serves as many as it sends. The JSON size of membership requests
  and their replies is counted too, since a heartbeat carries the sender's digest and peer list
  and so grows with N. Then the *heal* figure: the cluster splits in two halves for longer
  than the peer timeout while the load goes on, the load stops, the halves heal, and the time
  until every node lists every other node, shows the same counters and digest and has nothing
  left to send or pull (simcheck.unsettled) is measured, per seed.
* **Real processes** (scaleprocs.py, `--real N`, `--blackhole N,K`): the CPU an idle member
  costs each node, and whether silenced peers drag the others down.
* **The rule** (`supported_size`): the largest cluster in which what the members cost a node
  stays within a budget (5 %) of one core.

The message counter wraps the simulated network's `send` from outside: nothing in the
simulator's modules knows it is counted. Every run is bounded in virtual time.
"""

from __future__ import annotations

import argparse
import collections
import json
import math
import random
import statistics
import sys
import time

from dcounter.config import Config

CATEGORIES = ("membership", "replication", "anti_entropy")
CATEGORY = {"join": "membership", "heartbeat": "membership", "leave": "membership",
            "replicate": "replication", "forward": "replication", "state": "anti_entropy"}
SIZES = (3, 5, 10, 20, 50)
FORM_DEADLINE = 120.0  # virtual seconds for a fresh cluster to list every node everywhere
HEAL_DEADLINE = 120.0  # virtual seconds after a heal to converge
POLL = 0.1             # virtual seconds between convergence checks (the heal figure's grain)


class MessageCount:
    """Requests sent on a simulated network, by sender and category, while `counting`."""

    def __init__(self, net):
        self.requests: collections.Counter = collections.Counter()  # (src, category) -> n
        self.membership_bytes = 0  # JSON of membership requests and their replies
        self.counting = False
        self._membership_calls: set[int] = set()
        send = net.send

        def counted_send(src, dst, message):
            if self.counting:
                self._count(src, message)
            send(src, dst, message)

        net.send = counted_send

    def _count(self, src: str, message) -> None:
        kind, call_id, body = message
        if kind == "reply":
            if call_id in self._membership_calls:
                self._membership_calls.discard(call_id)
                self.membership_bytes += _json_size(body)
            return
        category = CATEGORY.get(kind)
        if category is None:  # figures that leave a kind out would be wrong, not smaller
            raise ValueError(f"unknown message kind {kind!r}: add it to simscale.CATEGORY")
        self.requests[(src, category)] += 1
        if category == "membership":
            self.membership_bytes += _json_size(body)
            if call_id is not None:
                self._membership_calls.add(call_id)

    def reset(self) -> None:
        self.requests.clear()
        self.membership_bytes = 0
        self._membership_calls.clear()

    def per_node_second(self, nodes: int, seconds: float) -> dict[str, float]:
        totals = collections.Counter()
        for (_, category), n in self.requests.items():
            totals[category] += n
        rates = {c: totals[c] / nodes / seconds for c in CATEGORIES}
        rates["membership_bytes"] = self.membership_bytes / nodes / seconds
        return rates


def _json_size(body) -> int:
    return len(json.dumps(body, separators=(",", ":"), default=str)) if body is not None else 0


# -- the simulator ---------------------------------------------------------------------------

class ScaleRun:
    """One simulated cluster of `size` nodes with the default timings, a message counter and a
    steady client load of `rate` increments per second (0: idle)."""

    def __init__(self, size: int, seed: int = 1, rate: float = 0.0,
                 config: Config | None = None):
        from dcounter.sim import Simulation  # the simulator, only when a run is asked for
        self.sim = Simulation(seed, size, config=config or Config())
        self.world = self.sim.world
        self.count = MessageCount(self.sim.net)
        self.ids = list(self.sim.nodes)
        self.rate = rate
        self._turn = random.Random(f"{seed}/scale").randrange(size)
        self.increments = 0

    def start(self) -> None:
        for node in self.sim.nodes.values():
            node.start(None)
        if self.rate > 0:
            self.world.after(1.0 / self.rate, self._increment)

    def _increment(self) -> None:
        # Round-robin over the nodes: the load is spread evenly, as a load balancer spreads it.
        node = self.sim.nodes[self.ids[self._turn % len(self.ids)]]
        self._turn += 1
        if self.rate > 0:
            node.increment("c", 1, None, self._incremented)
            self.world.after(1.0 / self.rate, self._increment)

    def _incremented(self, job) -> None:
        if job.error is None:  # a refused increment is not load
            self.increments += 1

    def stop_load(self) -> None:
        self.rate = 0.0

    def run_until(self, until: float) -> None:
        self.world.run(until)

    def full_membership(self) -> bool:
        return all(node.peers.alive() == sorted(n for n in self.ids if n != nid)
                   for nid, node in self.sim.nodes.items())

    def wait(self, done, deadline: float) -> float | None:
        """Advance virtual time in POLL steps until `done()`; the time it took, or None when
        `deadline` virtual seconds passed first."""
        began = self.world.now
        while self.world.now - began <= deadline:
            if done():
                return self.world.now - began
            self.run_until(self.world.now + POLL)
        return None

    def converged(self) -> bool:
        from dcounter.simcheck import unsettled
        return unsettled(self.sim.nodes, []) is None

    def form(self) -> float:
        took = self.wait(self.full_membership, FORM_DEADLINE)
        if took is None:
            raise RuntimeError(f"{len(self.ids)} simulated nodes did not list each other "
                               f"within {FORM_DEADLINE:.0f}s")
        return took


def message_rates(size: int, rate: float = 0.0, window: float = 20.0, seed: int = 1,
                  config: Config | None = None) -> dict[str, float]:
    """Requests each node sends per second, by category (and membership JSON bytes), over
    `window` virtual seconds (rounded up to whole heartbeat intervals, so that every node's
    heartbeat rounds are counted whole) after the cluster formed and an interval passed."""
    run = ScaleRun(size, seed, rate, config)
    run.start()
    run.form()
    interval = run.sim.nodes[run.ids[0]].cfg.heartbeat_interval
    window = math.ceil(window / interval - 1e-9) * interval
    run.run_until(run.world.now + interval)
    run.count.counting = True
    began = run.world.now
    run.run_until(began + window)
    run.count.counting = False
    return run.count.per_node_second(size, run.world.now - began)


def heal_time(size: int, seed: int, rate: float = 100.0, config: Config | None = None
              ) -> tuple[float | None, float]:
    """Seconds from healing a partition into two halves until the cluster converged (None: not
    within HEAL_DEADLINE), and the anti-entropy pulls per node meanwhile. The split lasts 15-25 s
    (drawn from the seed), longer than the peer timeout, under the load; the load stops as it
    heals, so there is one final state."""
    draw = random.Random(f"{seed}/heal")
    run = ScaleRun(size, seed, rate, config)
    run.start()
    run.form()
    run.run_until(run.world.now + draw.uniform(1.0, 3.0))
    left, right = run.ids[:size // 2], run.ids[size // 2:]
    pairs = [(a, b) for a in left for b in right] + [(b, a) for a in left for b in right]
    run.sim.net.block(pairs)
    run.run_until(run.world.now + draw.uniform(15.0, 25.0))
    run.stop_load()
    run.sim.net.unblock(pairs)
    run.count.counting = True
    took = run.wait(run.converged, HEAL_DEADLINE)
    pulls = run.count.per_node_second(size, 1.0)["anti_entropy"]
    return took, pulls


def sim_table(sizes=SIZES, rate: float = 100.0, window: float = 20.0,
              seeds: int = 5, progress=None) -> list[dict]:
    rows = []
    for size in sizes:
        idle = message_rates(size, 0.0, window)
        loaded = message_rates(size, rate, window)
        heals = [heal_time(size, seed, rate) for seed in range(1, seeds + 1)]
        done = [took for took, _ in heals if took is not None]
        row = {"nodes": size, "idle": idle, "load": loaded, "rate": rate,
               "heal_median": statistics.median(done) if done else None,
               "heal_max": max(done) if done else None,
               "heal_failed": len(heals) - len(done), "seeds": seeds,
               "heal_pulls": statistics.median(pulls for _, pulls in heals)}
        rows.append(row)
        if progress:
            progress(row)
    return rows


# -- the supported size ----------------------------------------------------------------------

def supported_size(per_member_cpu: float, budget: float = 0.05) -> int:
    """The largest cluster in which what the members cost a node stays within `budget` of one
    core (a node serves on about one core: Python runs one thread at a time)."""
    if per_member_cpu <= 0:
        raise ValueError("the CPU one member costs must be positive")
    return int(budget / per_member_cpu) + 1


# -- output ----------------------------------------------------------------------------------

def _fmt(value, spec=".1f") -> str:
    return "-" if value is None else format(value, spec)


def render_sim(rows: list[dict]) -> str:
    rate = rows[0]["rate"] if rows else 0
    lines = ["| nodes | idle: membership req/s | membership KB/s: idle / load | "
             f"{rate:.0f} inc/s: membership req/s | replication | anti-entropy | total | "
             "heal → converged s: median (max) | pulls per node after heal |",
             "|---|---|---|---|---|---|---|---|---|"]
    for r in rows:
        i, l = r["idle"], r["load"]
        total = sum(l[c] for c in CATEGORIES)
        heal = f"{_fmt(r['heal_median'])} ({_fmt(r['heal_max'])})"
        if r["heal_failed"]:
            heal += f", {r['heal_failed']} of {r['seeds']} not within {HEAL_DEADLINE:.0f} s"
        lines.append(f"| {r['nodes']} | {i['membership']:.2f} | "
                     f"{i['membership_bytes'] / 1000:.1f} / {l['membership_bytes'] / 1000:.1f} | "
                     f"{l['membership']:.2f} | {l['replication']:.1f} | "
                     f"{l['anti_entropy']:.2f} | {total:.1f} | {heal} | "
                     f"{r['heal_pulls']:.1f} |")
    return "\n".join(lines)


def main(argv=None) -> int:
    parser = argparse.ArgumentParser(
        prog="python -m dcounter.simscale",
        description="Scale figures: requests per node per second and heal-to-convergence time "
                    "from the simulator, and the CPU an idle member costs from real processes.")
    parser.add_argument("--sizes", default=",".join(map(str, SIZES)),
                        help="simulated cluster sizes, comma-separated (default %(default)s)")
    parser.add_argument("--rate", type=float, default=100.0,
                        help="client increments per second under load, spread over the nodes "
                             "(default %(default)s)")
    parser.add_argument("--window", type=float, default=20.0,
                        help="virtual seconds counted per size, rounded up to whole heartbeat "
                             "intervals (default %(default)s)")
    parser.add_argument("--seeds", type=int, default=5,
                        help="partition heals per size (default %(default)s)")
    parser.add_argument("--real", type=int, default=0, metavar="N",
                        help="also measure N real in-memory nodes, idle, against one (e.g. 10)")
    parser.add_argument("--real-window", type=float, default=30.0,
                        help="seconds each real-process measurement lasts (default %(default)s)")
    parser.add_argument("--blackhole", default=None, metavar="N,K",
                        help="start N real in-memory nodes, silence K of them (SIGSTOP) and "
                             "watch whether the others keep listing each other")
    parser.add_argument("--no-sim", action="store_true", help="skip the simulator")
    args = parser.parse_args(argv)
    try:
        sizes = [int(s) for s in args.sizes.split(",") if s]
    except ValueError:
        parser.error("--sizes must be integers, comma-separated")
    if any(not 2 <= s <= 64 for s in sizes):
        parser.error("--sizes must be between 2 and 64")
    if args.rate < 0 or args.window <= 0 or args.seeds < 1 or args.real_window <= 0:
        parser.error("--rate must be 0 or more; --window, --seeds and --real-window positive")
    if args.real == 1 or args.real < 0:
        parser.error("--real must be 2 or more")
    blackhole_args = None
    if args.blackhole is not None:
        try:
            blackhole_args = [int(x) for x in args.blackhole.split(",")]
        except ValueError:
            blackhole_args = None
        if (blackhole_args is None or len(blackhole_args) != 2
                or not 0 < blackhole_args[1] <= blackhole_args[0] - 2):
            parser.error("--blackhole takes N,K with 0 < K <= N - 2")
    if not args.no_sim:
        started = time.monotonic()
        rows = sim_table(sizes, args.rate, args.window, args.seeds,
                         progress=lambda r: print(f"  simulated {r['nodes']} nodes "
                                                  f"({time.monotonic() - started:.0f} s)",
                                                  file=sys.stderr, flush=True))
        print(render_sim(rows))
    if args.real:
        from dcounter import scaleprocs  # starts processes: only when asked
        point = scaleprocs.real_point(args.real, args.real_window)
        print(scaleprocs.render_real(point))
    if blackhole_args:
        from dcounter import scaleprocs
        result = scaleprocs.blackhole(*blackhole_args)
        first = result["first_miss"]
        print(f"{result['nodes']} nodes, {result['stopped']} silenced: over "
              f"{result['watch']:.0f} s a running node did not list another running one "
              f"{result['misses']} time(s)"
              + (f", first after {first:.1f} s" if first is not None else ""))
    return 0


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
