"""The HTTP types the routes and the server share: `Request`, `Response`, `FileBody`,
`Headers` and `error_response`.

Plain data, no sockets and no server: `api.py` builds its answers from these without importing
`server.py`, and tests build requests without a socket. Must not import `server.py`.
"""

import json
from dataclasses import dataclass, field

_JSON = json.JSONEncoder(separators=(",", ":"))  # json.dumps would build one per call


@dataclass
class Request:
    method: str
    path: str
    query: list[tuple[str, str]]
    headers: object  # Headers (or anything with get and get_all, such as HTTPMessage)
    body: bytes
    client: str
    route: str = ""


class FileBody:
    """A response body sent from an open file in chunks instead of held in memory (a backup
    copy): `length` bytes from the file's current position. Whoever takes a `Response` with one
    must `close` it once the answer is sent, or sending failed, or it is never sent; `close`
    closes the file and then calls `on_close` (a slot to free), once however often it is
    called."""

    CHUNK = 256 * 1024  # bytes read and sent at a time

    def __init__(self, file, length: int, on_close=None):
        self.file = file
        self.length = length
        self._on_close = on_close

    def chunks(self):
        """The body's chunks; stops short (without raising) if the file ends early."""
        remaining = self.length
        while remaining > 0:
            chunk = self.file.read(min(self.CHUNK, remaining))
            if not chunk:
                return
            remaining -= len(chunk)
            yield chunk

    def close(self) -> None:
        on_close, self._on_close = self._on_close, None
        try:
            self.file.close()
        finally:
            if on_close is not None:
                on_close()


@dataclass
class Response:
    status: int
    body: "bytes | FileBody"
    content_type: str = "application/json"
    headers: dict = field(default_factory=dict)

    @classmethod
    def json(cls, status: int, payload, headers: dict | None = None) -> "Response":
        body = _JSON.encode(payload).encode()
        return cls(status, body, "application/json", headers or {})


def error_response(status: int, message: str, headers: dict | None = None) -> Response:
    return Response.json(status, {"error": message}, headers)


class Headers:
    """A request's header fields, read without the `email` package (its parser costs more than
    everything else a request does). Names match case-insensitively; `get` gives the first
    value and `get_all` every value, as `http.client.HTTPMessage` does."""

    __slots__ = ("_fields",)

    def __init__(self, fields: list[tuple[str, str]]):
        self._fields = fields  # (lower-case name, value)

    def get(self, name: str, default=None):
        name = name.lower()
        for key, value in self._fields:
            if key == name:
                return value
        return default

    def get_all(self, name: str, failobj=None):
        name = name.lower()
        values = [value for key, value in self._fields if key == name]
        return values or failobj
