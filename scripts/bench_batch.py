"""Batch recommend against a loop of single calls, and single-call latency per ranker.

    python scripts/bench_batch.py [--sizes 10000,100000,1000000] [--users 64] [--k 10] [--runs 5]

For each catalog size (the tiny test bundle's catalog expanded, dim ``--dim``, a 50-neighbour
table, the default ``RankerParams``): ``--users`` shoppers with 20 events each, then

* latency: ``recommend(k)`` per call by the hybrid, by the tower alone and for a cold-start
  shopper, interleaved call by call (the user-vector cache cleared each call: the call after a
  new event), p50/p95 and the hybrid/tower ratio;
* batch (when the runtime has ``recommend_many``): users/s of ``recommend_many(users, k)``
  against ``[recommend(u, k) for u in users]``, both from a cleared cache, the median of
  ``--runs`` repeats, their ratio, and whether every result list is identical.

One variable per table (the catalog size); figures are medians after a warm-up. Not a test.
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import numpy as np


def system_info(threads: int) -> dict:
    import onnxruntime

    from shelfrank.device.kernel import active_isa

    cpu = platform.processor() or platform.machine()
    try:
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            if line.startswith("model name"):
                cpu = line.split(":", 1)[1].strip()
                break
    except OSError:
        pass
    try:
        commit = subprocess.run(
            ["git", "rev-parse", "--short", "HEAD"], capture_output=True, text=True, check=False
        ).stdout.strip()
    except OSError:
        commit = "?"
    return {
        "cpu": cpu,
        "cpus": os.cpu_count(),
        "isa": active_isa(),
        "threads": threads,
        "python": platform.python_version(),
        "numpy": np.__version__,
        "onnxruntime": onnxruntime.__version__,
        "commit": commit or "?",
    }


def _p(ts: list[float], q: float) -> float:
    return float(np.percentile(np.asarray(ts) * 1e3, q))


def latency(rec, user: str, k: int, calls: int) -> dict:
    fns = {
        "hybrid": lambda: rec.recommend(user, k, ranker="hybrid"),
        "tower": lambda: rec.recommend(user, k, ranker="tower"),
        "cold": lambda: rec.recommend("bench-nobody", k),
    }
    ts: dict[str, list[float]] = {n: [] for n in fns}
    for i in range(calls + 10):
        for name, fn in fns.items():
            rec._cache.clear()
            t0 = time.perf_counter()
            fn()
            if i >= 10:  # warm-up
                ts[name].append(time.perf_counter() - t0)
    out = {n: {"p50_ms": _p(t, 50), "p95_ms": _p(t, 95)} for n, t in ts.items()}
    out["hybrid/tower p50"] = out["hybrid"]["p50_ms"] / out["tower"]["p50_ms"]
    if hasattr(rec, "_reasons"):  # the explanations' share: Recommender._reasons timed inside the calls
        for ranker in ("hybrid", "tower"):
            out[ranker]["reasons_p50_ms"] = _p(
                _time_inside(rec, "_reasons", lambda r=ranker: rec.recommend(user, k, ranker=r), calls), 50
            )
    return out


def _time_inside(rec, method: str, call, calls: int) -> list[float]:
    """Seconds spent in ``rec.<method>`` per ``call()`` (the method wrapped on the instance)."""
    plain = getattr(rec, method)
    spent: list[float] = []

    def timed(*a, **kw):
        t0 = time.perf_counter()
        try:
            return plain(*a, **kw)
        finally:
            spent.append(time.perf_counter() - t0)

    setattr(rec, method, timed)
    try:
        for _ in range(calls):
            rec._cache.clear()
            call()
    finally:
        delattr(rec, method)
    return spent


def batch(rec, users: list[str], k: int, runs: int) -> dict:
    def loop():
        return [rec.recommend(u, k) for u in users]

    def many():
        return rec.recommend_many(users, k)

    ts: dict[str, list[float]] = {"loop": [], "many": []}
    same = True
    for i in range(runs + 1):
        got = {}
        for name, fn in (("loop", loop), ("many", many)):
            rec._cache.clear()
            t0 = time.perf_counter()
            got[name] = fn()
            if i:  # the first round warms up
                ts[name].append(time.perf_counter() - t0)
        same &= got["loop"] == got["many"]
    ups = {n: len(users) / float(np.median(t)) for n, t in ts.items()}
    return {
        "loop_users_s": ups["loop"],
        "many_users_s": ups["many"],
        "speedup": ups["many"] / ups["loop"],
        "identical": same,
    }


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--sizes", default="10000,100000,1000000")
    ap.add_argument("--users", type=int, default=64)
    ap.add_argument("--k", type=int, default=10)
    ap.add_argument("--runs", type=int, default=5)
    ap.add_argument("--calls", type=int, default=60, help="single calls per ranker for the latency table")
    ap.add_argument("--dim", type=int, default=384)
    ap.add_argument("--threads", type=int, default=1)
    ap.add_argument("--no-batch", action="store_true")
    ap.add_argument("--json", action="store_true")
    a = ap.parse_args(argv)

    from shelfrank.bench.expand import expand_catalog
    from shelfrank.device import Recommender
    from shelfrank.device.catalog_files import read_catalog_dir, write_catalog_dir
    from shelfrank.device.ranker import RankerParams
    from shelfrank.device.text import ACTIONS
    from shelfrank.testing import build_device_bundle

    report: dict = {"system": system_info(a.threads), "sizes": {}}
    rng = np.random.default_rng(0)
    with tempfile.TemporaryDirectory() as tmp:
        t = Path(tmp)
        bundle, pub = build_device_bundle(
            t / "b", dim=a.dim, max_events=20, neighbors=50, ranker=RankerParams().to_manifest()
        )
        base = read_catalog_dir(bundle / "catalog")
        rec = Recommender.open(bundle, public_key=pub, state_dir=t / "state", threads=a.threads)
        try:
            for n in (int(s) for s in a.sizes.split(",")):
                cat_dir = t / f"cat-{n}"
                write_catalog_dir(cat_dir, expand_catalog(base, n), fsync=False)
                rec._swap_catalog(cat_dir, 10**6 + n)
                ids = rec.catalog.item_ids
                users = [f"u{n}-{i}" for i in range(a.users)]
                for u in users:
                    for j, r in enumerate(rng.choice(n, 20, replace=False)):
                        rec.record(u, ids[int(r)], ACTIONS[j % 4])
                row = {"latency": latency(rec, users[0], a.k, a.calls)}
                if not a.no_batch and hasattr(rec, "recommend_many"):
                    row["batch"] = batch(rec, users, a.k, a.runs)
                report["sizes"][n] = row
                if not a.json:
                    print(f"n={n}: {json.dumps(row)}", file=sys.stderr)
                rec._swap_catalog(bundle / "catalog", 1)
                for p in cat_dir.iterdir():
                    p.unlink()
        finally:
            rec.close()
    if a.json:
        print(json.dumps(report, indent=1))
    else:
        print_md(report, a)
    return 0


def print_md(report: dict, a: argparse.Namespace) -> None:
    s = report["system"]
    print(
        f"{s['cpu']}, {s['cpus']} CPUs, ISA {s['isa']}, threads {s['threads']}, Python {s['python']}, "
        f"numpy {s['numpy']}, onnxruntime {s['onnxruntime']}, commit {s['commit']}; dim {a.dim}, k {a.k}"
    )
    print(
        "\n| items | hybrid p50/p95 ms | tower p50/p95 ms | cold p50/p95 ms | hybrid/tower p50 "
        "| reasons p50 ms (hybrid / tower) |"
    )
    print("|---:|---:|---:|---:|---:|---:|")
    for n, row in report["sizes"].items():
        lat = row["latency"]
        cells = [f"{lat[r]['p50_ms']:.2f} / {lat[r]['p95_ms']:.2f}" for r in ("hybrid", "tower", "cold")]
        why = " / ".join(f"{lat[r]['reasons_p50_ms']:.3f}" for r in ("hybrid", "tower") if "reasons_p50_ms" in lat[r])
        print(f"| {n:,} | {' | '.join(cells)} | {lat['hybrid/tower p50']:.2f}× | {why or '—'} |")
    if any("batch" in r for r in report["sizes"].values()):
        print(f"\n| items | loop users/s | recommend_many users/s | speed-up | identical | ({a.users} users) |")
        print("|---:|---:|---:|---:|---|---|")
        for n, row in report["sizes"].items():
            if "batch" in row:
                b = row["batch"]
                print(
                    f"| {n:,} | {b['loop_users_s']:.0f} | {b['many_users_s']:.0f} | {b['speedup']:.2f}× | "
                    f"{b['identical']} | |"
                )


if __name__ == "__main__":
    sys.exit(main())
