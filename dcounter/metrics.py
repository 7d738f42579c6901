"""A small metrics registry rendered in the Prometheus text format (version 0.0.4).

Counters and gauges with labels, summaries kept as `_sum`/`_count` pairs, and histograms with
fixed buckets. Thread-safe;
no dependency. Gauges that are read from live state are registered as callbacks and evaluated
at scrape time.
"""

import bisect
import threading

_HELP = {
    "dcounter_http_requests_total": ("counter", "HTTP requests served, by route and status."),
    "dcounter_increments_local_total": ("counter", "Increments acknowledged at this node "
                                                   "(each item of a bulk request counts)."),
    "dcounter_bulk_requests_total": ("counter", "Bulk increment requests acknowledged at this "
                                                "node (POST /counter/increments)."),
    "dcounter_increments_replicated_total": ("counter",
                                             "Events from other origins applied by replication."),
    "dcounter_increments_forwarded_total": ("counter", "Keyed increments sent to their key's "
                                            "home and answered there (relayed)."),
    "dcounter_increments_forward_refused_total": ("counter", "Keyed increments applied here "
                                                  "because their key's home refused the "
                                                  "connection."),
    "dcounter_replicate_batches_sent_total": ("counter", "Replicate requests that succeeded."),
    "dcounter_replicate_batches_failed_total": ("counter", "Replicate requests that failed."),
    "dcounter_replicate_events_sent_total": ("counter", "Events delivered in replicate requests."),
    "dcounter_peer_requests_total": ("counter", "Requests this node sent to peers, by path and "
                                                "outcome."),
    "dcounter_anti_entropy_pulls_total": ("counter", "Prefix pulls from peers (anti-entropy)."),
    "dcounter_anti_entropy_adopted_total": ("counter", "Origin prefixes adopted from peers."),
    "dcounter_commit_seconds": ("summary", "Time to commit one group of changes to storage "
                                           "(durable mode only)."),
    "dcounter_commit_group_size": ("summary", "Requests committed together in one group."),
    "dcounter_replication_delay_seconds": ("histogram", "Time from an event's commit at this "
                                           "node until a peer acknowledged it, per event and "
                                           "peer."),
}

# Upper bounds (seconds) of the histograms' buckets; +Inf is added when rendering.
_BUCKETS = {
    "dcounter_replication_delay_seconds": (0.001, 0.0025, 0.005, 0.01, 0.02, 0.03, 0.05, 0.075,
                                           0.1, 0.15, 0.25, 0.5, 1.0, 2.5, 5.0, 10.0),
}

# Counters that only ever have labelled series: no unlabelled zero sample is shown for them.
_LABELLED = {"dcounter_http_requests_total", "dcounter_peer_requests_total"}


def _escape(value: str) -> str:
    """A label value: backslash, double quote and newline are escaped."""
    return str(value).replace("\\", "\\\\").replace("\n", "\\n").replace('"', '\\"')


def _escape_help(text: str) -> str:
    """A HELP text: only backslash and newline are escaped."""
    return str(text).replace("\\", "\\\\").replace("\n", "\\n")


def _number(value) -> str:
    """A sample value as the text format spells it (integers without a fraction, +Inf, NaN)."""
    if isinstance(value, bool):
        return "1" if value else "0"
    if isinstance(value, int):
        return str(value)
    value = float(value)
    if value != value:
        return "NaN"
    if value in (float("inf"), float("-inf")):
        return "+Inf" if value > 0 else "-Inf"
    if value.is_integer() and abs(value) < 2**53:
        return str(int(value))
    return repr(value)


def _labels(labels: tuple) -> str:
    if not labels:
        return ""
    return "{" + ",".join(f'{k}="{_escape(v)}"' for k, v in labels) + "}"


