"""Native two-pass search at scale (issue 16): popcount scan bandwidth, two-pass vs exact int8 p50, recall@10.

    .venv/bin/python scripts/two_pass_kernel.py [--n 1000000] [--real-embeddings NPY] [--queries 200]

Prints (does not assert) the figures the issue's targets name, 1 thread, batch 1, d of the embeddings:
  - the popcount scan (``hamming_topk``, the first pass alone) in GB/s over the N × ceil(d/8) code bytes,
    beside ``read_bandwidth`` of a buffer of the same size (the read roofline of the active ISA's loads);
  - exact int8 ``topk`` p50 and ``topk_two_pass`` p50 for each R, timed interleaved on the same queries;
  - recall@10 of the two-pass result against exact int8, per R.
Rows: real embeddings (the all-MiniLM-L6-v2 cache of the Amazon titles that ``shelfrank bench kernel`` writes
under ~/.cache/shelfrank, or ``--real-embeddings``) expanded to N: copy 0 of item i is the item, copy c ≥ 1 is
normalise(e_i + σ·g), g standard normal per coordinate, σ = --noise (0.02: cos ≈ 0.93 to its item); then int8.
Queries are items with fresh noise of the same σ. Codes: ``binary_codes`` of the int8 rows against their
dequantised mean. Random unit vectors are the worst case for sign codes, so none are used.
"""

from __future__ import annotations

import argparse
import glob
import os
import statistics
import sys
import time

import numpy as np

from shelfrank.device import kernel as kn

CHUNK = 65_536


def load_base(path: str | None) -> tuple[np.ndarray, str]:
    if path is None:
        found = sorted(glob.glob(os.path.expanduser("~/.cache/shelfrank/games_item_*_all-MiniLM-L6-v2_len*.npy")))
        if not found:
            sys.exit(
                "error: no cached real embeddings under ~/.cache/shelfrank; run `shelfrank bench kernel` once "
                "(it encodes the Amazon titles) or pass --real-embeddings NPY"
            )
        path = found[-1]
    base = np.load(path).astype(np.float32)
    base /= np.maximum(np.linalg.norm(base, axis=1, keepdims=True), 1e-12)
    return np.ascontiguousarray(base), path


def expand(base: np.ndarray, n: int, noise: float, seed: int) -> tuple[np.ndarray, np.ndarray]:
    rng = np.random.default_rng(seed)
    m, d = base.shape
    rows = np.empty((n, d), np.int8)
    scales = np.empty(n, np.float32)
    for lo in range(0, n, CHUNK):
        j = np.arange(lo, min(n, lo + CHUNK))
        v = base[j % m].copy()
        copy = j >= m
        v[copy] += rng.standard_normal((int(copy.sum()), d), dtype=np.float32) * noise
        v /= np.maximum(np.linalg.norm(v, axis=1, keepdims=True), 1e-12)
        rows[j], scales[j] = kn.quantize_rows(np.ascontiguousarray(v))
    return rows, scales


def dequantised_mean(rows: np.ndarray, scales: np.ndarray) -> np.ndarray:
    acc = np.zeros(rows.shape[1], np.float64)
    for lo in range(0, len(rows), CHUNK):
        acc += (rows[lo : lo + CHUNK].astype(np.float32) * scales[lo : lo + CHUNK, None]).sum(axis=0)
    return (acc / len(rows)).astype(np.float32)


