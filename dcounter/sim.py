"""The deterministic simulator: N nodes of the real protocol objects over a simulated network and
a virtual clock, a client workload, a seeded fault schedule, and a check of the README's promise
(`bin/dcounter-sim`, `python -m dcounter.sim`).

One seed fixes everything: the fault plan, the workload, the network's draws and the nodes'
origins each come from a `random.Random` stream derived from the seed, and the run prints a
trace hash over every delivered message and client answer, so two runs of a seed can be
compared event for event.

A run: nodes start with their seeds as join candidates; clients send increments of both signs,
resets and deletes to random nodes for 60 s and more of virtual time (simclient.py); faults come
and go (simnet.py); then everything heals (paused nodes resume, down nodes restart, the network
is whole) and the run goes on until the cluster has converged, or fails when a deadline passes
first. What is then checked is in simcheck.py; the node model in simnode.py (its links in
simlinks.py, its disk and group commit in simdisk.py).

Origin retirement runs as in the real node, in every cleanup sweep. Seven seeds in eight set
`--origin-retire-after` to 20-40 virtual seconds (`retire_after`), so that the origins left idle
by a wiped node or a restored backup retire within the run, at some nodes while others still
hold or pull their events; the clock jumps of such a run are scaled down to a quarter of it (a
jump past it is the README's window of a node unlisted for longer).

A restored backup is restored the way the tools do it (`dcounter-node backup`/`restore`): it
takes a fresh origin when the node starts. `--unmarked-backups` restores copies made by hand
instead (a documented misuse: the copy reuses its origin); clients then send to a restored node
only once it has compared digests with every peer (`--eager-restored`: with one). Its peers
forward keyed increments to it as soon as they list it.

`--inject NAME` re-introduces a known defect (never in the modules it runs, only in what the
simulator hands them), to show that the checks catch it: `ack-failed-commit` (the group commit
decides that a group whose store write failed keeps its jobs' results: they are acknowledged),
`stale-link-backoff` (the outboxes' retry schedule keyed by the peer's name, so an old link's
late success resets a new link's backoff; `--slow-links` adds the fault that produces it),
`forget-key-on-duplicate` (a replicated event that arrives as a duplicate does not leave its key
behind; keys are checked by default, `--loose-keys` turns that check off), `reset-merge-min` (a
reset's covers merge by the nearer watermark), `apply-keyed-here` (keyed increments are applied
where they arrive, as before keys had homes).
"""

from __future__ import annotations

import argparse
import collections
import dataclasses
import itertools
import logging
import random
import sys
import time

from dcounter.commitgroup import GroupCommit
from dcounter.config import Config
from dcounter.counter import RemoteResult
from dcounter.retry import RetrySchedule
from dcounter.simcheck import Oracle, state_bounds, unsettled
from dcounter.simclient import COUNTERS, Clients
from dcounter.simnet import EXTRA_KINDS, FAULT_KINDS, FaultPlan, Network, StopRun, World
from dcounter.simnode import SimNode

INJECTS = ("ack-failed-commit", "stale-link-backoff", "forget-key-on-duplicate",
           "reset-merge-min", "apply-keyed-here")
WORK_UNTIL = 61.0        # virtual seconds of client traffic
SETTLE_DEADLINE = 90.0   # virtual seconds after healing to converge
SIM_CONFIG = Config(max_backlog=40, gap_cap=30, batch_max=16)  # small bounds, so they are hit
# `--origin-retire-after` of a seed: seven seeds in eight draw it from this range of virtual
# seconds, so that origins left idle early in a run (a wiped node's, a restored backup's) retire
# within it, at some nodes before others; the eighth keeps the default 7 days (none retires).
RETIRE_AFTER = (20.0, 40.0)
# Seconds a node that is back may take to be listed again by every peer (its joins, a
# heartbeat round). Its peers removed it a peer timeout after it fell silent, so it is unlisted
# for less than the faults that silenced it last plus this.
REJOIN_MARGIN = 5.0


def retire_after(seed: int) -> float:
    rng = random.Random(f"{seed}/retire")
    if rng.random() < 0.125:
        return SIM_CONFIG.origin_retire_after
    return round(rng.uniform(*RETIRE_AFTER), 1)


