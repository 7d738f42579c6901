"""The Python client of a dcounter cluster: `from dcounter import Client`.

    client = Client(["vm1:8080", "vm2:8080"], token="...", ca="/etc/dcounter/ca.pem")
    client.incr("signups", 5)            # -> the count after, at the node that took it
    client.count("signups", consistency="all")
    client.reset("signups")               # zero it; client.delete("typo") also hides the name

Theory of operation. A `Client` knows a list of nodes and prefers the last one that answered.
Every call goes through one loop (`Client.post` for writes, `Client.get` for reads) that decides,
after each failed attempt, where the next one goes and whether it may go at all:

- A read goes to the next node on any failure that asking again may cure (no connection, no
  answer in time, 503): reads change nothing, so asking anywhere is safe.
- A write carries an idempotency key (a random one unless the caller gives one), the same on
  every attempt. Every node sends a keyed write to its key's home, which answers a retry with
  the original answer, so a retry at ANY node counts once (within `--idempotency-ttl`) unless
  membership changed or a fault touched the key's home between the first attempt and the last
  answer (the README's windows). A write fails over to another node at once when the failed
  attempt certainly changed nothing: the connection could not be made (refused, a connect
  timeout, an unknown name; nothing was sent) or the node answered 503 (a refused request
  changes nothing). After an attempt whose outcome is unknown (sent, then no answer in time, or
  the connection dropped), the write is pinned to that node: it is retried there, with backoff,
  and leaves it only when that node refuses connections (it is down, and waiting for it could
  be forever). A node going down is a fault that may touch keys' homes, so that failover is
  where the windows matter; staying with a node that is only slow keeps retries out of them.
- Every other answer (400, 401, 404, 409, 413, 422, 500 ...) is final and raised at once, typed.
- A TLS failure is final: a certificate does not become trusted by asking again.

Between two attempts at a node already tried the loop waits `min(0.2 s × 2^n, 2 s)`; moving to a
node not yet tried in this round is immediate. Attempts: one per node plus `retries`.

Connections are kept alive: each thread that uses a client gets its own `requests.Session`
(requests does not promise that a Session is thread-safe), so a Client may be shared between
threads; its only shared state, the preferred node, is under a lock.

One request to one node, and the exceptions, are `connection.py`'s (re-exported here); this
module decides where each attempt goes. It imports nothing from the node but `validation`'s
pure checks of the API's shapes.
"""

from __future__ import annotations

import os
import threading
import time
import uuid
from collections.abc import Iterable, Mapping

from dcounter import validation
from dcounter.connection import (DEFAULT_TIMEOUT, Answer, Conflict, Connection, DcounterError,
                                 InvalidRequest, Refused, TLSFailure, Unauthorized, Unavailable,
                                 Unprocessable, Unreachable, plain_address, refused)
from dcounter.errors import BadRequest

__all__ = ["Client", "Answer", "DcounterError", "Unreachable", "TLSFailure", "Refused",
           "InvalidRequest", "Unauthorized", "Conflict", "Unprocessable", "Unavailable",
           "refused"]

DEFAULT_RETRIES = 4       # attempts after one at each node
RETRY_BASE = 0.2          # seconds before the first retry at a node already tried; doubles
RETRY_MAX = 2.0           # ... up to this


# -- the client ---------------------------------------------------------------------------------

