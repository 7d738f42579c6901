"""`dcounter`: the command-line client of a dcounter cluster.

    dcounter incr [--counter N] [--by D] [--key K]   increment; retries count once
    dcounter get [--counter N] [--consistency all]   one counter's value
    dcounter reset NAME [--key K]                    zero it for what the node has observed
    dcounter delete NAME [--key K]                   reset it and hide the name
    dcounter counters                                every counter and its value
    dcounter nodes                                   the peers a node considers alive
    dcounter status [--expect N]                     every node side by side; 1 if they disagree
    dcounter wait-converged --timeout S [--expect N] 0 once every node agrees, 1 on timeout
    dcounter forget NODE                             remove a member for good, on every node
    dcounter import-original --from HOST:PORT        the original system's count, once
    dcounter backup --to FILE                        copy the node's database to a new file

Every subcommand takes `--node` (host:port or a URL; default `$DCOUNTER_NODE`, else
localhost:8080), `--json` and `--request-timeout`. `$DCOUNTER_CLIENT_TOKEN` is sent as
`Authorization: Bearer ...`; https is used when `--node` says `https://` or `$DCOUNTER_TLS_CA`
names the CA file that node certificates are verified with.

The command is built on the Python client, `dcounter.library.Client` (one node: `--node`).
`incr` without `--key` makes a random idempotency key and retries timeouts, connection errors
and 503s with that same key, so a retry of a request that did arrive counts once. A TLS failure
is not retried: it is explained in words with its fix (https://, DCOUNTER_TLS_CA).

`status` asks `--node` for its view, then every node it lists (alive peers, members and rejoin
candidates), then every node those list, and compares what they answer: the same counters and
the same digest (which events each has seen) means they agree. A member is missing, and so a
disagreement, when it does not answer, when a node holds it as failed, when it is not ready, or
when it has not seen every event another node has (behind); a member that left is shown, not
counted. A rejoin candidate that no node holds as a member (an id heard second-hand) and that
does not answer is shown but not counted. `--expect N` makes fewer than N members that answer
(the node asked included) a disagreement too, so a script never passes with a member missing
that no node knows of yet.

`main(argv) -> int` is what `bin/dcounter` and the console script call; tests call it
in-process. Exit codes: 0 success, 1 failure or disagreement, 2 invalid usage. Every error is
one line on stderr. What a node would refuse as malformed (a delta of 0, a counter name of another
shape) is invalid usage, refused before anything is sent. Like the library, this module imports
nothing from the node (only `validation`'s pure checks of the API's shapes).
"""

from __future__ import annotations

import argparse
import concurrent.futures
import json
import os
import sqlite3
import sys
import tempfile
import time
import urllib.parse
from dataclasses import dataclass, field

from dcounter import __version__, validation
from dcounter.errors import BadRequest
from dcounter.library import (RETRY_BASE, RETRY_MAX, Client, DcounterError, Refused,  # noqa: F401
                              TLSFailure, Unavailable, Unreachable)  # (re-exported: cutover.py)

PROG = "dcounter"
DEFAULT_NODE = "localhost:8080"
MAX_NODES = 64            # nodes a survey asks at most
INCR_RETRIES = 4          # retries of one increment (5 attempts)
POLL_INTERVAL = 0.25      # seconds between surveys in wait-converged
BACKUP_TIMEOUT = 60.0     # seconds `backup` waits for the copy unless --request-timeout
SHOWN_COUNTER_COLUMNS = 4  # `status` shows up to this many counters as columns


# The library's names under the ones this command and its neighbours have always used.
ClientError = DcounterError
HTTPFailure = Refused

# What the command says where the library would say `ca=`.
COMMAND_HINTS = {"ca": "DCOUNTER_TLS_CA", "address": "--node", "use": "--node "}


class _UsageError(Exception):
    pass


# -- the cluster survey (status, wait-converged) ------------------------------------------------

