"""The service's counters and ``GET /metrics`` in the Prometheus text exposition format (0.0.4).

:class:`Metrics` counts answered requests by operation and status and keeps one latency
histogram per operation, in this process, under one lock (an ``observe`` is a dict lookup, a
bisect and three additions). :func:`exposition` writes them out together with what the service
reads at scrape time: the catalog version and size, the seconds since the served catalog was
synced, and impressions, clicks and click-through per surface (:meth:`EventStore.click_through`).

Nothing here identifies a shopper: the labels are operations, status codes, surfaces (short
names the contract limits, at most ``events.MAX_SURFACES`` of them) and build facts; never a
user id or an item id.
"""

from __future__ import annotations

import math
import threading
from bisect import bisect_left
from collections.abc import Iterable, Mapping

__all__ = ["BUCKETS", "CONTENT_TYPE", "Metrics", "exposition"]

#: the exposition format's media type (what a Prometheus scraper asks for and parses)
CONTENT_TYPE = "text/plain; version=0.0.4; charset=utf-8"

#: latency histogram bucket bounds, seconds: from a cached recommend (~0.3 ms) to a stuck one
BUCKETS: tuple[float, ...] = (0.0005, 0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0, 10.0)


class _Histogram:
    __slots__ = ("count", "counts", "sum")

    def __init__(self) -> None:
        self.counts = [0] * (len(BUCKETS) + 1)  # per bucket, not cumulative; the last is +Inf
        self.sum = 0.0
        self.count = 0


class Metrics:
    """Request counts by (operation, status) and a latency histogram per operation; thread-safe."""

    def __init__(self) -> None:
        self._lock = threading.Lock()
        self._requests: dict[tuple[str, int], int] = {}
        self._latency: dict[str, _Histogram] = {}

    def observe(self, operation: str, status: int, seconds: float | None = None) -> None:
        """Count one answered request; ``seconds`` (its handling time) goes into the histogram."""
        key = (operation, status)
        with self._lock:
            self._requests[key] = self._requests.get(key, 0) + 1
            if seconds is not None:
                h = self._latency.get(operation)
                if h is None:
                    h = self._latency[operation] = _Histogram()
                h.counts[bisect_left(BUCKETS, seconds)] += 1
                h.sum += seconds
                h.count += 1

    def requests(self) -> dict[tuple[str, int], int]:
        """A copy of the request counts by (operation, status)."""
        with self._lock:
            return dict(self._requests)

    def latency(self) -> dict[str, tuple[list[int], float, int]]:
        """A copy of each operation's histogram: (per-bucket counts, sum of seconds, count)."""
        with self._lock:
            return {op: (list(h.counts), h.sum, h.count) for op, h in self._latency.items()}


def _label(value: str) -> str:
    return value.replace("\\", "\\\\").replace('"', '\\"').replace("\n", "\\n")


def _number(value: float) -> str:
    if math.isnan(value):
        return "NaN"
    if math.isinf(value):
        return "+Inf" if value > 0 else "-Inf"
    return repr(int(value)) if float(value).is_integer() and abs(value) < 1e15 else repr(float(value))


def _bound(b: float) -> str:
    return repr(b) if not float(b).is_integer() else f"{b:.1f}"


class _Writer:
    def __init__(self) -> None:
        self.lines: list[str] = []

    def family(self, name: str, kind: str, help_: str, samples: Iterable[tuple[str, dict[str, str], float]]) -> None:
        self.lines += [f"# HELP {name} {help_}", f"# TYPE {name} {kind}"]
        for suffix, labels, value in samples:
            text = ",".join(f'{k}="{_label(v)}"' for k, v in labels.items())
            self.lines.append(f"{name}{suffix}{'{' + text + '}' if text else ''} {_number(value)}")


def exposition(
    metrics: Metrics,
    *,
    build: Mapping[str, str],
    uptime_s: float,
    catalog_version: int,
    catalog_items: int,
    sync_age_s: float | None,
    surfaces: Mapping[str, tuple[int, int]],
) -> bytes:
    """The exposition text: every family with its HELP and TYPE, one sample a line.

    Args:
        metrics: the request counters and latency histograms.
        build: the ``shelfrank_build_info`` labels (version, kernel ISA).
        uptime_s: seconds since the service started.
        catalog_version, catalog_items: the catalog served.
        sync_age_s: seconds since the served catalog was installed by a sync; None while the
            bundle's own catalog is served (the gauge is then left out).
        surfaces: (impressions, clicks) per surface, from :meth:`EventStore.click_through`.
    """
    w = _Writer()
    w.family("shelfrank_build_info", "gauge", "The service's version and top-k kernel path.", [("", dict(build), 1)])
    w.family("shelfrank_uptime_seconds", "gauge", "Seconds since the service started.", [("", {}, uptime_s)])
    requests = sorted(metrics.requests().items())
    w.family(
        "shelfrank_requests_total",
        "counter",
        "Requests answered, by operation and HTTP status.",
        [("", {"operation": op, "status": str(status)}, n) for (op, status), n in requests],
    )
    samples: list[tuple[str, dict[str, str], float]] = []
    for op, (counts, total, count) in sorted(metrics.latency().items()):
        running = 0
        for bound, n in zip((*map(_bound, BUCKETS), "+Inf"), counts, strict=True):
            running += n
            samples.append(("_bucket", {"operation": op, "le": bound}, running))
        samples += [("_sum", {"operation": op}, total), ("_count", {"operation": op}, count)]
    w.family(
        "shelfrank_request_duration_seconds",
        "histogram",
        "Time from a decoded request to its encoded answer, by operation (the HTTP framing not included).",
        samples,
    )
    w.family("shelfrank_catalog_version", "gauge", "The catalog version served.", [("", {}, catalog_version)])
    w.family("shelfrank_catalog_items", "gauge", "Items in the catalog served.", [("", {}, catalog_items)])
    if sync_age_s is not None:
        w.family(
            "shelfrank_catalog_sync_age_seconds",
            "gauge",
            "Seconds since the catalog served was installed by a sync (absent: the bundle's own catalog).",
            [("", {}, sync_age_s)],
        )
    rows = sorted(surfaces.items())
    w.family(
        "shelfrank_impressions_total",
        "counter",
        "Items shown to shoppers, by surface (record_impression).",
        [("", {"surface": s}, shown) for s, (shown, _) in rows],
    )
    w.family(
        "shelfrank_clicks_total",
        "counter",
        "Clicks on an item shown on the surface within the click window, by surface.",
        [("", {"surface": s}, clicks) for s, (_, clicks) in rows],
    )
    w.family(
        "shelfrank_click_through_ratio",
        "gauge",
        "clicks_total / impressions_total, by surface.",
        [("", {"surface": s}, clicks / shown if shown else 0.0) for s, (shown, clicks) in rows],
    )
    return ("\n".join(w.lines) + "\n").encode()
