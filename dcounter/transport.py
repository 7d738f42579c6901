"""The one module that speaks HTTP to peers.

It owns a `requests.Session` (kept-alive connections, a pool per peer), applies timeouts to
every call, signs requests when the cluster has a secret, and turns every failure of the
`requests` library into our own `PeerUnreachable` (no answer) or `PeerRefused` (a non-2xx
answer). Nothing else in the package imports `requests`. A `PeerUnreachable` says whether the
request may have left (`sent`): a refused connection or a connect timeout sent nothing.
"""

import json
import logging
import threading

import requests
import urllib3
from requests.adapters import HTTPAdapter

from dcounter.errors import PeerRefused, PeerUnreachable

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


def _never_sent(exc: BaseException, depth: int = 0) -> bool:
    """True when the connection was never made (refused, a connect timeout, an unknown name), so
    the request certainly never left. urllib3's NewConnectionError is a ConnectTimeoutError; the
    cause is searched through requests' and urllib3's wrappers."""
    if isinstance(exc, (requests.ConnectTimeout, urllib3.exceptions.ConnectTimeoutError,
                        ConnectionRefusedError)):
        return True
    if depth > 6:
        return False
    for inner in (*exc.args, getattr(exc, "reason", None), exc.__cause__, exc.__context__):
        if isinstance(inner, BaseException) and _never_sent(inner, depth + 1):
            return True
    return False