class Client(Connection):
    """A dcounter cluster seen from Python.

    `nodes`: one address or a list, each `host:port` or `http(s)://host:port`. Bare addresses use
    the scheme the URLs among them give (they must not disagree), else https when `ca` is given,
    else http. `token`: the client token, sent as `Authorization: Bearer ...`. `ca`: the CA file
    (or directory) that node certificates are verified with; without it https verifies against
    the system's CAs. `timeout`: seconds one HTTP request may take. `retries`: attempts after
    one at each node. `sleep` waits between retries (tests pass their own).
    """

    def __init__(self, nodes: str | Iterable[str] = ("localhost:8080",), *,
                 token: str | None = None, ca: str | os.PathLike | None = None,
                 timeout: float = DEFAULT_TIMEOUT, retries: int = DEFAULT_RETRIES,
                 sleep=time.sleep):
        addresses = [nodes] if isinstance(nodes, str) else list(nodes)
        if not addresses:
            raise ValueError("nodes: at least one address")
        self.nodes = [_normalize(address) for address in addresses]
        schemes = {a.split("://", 1)[0] for a in self.nodes if "://" in a}
        if len(schemes) > 1:
            raise ValueError("nodes: http:// and https:// mixed; a cluster serves one of them")
        if ca is not None:
            ca = os.fspath(ca)
            if not os.path.exists(ca):
                raise ValueError(f"ca: no such file {ca!r} (the PEM file of the CA that signed "
                                 "the nodes' certificates)")
        scheme = schemes.pop() if schemes else "https" if ca else "http"
        if token is not None and (not isinstance(token, str) or not token
                                  or not token.isprintable() or not token.isascii()):
            raise ValueError("token: printable ASCII text")
        if isinstance(timeout, bool) or not isinstance(timeout, (int, float)) \
                or not 0 < timeout < float("inf"):
            raise ValueError("timeout: seconds, more than 0")
        if isinstance(retries, bool) or not isinstance(retries, int) or retries < 0:
            raise ValueError("retries: an integer, 0 or more")
        super().__init__(scheme=scheme, token=token, verify=ca if ca is not None else True,
                         timeout=float(timeout))
        self.retries = retries
        self._sleep = sleep
        self._preferred = 0
        self._lock = threading.Lock()

    # -- what most callers want ---------------------------------------------------------------

    def incr(self, counter: str = "default", delta: int = 1, key: str | None = None) -> int:
        """Add `delta` to `counter`; the count after, at the node that took it. Without `key`
        a random one is made; a retry of this call counts once (see the module's notes)."""
        body = {"counter": _counter(counter), "delta": _delta(delta)}
        return _int(self.post("/counter/increment", body, key=key).payload, "count")

    def incr_many(self, items: Mapping[str, int] | Iterable[tuple[str, int]],
                  key: str | None = None) -> dict[str, int]:
        """Several increments in one request under one key (`POST /counter/increments`).
        `items`: {counter: delta} or (counter, delta) pairs. Returns {counter: count after}."""
        pairs = list(items.items() if isinstance(items, Mapping) else items)
        if not pairs:
            raise InvalidRequest(400, "items: at least one (counter, delta)")
        increments = []
        for pair in pairs:
            if not isinstance(pair, (tuple, list)) or len(pair) != 2:
                raise InvalidRequest(400, f"items: a (counter, delta) pair, not {pair!r}")
            increments.append({"counter": _counter(pair[0]), "delta": _delta(pair[1])})
        answer = self.post("/counter/increments", {"increments": increments}, key=key)
        results = answer.payload.get("results") if isinstance(answer.payload, dict) else None
        if not isinstance(results, list):
            raise DcounterError(f"{plain_address(answer.node)} answered without results: "
                                f"{str(answer.payload)[:100]}")
        return {_counter_of(r, answer.node): _int(r, "count") for r in results}

    def count(self, counter: str = "default", consistency: str | None = None) -> int:
        """The counter's value at one node (`consistency=None` or "local"), or a read of the
        whole cluster (`"all"`: the node asks its live peers and covers what any of them
        applied)."""
        params = {"counter": _counter(counter)}
        if consistency not in (None, "local", "all"):
            raise InvalidRequest(400, f"consistency must be 'local' or 'all', not "
                                      f"{consistency!r}")
        if consistency == "all":
            params["consistency"] = "all"
        return _int(self.get("/counter/count", params=params).payload, "count")

    def reset(self, counter: str, key: str | None = None) -> int:
        """Zero `counter` for what the answering node has observed (`POST /counter/reset`):
        increments made meanwhile elsewhere survive. Returns the count there after the reset.
        Keyed like every write; a retry at another node before the reset reached it resets
        again (see the README)."""
        body = {"counter": _counter(counter)}
        return _int(self.post("/counter/reset", body, key=key).payload, "count")

    def delete(self, counter: str, key: str | None = None) -> int:
        """A reset that also hides the name from `counters()` on every node, until an
        increment the delete did not cover brings it back (`POST /counter/delete`)."""
        body = {"counter": _counter(counter)}
        return _int(self.post("/counter/delete", body, key=key).payload, "count")

    def counters(self) -> dict[str, int]:
        """Every counter the answering node knows, with its value there."""
        payload = self.get("/counters").payload
        counters = payload.get("counters") if isinstance(payload, dict) else None
        if not isinstance(counters, dict):
            raise DcounterError(f"not a list of counters: {str(payload)[:100]}")
        return counters

    # -- the cluster: retries and failover ------------------------------------------------------

    def post(self, path: str, body, *, key: str | None = None, retries: int | None = None,
             on_retry=None) -> Answer:
        """A write with its idempotency key (`key`, else a random one), retried and failed over
        as the module's notes say. `on_retry(error, node, delay)` is called before each retry."""
        key = uuid.uuid4().hex if key is None else _key(key)
        return self._attempts("POST", path, body=body, key=key, retries=retries,
                              on_retry=on_retry)

    def get(self, path: str, *, params=None, retries: int | None = None) -> Answer:
        """A read, from the preferred node or, if it fails, the next."""
        return self._attempts("GET", path, params=params, retries=retries)

    def _attempts(self, method: str, path: str, *, params=None, body=None, key=None,
                  retries=None, on_retry=None) -> Answer:
        write = method != "GET"
        headers = {"Idempotency-Key": key} if key is not None else None
        budget = len(self.nodes) + (self.retries if retries is None else retries)
        with self._lock:
            node = self._preferred
        pinned = None          # the node where a write's outcome is unknown
        uncertain = False
        tried: set[int] = set()
        failures: dict[int, str] = {}
        step = 0
        attempts = 0
        last = None
        while True:
            delay = 0.0
            if node in tried:  # a new round: back off
                delay = min(RETRY_BASE * 2 ** step, RETRY_MAX)
                step += 1
                tried.clear()
            if last is not None:
                if on_retry is not None:
                    on_retry(last, self.nodes[node], delay)
                if delay:
                    self._sleep(delay)
            tried.add(node)
            attempts += 1
            try:
                payload, answer_headers = self.exchange(method, self.nodes[node], path,
                                                        params=params, body=body,
                                                        headers=headers)
            except Unreachable as exc:
                last = exc
                if exc.sent and write:
                    pinned, uncertain = node, True
                elif pinned == node:
                    # The node that may have counted it refuses connections: it is down, and
                    # may stay down. Fail over, accepting the documented windows.
                    pinned = None
            except Unavailable as exc:  # changed nothing; a pinned write stays pinned
                last = exc
            except DcounterError as exc:
                raise _final(exc, key, uncertain)
            else:
                with self._lock:
                    self._preferred = node
                return Answer(self.nodes[node], payload, answer_headers, key)
            failures[node] = str(last)
            if attempts >= budget:
                if len(failures) > 1:
                    last.args = ("no node succeeded: " + "; ".join(failures.values()),)
                raise _final(last, key, uncertain)
            node = pinned if pinned is not None else (node + 1) % len(self.nodes)