@dataclass
class NodeView:
    node: str                      # its id, or the address asked when it did not answer
    address: str
    listed_alive: bool             # a member: the start node, or listed alive or as a (not
                                   # left) member by a node that answered; it counts
    status: dict | None = None
    error: str | None = None
    failed_at: list[str] = field(default_factory=list)  # nodes that hold it as failed
    behind: bool = False           # answered, but has not seen every event another one has
    left: bool = False             # every node that answered and knows it holds it as left

    @property
    def ready(self) -> bool:
        return bool(((self.status or {}).get("ready") or {}).get("ready", True))

    @property
    def state(self) -> str:
        """What the table's STATE column says."""
        if self.failed_at:
            return "failed"
        if not self.reachable:
            if self.left and not self.listed_alive:
                return "left"
            return "unreachable" if self.listed_alive else "unreachable-candidate"
        if not self.ready:
            return "not-ready"
        return "behind" if self.behind else "ok"

    @property
    def reachable(self) -> bool:
        return self.status is not None

    def counters(self) -> dict:
        return {k: v for k, v in (self.status or {}).get("counters", {}).items() if v != 0}

    def digest(self) -> dict:
        return {k: v for k, v in (self.status or {}).get("digest", {}).items() if v}

    def backlog(self) -> int:
        links = (self.status or {}).get("replication", {})
        return sum(int(link.get("backlog", 0)) for link in links.values())

    def to_json(self) -> dict:
        s = self.status or {}
        return {"node": self.node, "reachable": self.reachable, "member": self.listed_alive,
                "state": self.state, "failed_at": self.failed_at, "error": self.error,
                "cluster": s.get("cluster"),
                "counters": s.get("counters"), "peers": sorted(s.get("peers", {})),
                "candidates": sorted(s.get("candidates", {})),
                "backlog": self.backlog() if self.reachable else None,
                "ready": s.get("ready")}


@dataclass
class Survey:
    nodes: list[NodeView] = field(default_factory=list)
    problems: list[str] = field(default_factory=list)
    left: list[str] = field(default_factory=list)  # members that said goodbye: not missing

    @property
    def agree(self) -> bool:
        return not self.problems

    def to_json(self) -> dict:
        return {"agree": self.agree, "problems": self.problems, "left": self.left,
                "nodes": [n.to_json() for n in self.nodes]}


def _members(status: dict) -> dict[str, dict]:
    """A node's members view (GET /status "members"); {} from a node without one."""
    members = status.get("members")
    if not isinstance(members, dict):
        return {}
    return {peer: m for peer, m in members.items() if isinstance(m, dict)}


def survey(client: Client, start: str, timeout: float | None = None) -> Survey:
    """Ask `start` and, breadth first, every node listed by a node that answered."""
    views: dict[str, NodeView] = {}
    asked: set[str] = {start}
    wave = [(start, True)]
    pool = concurrent.futures.ThreadPoolExecutor(max_workers=16)
    try:
        while wave:
            futures = {pool.submit(client.call, "GET", address, "/status", timeout=timeout):
                       (address, alive) for address, alive in wave}
            answered = []
            for future in concurrent.futures.as_completed(futures):
                address, alive = futures[future]
                try:
                    status = future.result()
                except ClientError as exc:
                    views[address] = NodeView(address.split("://", 1)[-1].rstrip("/"), address,
                                              alive, error=str(exc))
                    continue
                if not isinstance(status, dict) or not isinstance(status.get("node_id"), str):
                    views[address] = NodeView(address, address, alive,
                                              error=f"{address}: not a dcounter status")
                    continue
                node_id = status["node_id"]
                asked.add(node_id)
                views[address] = NodeView(node_id, address, alive, status=status)
                answered.append(status)
            listed: dict[str, bool] = {}
            for status in answered:
                for peer in status.get("peers", {}):
                    listed[peer] = True
                # A failed member is missing: asked, and counted, like a listed peer.
                for peer, member in _members(status).items():
                    if member.get("state") != "left":
                        listed[peer] = True
                for peer in status.get("candidates", {}):
                    listed.setdefault(peer, False)
            for view in views.values():  # a node asked as a candidate but listed alive later
                if view.node in listed and listed[view.node]:
                    view.listed_alive = True
            wave = [(peer, alive) for peer, alive in sorted(listed.items())
                    if peer not in asked][:max(0, MAX_NODES - len(asked))]
            asked.update(peer for peer, _ in wave)
    finally:
        pool.shutdown(wait=False, cancel_futures=True)
    result = Survey(nodes=sorted(views.values(), key=lambda v: v.node))
    _judge_members(result)
    result.problems = _disagreements(result.nodes)
    return result


