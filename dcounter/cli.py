"""`dcounter-node`: parse flags (and DCOUNTER_* environment variables), start a node, stop it
gracefully on SIGTERM or SIGINT.

`main(argv) -> int` is what `bin/dcounter-node`, `python -m dcounter` and the console script
call; tests can call it in-process. Every problem at start is one line on stderr and a non-zero
exit: 2 for invalid flags, 1 for a node that cannot start (port in use, data directory
unusable). A running node that can no longer keep its memory equal to its data directory (a
group of increments committed to disk but not applied in memory) logs one CRITICAL line saying
why and exits at once with status 3 (`EXIT_FATAL`); restarted, it serves what is on disk. An
error about a value that came from a DCOUNTER_* variable names the variable, and
a DCOUNTER_* variable that nothing reads is refused rather than ignored: it is almost always a
typo that would otherwise change nothing in silence.
"""

from __future__ import annotations

import argparse
import dataclasses
import datetime
import json
import logging
import os
import re
import signal
import sys
import threading

from dcounter import __version__, validation
from dcounter.config import Config
from dcounter.errors import StartupError

PROG = "dcounter-node"
EXIT_FATAL = 3  # memory and disk would disagree: stop at once (2 means invalid flags)

# (flag, Config field, type, help). Each flag may also come from DCOUNTER_<FIELD>.
_FLAGS = [
    ("--port", "port", int, "TCP port to listen on; 0 picks a free one"),
    ("--host", "host", str, "address to bind; 0.0.0.0 serves other machines"),
    ("--peers", "peers", str, "comma-separated host:port of nodes to join"),
    ("--advertise", "advertise", str, "host:port peers use to reach this node "
                                      "(default localhost:PORT on loopback, else HOSTNAME:PORT)"),
    ("--cluster", "cluster", str, "cluster name; nodes of other clusters are refused"),
    ("--protocol", "protocol", int, "protocol spoken to peers (default the newest); 1 speaks "
                                    "only what the previous release does, during a rolling "
                                    "upgrade"),
    ("--data-dir", "data_dir", str, "directory for durable state (default ./dcounter-data-PORT)"),
    ("--sync", "sync", str, "SQLite sync: 'full' survives power loss, 'normal' "
                            "survives a process crash and is faster"),
    ("--heartbeat-interval", "heartbeat_interval", float, "seconds between heartbeats"),
    ("--cleanup-interval", "cleanup_interval", float, "seconds between silent-peer sweeps"),
    ("--peer-timeout", "peer_timeout", float, "seconds of silence before a peer is removed"),
    ("--retry-base", "retry_base", float, "first replication retry delay in seconds"),
    ("--retry-max", "retry_max", float, "cap of the retry delay in seconds"),
    ("--request-timeout", "request_timeout", float, "seconds a call to a peer may take"),
    ("--max-counters", "max_counters", int, "distinct counters a node creates"),
    ("--max-deleted", "max_deleted", int, "tombstones of deleted counters kept until the "
                                          "origins they cover retire; a delete past it is "
                                          "refused"),
    ("--max-body", "max_body", int, "largest request body in bytes"),
    ("--max-backlog", "max_backlog", int, "events queued per peer before the backlog is dropped "
                                          "and anti-entropy takes over"),
    ("--gap-cap", "gap_cap", int, "out-of-order events held per origin"),
    ("--batch-max", "batch_max", int, "events per replicate request"),
    ("--batch-linger", "batch_linger", float, "seconds a busy link waits for a batch to grow; an "
                                              "idle link sends at once"),
    ("--idempotency-ttl", "idempotency_ttl", float, "seconds an Idempotency-Key is remembered"),
    ("--drain-timeout", "drain_timeout", float, "seconds the whole shutdown may take"),
    ("--max-keys", "max_keys", int, "Idempotency-Keys remembered; past it the oldest are "
                                    "forgotten before their ttl"),
    ("--origin-retire-after", "origin_retire_after", float, "seconds an origin may stay idle, "
                                                            "its node unlisted, before it is "
                                                            "retired"),
    ("--reap-after", "reap_after", float, "seconds a failed or left member is kept before it "
                                          "is forgotten"),
    ("--max-connections", "max_connections", int, "concurrent connections served"),
    ("--max-peers", "max_peers", int, "peers listed at once; a join past it gets 503 "
                                      "(rejoin candidates are capped at 4x this)"),
    ("--request-deadline", "request_deadline", float, "seconds a client has to send one "
                                                      "request's headers and body"),
    ("--idle-timeout", "idle_timeout", float, "seconds an idle kept-alive connection stays "
                                              "open"),
    ("--cluster-secret", "cluster_secret", str, "comma-separated secrets signing requests "
                                                "between nodes: sign with the first, accept any "
                                                "(prefer DCOUNTER_CLUSTER_SECRET)"),
    ("--max-clock-skew", "max_clock_skew", float, "seconds a signed request's timestamp may be "
                                                  "off this node's clock"),
    ("--client-token", "client_token", str, "bearer token increments need (prefer "
                                            "DCOUNTER_CLIENT_TOKEN)"),
    ("--tls-cert", "tls_cert", str, "PEM certificate: serve HTTPS and call peers over HTTPS"),
    ("--tls-key", "tls_key", str, "PEM private key of --tls-cert"),
    ("--tls-ca", "tls_ca", str, "PEM CA bundle peer certificates are verified against "
                                "(default: the public CAs)"),
    ("--log-level", "log_level", str, "DEBUG, INFO, WARNING or ERROR"),
    ("--log-format", "log_format", str, "'text', or 'json': one JSON object a line (time, "
                                        "level, logger, message, exc_info) for log shippers"),
]
_BOOL_FLAGS = [
    ("--in-memory", "in_memory", "keep nothing on disk: events acknowledged but not yet "
                                 "replicated die with the process"),
    ("--protect-reads", "protect_reads", "reads need --client-token too (/healthz and /readyz "
                                         "stay open)"),
]


