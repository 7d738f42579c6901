"""The route table and the route functions: decoded request in, `(status, payload)` out.

Each route validates its whole input before it asks the node to change anything, so a refused
request changes nothing. Errors are raised as `DcounterError`s and turned into JSON responses in
one place, `App.handle`. Routes carry a kind - `peer` (inter-node), `write`, `read` or `open` -
which the authentication policy (`auth.py`) checks before the route runs.
"""

from __future__ import annotations

import json
import logging
from dataclasses import dataclass
from typing import Callable

from dcounter import PROTOCOL, statuspage, validation
from dcounter.errors import (BadRequest, Conflict, DcounterError, MethodNotAllowed, NotFound)
from dcounter.http_types import Request, Response, error_response
from dcounter.wire import (MAX_ORIGINS_PER_PULL, check_fields, decode_digest, decode_events,
                           decode_peer_list)

log = logging.getLogger(__name__)


@dataclass(frozen=True)
class Route:
    method: str
    path: str
    fn: Callable
    kind: str  # "peer", "write", "read" or "open"


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


def check_membership_fields(node, data: dict) -> None:
    """cluster and protocol, when present, must match ours (409 otherwise)."""
    if "cluster" in data:
        if not isinstance(data["cluster"], str):
            raise BadRequest("cluster must be a string")
        if data["cluster"] != node.config.cluster:
            raise Conflict(f"this node belongs to cluster {node.config.cluster!r}, "
                           f"not {data['cluster']!r}")
    if "protocol" in data:
        if isinstance(data["protocol"], bool) or not isinstance(data["protocol"], int):
            raise BadRequest("protocol must be an integer")
        if data["protocol"] != PROTOCOL:
            raise Conflict(f"protocol {data['protocol']} is not supported (this node speaks "
                           f"{PROTOCOL})")
    if "origin" in data:
        validation.origin(data["origin"])


# -- routes -----------------------------------------------------------------------------------

def increment(node, request: Request):
    data = json_body(request, allow_empty=True)
    check_fields(data, optional=("counter", "delta"))
    name = validation.counter_name(data.get("counter", "default"))
    delta = validation.delta(data["delta"]) if "delta" in data else 1
    key = request.headers.get("Idempotency-Key")
    if key is not None:
        validation.idempotency_key(key, "Idempotency-Key")
    result = node.increment(name, delta, key)
    headers = {"Idempotent-Replayed": "true"} if result.replayed else {}
    return 200, result.payload(), headers


def replicate(node, request: Request):
    data = json_body(request)
    if "events" in data:
        check_fields(data, required=("node_id", "events"))
        sender = validation.node_id(data["node_id"])
        if not isinstance(data["events"], list):
            raise BadRequest("events must be a list")
        events = decode_events(data["events"])
        result = node.replicate(sender, events)
        return 200, {"applied": len(result.applied), "duplicates": result.duplicates,
                     "deferred": result.deferred}
    # The original single-event form: {"node_id": ..., "event_id": "<uuid>"}.
    check_fields(data, required=("node_id", "event_id"))
    sender = validation.node_id(data["node_id"])
    key = validation.idempotency_key(data["event_id"], "event_id")
    applied = node.replicate_legacy(sender, key)
    return 200, {"applied": int(applied), "duplicates": int(not applied), "deferred": 0}


def state(node, request: Request):
    data = json_body(request)
    check_fields(data, required=("origins",), optional=("node_id",))
    if "node_id" in data:
        validation.node_id(data["node_id"])
    origins = data["origins"]
    if not isinstance(origins, list) or len(origins) > MAX_ORIGINS_PER_PULL:
        raise BadRequest(f"origins must be a list of at most {MAX_ORIGINS_PER_PULL} origin ids")
    for origin in origins:
        validation.origin(origin, "origins entry")
    return 200, {"node_id": node.node_id, "origins": node.state(origins)}


def count(node, request: Request):
    params = query_params(request, allowed=("counter",))
    name = validation.counter_name(params.get("counter", "default"))
    return 200, {"counter": name, "count": node.count(name)}


def counters(node, request: Request):
    query_params(request)
    return 200, {"counters": node.counters()}


def _membership_request(request: Request, node) -> tuple:
    """The body of a join or heartbeat: (sender, origin, digest, peers)."""
    data = json_body(request)
    check_fields(data, required=("node_id",),
                 optional=("cluster", "protocol", "origin", "digest", "peers"))
    sender = validation.node_id(data["node_id"])
    check_membership_fields(node, data)
    digest = decode_digest(data["digest"]) if "digest" in data else {}
    peers = decode_peer_list(data["peers"]) if "peers" in data else []
    return sender, data.get("origin"), digest, peers


def join(node, request: Request):
    return 200, node.on_join(*_membership_request(request, node))


def heartbeat(node, request: Request):
    return 200, node.on_heartbeat(*_membership_request(request, node))


def leave(node, request: Request):
    data = json_body(request)
    check_fields(data, required=("node_id",), optional=("cluster", "protocol", "origin"))
    sender = validation.node_id(data["node_id"])
    check_membership_fields(node, data)
    return 200, {"left": node.on_leave(sender, data.get("origin"))}


def nodes(node, request: Request):
    query_params(request)
    return 200, node.peers.alive()


def metrics(node, request: Request):
    query_params(request)
    return Response(200, node.metrics.render().encode(), "text/plain; version=0.0.4; charset=utf-8")


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


ROUTES = [
    Route("POST", "/counter/increment", increment, "write"),
    Route("POST", "/counter/replicate", replicate, "peer"),
    Route("POST", "/counter/state", state, "peer"),
    Route("GET", "/counter/count", count, "read"),
    Route("GET", "/counters", counters, "read"),
    Route("POST", "/nodes/join", join, "peer"),
    Route("POST", "/nodes/heartbeat", heartbeat, "peer"),
    Route("POST", "/nodes/leave", leave, "peer"),
    Route("GET", "/nodes", nodes, "read"),
    Route("GET", "/", status_page, "read"),
    Route("GET", "/status", status, "read"),
    Route("GET", "/metrics", metrics, "read"),
    Route("GET", "/healthz", healthz, "open"),
    Route("GET", "/readyz", readyz, "open"),
]


class App:
    """Dispatches a `Request` to its route and turns the outcome into a `Response`."""

    def __init__(self, node, routes=ROUTES, auth=None, metrics=None):
        self.node = node
        self.auth = auth
        self.metrics = metrics
        self._table: dict[str, dict[str, Route]] = {}
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
        except DcounterError as exc:
            headers = {"WWW-Authenticate": "Bearer"} if exc.status == 401 else None
            return error_response(exc.status, exc.message, headers)
        except Exception:
            log.exception("internal error on %s %s", request.method, request.path)
            return error_response(500, "internal error")
