"""dcounter: a distributed counter served over HTTP.

Increments are applied and acknowledged at the node that receives them (a keyed one at its
key's home) and replicated asynchronously to every peer; every event has a unique id, so
re-deliveries never double count.

`from dcounter import Client` is the Python client (`dcounter.library`); it and its exceptions
are imported on first use, so a node that imports this package does not load them.
"""

_CLIENT_NAMES = frozenset({
    "Client", "Answer", "DcounterError", "Unreachable", "TLSFailure", "Refused",
    "InvalidRequest", "Unauthorized", "Conflict", "Unprocessable", "Unavailable"})


def __getattr__(name: str):
    if name in _CLIENT_NAMES:
        from dcounter import library
        return getattr(library, name)
    raise AttributeError(f"module 'dcounter' has no attribute {name!r}")


def __dir__():
    return sorted(set(globals()) | _CLIENT_NAMES)


__version__ = "0.1.0"
PROTOCOL = 2  # what peers send each other; see protocol.py for the upgrade rule
