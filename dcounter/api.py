"""The route table and the route functions: decoded request in, `(status, payload)` out.

Each route validates its whole input before it asks the node to change anything, so a refused
request changes nothing. Errors are raised as `NodeError`s and turned into JSON responses in
one place, `App.handle`. Routes see the node only through `NodeOps`, the operations it offers
them. Routes carry a kind - `peer` (inter-node), `write`, `read` or `open` -
which the authentication policy (`auth.py`) checks before the route runs; `admin` (forgetting a
member) takes a peer's signature or the client token. A keyed increment may be decided at another
node, its key's home (`Node.increment`, keyhome.py); the answer is relayed the same way.
"""

from __future__ import annotations

import json
import logging
import math
import os
from dataclasses import dataclass
from typing import Callable, Protocol

from dcounter import clusterread, statuspage, validation
from dcounter import backup as backup_copy
from dcounter.clock import SystemClock
from dcounter.errors import (BadRequest, Conflict, NodeError, MethodNotAllowed, NotAPeer,
                             NotFound, OtherCluster, Unavailable)
from dcounter.counter import MAX_ITEMS
from dcounter.http_types import FileBody, Request, Response, error_response
from dcounter.membership import backoff_warnings
from dcounter.protocol import accepted
from dcounter.validation import MAX_DELTA
from dcounter.wire import (MAX_ORIGINS_PER_PULL, MAX_SEQ, check_fields, decode_digest,
                           decode_events, decode_forward, decode_held_summaries,
                           decode_peer_list, decode_runs)

log = logging.getLogger(__name__)


class NodeOps(Protocol):
    """What the routes ask of the node (`node.Node`), and all they see of it."""
    node_id: str
    protocol: int  # the protocol it speaks
    cluster: str

    def increment(self, counter, delta, key, forwarded=False): ...
    def increment_many(self, items, key): ...
    def reset(self, counter, delete, key): ...
    def replicate(self, sender, events): ...
    def state_reply(self, origins, held=0) -> dict: ...
    def count(self, name) -> int: ...
    def count_all(self, name, timeout): ...
    def counters(self) -> dict: ...
    def on_join(self, sender, origin, digest, peers, protocol=None, held=None) -> dict: ...
    def on_heartbeat(self, sender, origin, digest, peers, protocol=None, held=None) -> dict: ...
    def on_leave(self, sender, origin) -> bool: ...
    def forget(self, member, forwarded) -> dict: ...
    def alive_peers(self) -> list[str]: ...
    def render_metrics(self) -> str: ...
    def readiness(self) -> tuple[bool, str]: ...
    def status(self) -> dict: ...
    def backup(self): ...  # (file, done) or None (in memory); raises BackupError, BackupBusy


@dataclass(frozen=True)
class Route:
    method: str
    path: str
    fn: Callable
    kind: str  # "peer", "admin", "write", "read" or "open"


# -- decoding helpers ---------------------------------------------------------------------------

def json_body(request: Request, *, allow_empty: bool = False) -> dict:
    query_params(request)  # routes with a body take no query parameters: `?counter=` is refused
    if not request.body.strip():
        if allow_empty:
            return {}
        raise BadRequest("request body must be a JSON object")
    try:
        data = json.loads(request.body)
    except (ValueError, UnicodeDecodeError) as exc:
        raise BadRequest(f"malformed JSON: {exc}") from None
    except RecursionError:  # a body well under the size cap can nest deeper than the stack
        raise BadRequest("malformed JSON: nested too deeply") from None
    if not isinstance(data, dict):
        raise BadRequest("request body must be a JSON object")
    return data


def query_params(request: Request, allowed=()) -> dict:
    params = {}
    for name, value in request.query:
        if name not in allowed:
            raise BadRequest(f"unknown query parameter: {name!r}")
        if name in params:
            raise BadRequest(f"query parameter {name!r} given twice")
        params[name] = value
    return params


SEE_CUTOVER = "see README 'Leaving the original system'"


def _sender(data: dict, request: Request) -> str:
    """Who sent a refused message, for the log: its node id if it gave one, else its address."""
    node_id = data.get("node_id")
    if isinstance(node_id, str) and node_id.isprintable() and len(node_id) <= 261:
        return node_id
    return request.client or "unknown"


