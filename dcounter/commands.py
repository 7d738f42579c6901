"""What each subcommand of the `dcounter` command does: ask the node through the Python client
(`library.Client`), print the answer (`display`), return the exit code. `client.py` parses the
command line and calls these; `cutover.py` holds `import-original`.

Errors are raised as the client's `DcounterError` and printed as one line by `client.main`.
"""

from __future__ import annotations

import os
import sqlite3
import sys
import tempfile
import time
import urllib.parse

from dcounter.connection import plain_address
from dcounter.display import PROG, format_survey, print_json, retry_note, table
from dcounter.library import Answer, Client, DcounterError
from dcounter.survey import check_expected, survey

POLL_INTERVAL = 0.25      # seconds between surveys in wait-converged
BACKUP_TIMEOUT = 60.0     # seconds `backup` waits for the copy unless --request-timeout


def cmd_incr(client: Client, args) -> int:
    answer = client.post("/counter/increment", {"counter": args.counter, "delta": args.by},
                         key=args.key, retries=args.retries, on_retry=retry_note)
    return _print_keyed(answer, args)


def cmd_reset(client: Client, args) -> int:
    """`dcounter reset NAME` and `dcounter delete NAME`."""
    answer = client.post(f"/counter/{args.command}", {"counter": args.name}, key=args.key)
    return _print_keyed(answer, args)


def _print_keyed(answer: Answer, args) -> int:
    """A keyed write's answer: `COUNTER COUNT`, or its JSON with the key and whether the node
    replayed it."""
    result = answer.payload
    if args.json:
        print_json({**result, "key": answer.key, "replayed": answer.replayed})
    else:
        print(f"{result['counter']} {result['count']}")
    return 0


def cmd_get(client: Client, args) -> int:
    params = {"counter": args.counter}
    if args.consistency != "local":
        params["consistency"] = args.consistency
    result = client.call("GET", args.node, "/counter/count", params=params)
    if args.json:
        print_json(result)
    else:
        print(result["count"])
    return 0


def cmd_counters(client: Client, args) -> int:
    result = client.call("GET", args.node, "/counters")
    counters = result.get("counters", {}) if not args.json else {}
    text = table([[name, str(counters[name])] for name in sorted(counters)], {1}) \
        if counters else ""
    return _print_list(result, text, "(no counters yet)", args)


def cmd_nodes(client: Client, args) -> int:
    result = client.call("GET", args.node, "/nodes")
    text = "\n".join(str(peer) for peer in result) if not args.json else ""
    return _print_list(result, text, "(no peers alive)", args)


def _print_list(result, text: str, empty: str, args) -> int:
    """A listing's answer: its JSON, or `text`, or when that is empty `empty` on stderr."""
    if args.json:
        print_json(result)
    elif text:
        print(text)
    else:
        print(empty, file=sys.stderr)
    return 0


def cmd_status(client: Client, args) -> int:
    result = survey(client, args.node)
    check_expected(result, args.expect)
    if not any(v.reachable for v in result.nodes):
        raise DcounterError(result.nodes[0].error if result.nodes else "no node answered")
    if args.json:
        print_json(result.to_json())
    else:
        print(format_survey(result, args.counter))
    return 0 if result.agree else 1


def cmd_wait_converged(client: Client, args) -> int:
    deadline = time.monotonic() + args.timeout
    while True:
        remaining = deadline - time.monotonic()
        result = survey(client, args.node, timeout=max(0.1, min(client.timeout, remaining)))
        check_expected(result, args.expect)
        if result.agree:
            break
        remaining = deadline - time.monotonic()
        if remaining <= 0:
            if args.json:
                print_json({"converged": False, **result.to_json()})
            print(f"{PROG}: not converged after {args.timeout:g} s: "
                  + "; ".join(result.problems), file=sys.stderr)
            return 1
        time.sleep(min(POLL_INTERVAL, remaining))
    if args.json:
        print_json({"converged": True, **result.to_json()})
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
        print_json(result)
    told = result.get("told") or []
    not_told = result.get("not_told") or {}
    asked = plain_address(args.node)
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
    """Fetch `GET /backup` into a new file: streamed beside it (never held in memory), fsynced,
    then linked into place, so FILE is whole or absent and an existing file (perhaps a live
    database) is never replaced. The path is checked before the node is asked."""
    dest = args.to
    directory = os.path.dirname(os.path.abspath(dest))
    if os.path.lexists(dest):
        raise DcounterError(f"{dest} already exists; choose a new name")
    if not os.path.isdir(directory):
        raise DcounterError(f"cannot write {dest}: directory {directory} does not exist")
    try:
        fd, tmp = tempfile.mkstemp(dir=directory, prefix="." + os.path.basename(dest) + ".",
                                   suffix=".partial")
    except OSError as exc:
        raise DcounterError(f"cannot write in {directory}: {exc.strerror or exc}") from None
    try:
        with os.fdopen(fd, "w+b") as file:
            size = client.download(args.node, "/backup", file,
                                   timeout=getattr(args, "request_timeout", BACKUP_TIMEOUT))
            file.seek(0)
            if file.read(16) != b"SQLite format 3\x00":
                raise DcounterError(f"{args.node} answered something that is not a SQLite "
                                    "database (is it a dcounter node?)")
            file.flush()
            os.fsync(file.fileno())
        _check_backup(tmp, args.node)
        os.link(tmp, dest)
    except OSError as exc:
        raise DcounterError(f"cannot write {dest}: {exc.strerror or exc}") from None
    finally:
        os.unlink(tmp)
    if args.json:
        print_json({"file": dest, "bytes": size})
    else:
        print(f"backup of {args.node} ({size} bytes) written to {dest}")
    return 0


def _check_backup(path: str, node: str) -> None:
    """The file as received opens and passes SQLite's quick check, or DcounterError."""
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
        raise DcounterError(f"the copy {node} sent does not check out ({result}); "
                            "nothing written")
