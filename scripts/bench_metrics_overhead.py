"""What the /metrics counters cost a request, in one run: one request's counting today (the clock
read the routes add and ``Metrics.observe``) against the counting the service did before them
(two ``Counter`` increments under a lock), next to what ``HttpApi.handle`` takes per request.

    python scripts/bench_metrics_overhead.py [--calls 2000] [--rounds 7]

One process, the tiny synthetic bundle (``shelfrank.testing``): ``POST /v1/recommend`` (k = 10,
a shopper with 4 events) and ``GET /v1/health`` handled in-process (no sockets), the two ways of
counting interleaved round by round; medians. The two counters are timed on their own because
the difference (well under a microsecond) is below what two whole-request runs can resolve on a
shared machine (two identical services differ by ±15 % there). Also: one ``/metrics`` scrape.
"""

from __future__ import annotations

import argparse
import json
import platform
import statistics
import subprocess
import tempfile
import threading
import time
from collections import Counter
from pathlib import Path

from shelfrank.device import Recommender
from shelfrank.device.kernel import active_isa
from shelfrank.device.service.endpoints import Service
from shelfrank.device.service.metrics import Metrics
from shelfrank.device.service.routes import HttpApi
from shelfrank.testing import build_device_bundle


class _Before:
    """The service's counting before /metrics: by operation and by status, under one lock."""

    def __init__(self) -> None:
        self.lock, self.by_op, self.by_status = threading.Lock(), Counter(), Counter()

    def count(self, name: str, outcome: int, seconds: float | None = None) -> None:
        with self.lock:
            self.by_op[name] += 1
            self.by_status[outcome] += 1


def _per_call_us(api: HttpApi, method: str, path: str, body: bytes, calls: int) -> float:
    t = time.perf_counter()
    for _ in range(calls):
        status, _, _ = api.handle(method, path, "application/json", body)
    assert status == 200, status
    return (time.perf_counter() - t) / calls * 1e6


def _count_ns(count, calls: int, *, timed: bool) -> float:
    """One request's counting: with ``timed``, the two clock reads the routes add, then the count."""
    t = time.perf_counter()
    if timed:
        for _ in range(calls):
            started = time.perf_counter()
            count("recommend", 200, time.perf_counter() - started)
    else:
        for _ in range(calls):
            count("recommend", 200)
    return (time.perf_counter() - t) / calls * 1e9


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--calls", type=int, default=2000)
    ap.add_argument("--rounds", type=int, default=7)
    args = ap.parse_args()
    work = Path(tempfile.mkdtemp(prefix="bench-metrics-"))
    bundle, pub = build_device_bundle(work)
    rec = Recommender.open(bundle, public_key=pub, state_dir=work / "state")
    for it in rec.recommend("bench-user", 4):
        rec.record("bench-user", it.item_id, "view")
    service = Service(rec)
    api = HttpApi(service)
    requests = {
        "POST /v1/recommend": ("POST", "/v1/recommend", json.dumps({"user_id": "bench-user", "k": 10}).encode()),
        "GET /v1/health": ("GET", "/v1/health", b""),
    }
    counters = {"before": _Before().count, "today": Metrics().observe}
    for method, path, body in requests.values():  # warm-up
        _per_call_us(api, method, path, body, 200)
    handle: dict[str, list[float]] = {r: [] for r in requests}
    count: dict[str, list[float]] = {c: [] for c in counters}
    for i in range(args.rounds):
        for r, (method, path, body) in requests.items():
            handle[r].append(_per_call_us(api, method, path, body, args.calls))
        for c in counters if i % 2 == 0 else reversed(counters):
            count[c].append(_count_ns(counters[c], 50 * args.calls, timed=c == "today"))
    t = time.perf_counter()
    for _ in range(200):
        service.exposition()
    scrape_us = (time.perf_counter() - t) / 200 * 1e6
    info = Path("/proc/cpuinfo").read_text().splitlines()
    cpu = next((line.split(":", 1)[1].strip() for line in info if line.startswith("model name")), platform.machine())
    load = Path("/proc/loadavg").read_text().split()[0]
    commit = subprocess.run(["git", "rev-parse", "--short", "HEAD"], capture_output=True, text=True).stdout.strip()
    print(
        f"CPU: {cpu}, Python {platform.python_version()}, ISA {active_isa()}, commit {commit}, load average "
        f"{load}; {args.rounds} interleaved rounds, medians\n"
    )
    before, today = statistics.median(count["before"]), statistics.median(count["today"])
    print(f"counting one request: before /metrics {before:.0f} ns, today {today:.0f} ns ({today - before:+.0f} ns)\n")
    print("| request | HttpApi.handle µs | the counters' extra | share |")
    print("| --- | ---: | ---: | ---: |")
    for r in requests:
        h = statistics.median(handle[r])
        print(f"| {r} | {h:.1f} | {(today - before) / 1e3:+.2f} µs | {(today - before) / 1e3 / h:+.2%} |")
    print(f"\none /metrics scrape: {scrape_us:.0f} µs")
    rec.close()


if __name__ == "__main__":
    main()
