"""One request to one node: the client's only network seam.

`Connection` owns the `requests` sessions (one per thread, kept alive: requests does not promise
that a Session is thread-safe), the timeouts and the scheme, and turns what `requests` raises
into the client's own exceptions, defined here: `Unreachable` (no answer; `sent` says whether
the request may have left), `TLSFailure` (explained in words with its fix), `Refused` typed by
status, and their base `DcounterError` (public as `dcounter.DcounterError`; unrelated to the
node's `dcounter.errors.NodeError`). It never retries: what to do after a failure is
`library.Client`'s decision.

Like the rest of the client it imports nothing from the node.
"""

from __future__ import annotations

import json
import re
import ssl
import threading
import weakref
from collections.abc import Mapping
from dataclasses import dataclass

import requests
import urllib3

from dcounter import __version__

DEFAULT_TIMEOUT = 5.0     # seconds one HTTP request may take


# -- exceptions ---------------------------------------------------------------------------------

class DcounterError(Exception):
    """Base of everything the client raises. On an error from a write, `key` is the idempotency
    key it sent and `maybe_counted` is True when an attempt's outcome is unknown (it was sent and
    no answer came): calling again with `key=error.key` is then the way to retry safely."""

    key: str | None = None
    maybe_counted: bool = False


class Unreachable(DcounterError):
    """No answer: the connection failed or was dropped, or no answer came in time. `sent` is
    False when the request certainly never left (refused, connect timeout, unknown name)."""

    def __init__(self, message: str, *, sent: bool = True):
        super().__init__(message)
        self.sent = sent


class TLSFailure(DcounterError):
    """The node could not be spoken to in TLS the client trusts; asking again will not help."""


class Refused(DcounterError):
    """The node answered with an error status; nothing changed there. `message` is the node's
    own words, `node` the address asked (None when refused before sending)."""

    def __init__(self, status: int, message: str, node: str | None = None):
        super().__init__(f"{node} answered {status}: {message}" if node else message)
        self.status = status
        self.message = message
        self.node = node


class InvalidRequest(Refused, ValueError):
    """400: malformed or invalid (a bad counter name, a delta of 0 ...). Also raised before
    anything is sent when the client can tell, so it is a ValueError too."""


class Unauthorized(Refused):
    """401: the token is missing or wrong."""


class Conflict(Refused):
    """409: the node cannot do this in its present state (another cluster, an in-memory node
    asked for a backup)."""


class Unprocessable(Refused):
    """422: an idempotency key reused with another request, a count that would leave signed 64
    bits, or a counter past the node's --max-counters."""


class Unavailable(Refused):
    """503: storage failure, too many connections, shutting down; nothing was counted."""


_BY_STATUS = {400: InvalidRequest, 401: Unauthorized, 409: Conflict, 422: Unprocessable,
              503: Unavailable}


def refused(status: int, message: str, node: str | None = None) -> Refused:
    """The Refused subclass for `status` (plain Refused for the others: 404, 413, 500 ...)."""
    return _BY_STATUS.get(status, Refused)(status, message, node)


# -- answers ------------------------------------------------------------------------------------

@dataclass(frozen=True)
class Answer:
    """A node's 2xx answer: its JSON, its headers, which node gave it and the key sent."""
    node: str
    payload: object
    headers: Mapping[str, str]
    key: str | None = None

    @property
    def replayed(self) -> bool:
        """The node had already taken this key: this is its original answer, nothing counted."""
        return self.headers.get("Idempotent-Replayed", "").lower() == "true"


# -- one request to one node ---------------------------------------------------------------------

