"""`dcounter import-original`: the cut-over from the original system.

The original system's nodes (the Go nodes dcounter re-implements) cannot share a cluster with
dcounter, so their count moves over once: this command reads one original node's
`GET /counter/count` (`{"count": N}`) and records N as one increment at a dcounter node, with the
idempotency key `import-original:HOST:PORT:N`. Running it again with the same source and count
counts once (at the same node within its `--idempotency-ttl`); a retry after a timeout or a 503
uses the same key (the Python client's keyed write, `library.Client.post`).

Like `client.py`, this module is a client of the HTTP API: it imports nothing from the node.
"""

from __future__ import annotations

import requests

from dcounter.display import print_json, retry_note
from dcounter.library import DcounterError

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
        raise DcounterError(f"--from must be HOST:PORT of an original node, not {text!r}")
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
            raise DcounterError(f"{source}: no answer ({type(exc).__name__})") from None
    if response.status_code != 200:
        raise DcounterError(f"{source} answered {response.status_code} to GET /counter/count")
    try:
        result = response.json()
    except ValueError:
        result = response.text[:100]
    count = result.get("count") if isinstance(result, dict) else None
    if isinstance(count, bool) or not isinstance(count, int):
        raise DcounterError(f"{source} answered {result!r}, not an original node's "
                            f'{{"count": N}}')
    return count


def cmd_import_original(client, args) -> int:
    source = source_address(args.source)
    count = read_original_count(source, client.timeout)
    if count == 0:
        message = f"{source} counts 0: nothing to import"
        if args.json:
            print_json({"source": source, "imported": 0, "counter": args.counter})
        else:
            print(message)
        return 0
    if abs(count) > MAX_DELTA:
        raise DcounterError(f"{source} counts {count}: more than one increment can carry "
                            f"(+-(2^53-1))")
    key = import_key(source, count)
    answer = client.post("/counter/increment", {"counter": args.counter, "delta": count},
                         key=key, retries=IMPORT_RETRIES, on_retry=retry_note)
    result, replayed = answer.payload, answer.replayed
    if args.json:
        print_json({"source": source, "imported": 0 if replayed else count, "key": key,
                     "replayed": replayed, **result})
    elif replayed:
        print(f"already imported ({key}): {result['counter']} {result['count']}")
    else:
        print(f"imported {count} from {source}: {result['counter']} {result['count']}")
    return 0