class Metrics:
    def __init__(self):
        self._lock = threading.Lock()
        self._values: dict[str, dict[tuple, float]] = {}
        self._gauges: dict[str, tuple[str, object]] = {}

    def inc(self, name: str, amount: float = 1, **labels) -> None:
        key = tuple(sorted(labels.items()))
        with self._lock:
            series = self._values.setdefault(name, {})
            series[key] = series.get(key, 0) + amount

    def observe(self, name: str, value: float) -> None:
        with self._lock:
            series = self._values.setdefault(name, {})
            series[("sum",)] = series.get(("sum",), 0) + value
            series[("count",)] = series.get(("count",), 0) + 1

    def observe_histogram(self, name: str, values) -> None:
        """Observations `values` (numbers) in the histogram `name` (buckets in `_BUCKETS`)."""
        values = sorted(values)
        if not values:
            return
        counts, start = [], 0
        for bound in _BUCKETS[name]:
            end = bisect.bisect_right(values, bound, start)
            counts.append(end - start)
            start = end
        counts.append(len(values) - start)
        total = sum(values)
        with self._lock:
            series = self._values.setdefault(name, {})
            for index, count in enumerate(counts):
                if count:
                    series[("bucket", index)] = series.get(("bucket", index), 0) + count
            series[("sum",)] = series.get(("sum",), 0) + total
            series[("count",)] = series.get(("count",), 0) + len(values)

    def gauge(self, name: str, help_text: str, read) -> None:
        """`read()` returns a number or a list of (labels dict, number)."""
        self._gauges[name] = (help_text, read)

    def value(self, name: str, **labels) -> float:
        with self._lock:
            return self._values.get(name, {}).get(tuple(sorted(labels.items())), 0)

    def histogram(self, name: str) -> tuple[tuple[float, ...], list[float]]:
        """The histogram `name`'s bucket bounds and its count per bucket (not cumulative; one
        more than the bounds, the last for +Inf)."""
        bounds = _BUCKETS[name]
        with self._lock:
            series = self._values.get(name, {})
            return bounds, [series.get(("bucket", i), 0) for i in range(len(bounds) + 1)]

    def total(self, name: str, **match) -> float:
        """Sum of every series of `name` whose labels include `match`."""
        with self._lock:
            series = self._values.get(name, {})
            return sum(v for k, v in series.items()
                       if all((lk, lv) in k for lk, lv in match.items()))

    def render(self) -> str:
        lines = []
        with self._lock:
            snapshot = {name: dict(series) for name, series in self._values.items()}
        for name in sorted(set(snapshot) | set(_HELP)):
            kind, help_text = _HELP.get(name, ("counter", name))
            lines.append(f"# HELP {name} {_escape_help(help_text)}")
            lines.append(f"# TYPE {name} {kind}")
            series = snapshot.get(name, {})
            if kind == "summary":
                lines.append(f"{name}_sum {_number(series.get(('sum',), 0))}")
                lines.append(f"{name}_count {_number(series.get(('count',), 0))}")
                continue
            if kind == "histogram":
                bounds = _BUCKETS[name]
                cumulative = 0
                for index, bound in enumerate(bounds + (float("inf"),)):
                    cumulative += series.get(("bucket", index), 0)
                    lines.append(f'{name}_bucket{{le="{_number(bound)}"}} {_number(cumulative)}')
                lines.append(f"{name}_sum {_number(series.get(('sum',), 0))}")
                lines.append(f"{name}_count {_number(series.get(('count',), 0))}")
                continue
            if not series and name not in _LABELLED:
                series = {(): 0}  # an unlabelled counter exists from the start, at 0
            for labels, value in sorted(series.items()):
                lines.append(f"{name}{_labels(labels)} {_number(value)}")
        for name, (help_text, read) in sorted(self._gauges.items()):
            lines.append(f"# HELP {name} {_escape_help(help_text)}")
            lines.append(f"# TYPE {name} gauge")
            try:
                value = read()
            except Exception:  # a gauge must never break the scrape
                continue
            if isinstance(value, list):
                for labels, number in value:
                    lines.append(f"{name}{_labels(tuple(sorted(labels.items())))} "
                                 f"{_number(number)}")
            else:
                lines.append(f"{name} {_number(value)}")
        return "\n".join(lines) + "\n"