def refuse_non_peers(data: dict, request: Request) -> None:
    """A join or heartbeat must carry `protocol` and `origin`. The original system's nodes send
    neither; listed as peers they would count what they send once per node that receives it."""
    missing = [name for name in ("protocol", "origin") if name not in data]
    if missing:
        raise NotAPeer(f"not a dcounter peer: no {' or '.join(missing)} in the request; the "
                       f"original system's nodes cannot join; {SEE_CUTOVER}",
                       _sender(data, request))


def check_membership_fields(node, data: dict, sender: str) -> None:
    """cluster and protocol, when present, must match ours (409 otherwise)."""
    if "cluster" in data:
        if not isinstance(data["cluster"], str):
            raise BadRequest("cluster must be a string")
        if data["cluster"] != node.cluster:
            raise OtherCluster(f"this node belongs to cluster {node.cluster!r}, "
                               f"not {data['cluster']!r}", sender)
    if "protocol" in data:
        if isinstance(data["protocol"], bool) or not isinstance(data["protocol"], int):
            raise BadRequest("protocol must be an integer")
        if not accepted(node.protocol, data["protocol"]):
            raise OtherCluster(f"protocol {data['protocol']} is not supported (this node "
                               f"speaks 1 to {node.protocol})", sender)
    if "origin" in data:
        validation.origin(data["origin"])


def idempotency_key_header(request: Request) -> str | None:
    """The request's `Idempotency-Key` header, checked, or None."""
    key = request.headers.get("Idempotency-Key")
    if key is not None:
        validation.idempotency_key(key, "Idempotency-Key")
    return key


def keyed_answer(result):
    """A write's answer: 200 with its payload, marked `Idempotent-Replayed` for a replay."""
    return 200, result.payload(), {"Idempotent-Replayed": "true"} if result.replayed else {}


# -- routes -----------------------------------------------------------------------------------

_INCREMENT_FIELDS = frozenset(("counter", "delta"))


def increment(node, request: Request):
    data = json_body(request, allow_empty=True)
    if not data.keys() <= _INCREMENT_FIELDS:  # the common body passes without building sets
        check_fields(data, optional=_INCREMENT_FIELDS)
    name = validation.counter_name(data.get("counter", "default"))
    delta = validation.delta(data["delta"]) if "delta" in data else 1
    key = idempotency_key_header(request)
    result = node.increment(name, delta, key)
    return keyed_answer(result)


def increments(node, request: Request):
    """A bulk increment: one event of 1 to MAX_ITEMS items, applied whole or not at all."""
    data = json_body(request)
    check_fields(data, required=("increments",))
    raw = data["increments"]
    if not isinstance(raw, list) or not 1 <= len(raw) <= MAX_ITEMS:
        raise BadRequest(f"increments must be a list of 1 to {MAX_ITEMS} items")
    items = []
    names: set[str] = set()  # checked already: a request names few counters many times
    for index, item in enumerate(raw):
        try:
            items.append(_bulk_item(item, names))
        except BadRequest as exc:
            raise BadRequest(f"increments[{index}]: {exc.message}") from None
    key = idempotency_key_header(request)
    result = node.increment_many(tuple(items), key)
    return keyed_answer(result)


_ITEM_FIELDS = frozenset(("counter", "delta"))


def _bulk_item(item, names: set[str]) -> tuple[str, int]:
    """One item of a bulk increment: (counter, delta)."""
    if not isinstance(item, dict):
        raise BadRequest("each item must be an object")
    if not item.keys() <= _ITEM_FIELDS:
        check_fields(item, optional=_ITEM_FIELDS, where="item")
    name = item.get("counter", "default")
    if type(name) is not str or name not in names:  # a list or dict cannot be looked up
        names.add(validation.counter_name(name))
    delta = item.get("delta", 1)
    if type(delta) is not int or not 0 < abs(delta) <= MAX_DELTA:  # bool is not int here
        validation.delta(delta)
    return name, delta


