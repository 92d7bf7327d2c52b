"""Where the two-pass scan starts to pay: exact int8 vs two-pass (R = the planner's default) p50 per
catalog size, 1 thread, batch 1, k = 10, on the Games titles' real embeddings expanded to N as in
scripts/memory_1m.py (σ = 0.05), with recall@10 of the two-pass against exact. The planner's
``AUTO_MIN_ITEMS`` is set from this (docs/device.md, "The scan planner").

    .venv/bin/python scripts/planner_crossover.py [--sizes 5000,10000,...] [--r 1000]
"""

from __future__ import annotations

import argparse
import json
import sys
import time

import numpy as np


def main(argv: list[str] | None = None) -> int:
    from shelfrank.bench.kernel_data import load_real_embeddings
    from shelfrank.device.codes import catalog_mean, derive_codes
    from shelfrank.device.kernel import topk, topk_two_pass
    from shelfrank.device.planner import DEFAULT_R

    sys.path.insert(0, str(__import__("pathlib").Path(__file__).parent))
    from memory_1m import NOISE, expand

    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--sizes", default="2000,5000,10000,20000,50000,100000,200000")
    ap.add_argument("--r", type=int, default=DEFAULT_R)
    ap.add_argument("--queries", type=int, default=200)
    a = ap.parse_args(argv)
    emb, info = load_real_embeddings(None, lambda s: print(s, file=sys.stderr), cache_only=True)
    if emb is None:
        print(f"error: no real embeddings: {info.get('reason')}", file=sys.stderr)
        return 1
    emb = np.ascontiguousarray(emb, np.float32)
    rng = np.random.default_rng(3)
    qs = emb[rng.integers(0, len(emb), a.queries)] + rng.standard_normal((a.queries, emb.shape[1]), np.float32) * NOISE
    qs = np.ascontiguousarray(qs / np.linalg.norm(qs, axis=1, keepdims=True), np.float32)
    out = []
    for n in (int(s) for s in a.sizes.split(",")):
        rows, scales = expand(emb, n)
        mean = catalog_mean(rows, scales)
        codes = derive_codes(rows, scales, mean)
        r = min(a.r, n)
        t_ex, t_tp, hits = [], [], 0
        for q in qs:
            t0 = time.perf_counter()
            want = topk(q, rows, 10, scales=scales)[0]
            t1 = time.perf_counter()
            got = topk_two_pass(q, rows, 10, codes=codes, mean=mean, r=r, scales=scales)[0]
            t2 = time.perf_counter()
            t_ex.append(t1 - t0)
            t_tp.append(t2 - t1)
            hits += len(set(want.tolist()) & set(got.tolist()))
        row = {
            "n": n,
            "r": r,
            "exact_ms_p50": float(np.median(t_ex)) * 1e3,
            "two_pass_ms_p50": float(np.median(t_tp)) * 1e3,
            "recall_at_10": hits / (10 * len(qs)),
        }
        out.append(row)
        print(
            f"{n:>9,}  exact {row['exact_ms_p50']:7.3f} ms  two-pass {row['two_pass_ms_p50']:7.3f} ms  "
            f"recall@10 {row['recall_at_10']:.3f}",
            file=sys.stderr,
        )
    print(json.dumps({"source": info.get("source"), "noise": NOISE, "k": 10, "threads": 1, "runs": out}))
    return 0


if __name__ == "__main__":
    sys.exit(main())