class Simulation:
    def __init__(self, seed: int, nodes: int, *, inject: str | None = None,
                 strict_keys: bool = True, unmarked_backups: bool = False,
                 slow_links: bool = False, eager_restored: bool = False, trace=None,
                 config: Config | None = None):
        if config is None:
            config = dataclasses.replace(SIM_CONFIG, origin_retire_after=retire_after(seed))
        self.seed = seed
        self.inject = inject
        self.unmarked_backups = unmarked_backups
        self.eager_restored = eager_restored
        self.restored: set[str] = set()  # restored nodes the clients wait for
        self.world = World(trace)
        self.net = Network(self.world, random.Random(f"{seed}/net"))
        self.rng = random.Random(f"{seed}/work")
        self._origin_rng = random.Random(f"{seed}/origins")
        self.call_ids = itertools.count(1)
        self.origins_made = 0
        self.rejoin_tick = 0.5
        self.oracle = Oracle(strict_keys, clock=lambda: self.world.now)
        self.counter_names = COUNTERS
        self.forwards = 0  # keyed increments forwarded to their key's home
        self.retired: set[str] = set()  # origins retired at some node
        self.retirements = 0            # (node, origin) retirements, a node's sweep or adopted
        self.retired_refused = 0        # replicated events of retired origins refused
        ids = [f"n{i}" for i in range(1, nodes + 1)]
        kinds = FAULT_KINDS + EXTRA_KINDS * 3 if slow_links else FAULT_KINDS
        # A wall clock that jumps further than --origin-retire-after makes every origin look
        # idle for that long (the README's window of a node unlisted for longer): the jumps of
        # a run with a short retire-after are scaled down with it, to a quarter of it at most.
        max_jump = min(3600.0, config.origin_retire_after / 4)
        self.plan = FaultPlan(random.Random(f"{seed}/faults"), ids, kinds=kinds,
                              max_jump=max_jump)
        # For the same reason no node may be away, or cut off from a peer, for longer: faults
        # in a row can keep a node unlisted past a short retire-after (a leave, then a one-way
        # partition as it comes back), so the retire-after of such a run is raised beyond it.
        away = self.plan.longest_absence() + REJOIN_MARGIN + max_jump
        if config.origin_retire_after < away:
            config = dataclasses.replace(config, origin_retire_after=round(away, 1))
        self.retire_after = config.origin_retire_after
        self.nodes: dict[str, SimNode] = {}
        for i, nid in enumerate(ids):
            seeds = {ids[i - 1] if i else ids[1]}
            if self.rng.random() < 0.5:
                seeds.add(self.rng.choice([x for x in ids if x != nid]))
            node = self.nodes[nid] = SimNode(self, nid, tuple(sorted(seeds)), config)
            self.net.endpoints[nid] = node.receive
        self.heal_at = max(WORK_UNTIL + 1.0, self.plan.end() + 1.0)
        self.clients = Clients(self, self.rng, random.Random(f"{seed}/resets"))
        self.group_commit = AcksFailedGroups() if inject == "ack-failed-commit" else GroupCommit()

    def retry_schedule(self, policy):
        """The schedule a node's outboxes share; keyed by peer name with `stale-link-backoff`."""
        if self.inject == "stale-link-backoff":
            return ByPeerName(policy)
        return RetrySchedule(policy)

    def note_retirement(self, nid: str, txn) -> None:
        """What a committed group did about retired origins, for the summary: origins it
        retired (by the sweep or by adopting a peer's base) and their events it refused."""
        for origin in txn.retired_add:
            self.retired.add(origin)
            self.retirements += 1
        self.retired_refused += txn.retired_refused

    def new_origin(self) -> str:
        self.origins_made += 1
        return f"{self._origin_rng.getrandbits(64):016x}"

    def remote(self, txn, events, now):
        """`Txn.remote`, one event at a time so that the checks learn which events reached the
        node (applied or duplicates, not those deferred past the gap cap); with
        `forget-key-on-duplicate`, the defect that drops the key of an event that arrives as a
        duplicate. Returns the batch's result and the events that reached the node."""
        applied, duplicates, deferred, reached = [], 0, 0, []
        for event in events:
            known = event.key is not None and txn.key(event.key, now) is not None
            one = txn.remote([event], now)
            applied += one.applied
            duplicates += one.duplicates
            deferred += one.deferred
            if not one.deferred:
                reached.append(event)
            if one.duplicates and self.inject == "forget-key-on-duplicate" and \
                    event.key is not None and not known:
                txn.keys_add.pop(event.key, None)
        return RemoteResult(applied, duplicates, deferred), reached

    def start(self, node: SimNode, disk) -> None:
        node.start(disk)
        if self.inject == "reset-merge-min":
            _merge_covers_by_min(node.counter)
        elif self.inject == "apply-keyed-here":
            node.client_increment = node._apply_here  # no key has a home: the old rule

    def connection_refused(self, src: str, dst: str) -> bool:
        """A connection from `src` to `dst` is refused (nothing sent) when `dst` is down and
        the network lets the refusal through; a paused or cut-off node lets it time out."""
        return not self.nodes[dst].up and not self.net.is_blocked(src, dst) \
            and not self.net.is_blocked(dst, src)

    # -- the cluster interface the fault plan drives ----------------------------------------------
    def crash(self, nid: str, keep_disk: bool) -> None:
        node = self.nodes[nid]
        if not node.up:
            return
        self.world.record(f"{nid} crash keep_disk={keep_disk}")
        node.stop()
        if not keep_disk:
            node.disk = None
            self.oracle.keys_lost(nid)
            self._state_lost()

    def restart(self, nid: str, disk=None) -> None:
        node = self.nodes[nid]
        if node.up:
            return
        if disk is not None:  # a restored backup
            node.disk = disk
            if disk.backup_of is None:  # a copy made by hand: the old origin is reused
                self.oracle.restored(nid, disk.origin)
                self.restored.add(nid)
            else:  # `dcounter-node restore`: a fresh origin at start
                self.oracle.keys_lost(nid)
            self._state_lost()
        self.start(node, node.disk)

    def backup(self, nid: str):
        """`dcounter-node backup` (marked: restored, it takes a fresh origin), or with
        `--unmarked-backups` a copy of the data directory made by hand."""
        disk = self.nodes[nid].disk
        if disk is None:
            return None
        copy = disk.copy()
        if not self.unmarked_backups:
            copy.backup_of = disk.origin
        return copy

    def pause(self, nid: str) -> None:
        if self.nodes[nid].up:
            self.nodes[nid].pause()

    def resume(self, nid: str) -> None:
        self.nodes[nid].resume()

    def slow(self, nid: str, lag: float) -> None:
        self.nodes[nid].lag = lag

    def fail_commits(self, nid: str, on: bool) -> None:
        self.nodes[nid].failing = on

    def jump_wall(self, nid: str, seconds: float) -> None:
        self.nodes[nid].clock.wall_offset += seconds

    def leave(self, nid: str) -> None:
        if self.nodes[nid].up:
            self.world.record(f"{nid} leave")
            self.nodes[nid].leave()

    def heal(self) -> None:
        self.world.record("heal")
        self.net.heal()
        for nid, node in self.nodes.items():
            node.failing = False
            if node.paused:
                node.resume()
            if not node.up:
                self.restart(nid)
        self.world.after(0.5, self._check_settled)

    def _state_lost(self) -> None:
        self.oracle.state_lost([n.disk for n in self.nodes.values() if n.disk is not None])

    # -- running and checking ---------------------------------------------------------------------
    def _check_settled(self) -> None:
        if self.unsettled() is None:
            raise StopRun()
        self.world.after(0.5, self._check_settled)

    def unsettled(self) -> str | None:
        return unsettled(self.nodes, self.oracle.attempts, self.oracle)

    @property
    def ops(self) -> int:
        return self.clients.ops

    def run(self) -> "Outcome":
        for node in self.nodes.values():
            self.start(node, None)
        self.clients.plan(WORK_UNTIL, self.plan.faults)
        self.plan.arm(self.world, self.net, self)
        self.world.run(self.heal_at)
        self.heal()
        settled = self.world.run(self.heal_at + SETTLE_DEADLINE)
        problems = list(self.oracle.violations)
        if not settled:
            problems.insert(0, f"not converged {SETTLE_DEADLINE:.0f}s after healing: "
                               f"{self.unsettled()}")
        else:
            values = self.oracle.shown(next(iter(self.nodes.values())), self.nodes)
            problems += self.oracle.exact(self.nodes, COUNTERS)
            problems += self.oracle.bounds(values, COUNTERS)
            cfg = next(iter(self.nodes.values())).cfg
            wrong, keys_checked, keys_used = self.oracle.keys_once(
                list(self.nodes), self.plan.faults, cfg.peer_timeout + cfg.heartbeat_interval)
            problems += wrong
            keys = len({a.key for a in self.oracle.attempts if a.key is not None})
            problems += state_bounds(self.nodes, self.origins_made, keys)
        outcome = Outcome(self.seed, len(self.nodes), problems, self.world.now, self.ops,
                          collections.Counter(f.kind for f in self.plan.faults),
                          self.world.trace_hash(), self.plan)
        outcome.resets, outcome.deletes = self.clients.resets, self.clients.deletes
        outcome.forwards = self.forwards
        outcome.retired = len(self.retired)
        if settled:
            outcome.unreset = self.oracle.unreset(self.nodes)
        if settled:
            outcome.keys_checked, outcome.keys_used = keys_checked, keys_used
        return outcome