# Read by the `dcounter` command (dcounter/client.py), not by the node: exported in a shell that
# also starts nodes, they must not be refused as typos.
_COMMAND_VARIABLES = ("DCOUNTER_NODE", "DCOUNTER_CLIENT_TOKEN", "DCOUNTER_TLS_CA")


def env_name(field: str) -> str:
    return "DCOUNTER_" + field.upper()


def valid_variables() -> set[str]:
    """Every DCOUNTER_* name that dcounter-node or the dcounter command reads."""
    fields = [field for _f, field, *_rest in _FLAGS] + [field for _f, field, _h in _BOOL_FLAGS]
    return {env_name(field) for field in fields} | set(_COMMAND_VARIABLES)


def _check_variables(environ) -> None:
    """A misspelled variable would otherwise be ignored in silence."""
    valid = valid_variables()
    unknown = sorted(name for name in environ if name.startswith("DCOUNTER_")
                     and name not in valid)
    if unknown:
        raise _UsageError(f"unknown environment variable {', '.join(unknown)}; valid names: "
                          f"{', '.join(sorted(valid))}")


def _name_sources(message: str, sources: dict[str, str]) -> str:
    """Config's messages name flags; a value that came from the environment is named by its
    variable instead, so the operator looks in the right place."""
    def named(match):
        return sources.get(match.group(0)[2:].replace("-", "_"), match.group(0))
    return re.sub(r"--[a-z][a-z0-9-]*", named, message)


class _Parser(argparse.ArgumentParser):
    def error(self, message):
        raise _UsageError(message)


class _UsageError(Exception):
    pass