def p50_ms(methods: dict, queries) -> dict:
    """p50 in ms of each method, interleaved query by query (a busy machine slows all alike)."""
    times: dict = {name: [] for name in methods}
    for q in queries:
        for name, fn in methods.items():
            t0 = time.perf_counter()
            fn(q)
            times[name].append(time.perf_counter() - t0)
    return {name: 1e3 * statistics.median(t) for name, t in times.items()}


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--n", type=int, default=1_000_000)
    ap.add_argument("--real-embeddings", default=None)
    ap.add_argument("--noise", type=float, default=0.02)
    ap.add_argument("--queries", type=int, default=200, help="queries scored for recall@10")
    ap.add_argument("--timed", type=int, default=40, help="queries timed per method")
    ap.add_argument("--r", default="100,200,500,1000")
    ap.add_argument("--seed", type=int, default=0)
    args = ap.parse_args()
    rs = [int(x) for x in args.r.split(",")]
    k = 10

    base, src = load_base(args.real_embeddings)
    t0 = time.perf_counter()
    rows, scales = expand(base, args.n, args.noise, args.seed)
    mean = dequantised_mean(rows, scales)
    codes = kn.binary_codes(rows, scales=scales, mean=mean, threads=os.cpu_count() or 1)
    n, d = rows.shape
    print(
        f"rows: {n:,} x {d} int8 from {len(base):,} real embeddings ({src}), noise σ={args.noise}; "
        f"codes {codes.shape[1]} B/row; built in {time.perf_counter() - t0:.1f} s"
    )
    print(f"isa: {kn.active_isa()}  popcount scan: {kn.hamming_isa()}  (1 thread, batch 1, k={k})")

    rng = np.random.default_rng(args.seed + 1)
    qs = base[rng.choice(len(base), args.queries, replace=len(base) < args.queries)].copy()
    qs += rng.standard_normal(qs.shape, dtype=np.float32) * args.noise
    qs = np.ascontiguousarray(qs / np.linalg.norm(qs, axis=1, keepdims=True), np.float32)

    # exact int8 reference for recall: one batched scan (the batch scores every block once per query)
    t0 = time.perf_counter()
    exact_ids, _ = kn.topk(qs, rows, k, scales=scales, threads=os.cpu_count() or 1)
    print(f"exact int8 reference for {len(qs)} queries: {time.perf_counter() - t0:.1f} s")

    code_bytes = codes.nbytes
    roofline: dict = {"codes": [], "rows": []}
    timed = qs[: args.timed]
    for q in timed[:3]:  # warm the pages and the branch predictors
        kn.topk(q, rows, k, scales=scales)
        kn.hamming_topk(q, codes, rs[0], mean=mean)
    methods = {
        # the read roofline, measured between the scans it bounds (a busy machine moves both)
        "read codes": lambda q: roofline["codes"].append(kn.read_bandwidth(code_bytes, repeats=1)),
        "read rows": lambda q: roofline["rows"].append(kn.read_bandwidth(rows.nbytes + scales.nbytes, repeats=1)),
        "scan": lambda q: kn.hamming_topk(q, codes, rs[0], mean=mean),
        "exact": lambda q: kn.topk(q, rows, k, scales=scales),
    }
    for r in rs:
        methods[r] = lambda q, r=r: kn.topk_two_pass(q, rows, k, codes=codes, mean=mean, r=r, scales=scales)
    ms = p50_ms(methods, timed)
    scan_ms, exact_ms = ms["scan"], ms["exact"]
    roof_codes, roof_rows = statistics.median(roofline["codes"]), statistics.median(roofline["rows"])
    scan_gbps = code_bytes / (scan_ms / 1e3) / 1e9
    exact_gbps = (rows.nbytes + scales.nbytes) / (exact_ms / 1e3) / 1e9
    print(
        f"popcount scan (hamming_topk r={rs[0]}): p50 {scan_ms:.2f} ms = {scan_gbps:.1f} GB/s over "
        f"{code_bytes / 1e6:.0f} MB of codes; read_bandwidth({code_bytes / 1e6:.0f} MB) p50 {roof_codes:.1f} GB/s "
        f"-> {100 * scan_gbps / roof_codes:.0f}% of the read roofline"
    )
    print(
        f"exact int8 topk: p50 {exact_ms:.2f} ms = {exact_gbps:.1f} GB/s over {rows.nbytes / 1e6:.0f} MB; "
        f"read_bandwidth p50 {roof_rows:.1f} GB/s -> {100 * exact_gbps / roof_rows:.0f}%"
    )
    print(f"{'R':>6} {'two-pass p50 ms':>16} {'x exact':>8} {'recall@10':>10}")
    for r in rs:
        got, _ = kn.topk_two_pass(qs, rows, k, codes=codes, mean=mean, r=r, scales=scales)
        recall = np.mean([len(set(g) & set(w)) / k for g, w in zip(got.tolist(), exact_ids.tolist(), strict=True)])
        print(f"{r:>6} {ms[r]:>16.2f} {ms[r] / exact_ms:>8.3f} {recall:>10.4f}")


if __name__ == "__main__":
    main()