def _merge_covers_by_min(counter) -> None:
    """The defect `reset-merge-min`: every transaction of `counter` merges a reset's cover of an
    origin by the nearer watermark instead of the furthest (reset.py's `_merge_cover` reversed)."""
    begin = counter.begin

    def defective_begin():
        txn = begin()

        def merge(name: str, origin: str, w: int, total: int) -> bool:
            current = txn.cover(name, origin)
            if current is not None and not (w, total) < current:
                return False
            txn._stage_cover(name, origin, (w, total))
            txn._add_total(name, (current[1] if current else 0) - total)
            return True

        txn._merge_cover = merge
        return txn

    counter.begin = defective_begin


class AcksFailedGroups(GroupCommit):
    """`--inject ack-failed-commit`: a group whose write failed leaves the jobs that ran their
    results, so they are acknowledged though nothing was installed."""

    def write_failed(self, jobs, failure) -> None:
        pass


class ByPeerName(RetrySchedule):
    """`--inject stale-link-backoff`: the backoff keyed by the peer's name, not by its outbox, so
    a removed link's late outcome moves the backoff of the peer's next link."""

    def __init__(self, policy):
        super().__init__(policy)
        self._handles: dict[str, object] = {}

    def failed(self, handle, now):
        self._handles[handle.peer] = handle
        return super().failed(handle.peer, now)

    def succeeded(self, handle):
        super().succeeded(getattr(handle, "peer", handle))

    def forget(self, handle):
        super().forget(getattr(handle, "peer", handle))

    def attempts(self, handle):
        return super().attempts(handle.peer)

    def is_waiting(self, handle):
        return super().is_waiting(handle.peer)

    def pop_due(self, now):
        return [self._handles[peer] for peer in super().pop_due(now)]