def forward(node, request: Request):
    """A keyed increment forwarded by the node that received it to the key's home (keyhome.py):
    applied here whatever this node's own view says, never forwarded again."""
    _sender, name, delta, key = decode_forward(json_body(request))
    result = node.increment(name, delta, key, forwarded=True)
    return 200, {**result.payload(), "replayed": result.replayed}


_RUNS_FIELDS = frozenset(("node_id", "runs"))


def replicate(node, request: Request):
    data = json_body(request)
    if "event_id" in data and "events" not in data and "runs" not in data:
        # The original system sends each increment's uuid to every peer: a node cannot tell
        # whether another node counted it too, so accepting it would count it once per node.
        raise NotAPeer("the original system's replicate form {node_id, event_id} is not "
                       "accepted: it would be counted once per node that receives it; "
                       + SEE_CUTOVER, _sender(data, request))
    # Protocol 1 sends `events`, a list of event objects; protocol 2 the compact `runs`
    # (wire.py). Exactly one of them.
    if "runs" in data and "events" not in data:
        if data.keys() != _RUNS_FIELDS:
            check_fields(data, required=("node_id", "runs"))
        sender = validation.node_id(data["node_id"])
        if node.protocol < 2:
            raise BadRequest("runs need protocol 2; this node speaks protocol 1")
        events = decode_runs(data["runs"])
    else:
        check_fields(data, required=("node_id", "events"))
        sender = validation.node_id(data["node_id"])
        if not isinstance(data["events"], list):
            raise BadRequest("events must be a list")
        events = decode_events(data["events"])
    if node.protocol < 2 and any(event.items is not None or event.reset is not None
                                 for event in events):
        raise BadRequest("bulk and reset events need protocol 2; this node speaks protocol 1")
    result = node.replicate(sender, events)
    return 200, {"applied": len(result.applied), "duplicates": result.duplicates,
                 "deferred": result.deferred}


def state(node, request: Request):
    data = json_body(request)
    check_fields(data, required=("origins",), optional=("node_id", "held"))
    if "node_id" in data:
        validation.node_id(data["node_id"])
    origins = data["origins"]
    if not isinstance(origins, list) or len(origins) > MAX_ORIGINS_PER_PULL:
        raise BadRequest(f"origins must be a list of at most {MAX_ORIGINS_PER_PULL} origin ids")
    for origin in origins:
        validation.origin(origin, "origins entry")
    # `held` (protocol 2): how many held events per origin the puller takes (its --gap-cap).
    held = data.get("held", 0)
    if isinstance(held, bool) or not isinstance(held, int) or not 0 <= held <= MAX_SEQ:
        raise BadRequest("held must be an integer from 0 to 2^63-1: the held events per origin "
                         "to answer")
    # The digest lets a read of the whole cluster ask for origins it did not know of; the
    # covers of resets travel with every reply (reset.py).
    return 200, node.state_reply(origins, held)


def read_timeout(text: str) -> float:
    """`?timeout=` of a read of the whole cluster: seconds, more than 0, at most MAX_TIMEOUT."""
    try:
        value = float(text)
    except ValueError:
        value = math.nan
    if not 0 < value <= clusterread.MAX_TIMEOUT:  # also refuses nan and inf
        raise BadRequest(f"timeout must be a number of seconds, more than 0 and at most "
                         f"{clusterread.MAX_TIMEOUT:g}")
    return value


def count(node, request: Request):
    params = query_params(request, allowed=("counter", "consistency", "timeout"))
    name = validation.counter_name(params.get("counter", "default"))
    consistency = params.get("consistency", "local")
    if consistency not in ("local", "all"):
        raise BadRequest("consistency must be 'local' (this node's value) or 'all' (ask every "
                         "live peer)")
    timeout = read_timeout(params["timeout"]) if "timeout" in params \
        else clusterread.DEFAULT_TIMEOUT
    if consistency == "local":
        return 200, {"counter": name, "count": node.count(name)}
    result = node.count_all(name, timeout)
    return 200, {"counter": name, "count": result.count, "answered": result.answered,
                 "members": result.members, "complete": result.complete}


def _reset_route(node, request: Request, delete: bool):
    data = json_body(request)
    check_fields(data, required=("counter",))
    name = validation.counter_name(data["counter"])
    key = idempotency_key_header(request)
    result = node.reset(name, delete, key)
    return keyed_answer(result)