# -- checks of what is sent, before it is sent --------------------------------------------------

def _checked(check, value):
    try:
        return check(value)
    except BadRequest as exc:
        raise InvalidRequest(400, exc.message) from None


def _counter(value) -> str:
    return _checked(validation.counter_name, value)


def _delta(value) -> int:
    return _checked(validation.delta, value)


def _key(value) -> str:
    return _checked(validation.idempotency_key, value)


def _int(payload, name: str) -> int:
    value = payload.get(name) if isinstance(payload, dict) else None
    if isinstance(value, bool) or not isinstance(value, int):
        raise DcounterError(f"an answer without an integer {name!r}: {str(payload)[:100]}")
    return value


def _counter_of(result, node: str) -> str:
    name = result.get("counter") if isinstance(result, dict) else None
    if not isinstance(name, str):
        raise DcounterError(f"{plain_address(node)} answered a result without a counter: "
                            f"{str(result)[:100]}")
    return name


def _normalize(address) -> str:
    if not isinstance(address, str) or not address.strip():
        raise ValueError(f"nodes: an address host:port or http(s)://host:port, not {address!r}")
    address = address.strip()
    if "://" in address:
        scheme, rest = address.split("://", 1)
        if scheme.lower() not in ("http", "https"):
            raise ValueError(f"nodes: unsupported scheme {scheme!r} (http or https)")
        if not rest.rstrip("/"):
            raise ValueError(f"nodes: an empty address in {address!r}")
        address = scheme.lower() + "://" + rest
    return address.rstrip("/")


def _final(exc: DcounterError, key, uncertain: bool) -> DcounterError:
    exc.key = key
    exc.maybe_counted = uncertain
    return exc