class Outcome:
    def __init__(self, seed, nodes, problems, virtual, ops, faults, trace_hash, plan):
        self.seed, self.nodes, self.problems = seed, nodes, problems
        self.virtual, self.ops, self.faults, self.trace_hash = virtual, ops, faults, trace_hash
        self.plan = plan
        self.resets = self.deletes = self.forwards = 0
        self.retired = 0  # origins retired at some node
        self.unreset = 0  # (node, counter) showing a part a reset covered: the README's window
        self.keys_checked = self.keys_used = 0  # keys held to "counts once at any node"

    @property
    def passed(self) -> bool:
        return not self.problems


def run_seed(seed: int, nodes: int | None = None, **options) -> Outcome:
    """One seed; without `nodes` the size (3-7) is drawn from the seed too."""
    if nodes is None:
        nodes = random.Random(f"{seed}/size").randint(3, 7)
    return Simulation(seed, nodes, **options).run()


def summary_line(outcomes: list[Outcome]) -> str:
    faults = collections.Counter()
    for o in outcomes:
        faults.update(o.faults)
    failed = sum(1 for o in outcomes if not o.passed)
    kinds = " ".join(f"{k}={faults[k]}" for k in FAULT_KINDS + EXTRA_KINDS
                     if k in FAULT_KINDS or faults[k])
    return (f"seeds={len(outcomes)} failed={failed} "
            f"virtual_s={sum(o.virtual for o in outcomes):.0f} "
            f"ops={sum(o.ops for o in outcomes)} resets={sum(o.resets for o in outcomes)} "
            f"deletes={sum(o.deletes for o in outcomes)} "
            f"forwarded={sum(o.forwards for o in outcomes)} "
            f"keys_checked={sum(o.keys_checked for o in outcomes)}"
            f"/{sum(o.keys_used for o in outcomes)} "
            f"retired={sum(o.retired for o in outcomes)} "
            f"unreset={sum(o.unreset for o in outcomes)} faults: {kinds}")


def reproduce(outcome: Outcome, options: dict, size_fixed: bool) -> str:
    cmd = f"bin/dcounter-sim --seed {outcome.seed}"
    if size_fixed:
        cmd += f" --nodes {outcome.nodes}"
    if options.get("inject"):
        cmd += f" --inject {options['inject']}"
    if options.get("strict_keys") is False:
        cmd += " --loose-keys"
    if options.get("slow_links"):
        cmd += " --slow-links"
    if options.get("unmarked_backups"):
        cmd += " --unmarked-backups"
    if options.get("eager_restored"):
        cmd += " --eager-restored"
    return cmd