def reset(node, request: Request):
    """Zero a counter for what this node has observed (reset.py): an event of this node."""
    return _reset_route(node, request, delete=False)


def delete(node, request: Request):
    """A reset that also hides the name while its count is 0 (reset.py)."""
    return _reset_route(node, request, delete=True)


def counters(node, request: Request):
    query_params(request)
    return 200, {"counters": node.counters()}


def _membership_request(request: Request, node) -> tuple:
    """The body of a join or heartbeat: (sender, origin, digest, peers, protocol, held)."""
    data = json_body(request)
    refuse_non_peers(data, request)
    check_fields(data, required=("node_id",),
                 optional=("cluster", "protocol", "origin", "digest", "peers", "held"))
    sender = validation.node_id(data["node_id"])
    check_membership_fields(node, data, sender)
    digest = decode_digest(data["digest"]) if "digest" in data else {}
    peers = decode_peer_list(data["peers"]) if "peers" in data else []
    held = decode_held_summaries(data["held"]) if "held" in data else {}
    return sender, data.get("origin"), digest, peers, data.get("protocol"), held


def join(node, request: Request):
    return 200, node.on_join(*_membership_request(request, node))


def heartbeat(node, request: Request):
    return 200, node.on_heartbeat(*_membership_request(request, node))


def leave(node, request: Request):
    data = json_body(request)
    check_fields(data, required=("node_id",), optional=("cluster", "protocol", "origin"))
    sender = validation.node_id(data["node_id"])
    check_membership_fields(node, data, sender)
    return 200, {"left": node.on_leave(sender, data.get("origin"))}


def forget(node, request: Request):
    """An operator removes a member for good; a node that applied it tells its peers once, with
    `forwarded` set, which they do not pass on."""
    data = json_body(request)
    check_fields(data, required=("node_id",), optional=("forwarded",))
    member = validation.node_id(data["node_id"])
    forwarded = data.get("forwarded", False)
    if not isinstance(forwarded, bool):
        raise BadRequest("forwarded must be true or false")
    return 200, node.forget(member, forwarded)


def nodes(node, request: Request):
    query_params(request)
    return 200, node.alive_peers()


def metrics(node, request: Request):
    query_params(request)
    return Response(200, node.render_metrics().encode(),
                    "text/plain; version=0.0.4; charset=utf-8")


def healthz(node, request: Request):
    query_params(request)
    return 200, {"status": "ok", "node_id": node.node_id}


def readyz(node, request: Request):
    query_params(request)
    ready, reason = node.readiness()
    return (200 if ready else 503), {"ready": ready, "reason": reason}


def status(node, request: Request):
    query_params(request)
    return 200, node.status()


def status_page(node, request: Request):
    query_params(request)
    body, headers = statuspage.render_page(node.status())
    return Response(200, body, "text/html; charset=utf-8", headers)


BACKUP_RETRY_AFTER = 10  # seconds a refused backup is told to wait (Retry-After)


def backup(node, request: Request):
    """A consistent, marked copy of this node's database (see backup.py): the file itself,
    streamed from a temporary copy (a `FileBody`, closed by whoever sends it), never held in
    memory. One at a time: while one is made or sent, another gets 503 with Retry-After (each
    is a full copy on disk, and two at once only slow both). Kind `write`: it exports the whole
    state, keys included, so with a client token it needs the token even when reads are open.
    The copy is made from a connection of its own; the writer goes on committing meanwhile."""
    query_params(request)
    try:
        copy = node.backup()
    except backup_copy.BackupBusy as exc:
        return error_response(503, str(exc), {"Retry-After": str(BACKUP_RETRY_AFTER)})
    except backup_copy.BackupError as exc:  # e.g. no room for the copy in the temporary dir
        raise Unavailable(f"backup failed: {exc}") from None
    if copy is None:
        raise Conflict("this node keeps its state in memory (--in-memory): there is no database "
                       "to back up")
    file, done = copy
    try:
        length = os.fstat(file.fileno()).st_size
    except BaseException:
        file.close()
        done()
        raise
    name = "dcounter-" + node.node_id.replace(":", "-") + ".sqlite3"
    return Response(200, FileBody(file, length, on_close=done), "application/vnd.sqlite3",
                    {"Content-Disposition": f'attachment; filename="{name}"'})