def _judge_members(result: Survey) -> None:
    """Which members the nodes that answered hold as failed, and which as left (and by no one
    as alive or failed)."""
    reachable = [v for v in result.nodes if v.reachable]
    views = {v.node: v for v in result.nodes}
    states: dict[str, dict[str, str]] = {}  # member -> {node that holds it: its state}
    for view in reachable:
        for peer, member in _members(view.status).items():
            states.setdefault(peer, {})[view.node] = str(member.get("state"))
    for peer, held in sorted(states.items()):
        failed = sorted(node for node, state in held.items() if state == "failed")
        if failed and peer in views:
            views[peer].failed_at = failed
        if all(state == "left" for state in held.values()):
            result.left.append(peer)
            if peer in views:  # asked as a seed's rejoin candidate
                views[peer].left = True


def _disagreements(nodes: list[NodeView]) -> list[str]:
    problems = []
    for view in nodes:
        failed = f" (failed at {', '.join(view.failed_at)})" if view.failed_at else ""
        if not view.reachable and (view.listed_alive or view.failed_at):
            problems.append(f"{view.error}{failed}")
        elif view.reachable and view.failed_at:
            problems.append(f"{view.node}: answers, but is failed at "
                            f"{', '.join(view.failed_at)}")
        elif view.reachable and not view.ready:
            reason = (view.status.get("ready") or {}).get("reason") or "no reason given"
            problems.append(f"{view.node}: not ready ({reason})")
    reachable = [v for v in nodes if v.reachable]
    if not reachable:
        return problems or ["no node answered"]
    clusters = {v.status.get("cluster") for v in reachable}
    if len(clusters) > 1:
        problems.append("cluster names differ: " + ", ".join(
            f"{v.node}={v.status.get('cluster')!r}" for v in reachable))
    names = sorted(set().union(*(v.counters() for v in reachable)))
    for name in names:
        values = {v.node: v.counters().get(name, 0) for v in reachable}
        if len(set(values.values())) > 1:
            problems.append(f"{name}: " + ", ".join(f"{n}={c}" for n, c in values.items()))
    newest: dict[str, int] = {}
    for view in reachable:
        for origin, mark in view.digest().items():
            newest[origin] = max(newest.get(origin, 0), mark)
    for view in reachable:
        digest = view.digest()
        view.behind = any(digest.get(origin, 0) < mark for origin, mark in newest.items())
    behind = [v.node for v in reachable if v.behind]
    if behind:
        problems.append(f"not every node has seen the same events yet: {', '.join(behind)} "
                        f"behind")
    return problems


def _expected(result: Survey, expect: int | None) -> None:
    """`--expect N`: fewer than N members (the node asked included) that answer and agree is a
    disagreement too."""
    if expect is None:
        return
    answered = sum(1 for v in result.nodes if v.reachable)
    if answered < expect:
        result.problems.append(f"expected {expect} member{'s' if expect != 1 else ''} to agree, "
                               f"{answered} answered")


def _table(rows: list[list[str]], right: set[int]) -> str:
    widths = [max(len(row[i]) for row in rows) for i in range(len(rows[0]))]
    lines = []
    for row in rows:
        cells = [cell.rjust(widths[i]) if i in right else cell.ljust(widths[i])
                 for i, cell in enumerate(row)]
        lines.append("  ".join(cells).rstrip())
    return "\n".join(lines)


def _counter_values(reachable: list[NodeView], names: list[str]) -> str:
    """Too many counters for a column each: one row per counter, its value where the nodes agree
    (where they do not, the disagreements below list each node's value)."""
    rows = [["COUNTER", "VALUE"]]
    for name in names:
        values = {v.status.get("counters", {}).get(name, 0) for v in reachable}
        rows.append([name, str(values.pop()) if len(values) == 1 else "differs"])
    return _table(rows, {1})