def build_parser() -> argparse.ArgumentParser:
    parser = _Parser(prog=PROG, description="Run a dcounter node. (`dcounter-node backup` and "
                                            "`dcounter-node restore` copy and restore a data "
                                            "directory; see their --help.)",
                     epilog="Every flag can also be set as an environment variable "
                            "DCOUNTER_<FLAG> (e.g. DCOUNTER_PEERS, DCOUNTER_IN_MEMORY=1); "
                            "flags win. Other DCOUNTER_* names are refused.")
    defaults = {f.name: f.default for f in dataclasses.fields(Config)}
    for flag, field, _type, help_text in _FLAGS:
        default = defaults[field]
        if default not in (None, ()):  # the default shown is Config's, never a copy of it
            shown = f"{default:g}" if isinstance(default, float) else \
                repr(default) if isinstance(default, str) else str(default)
            help_text = f"{help_text} (default {shown})"
        parser.add_argument(flag, dest=field, metavar=field.upper(), help=help_text)
    for flag, field, help_text in _BOOL_FLAGS:
        parser.add_argument(flag, dest=field, action="store_const", const="1", help=help_text)
    parser.add_argument("--version", action="version", version=f"dcounter {__version__}")
    return parser


def _convert(flag: str, kind, raw: str):
    """ASCII digits only (`int()` and `float()` also take other scripts' digits, `_`, `nan` and
    `inf`); ASCII white space around the value, as environment files leave it, is dropped."""
    try:
        if kind is int:
            return validation.parse_int(raw.strip(" \t\r\n"))
        if kind is float:
            return validation.parse_float(raw.strip(" \t\r\n"))
        return kind(raw)
    except ValueError:
        raise _UsageError(f"{flag}: invalid value {raw!r}") from None


def config_from_args(argv: list[str], environ=None) -> Config:
    """Flags first, then DCOUNTER_* variables, then Config's defaults. Raises _UsageError or
    ValueError with a one-line message."""
    environ = os.environ if environ is None else environ
    args = build_parser().parse_args(argv)
    _check_variables(environ)
    values = {}
    sources = {}  # field -> the variable it came from, for fields set in the environment
    for flag, field, kind, _help in _FLAGS:
        raw = getattr(args, field)
        source = flag
        if raw is None and env_name(field) in environ:
            raw, source = environ[env_name(field)], env_name(field)
            sources[field] = source
        if raw is None:
            continue
        if field == "peers":
            values[field] = tuple(p.strip() for p in raw.split(",") if p.strip())
        elif field == "cluster_secret":
            # Empty entries are kept so that Config refuses them: an empty secret must never
            # quietly mean "no authentication".
            values[field] = tuple(s.strip() for s in raw.split(","))
        elif field == "log_level":
            level = raw.upper()
            if level not in ("DEBUG", "INFO", "WARNING", "ERROR"):
                raise _UsageError(f"{source}: must be DEBUG, INFO, WARNING or ERROR")
            values[field] = level
        elif field == "log_format":
            word = raw.strip().lower()
            if word not in ("text", "json"):
                raise _UsageError(f"{source}: must be 'text' or 'json'")
            values[field] = word
        else:
            values[field] = _convert(source, kind, raw)
    for _flag, field, _help in _BOOL_FLAGS:
        raw = getattr(args, field)
        if raw is None and env_name(field) in environ:
            raw = environ[env_name(field)]
            sources[field] = env_name(field)
        if raw is not None:
            word = raw.strip().lower()
            if word not in ("1", "true", "yes", "on", "0", "false", "no", "off", ""):
                raise _UsageError(f"{env_name(field)}: must be 1/true/yes/on or 0/false/no/off")
            values[field] = word in ("1", "true", "yes", "on")
    if values.get("in_memory"):
        for field in ("data_dir", "sync"):
            if field in values:
                raise _UsageError(_name_sources(
                    f"--in-memory and --{field.replace('_', '-')} cannot go together "
                    "(in memory nothing is written to disk)", sources))
    try:
        config = Config(**values)
    except ValueError as exc:
        raise ValueError(_name_sources(str(exc), sources)) from None
    # Its own address among the seeds is ignored.
    own = config.node_id()
    if own in config.peers:
        config = dataclasses.replace(config, peers=tuple(p for p in config.peers if p != own))
    return config


