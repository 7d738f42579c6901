"""Raw HTTP/1.1 on a loopback socket, for what `requests` will not send (malformed framing,
pipelined or half-sent requests) and for reading exactly one response off a kept-alive
connection."""

import socket


def exchange(port: int, data: bytes, sock=None, timeout: float = 5.0) -> tuple[int, dict, bytes]:
    """Send `data` as is and read one response (on `sock` when given, else on a new connection
    to 127.0.0.1:`port`, closed afterwards)."""
    own = sock is None
    if own:
        sock = socket.create_connection(("127.0.0.1", port), timeout=timeout)
    try:
        sock.sendall(data)
        return read_response(sock)
    finally:
        if own:
            sock.close()


def read_response(sock) -> tuple[int, dict, bytes]:
    """(status, headers with lower-case names, body) of one response framed by Content-Length."""
    buffer = b""
    while b"\r\n\r\n" not in buffer:
        chunk = sock.recv(65536)
        if not chunk:
            raise AssertionError(f"connection closed before a full response: {buffer!r}")
        buffer += chunk
    head, _, body = buffer.partition(b"\r\n\r\n")
    lines = head.decode("latin-1").split("\r\n")
    status = int(lines[0].split()[1])
    headers = {}
    for line in lines[1:]:
        name, _, value = line.partition(":")
        headers[name.strip().lower()] = value.strip()
    length = int(headers["content-length"])
    while len(body) < length:
        chunk = sock.recv(65536)
        if not chunk:
            break
        body += chunk
    return status, headers, body[:length]