def format_survey(result: Survey, counter: str | None) -> str:
    reachable = [v for v in result.nodes if v.reachable]
    if counter is not None:
        columns = [counter]
    else:
        names = sorted(set().union(*(set(v.status.get("counters", {})) for v in reachable)))
        columns = names if len(names) <= SHOWN_COUNTER_COLUMNS else []
    header = ["NODE", "STATE", *columns]
    if not columns:
        header.append("COUNTERS")
    header += ["PEERS", "BACKLOG"]
    rows = [header]
    for view in result.nodes:
        if view.reachable:
            s = view.status
            counts = [str(s.get("counters", {}).get(name, 0)) for name in columns]
            if not columns:
                counts.append(str(len(s.get("counters", {}))))
            rows.append([view.node, view.state, *counts,
                         str(len(s.get("peers", {}))), str(view.backlog())])
        else:
            rows.append([view.node, view.state] + ["-"] * (len(header) - 2))
    asked = {view.node for view in result.nodes}
    for member in result.left:
        if member not in asked:
            rows.append([member, "left"] + ["-"] * (len(header) - 2))
    right = set(range(2, len(header)))
    text = _table(rows, right)
    if not columns and names:
        text += "\n\n" + _counter_values(reachable, names)
    if result.agree:
        text += f"\nagree: {len(reachable)} node{'s' if len(reachable) != 1 else ''}"
        if result.left:
            text += f" ({len(result.left)} left)"
    else:
        text += "\nDISAGREE:\n" + "\n".join(f"  {p}" for p in result.problems)
    return text


# -- commands -----------------------------------------------------------------------------------

def cmd_incr(client: Client, args) -> int:
    def say(error, node, delay):
        print(f"{PROG}: {error}; retrying with the same key in {delay:.1f} s", file=sys.stderr)

    answer = client.post("/counter/increment", {"counter": args.counter, "delta": args.by},
                         key=args.key, retries=args.retries, on_retry=say)
    result = answer.payload
    if args.json:
        _print_json({**result, "key": answer.key, "replayed": answer.replayed})
    else:
        print(f"{result['counter']} {result['count']}")
    return 0


def cmd_reset(client: Client, args) -> int:
    """`dcounter reset NAME` and `dcounter delete NAME`."""
    answer = client.post(f"/counter/{args.command}", {"counter": args.name}, key=args.key)
    result = answer.payload
    if args.json:
        _print_json({**result, "key": answer.key, "replayed": answer.replayed})
    else:
        print(f"{result['counter']} {result['count']}")
    return 0


def cmd_get(client: Client, args) -> int:
    params = {"counter": args.counter}
    if args.consistency != "local":
        params["consistency"] = args.consistency
    result = client.call("GET", args.node, "/counter/count", params=params)
    if args.json:
        _print_json(result)
    else:
        print(result["count"])
    return 0


def cmd_counters(client: Client, args) -> int:
    result = client.call("GET", args.node, "/counters")
    if args.json:
        _print_json(result)
        return 0
    counters = result.get("counters", {})
    if counters:
        print(_table([[name, str(counters[name])] for name in sorted(counters)], {1}))
    else:
        print("(no counters yet)", file=sys.stderr)
    return 0


def cmd_nodes(client: Client, args) -> int:
    result = client.call("GET", args.node, "/nodes")
    if args.json:
        _print_json(result)
        return 0
    for peer in result:
        print(peer)
    if not result:
        print("(no peers alive)", file=sys.stderr)
    return 0


def cmd_status(client: Client, args) -> int:
    result = survey(client, args.node)
    _expected(result, args.expect)
    if not any(v.reachable for v in result.nodes):
        raise ClientError(result.nodes[0].error if result.nodes else "no node answered")
    if args.json:
        _print_json(result.to_json())
    else:
        print(format_survey(result, args.counter))
    return 0 if result.agree else 1