ROUTES = [
    Route("POST", "/counter/increment", increment, "write"),
    Route("POST", "/counter/increments", increments, "write"),
    Route("POST", "/counter/reset", reset, "write"),
    Route("POST", "/counter/delete", delete, "write"),
    Route("POST", "/counter/forward", forward, "peer"),
    Route("POST", "/counter/replicate", replicate, "peer"),
    Route("POST", "/counter/state", state, "peer"),
    Route("GET", "/counter/count", count, "read"),
    Route("GET", "/counters", counters, "read"),
    Route("POST", "/nodes/join", join, "peer"),
    Route("POST", "/nodes/heartbeat", heartbeat, "peer"),
    Route("POST", "/nodes/leave", leave, "peer"),
    Route("POST", "/nodes/forget", forget, "admin"),
    Route("GET", "/nodes", nodes, "read"),
    Route("GET", "/", status_page, "read"),
    Route("GET", "/status", status, "read"),
    Route("GET", "/metrics", metrics, "read"),
    Route("GET", "/healthz", healthz, "open"),
    Route("GET", "/readyz", readyz, "open"),
    Route("GET", "/backup", backup, "write"),
]


class App:
    """Dispatches a `Request` to its route and turns the outcome into a `Response`."""

    def __init__(self, node: NodeOps, routes=ROUTES, auth=None, metrics=None, clock=None):
        self.node = node
        self.auth = auth
        self.metrics = metrics
        self.clock = clock or SystemClock()  # for the backoff of refusal warnings
        self._table: dict[str, dict[str, Route]] = {}
        self._refusals = backoff_warnings()  # per (sender, kind of refusal)
        for route in routes:
            self._table.setdefault(route.path, {})[route.method] = route

    def add(self, route: Route) -> None:
        self._table.setdefault(route.path, {})[route.method] = route

    def handle(self, request: Request) -> Response:
        response = self._handle(request)
        if self.metrics is not None:
            self.metrics.inc("dcounter_http_requests_total", route=request.route or "unknown",
                             status=str(response.status))
        return response

    def _handle(self, request: Request) -> Response:
        try:
            methods = self._table.get(request.path)
            if methods is None:
                raise NotFound(f"no such path: {request.path}")
            route = methods.get(request.method)
            if route is None:
                raise MethodNotAllowed(f"{request.method} is not allowed on {request.path}",
                                       sorted(methods))
            request.route = route.path
            if self.auth is not None:
                self.auth.check(request, route.kind)
            outcome = route.fn(self.node, request)
            if isinstance(outcome, Response):
                return outcome
            # Encoded inside the boundary: a payload JSON cannot encode is a 500 like any bug.
            status, payload, *rest = outcome
            return Response.json(status, payload, rest[0] if rest else None)
        except MethodNotAllowed as exc:
            return error_response(exc.status, exc.message, {"Allow": ", ".join(exc.allow)})
        except (NotAPeer, OtherCluster) as exc:
            self._log_refusal(exc)
            return error_response(exc.status, exc.message)
        except NodeError as exc:
            headers = {"WWW-Authenticate": "Bearer"} if exc.status == 401 else None
            return error_response(exc.status, exc.message, headers)
        except Exception:
            log.exception("internal error on %s %s", request.method, request.path)
            return error_response(500, "internal error")

    def _log_refusal(self, exc: NotAPeer | OtherCluster) -> None:
        """A WARNING per sender and kind, at once and then 1, 2, 4 ... minutes apart (at most
        10): a misconfigured node retries every second or so, and its operator needs one clear
        line, not a flood."""
        if not self._refusals.due((exc.sender, type(exc).__name__), self.clock.monotonic()):
            return
        hint = (" (is --cluster the same on every node?)"
                if isinstance(exc, OtherCluster) and "cluster" in exc.message else "")
        log.warning("refused %s: %s%s", exc.sender, exc.message, hint)
