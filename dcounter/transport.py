"""The one module that speaks HTTP to peers.

It owns a `requests.Session` (kept-alive connections, a pool per peer), applies timeouts to
every call, signs requests when the cluster has a secret, and turns every failure of the
`requests` library into our own `PeerUnreachable` (no answer) or `PeerRefused` (a non-2xx
answer). Nothing else in the package imports `requests`.

It also owns the words for those failures: `failure_kind(exc)` names the cause (a short key,
for rate-limiting a warning per peer and cause) and `describe_failure(exc)` says it in a short
phrase an operator can act on ("connection refused", "certificate not trusted: set --tls-ca"),
for log lines and the status page. Both look through the chain of causes `requests` and
urllib3 wrap, so they take our exceptions and theirs alike.
A `PeerUnreachable` says whether the request may have left (`sent`): a refused connection
or a connect timeout sent nothing.
"""

import json
import logging
import socket
import ssl
import threading

import requests
import urllib3
from requests.adapters import HTTPAdapter

from dcounter.errors import PeerRefused, PeerUnreachable, failure_words

log = logging.getLogger(__name__)


class Transport:
    def __init__(self, *, timeout: float = 2.0, scheme: str = "http", verify=True,
                 signer=None, pool_size: int = 16, on_request=None):
        """`signer(method, path, body) -> headers` adds authentication headers;
        `on_request(path, ok)` observes every call (metrics)."""
        self.timeout = timeout
        self.scheme = scheme
        self.signer = signer
        self.on_request = on_request
        self._session = requests.Session()
        self._session.trust_env = False  # peer calls never go through a proxy
        self._session.verify = verify
        adapter = HTTPAdapter(pool_connections=64, pool_maxsize=pool_size, max_retries=0)
        self._session.mount("http://", adapter)
        self._session.mount("https://", adapter)
        self._session.headers.update({"Content-Type": "application/json",
                                      "User-Agent": "dcounter-peer"})
        self._lock = threading.Lock()
        self._templates: dict[tuple[str, str], requests.PreparedRequest] = {}

    def url(self, node_id: str, path: str) -> str:
        return f"{self.scheme}://{node_id}{path}"

    def _prepare(self, node_id: str, path: str, body: bytes) -> requests.PreparedRequest:
        """A POST of `body` to `path` at `node_id`. Preparing a request from scratch (parsing the
        URL, merging the session's headers, cookies and hooks) cost about as much as sending
        it, so each (peer, path) is prepared once and copied."""
        key = (node_id, path)
        template = self._templates.get(key)
        if template is None:
            template = self._session.prepare_request(
                requests.Request("POST", self.url(node_id, path)))
            with self._lock:
                if len(self._templates) >= 1024:  # peers come and go; keep the cache bounded
                    self._templates.clear()
                self._templates[key] = template
        prepared = template.copy()
        prepared.prepare_body(body, None)
        return prepared

    def post(self, node_id: str, path: str, payload: dict, timeout: float | None = None,
             headers: dict | None = None) -> dict:
        """`headers` go with the request as given (a signature covers method, path and body)."""
        body = json.dumps(payload, separators=(",", ":")).encode()
        signed = self.signer("POST", path, body) if self.signer else None
        try:
            prepared = self._prepare(node_id, path, body)
            if headers:
                prepared.headers.update(headers)
            if signed:
                prepared.headers.update(signed)
            response = self._session.send(prepared, timeout=timeout or self.timeout,
                                          allow_redirects=False)
        except requests.RequestException as exc:
            self._observe(path, False)
            raise PeerUnreachable(f"{node_id}: {type(exc).__name__}",
                                  sent=not _never_sent(exc)) from exc
        ok = 200 <= response.status_code < 300
        self._observe(path, ok)
        if not ok:
            try:
                error = response.json()
            except ValueError:
                error = None
            # Any body at all may come back with an error status: only an object's "error"
            # is taken as the message, so nothing but PeerRefused leaves here.
            if isinstance(error, dict) and "error" in error:
                message = error["error"]
            else:
                message = response.text[:200]
            raise PeerRefused(response.status_code, str(message))
        try:
            data = response.json()
        except ValueError as exc:
            raise PeerUnreachable(f"{node_id}: reply is not JSON") from exc
        if not isinstance(data, dict):
            raise PeerUnreachable(f"{node_id}: reply is not a JSON object")
        return data

    def _observe(self, path: str, ok: bool) -> None:
        if self.on_request is not None:
            self.on_request(path, ok)

    def close(self) -> None:
        self._session.close()


# -- failures in words ---------------------------------------------------------------------------

SIGNATURE_HINT = "do the nodes share --cluster-secret and a clock within --max-clock-skew?"
_NOT_TLS = ("WRONG_VERSION_NUMBER", "RECORD_LAYER_FAILURE", "PACKET_LENGTH_TOO_LONG",
            "HTTP_REQUEST", "UNKNOWN_PROTOCOL")

_PHRASES = {
    "refused": "connection refused: nothing listens on that address and port (is the node "
               "running?)",
    "connect-timeout": "connection timed out: nothing answers at that address (down, or a "
                       "firewall in the way?)",
    "read-timeout": "no answer within --request-timeout",
    "dns": "host name not resolved (check the address)",
    "untrusted": "certificate not trusted: set --tls-ca to the CA that signed the peer's "
                 "certificate",
    "hostname": "certificate does not name the address used to reach it: give the peer a "
                "certificate for its id (--advertise), or reach it by a name its certificate "
                "holds",
    "not-tls": "the peer does not speak TLS: start every node with --tls-cert, or none",
    "reset-plain": "connection closed without an answer: if the peer serves HTTPS, every node "
                   "needs --tls-cert",
    "reset": "connection closed without an answer",
    "not-json": "answered with something that is not a dcounter reply",
    "signature": "refused our signature: " + SIGNATURE_HINT,
}