def _run_one(job) -> Outcome:
    seed, nodes, options = job
    outcome = run_seed(seed, nodes, **options)
    outcome.plan = None  # not needed back in the parent
    return outcome


def _outcomes(seeds, nodes, jobs, trace, options):
    """Outcomes in seed order, computed here or in `jobs` worker processes."""
    if jobs == 1 or len(seeds) == 1:
        for seed in seeds:
            yield run_seed(seed, nodes, trace=trace, **options)
        return
    import multiprocessing
    # fork: the workers need not re-import the main module (bin/dcounter-sim has no guard).
    method = "fork" if "fork" in multiprocessing.get_all_start_methods() else "spawn"
    with multiprocessing.get_context(method).Pool(jobs) as pool:
        yield from pool.imap(_run_one, [(seed, nodes, options) for seed in seeds], chunksize=4)


def main(argv=None) -> int:
    parser = argparse.ArgumentParser(prog="dcounter-sim", description="Run simulated dcounter clusters through seeded fault schedules and check "
                    "the README's promise after healing.")
    which = parser.add_mutually_exclusive_group()
    which.add_argument("--seeds", type=int, default=None, metavar="N", help="run N seeds: 1..N, or from --first (default: 100 seeds)")
    which.add_argument("--seed", type=int, default=None, metavar="S", help="run one seed")
    parser.add_argument("--first", type=int, default=1, metavar="S",
                        help="with --seeds: start at seed S (default 1)")
    parser.add_argument("--nodes", type=int, default=None, metavar="N",
                        help="cluster size (default: 3-7, drawn per seed)")
    parser.add_argument("--inject", choices=INJECTS, default=None,
                        help="re-introduce a known defect, to show the checker catches it")
    parser.add_argument("--loose-keys", action="store_true",
                        help="do not check that a key which reached a node by replication "
                             "counts once there (checked by default)")
    parser.add_argument("--slow-links", action="store_true",
                        help="add slow links to the fault mix: a node whose answers lag up to "
                             "1.9 s leaves and comes back")
    parser.add_argument("--unmarked-backups", action="store_true",
                        help="restore copies of the data directory made by hand (a documented "
                             "misuse: the copy reuses its origin) instead of `dcounter-node "
                             "backup`/`restore`")
    parser.add_argument("--eager-restored", action="store_true",
                        help="with --unmarked-backups: clients send to a restored node once it "
                             "has compared digests with one peer, not only after every peer")
    parser.add_argument("--jobs", type=int, default=1, metavar="J",
                        help="run seeds in J processes (default 1)")
    parser.add_argument("-v", "--verbose", action="store_true",
                        help="with --seed: print the fault plan and the trace; with --seeds: "
                             "one line per seed with its trace hash")
    args = parser.parse_args(argv)
    # The nodes' warnings (a backlog dropped, ...) are part of the run, not of its report.
    logging.getLogger("dcounter").addHandler(logging.NullHandler())
    if args.nodes is not None and not 2 <= args.nodes <= 50:
        parser.error("--nodes must be between 2 and 50")
    if args.seeds is not None and args.seeds < 1:
        parser.error("--seeds must be at least 1")
    if args.jobs < 1:
        parser.error("--jobs must be at least 1")
    options = {"inject": args.inject, "strict_keys": not args.loose_keys,
               "slow_links": args.slow_links,
               "unmarked_backups": args.unmarked_backups, "eager_restored": args.eager_restored}
    if args.seed is not None:
        seeds = [args.seed]
    else:
        seeds = range(args.first, args.first + (args.seeds if args.seeds is not None else 100))
    trace = print if args.verbose and args.seed is not None else None
    started = time.monotonic()
    outcomes = []
    for outcome in _outcomes(seeds, args.nodes, args.jobs, trace, options):
        seed = outcome.seed
        outcomes.append(outcome)
        if args.seed is not None or args.verbose:
            if args.verbose and args.seed is not None:
                for fault in outcome.plan.faults:
                    print(f"fault: {fault.describe()}")
            print(f"seed={seed} nodes={outcome.nodes} trace={outcome.trace_hash} "
                  f"virtual_s={outcome.virtual:.1f} ops={outcome.ops} "
                  f"{'ok' if outcome.passed else 'FAILED'}")
        if not outcome.passed:
            print(f"FAIL seed={seed} nodes={outcome.nodes}: {'; '.join(outcome.problems[:3])}; "
                  f"reproduce: {reproduce(outcome, options, True)}", flush=True)
    print(f"{summary_line(outcomes)} wall_s={time.monotonic() - started:.1f}")
    return 0 if all(o.passed for o in outcomes) else 1


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