class Connection:
    """Requests to nodes, one at a time, never retried. `address` is `host:port` (sent with
    `scheme`) or a URL. `verify`: True (the system's CAs) or the CA file's path."""

    # How TLS failures tell the user to fix them; the `dcounter` command uses its own words.
    hints = {"ca": "ca=", "address": "an address", "use": ""}

    def __init__(self, *, scheme: str = "http", token: str | None = None, verify=True,
                 timeout: float = DEFAULT_TIMEOUT):
        self.scheme = scheme
        self.token = token
        self.verify = verify
        self.timeout = timeout
        self._local = threading.local()
        # Every thread's session, for close(); weak, so a finished thread's session goes away.
        self._sessions: weakref.WeakSet[requests.Session] = weakref.WeakSet()
        self._sessions_lock = threading.Lock()

    def close(self) -> None:
        """Close the kept-alive connections (a later call opens new ones)."""
        with self._sessions_lock:
            sessions = list(self._sessions)
        for session in sessions:
            session.close()

    def __enter__(self):
        return self

    def __exit__(self, *exc) -> None:
        self.close()

    def _session(self) -> requests.Session:
        session = getattr(self._local, "session", None)
        if session is None:
            session = requests.Session()
            session.headers["User-Agent"] = f"dcounter/{__version__}"
            session.headers["Accept"] = "application/json"
            if self.token:
                session.headers["Authorization"] = f"Bearer {self.token}"
            self._local.session = session
            with self._sessions_lock:
                self._sessions.add(session)
        return session

    def url(self, address: str, path: str) -> str:
        base = address if "://" in address else f"{self.scheme}://{address}"
        return base.rstrip("/") + path

    def call(self, method: str, address: str, path: str, **kwargs):
        """The decoded JSON answer of one request to one node, no retry."""
        return self.exchange(method, address, path, **kwargs)[0]

    def exchange(self, method: str, address: str, path: str, *, params=None, body=None,
                 headers=None, timeout: float | None = None):
        """(decoded JSON answer, response headers) of one request to `address`, no retry;
        raises Unreachable, TLSFailure, Refused (typed by status) or DcounterError."""
        shown = plain_address(address)
        url = self.url(address, path)
        try:
            response = self._session().request(
                method, url, params=params,
                data=None if body is None else json.dumps(body),
                headers={"Content-Type": "application/json", **(headers or {})}
                if body is not None else headers,
                timeout=self.timeout if timeout is None else timeout, verify=self.verify,
                allow_redirects=False)
        except requests.RequestException as exc:
            explained = _explain_tls(exc, url, shown, self.verify, self.hints)
            if isinstance(exc, requests.exceptions.SSLError):
                raise TLSFailure(explained) from None
            raise Unreachable(explained or f"{shown}: {_reason(exc)}",
                              sent=not _never_sent(exc)) from None
        try:
            payload = response.json()
        except ValueError:
            payload = None
        if response.status_code >= 400:
            detail = payload.get("error") if isinstance(payload, dict) else None
            raise refused(response.status_code, str(detail or response.reason or "error"),
                          shown)
        if payload is None:
            raise DcounterError(f"{shown} answered {response.status_code} without JSON "
                                f"(is it a dcounter node?)")
        return payload, response.headers

    def download(self, address: str, path: str, file, timeout: float | None = None) -> int:
        """The raw body of one GET (a backup file) written to `file` as it arrives, never held
        whole in memory; the bytes written. No retry. An answer cut short of its
        Content-Length is `Unreachable`."""
        shown = plain_address(address)
        try:
            response = self._session().get(
                self.url(address, path), timeout=self.timeout if timeout is None else timeout,
                verify=self.verify, allow_redirects=False, stream=True)
            with response:
                if response.status_code >= 400:
                    try:
                        detail = response.json().get("error")
                    except (ValueError, AttributeError):
                        detail = None
                    raise refused(response.status_code,
                                  str(detail or response.reason or "error"), shown)
                written = 0
                for chunk in response.iter_content(1 << 20):
                    file.write(chunk)
                    written += len(chunk)
        except requests.exceptions.ChunkedEncodingError:  # urllib3's IncompleteRead
            raise Unreachable(f"{shown}: the answer was cut off before its end (shorter than "
                              "its Content-Length)") from None
        except requests.RequestException as exc:
            raise Unreachable(f"{shown}: {_reason(exc)}") from None
        return written


def plain_address(address: str) -> str:
    """An address as the user knows it: without the scheme and trailing slash."""
    return address.split("://", 1)[-1].rstrip("/")