def _causes(exc: BaseException) -> list[BaseException]:
    """`exc` and every exception it wraps (`__cause__`, `__context__`, urllib3's `reason`, an
    exception among `args`), outermost first."""
    seen: list[BaseException] = []
    todo = [exc]
    while todo:
        current = todo.pop(0)
        if current is None or any(current is known for known in seen) or len(seen) > 20:
            continue
        seen.append(current)
        reason = getattr(current, "reason", None)
        todo += [current.__cause__, current.__context__,
                 reason if isinstance(reason, BaseException) else None]
        todo += [arg for arg in getattr(current, "args", ()) if isinstance(arg, BaseException)]
    return seen


def _plain_http(chain) -> bool:
    for cause in chain:
        request = getattr(cause, "request", None)
        url = getattr(request, "url", None)
        if isinstance(url, str):
            return url.startswith("http://")
    return False


def failure_kind(exc: BaseException) -> str:
    """The cause of a failed peer call as a short key: "refused", "connect-timeout",
    "read-timeout", "dns", "untrusted", "hostname", "not-tls", "tls", "reset-plain", "reset",
    "not-json", "unreachable" for `PeerUnreachable` and what it wraps; "signature" (401),
    "cluster" (409), "busy" (503) or "status-N" for `PeerRefused`."""
    if isinstance(exc, PeerRefused):
        return {401: "signature", 409: "cluster", 503: "busy"}.get(exc.status,
                                                                  f"status-{exc.status}")
    chain = _causes(exc)
    for cause in chain:
        if isinstance(cause, ssl.SSLCertVerificationError):
            code = getattr(cause, "verify_code", None)
            text = str(getattr(cause, "verify_message", "") or cause).lower()
            return "hostname" if code == 62 or "hostname" in text or "ip address" in text \
                else "untrusted"
    for cause in chain:
        if isinstance(cause, socket.gaierror):
            return "dns"
        if isinstance(cause, ConnectionRefusedError):
            return "refused"
        if isinstance(cause, requests.ConnectTimeout):
            return "connect-timeout"
        if isinstance(cause, requests.ReadTimeout):
            return "read-timeout"
        if isinstance(cause, ssl.SSLError):
            reason = str(getattr(cause, "reason", "") or cause).upper().replace(" ", "_")
            return "not-tls" if any(word in reason for word in _NOT_TLS) else "tls"
    for cause in chain:
        if isinstance(cause, (ConnectionResetError, ConnectionAbortedError)) or \
                type(cause).__name__ == "RemoteDisconnected":
            return "reset-plain" if _plain_http(chain) else "reset"
        if isinstance(cause, (socket.timeout, TimeoutError)):
            return "read-timeout"
        if isinstance(cause, ValueError) and isinstance(exc, PeerUnreachable):
            return "not-json"
    for cause in chain:  # a name urllib3 could not resolve, on versions without gaierror kept
        if type(cause).__name__ == "NameResolutionError":
            return "dns"
    return "unreachable"


def describe_failure(exc: BaseException) -> str:
    """A failed peer call in a few words an operator can act on, e.g. "connection refused:
    nothing listens on that address and port (is the node running?)" or "refused our
    signature: do the nodes share --cluster-secret and a clock within --max-clock-skew?".
    Reads after a peer's name ("peer X: ..."); takes `PeerUnreachable`, `PeerRefused`, or the
    `requests`/`ssl`/`socket` exception itself."""
    kind = failure_kind(exc)
    if isinstance(exc, PeerRefused):
        said = " ".join(str(exc.message).split())[:200]
        if kind == "signature":
            # "wrong request signature" adds nothing to the hint; "stale ... +45s" does.
            plain = not said or said.startswith("wrong request signature")
            return _PHRASES["signature"] + ("" if plain else f" (it answered: {said})")
        if kind == "cluster":
            if "cluster" in said:
                return (f"refused us as another cluster (it answered: {said}): is --cluster the "
                        f"same on every node?")
            return f"refused us as another protocol or cluster (it answered: {said})"
        if kind == "busy":
            return f"turned us away for now: {said or 'busy'}"
        return f"refused our request ({exc.status}): {said or 'no reason given'}"
    if kind in _PHRASES:
        return _PHRASES[kind]
    if kind == "tls":
        for cause in _causes(exc):
            if isinstance(cause, ssl.SSLError):
                reason = getattr(cause, "reason", None) or str(cause)
                return f"TLS handshake failed ({str(reason).lower().replace('_', ' ')})"
    innermost = _causes(exc)[-1]
    text = failure_words(str(innermost))[1]  # without our own "host:port: ..." prefix
    return text[:200] or type(innermost).__name__


def _never_sent(exc: BaseException) -> bool:
    """True when the connection was never made (refused, a connect timeout, an unknown name), so
    the request certainly never left. urllib3's NewConnectionError is a ConnectTimeoutError; the
    cause is searched through requests' and urllib3's wrappers (`_causes`)."""
    return any(isinstance(cause, (requests.ConnectTimeout, urllib3.exceptions.ConnectTimeoutError,
                                  ConnectionRefusedError)) for cause in _causes(exc))
