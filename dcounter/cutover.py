"""`dcounter import-original`: the cut-over from the original system.

The original system's nodes (the Go nodes dcounter re-implements) cannot share a cluster with
dcounter, so their count moves over once: this command reads one original node's
`GET /counter/count` (`{"count": N}`) and records N as one increment at a dcounter node, with the
idempotency key `import-original:HOST:PORT:N`. Running it again with the same source and count
counts once (at the same node within its `--idempotency-ttl`); a retry after a timeout or a 503
uses the same key.

Like `client.py`, this module is a client of the HTTP API: it imports nothing from the node.
"""

from __future__ import annotations

import json
import sys
import time

import requests

from dcounter.client import PROG, RETRY_BASE, RETRY_MAX, ClientError, HTTPFailure, Unreachable

MAX_DELTA = 2**53 - 1  # what one increment may carry (the node refuses more)
IMPORT_RETRIES = 4


def source_address(text: str) -> str:
    """`HOST:PORT` of the original node, from `HOST:PORT` or `http://HOST:PORT`."""
    address = text.strip()
    if address.lower().startswith("http://"):
        address = address[len("http://"):]
    address = address.rstrip("/")
    host, sep, port = address.rpartition(":")
    if not sep or not host or not port.isdigit() or not 1 <= int(port) <= 65535 \
            or "/" in address:
        raise ClientError(f"--from must be HOST:PORT of an original node, not {text!r}")
    return address


def import_key(source: str, count: int) -> str:
    return f"import-original:{source}:{count}"


def read_original_count(source: str, timeout: float) -> int:
    """The original node's count. Asked without the dcounter client token: it is not theirs."""
    with requests.Session() as session:
        session.trust_env = False
        try:
            response = session.get(f"http://{source}/counter/count", timeout=timeout,
                                   allow_redirects=False)
        except requests.RequestException as exc:
            raise ClientError(f"{source}: no answer ({type(exc).__name__})") from None
    if response.status_code != 200:
        raise ClientError(f"{source} answered {response.status_code} to GET /counter/count")
    try:
        result = response.json()
    except ValueError:
        result = response.text[:100]
    count = result.get("count") if isinstance(result, dict) else None
    if isinstance(count, bool) or not isinstance(count, int):
        raise ClientError(f"{source} answered {result!r}, not an original node's "
                          f'{{"count": N}}')
    return count


def cmd_import_original(client, args) -> int:
    source = source_address(args.source)
    count = read_original_count(source, client.timeout)
    if count == 0:
        message = f"{source} counts 0: nothing to import"
        if args.json:
            _print_json({"source": source, "imported": 0, "counter": args.counter})
        else:
            print(message)
        return 0
    if abs(count) > MAX_DELTA:
        raise ClientError(f"{source} counts {count}: more than one increment can carry "
                          f"(+-(2^53-1))")
    key = import_key(source, count)
    body = {"counter": args.counter, "delta": count}
    attempt = 0
    while True:
        try:
            result, headers = client.exchange("POST", args.node, "/counter/increment",
                                              body=body, headers={"Idempotency-Key": key})
            break
        except (Unreachable, HTTPFailure) as exc:
            retriable = isinstance(exc, Unreachable) or exc.status == 503
            if not retriable or attempt >= IMPORT_RETRIES:
                raise
            delay = min(RETRY_BASE * 2 ** attempt, RETRY_MAX)
            attempt += 1
            print(f"{PROG}: {exc}; retrying with the same key in {delay:.1f} s",
                  file=sys.stderr)
            time.sleep(delay)
    replayed = headers.get("Idempotent-Replayed", "").lower() == "true"
    if args.json:
        _print_json({"source": source, "imported": 0 if replayed else count, "key": key,
                     "replayed": replayed, **result})
    elif replayed:
        print(f"already imported ({key}): {result['counter']} {result['count']}")
    else:
        print(f"imported {count} from {source}: {result['counter']} {result['count']}")
    return 0


def _print_json(value) -> None:
    print(json.dumps(value, indent=2, sort_keys=True))


def add_parser(commands, common) -> None:
    parser = commands.add_parser(
        "import-original", parents=[common],
        help="record an original node's count once at a dcounter node (the cut-over)")
    parser.add_argument("--from", dest="source", required=True, metavar="HOST:PORT",
                        help="the original node to read GET /counter/count from")
    parser.add_argument("--counter", default="default", metavar="N",
                        help="dcounter counter to record it in (default 'default')")
    parser.set_defaults(run=cmd_import_original)