def cmd_wait_converged(client: Client, args) -> int:
    deadline = time.monotonic() + args.timeout
    while True:
        remaining = deadline - time.monotonic()
        result = survey(client, args.node, timeout=max(0.1, min(client.timeout, remaining)))
        _expected(result, args.expect)
        if result.agree:
            break
        remaining = deadline - time.monotonic()
        if remaining <= 0:
            if args.json:
                _print_json({"converged": False, **result.to_json()})
            print(f"{PROG}: not converged after {args.timeout:g} s: "
                  + "; ".join(result.problems), file=sys.stderr)
            return 1
        time.sleep(min(POLL_INTERVAL, remaining))
    if args.json:
        _print_json({"converged": True, **result.to_json()})
    else:
        # Agreement means every member answered: unreachable rows left are rejoin candidates
        # that no node holds as a member (ids heard second-hand), not counted.
        reachable = [v for v in result.nodes if v.reachable]
        count = len(reachable)
        counters = reachable[0].counters()
        shown = ", ".join(f"{k}={counters[k]}" for k in sorted(counters)[:5])
        more = " ..." if len(counters) > 5 else ""
        left = f"; {len(result.left)} left" if result.left else ""
        print(f"converged: {count} of {count} node{'s' if count != 1 else ''} agree"
              + (f" ({shown}{more})" if shown else "") + left)
    return 0


def cmd_forget(client: Client, args) -> int:
    """Ask the node to forget a member; it passes it on to its peers. Exit 1 when a peer did
    not confirm (run it again once that peer is back: it is passed on again)."""
    result = client.call("POST", args.node, "/nodes/forget", body={"node_id": args.member})
    if args.json:
        _print_json(result)
    told = result.get("told") or []
    not_told = result.get("not_told") or {}
    asked = args.node.split("://", 1)[-1].rstrip("/")
    if not args.json:
        print(f"forgot {args.member} at {asked}"
              + (f" and {', '.join(told)}" if told else ""))
    if not_told:
        print(f"{PROG}: error: not confirmed by " + "; ".join(
            f"{peer} ({why})" for peer, why in sorted(not_told.items()))
            + "; run forget again once they answer", file=sys.stderr)
        return 1
    return 0


def cmd_backup(client: Client, args) -> int:
    """Fetch `GET /backup` into a new file: written beside it, fsynced, then linked into place,
    so FILE is whole or absent and an existing file (perhaps a live database) is never
    replaced. The path is checked before the node is asked."""
    dest = args.to
    directory = os.path.dirname(os.path.abspath(dest))
    if os.path.lexists(dest):
        raise ClientError(f"{dest} already exists; choose a new name")
    if not os.path.isdir(directory):
        raise ClientError(f"cannot write {dest}: directory {directory} does not exist")
    try:
        fd, tmp = tempfile.mkstemp(dir=directory, prefix="." + os.path.basename(dest) + ".",
                                   suffix=".partial")
    except OSError as exc:
        raise ClientError(f"cannot write in {directory}: {exc.strerror or exc}") from None
    try:
        with os.fdopen(fd, "wb") as file:
            data = client.download(args.node, "/backup",
                                   timeout=getattr(args, "request_timeout", BACKUP_TIMEOUT))
            if not data.startswith(b"SQLite format 3\x00"):
                raise ClientError(f"{args.node} answered something that is not a SQLite "
                                  "database (is it a dcounter node?)")
            file.write(data)
            file.flush()
            os.fsync(file.fileno())
        _check_backup(tmp, args.node)
        os.link(tmp, dest)
    except OSError as exc:
        raise ClientError(f"cannot write {dest}: {exc.strerror or exc}") from None
    finally:
        os.unlink(tmp)
    if args.json:
        _print_json({"file": dest, "bytes": len(data)})
    else:
        print(f"backup of {args.node} ({len(data)} bytes) written to {dest}")
    return 0


def _check_backup(path: str, node: str) -> None:
    """The file as received opens and passes SQLite's quick check, or ClientError."""
    conn = None
    try:
        conn = sqlite3.connect(f"file:{urllib.parse.quote(path)}?mode=ro", uri=True)
        result = conn.execute("PRAGMA quick_check").fetchone()[0]
        conn.execute("SELECT value FROM meta WHERE name='origin'").fetchone()
    except sqlite3.Error as exc:
        result = str(exc)
    finally:
        if conn is not None:
            conn.close()
    if result != "ok":
        raise ClientError(f"the copy {node} sent does not check out ({result}); nothing written")


def _print_json(value) -> None:
    print(json.dumps(value, indent=2, sort_keys=True))


# -- arguments ----------------------------------------------------------------------------------

class _Parser(argparse.ArgumentParser):
    def error(self, message):
        raise _UsageError(message)


