"""Shapes of the identifiers that cross the wire: node ids, counter names, event ids, keys,
and the numbers read from text (ports, sequence numbers, lengths, flag values).

A number in text is a run of ASCII digits and nothing else: `str.isdigit()` also accepts
superscripts, full-width digits and other scripts' digits, and `int()` / `float()` accept some
of those, surrounding white space, underscores, `nan` and `inf`; none of that is a number here.

Every identifier function raises `BadRequest` with a message a user can act on; the number
parsers raise `ValueError`; nothing here touches state.
"""

import ipaddress
import math
import re

from dcounter.errors import BadRequest

MAX_DELTA = 2**53 - 1
INT64_MIN = -(2**63)
INT64_MAX = 2**63 - 1

_COUNTER_RE = re.compile(r"[A-Za-z0-9_.:-]{1,128}")
_ORIGIN_RE = re.compile(r"[A-Za-z0-9_-]{1,64}")
# DNS labels are 1-63 characters (RFC 1035): a first and last character around at most 61.
_HOSTNAME_RE = re.compile(r"(?=.{1,253}$)[A-Za-z0-9](?:[A-Za-z0-9-]{0,61}[A-Za-z0-9])?"
                          r"(?:\.[A-Za-z0-9](?:[A-Za-z0-9-]{0,61}[A-Za-z0-9])?)*\.?")
_KEY_RE = re.compile(r"[\x21-\x7e](?:[\x20-\x7e]{0,253}[\x21-\x7e])?")
# [0-9] is ASCII only in a character class; \d would match every script's digits.
_DIGITS_RE = re.compile(r"[0-9]+")
_INT_RE = re.compile(r"-?[0-9]{1,19}")
_FLOAT_RE = re.compile(r"-?(?:[0-9]+(?:\.[0-9]*)?|\.[0-9]+)(?:[eE][-+]?[0-9]{1,3})?")


def is_ascii_digits(text) -> bool:
    """`text` is a non-empty run of the ASCII digits 0-9 and nothing else."""
    return isinstance(text, str) and _DIGITS_RE.fullmatch(text) is not None


def parse_int(text: str) -> int:
    """A decimal integer of ASCII digits with an optional minus sign, at most 19 digits.
    Raises ValueError otherwise."""
    if not isinstance(text, str) or not _INT_RE.fullmatch(text):
        raise ValueError(f"not an integer: {text!r}")
    return int(text)


def parse_float(text: str) -> float:
    """A finite decimal number of ASCII digits (optional minus sign, fraction and exponent).
    Raises ValueError otherwise, for `nan` and `inf` too."""
    if not isinstance(text, str) or not _FLOAT_RE.fullmatch(text):
        raise ValueError(f"not a number: {text!r}")
    value = float(text)
    if math.isinf(value):
        raise ValueError(f"not a finite number: {text!r}")
    return value


def counter_name(value, field: str = "counter") -> str:
    if not isinstance(value, str) or not _COUNTER_RE.fullmatch(value):
        raise BadRequest(f"{field} must be 1-128 characters of A-Z a-z 0-9 _ . : -")
    return value


def delta(value, field: str = "delta") -> int:
    if isinstance(value, bool) or not isinstance(value, int):
        raise BadRequest(f"{field} must be an integer")
    if value == 0:
        raise BadRequest(f"{field} must not be 0")
    if abs(value) > MAX_DELTA:
        raise BadRequest(f"{field} must be within +-(2^53-1)")
    return value


def origin(value, field: str = "origin") -> str:
    if not isinstance(value, str) or not _ORIGIN_RE.fullmatch(value):
        raise BadRequest(f"{field} must be 1-64 characters of A-Z a-z 0-9 _ -")
    return value


def idempotency_key(value, field: str = "key") -> str:
    """1-255 printable ASCII characters (spaces only inside)."""
    if not isinstance(value, str) or not _KEY_RE.fullmatch(value):
        raise BadRequest(f"{field} must be 1-255 printable ASCII characters")
    return value


def split_event_id(value) -> tuple[str, int] | None:
    """`"<origin>:<seq>"` -> (origin, seq); None when the id has another shape."""
    if not isinstance(value, str):
        return None
    head, sep, tail = value.rpartition(":")
    if not sep or not _ORIGIN_RE.fullmatch(head) or not is_ascii_digits(tail):
        return None
    if tail.startswith("0") or len(tail) > 19 or int(tail) > INT64_MAX:
        return None
    return head, int(tail)


def node_id(value, field: str = "node_id") -> str:
    """`host:port` with a DNS name, an IPv4 address or a bracketed IPv6 address."""
    if not isinstance(value, str) or not value or len(value) > 261:
        raise BadRequest(f"{field} must be a string host:port")
    host, sep, port = value.rpartition(":")
    if (not sep or not is_ascii_digits(port) or len(port) > 5 or port.startswith("0")
            or not 1 <= int(port) <= 65535):
        raise BadRequest(f"{field} must be host:port with a port from 1 to 65535")
    if host.startswith("[") and host.endswith("]"):
        try:
            ipaddress.IPv6Address(host[1:-1])
        except ValueError:
            raise BadRequest(f"{field} has an invalid IPv6 address") from None
        return value
    if not _HOSTNAME_RE.fullmatch(host):
        raise BadRequest(f"{field} must be host:port with a valid host name or address")
    return value