# -- requests' exceptions in a few words --------------------------------------------------------

def _never_sent(exc: requests.RequestException) -> bool:
    """True when the request certainly never left: the connection was never made. (urllib3's
    NewConnectionError, refused or an unknown name, is a ConnectTimeoutError.)"""
    if isinstance(exc, requests.ConnectTimeout):
        return True
    return _find(exc, (urllib3.exceptions.ConnectTimeoutError, ConnectionRefusedError),
                 depth=0) is not None


def _find(exc, types, depth: int):
    if isinstance(exc, types):
        return exc
    if depth > 6 or not isinstance(exc, BaseException):
        return None
    for inner in (*exc.args, getattr(exc, "reason", None), exc.__cause__, exc.__context__):
        if isinstance(inner, BaseException):
            found = _find(inner, types, depth + 1)
            if found is not None:
                return found
    return None


def _reason(exc: requests.RequestException) -> str:
    """A short reason from requests' long exception text (TLS failures: `_explain_tls`)."""
    if isinstance(exc, requests.Timeout):
        return "no answer in time"
    match = re.search(r"\[Errno -?\d+\] ([^'\")]+)", str(exc))
    if match:
        return match.group(1).strip().lower()
    if isinstance(exc, requests.ConnectionError):
        return "connection failed: " + _last_clause(str(exc))
    return _last_clause(str(exc)) or type(exc).__name__


def _last_clause(text: str) -> str:
    text = text.splitlines()[0] if text else ""
    return text[-200:]


def _ssl_detail(exc: BaseException) -> str:
    """The ssl module's own words from under requests' and urllib3's wrappers, without the
    `[SSL: CODE]` prefix and the `(_ssl.c:NNN)` suffix."""
    found = _find(exc, ssl.SSLError, depth=0)
    text = found.verify_message if isinstance(found, ssl.SSLCertVerificationError) and \
        found.verify_message else (found.reason or str(found)) if found else str(exc)
    text = re.sub(r"^\[[A-Z]+: [A-Z_]+\]\s*", "", str(text))
    text = re.sub(r"\s*\(_ssl\.c:\d+\)", "", text)
    return text.replace("_", " ").lower().rstrip(".") if text.isupper() else text.rstrip(".")


def _explain_tls(exc: requests.RequestException, url: str, shown: str, verify,
                 hints: dict) -> str | None:
    """What went wrong with TLS, in words and with the fix; None when TLS is not the cause."""
    https = url.lower().startswith("https://")
    ca, address, use = hints["ca"], hints["address"], hints["use"]
    if isinstance(exc, requests.exceptions.SSLError):
        found = _find(exc, ssl.SSLError, depth=0)
        detail = _ssl_detail(exc)
        if isinstance(found, ssl.SSLCertVerificationError):
            if "hostname mismatch" in detail.lower() or "ip address mismatch" in detail.lower():
                return (f"{shown}: its TLS certificate is not valid for that name ({detail}); "
                        f"use {address} with a name the certificate lists")
            if isinstance(verify, str):
                return (f"{shown}: its TLS certificate is not trusted by {ca}"
                        f"{'' if ca.endswith('=') else '='}{verify} ({detail}); point {ca} at "
                        f"the CA file that signed the nodes' certificates")
            return (f"{shown}: its TLS certificate is not trusted ({detail}); set "
                    f"{ca} to the CA file that signed the nodes' certificates")
        if "wrong version number" in detail.lower() or "record layer" in detail.lower() \
                or "http request" in detail.lower():
            return (f"{shown} does not speak TLS ({detail}): it serves plain http; use "
                    f"{use}http://{shown}")
        return f"{shown}: TLS handshake failed ({detail})"
    if not https and isinstance(exc, requests.ConnectionError) and re.search(
            r"Connection aborted|RemoteDisconnected|reset by peer", str(exc)):
        # A node that serves TLS drops a plain-http request without a word.
        return (f"{shown} closed the connection without an answer; if it serves TLS, use "
                f"{use}https://{shown} and set {ca} to the nodes' CA file")
    return None