def _positive(text: str) -> float:
    try:
        value = validation.parse_float(text.strip(" \t"))
    except ValueError:
        raise argparse.ArgumentTypeError(f"not a number: {text!r}") from None
    if not value > 0:
        raise argparse.ArgumentTypeError("must be more than 0")
    return value


def _checked(check):
    """An argparse type from one of validation's checks: what a node would refuse with 400 is a
    usage error here, found before anything is sent."""
    def convert(text: str):
        try:
            return check(text)
        except BadRequest as exc:
            raise argparse.ArgumentTypeError(exc.message.split(" ", 1)[-1]) from None
    return convert


def _delta(text: str) -> int:
    try:
        value = int(text)
    except ValueError:
        raise argparse.ArgumentTypeError(f"not an integer: {text!r}") from None
    return validation.delta(value)


def _count(text: str) -> int:
    try:
        value = validation.parse_int(text.strip(" \t"))
    except ValueError:
        raise argparse.ArgumentTypeError(f"not an integer: {text!r}") from None
    if value < 0:
        raise argparse.ArgumentTypeError("must be 0 or more")
    return value


def _at_least_one(text: str) -> int:
    value = _count(text)
    if value < 1:
        raise argparse.ArgumentTypeError("must be 1 or more")
    return value


def _path(text: str) -> str:
    if not text.strip():
        raise argparse.ArgumentTypeError("must not be empty")
    return text


def build_parser() -> argparse.ArgumentParser:
    common = _Parser(add_help=False)
    # SUPPRESS: an option given before the subcommand is not reset by the subcommand's parser.
    common.add_argument("--node", default=argparse.SUPPRESS, metavar="HOST:PORT",
                        help="node to ask: host:port or http(s)://host:port (default "
                             "$DCOUNTER_NODE, else localhost:8080)")
    common.add_argument("--json", action="store_true", default=argparse.SUPPRESS,
                        help="print JSON instead of text")
    common.add_argument("--request-timeout", type=_positive, default=argparse.SUPPRESS,
                        metavar="S", help="seconds one HTTP request may take (default 5)")
    parser = _Parser(prog=PROG, parents=[common],
                     description="Increment, read and inspect a dcounter cluster.",
                     epilog="Environment: DCOUNTER_NODE, DCOUNTER_CLIENT_TOKEN (sent as a "
                            "Bearer token), DCOUNTER_TLS_CA (use https, verify with this CA).")
    parser.add_argument("--version", action="version", version=f"{PROG} {__version__}")
    commands = parser.add_subparsers(dest="command", metavar="COMMAND")

    incr = commands.add_parser("incr", parents=[common], help="increment a counter")
    incr.add_argument("--counter", default="default", metavar="N",
                      type=_checked(validation.counter_name),
                      help="counter name (default 'default')")
    incr.add_argument("--by", type=_checked(_delta), default=1, metavar="D",
                      help="delta, may be negative (default 1)")
    incr.add_argument("--key", metavar="K", type=_checked(validation.idempotency_key),
                      help="idempotency key (default: a random one); the same key never "
                           "counts twice")
    incr.add_argument("--retries", type=_count, default=INCR_RETRIES, metavar="R",
                      help=f"retries on timeouts, connection errors and 503 "
                           f"(default {INCR_RETRIES})")
    incr.set_defaults(run=cmd_incr)

    get = commands.add_parser("get", parents=[common], help="print a counter's value")
    get.add_argument("--counter", default="default", metavar="N",
                     type=_checked(validation.counter_name),
                     help="counter name (default 'default')")
    get.add_argument("--consistency", choices=("local", "all"), default="local",
                     help="local: the node's own value (default); all: the node asks every "
                          "live peer and covers what any of them applied")
    get.set_defaults(run=cmd_get)

    for name, text in (("reset", "zero a counter for what the node has observed (increments "
                                 "made meanwhile elsewhere survive)"),
                       ("delete", "reset a counter and hide its name until an increment the "
                                  "delete did not cover")):
        command = commands.add_parser(name, parents=[common], help=text)
        command.add_argument("name", metavar="NAME", type=_checked(validation.counter_name),
                             help="counter name")
        command.add_argument("--key", metavar="K", type=_checked(validation.idempotency_key),
                             help="idempotency key (default: a random one)")
        command.set_defaults(run=cmd_reset)

    counters = commands.add_parser("counters", parents=[common],
                                   help="every counter and its value")
    counters.set_defaults(run=cmd_counters)

    nodes = commands.add_parser("nodes", parents=[common],
                                help="the peers the node considers alive")
    nodes.set_defaults(run=cmd_nodes)

    status = commands.add_parser("status", parents=[common],
                                 help="every node's counts, peers and backlog; exit 1 if "
                                      "they disagree")
    status.add_argument("--counter", metavar="N", type=_checked(validation.counter_name),
                        help="show only this counter's column")
    status.add_argument("--expect", type=_at_least_one, metavar="N",
                        help="exit 1 unless at least N members (the node asked included) "
                             "answer and agree")
    status.set_defaults(run=cmd_status)

    wait = commands.add_parser("wait-converged", parents=[common],
                               help="wait until every node agrees; exit 1 on timeout")
    wait.add_argument("--timeout", type=_positive, default=60.0, metavar="S",
                      help="seconds to wait (default 60)")
    wait.add_argument("--expect", type=_at_least_one, metavar="N",
                      help="wait until at least N members (the node asked included) answer "
                           "and agree")
    wait.set_defaults(run=cmd_wait_converged)

    forget = commands.add_parser("forget", parents=[common],
                                 help="remove a member that is down for good, on every node")
    forget.add_argument("member", metavar="NODE", type=_checked(validation.node_id),
                        help="the member's node id (host:port), as `status` shows it")
    forget.set_defaults(run=cmd_forget)

    from dcounter import cutover  # imports this module: only once it is loaded
    cutover.add_parser(commands, common)
    backup = commands.add_parser("backup", parents=[common],
                                 help="copy the node's database to a new file (hot backup)")
    backup.add_argument("--to", required=True, type=_path, metavar="FILE",
                        help="the new file; an existing one is never replaced")
    backup.set_defaults(run=cmd_backup)
    return parser


