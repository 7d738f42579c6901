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

`status` and `wait-converged` survey the cluster: `--node`, then every node it lists, then every
node those list; `survey.py` says what counts as agreement.

`main(argv) -> int` is what `bin/dcounter` and the console script call; tests call it
in-process. Exit codes: 0 success, 1 failure or disagreement, 2 invalid usage. Every error is
one line on stderr. What a node would refuse as malformed (a delta of 0, a counter name of another
shape) is invalid usage, refused before anything is sent.

This module parses the command line and dispatches; what each subcommand does is in
`commands.py` (`import-original`: `cutover.py`), what it prints in `display.py`, the survey in
`survey.py`. Like the library, they import nothing from the node (only `validation`'s pure checks
of the API's shapes).
"""

from __future__ import annotations

import argparse
import os
import sys

from dcounter import __version__, validation
from dcounter.commands import (cmd_backup, cmd_counters, cmd_forget, cmd_get, cmd_incr,
                               cmd_nodes, cmd_reset, cmd_status, cmd_wait_converged)
from dcounter.connection import plain_address
from dcounter.cutover import cmd_import_original
from dcounter.display import PROG
from dcounter.errors import BadRequest
from dcounter.library import Client, DcounterError

DEFAULT_NODE = "localhost:8080"
INCR_RETRIES = 4          # retries of one increment (5 attempts)

# What the command says where the library would say `ca=`.
COMMAND_HINTS = {"ca": "DCOUNTER_TLS_CA", "address": "--node", "use": "--node "}


class _UsageError(Exception):
    pass


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

    cutover = commands.add_parser(
        "import-original", parents=[common],
        help="record an original node's count once at a dcounter node (the cut-over)")
    cutover.add_argument("--from", dest="source", required=True, metavar="HOST:PORT",
                         help="the original node to read GET /counter/count from")
    cutover.add_argument("--counter", default="default", metavar="N",
                         help="dcounter counter to record it in (default 'default')")
    cutover.set_defaults(run=cmd_import_original)
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
    if not plain_address(node):
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
            raise _UsageError("a command is required: incr, get, reset, delete, counters, nodes, "
                              "status, wait-converged, forget, import-original or backup "
                              "(see --help)")
        client = make_client(args, environ)
    except _UsageError as exc:
        print(f"{PROG}: error: {exc}", file=sys.stderr)
        return 2
    except SystemExit as exc:  # --help, --version
        return exc.code if isinstance(exc.code, int) else 0
    try:
        return args.run(client, args)
    except DcounterError as exc:
        print(f"{PROG}: error: {exc}", file=sys.stderr)
        return 1
    except KeyboardInterrupt:
        print(f"{PROG}: interrupted", file=sys.stderr)
        return 130
    except Exception as exc:  # one line, never a traceback
        print(f"{PROG}: error: unexpected {type(exc).__name__}: {exc}", file=sys.stderr)
        return 1