class JsonFormatter(logging.Formatter):
    """One JSON object a line: time (UTC, ISO 8601), level, logger, message, and exc_info (the
    traceback's text) when there is one. A message's own line breaks stay inside the string."""

    def format(self, record: logging.LogRecord) -> str:
        entry = {"time": _utc(record.created), "level": record.levelname,
                 "logger": record.name, "message": record.getMessage()}
        if record.exc_info:
            entry["exc_info"] = self.formatException(record.exc_info)
        elif record.exc_text:
            entry["exc_info"] = record.exc_text
        if record.stack_info:
            entry["stack_info"] = self.formatStack(record.stack_info)
        return json.dumps(entry, ensure_ascii=False)


def _utc(seconds: float) -> str:
    return datetime.datetime.fromtimestamp(seconds, datetime.timezone.utc).isoformat(
        timespec="milliseconds")


def setup_logging(level: str, log_format: str = "text") -> None:
    handler = logging.StreamHandler(sys.stderr)
    handler.setFormatter(JsonFormatter() if log_format == "json" else logging.Formatter(
        "%(asctime)s %(levelname)s %(name)s: %(message)s"))
    logging.basicConfig(level=getattr(logging, level, logging.INFO), handlers=[handler],
                        force=True)
    # urllib3 logs every connection it opens at DEBUG: noise in --log-level debug. Its warnings
    # still show; our own transport says what failed, in words.
    logging.getLogger("urllib3").setLevel(logging.WARNING)


def _say(line: str, log_format: str, stream, level: str = "INFO") -> None:
    """A line the command prints itself (the listening line, an error at start), as a JSON
    object when the logs are JSON, so that every line a log shipper reads parses."""
    if log_format == "json":
        line = json.dumps({"time": _utc(datetime.datetime.now().timestamp()), "level": level,
                           "logger": "dcounter.cli", "message": line}, ensure_ascii=False)
    print(line, file=stream, flush=True)


def _exit_fatal(reason: str) -> None:
    """The node logged `reason`; exit now, without a shutdown that would keep serving from a
    memory that no longer matches the disk."""
    for stream in (sys.stdout, sys.stderr):  # log records are flushed as they are written
        try:
            stream.flush()
        except (OSError, ValueError):
            pass
    os._exit(EXIT_FATAL)


def main(argv: list[str] | None = None, *, environ=None,
         stop_event: threading.Event | None = None) -> int:
    argv = sys.argv[1:] if argv is None else argv
    if argv and argv[0] in ("backup", "restore"):  # offline commands on a data directory
        from dcounter import backup
        return backup.main(argv)
    try:
        config = config_from_args(argv, environ)
    except (_UsageError, ValueError) as exc:
        print(f"{PROG}: error: {exc}", file=sys.stderr)
        return 2
    setup_logging(config.log_level, config.log_format)

    from dcounter.node import Node  # imported late: keeps `--help` fast

    node = Node(config, on_fatal=_exit_fatal)
    try:
        node.open()
    except StartupError as exc:
        _say(f"{PROG}: error: {exc}", config.log_format, sys.stderr, "ERROR")
        return 1
    stop = stop_event or threading.Event()
    if threading.current_thread() is threading.main_thread():
        for sig in (signal.SIGTERM, signal.SIGINT):
            signal.signal(sig, lambda *_: stop.set())
    node.start()
    where = "in memory" if node.store is None else f"data in {os.path.abspath(node.store.directory)}"
    _say(f"dcounter {node.node_id} listening on {config.host}:{node.port} "
         f"(cluster {config.cluster!r}, {where})", config.log_format, sys.stdout)
    while not stop.wait(0.5):
        pass
    logging.getLogger("dcounter").info("shutting down")
    node.stop()
    return 0