def make_client(args, environ) -> Client:
    node = getattr(args, "node", None) or environ.get("DCOUNTER_NODE") or DEFAULT_NODE
    node = node.strip()
    ca = environ.get("DCOUNTER_TLS_CA") or None
    if "://" in node:
        scheme = node.split("://", 1)[0].lower()
        if scheme not in ("http", "https"):
            raise _UsageError(f"--node: unsupported scheme {scheme!r} (http or https)")
        node = scheme + "://" + node.split("://", 1)[1]
    if not node.split("://", 1)[-1].rstrip("/"):
        raise _UsageError("--node: empty address")
    if ca is not None and not os.path.isfile(ca):
        raise _UsageError(f"DCOUNTER_TLS_CA: no such file {ca!r} (the PEM file of the CA that "
                          "signed the nodes' certificates)")
    args.node = node
    args.json = getattr(args, "json", False)
    token = environ.get("DCOUNTER_CLIENT_TOKEN") or None
    try:
        client = Client([node], token=token, ca=ca,
                        timeout=getattr(args, "request_timeout", 5.0))
    except ValueError as exc:
        raise _UsageError(str(exc)) from None
    client.hints = COMMAND_HINTS
    return client


def main(argv: list[str] | None = None, environ=None) -> int:
    argv = sys.argv[1:] if argv is None else argv
    environ = os.environ if environ is None else environ
    try:
        args = build_parser().parse_args(argv)
        if getattr(args, "run", None) is None:
            raise _UsageError("a command is required: incr, get, reset, delete, counters, nodes, status, "
                              "wait-converged, forget, import-original or backup (see --help)")
        client = make_client(args, environ)
    except _UsageError as exc:
        print(f"{PROG}: error: {exc}", file=sys.stderr)
        return 2
    except SystemExit as exc:  # --help, --version
        return exc.code if isinstance(exc.code, int) else 0
    try:
        return args.run(client, args)
    except ClientError as exc:
        print(f"{PROG}: error: {exc}", file=sys.stderr)
        return 1
    except KeyboardInterrupt:
        print(f"{PROG}: interrupted", file=sys.stderr)
        return 130
    except Exception as exc:  # one line, never a traceback
        print(f"{PROG}: error: unexpected {type(exc).__name__}: {exc}", file=sys.stderr)
        return 1
