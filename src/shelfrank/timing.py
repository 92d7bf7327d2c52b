"""Latency figures of repeated calls: p50/p95/p99 in ms, shared by the benches and the export's report."""

from __future__ import annotations

import time
from typing import Any

import numpy as np


def latency_stats(ts: list[float]) -> dict[str, float]:
    """p50/p95/p99 in ms and the count of call times ``ts`` in seconds."""
    a = np.asarray(ts) * 1e3
    return {
        "p50_ms": float(np.percentile(a, 50)),
        "p95_ms": float(np.percentile(a, 95)),
        "p99_ms": float(np.percentile(a, 99)),
        "n": len(ts),
    }


def time_calls(fn, runs: int, warmup: int = 5) -> dict[str, float]:
    """p50/p95/p99 in ms of ``runs`` calls of ``fn`` after ``warmup`` untimed ones."""
    for _ in range(warmup):
        fn()
    ts = []
    for _ in range(runs):
        t0 = time.perf_counter()
        fn()
        ts.append(time.perf_counter() - t0)
    return latency_stats(ts)


def time_interleaved(fns: dict[str, Any], runs: int, warmup: int = 5) -> dict[str, dict[str, float]]:
    """p50/p95/p99 in ms of each of ``fns``, called in turn ``runs`` times after ``warmup`` rounds;
    the order alternates every round, so that drift on a shared machine and whatever one call
    leaves in the caches for the next fall on every function alike."""
    names = list(fns)
    for _ in range(warmup):
        for name in names:
            fns[name]()
    ts: dict[str, list[float]] = {name: [] for name in names}
    for i in range(runs):
        for name in names if i % 2 == 0 else names[::-1]:
            t0 = time.perf_counter()
            fns[name]()
            ts[name].append(time.perf_counter() - t0)
    return {name: latency_stats(t) for name, t in ts.items()}
