"""The kernel bench's two-pass rows (issue 16): 1-bit sign codes scanned by popcount, the top R
rescored exactly in int8, against the exact int8 scan — timed and scored on the same rows.

The rows are real embeddings expanded to N (random unit vectors are the worst case for sign codes,
so no figure here uses them): copy 0 of base item i is the item itself, copy c ≥ 1 is
``normalise(e_i + σ·g)`` with ``g`` i.i.d. standard normal per coordinate (σ = :data:`NOISE`), then
the int8 quantisation of the catalog. Queries are base items with fresh noise of the same σ.
The codes are those the catalog ships (``device/codes.py``: sign bits of the dequantised row minus
the catalog mean); the scan is the planner's (``device/planner.py``: the native kernel, or its
numpy equivalent on a build without it — said in the report). R is the planner's R: the board's
``first_pass_r`` with ``--board``, else the planner's default. Every R of :data:`R_SWEEP` is scored
under ``two_pass_r_sweep``.

Board estimates are bytes read per pass over the board's published bandwidth: the first pass
reads N × 48 code bytes (d = 384) sequentially; the rescore reads R rows of d + 4 bytes at random
places, counted as whole 64-byte lines. A floor, not a measurement.
"""

from __future__ import annotations

import statistics
import time
from collections.abc import Callable
from typing import Any

import numpy as np

from shelfrank.bench.kernel_measure import time_interleaved
from shelfrank.bench.kernel_record import BoardEstimate, TwoPassResult, TwoPassSweepRow
from shelfrank.device.kernel import quantize_rows, topk

Progress = Callable[[str], None]

# per coordinate, as ``bench BUNDLE``'s catalog expansion (bench/expand.py): the noise vector's norm is
# about 0.05·√384 ≈ 0.98, a copy's cosine to its item about 0.71. At σ = 0.02 (cosine 0.93) the ~60
# near-duplicate copies of an item fill every top-10 at 1M and recall is 1.000 at any R ≥ 200: too easy.
NOISE = 0.05
R_SWEEP = (100, 200, 500, 1000, 2000, 5000)
SCORE_QUERIES = 300
QUICK_SCORE_QUERIES = 100
LINE = 64
#: published memory bandwidth (GB/s) of the boards the estimates are for (BENCHMARKS.md's sources)
BOARDS = (
    ("rpi4", "Raspberry Pi 4", 5.5),
    ("rpi5", "Raspberry Pi 5", 17.0),
    ("jetson-orin-nano", "Jetson Orin Nano", 68.0),
)
_CHUNK = 65_536


def expand_real(base: np.ndarray, n: int, *, seed: int, noise: float = NOISE) -> tuple[np.ndarray, np.ndarray]:
    """int8 rows and scales of ``n`` items expanded from ``base`` (see the module doc), chunk by
    chunk: no (n, d) float32 copy of the whole catalog."""
    rng = np.random.default_rng(seed)
    m, d = base.shape
    rows = np.empty((n, d), np.int8)
    scales = np.empty(n, np.float32)
    for lo in range(0, n, _CHUNK):
        j = np.arange(lo, min(n, lo + _CHUNK))
        v = base[j % m].copy()
        copy = j >= m
        if copy.any():
            v[copy] += rng.standard_normal((int(copy.sum()), d), dtype=np.float32) * noise
        v /= np.maximum(np.linalg.norm(v, axis=1, keepdims=True), 1e-12)
        rows[j], scales[j] = quantize_rows(np.ascontiguousarray(v))
    return rows, scales


def noisy_queries(base: np.ndarray, count: int, *, seed: int, noise: float = NOISE) -> np.ndarray:
    rng = np.random.default_rng(seed)
    q = base[rng.choice(len(base), count, replace=len(base) < count)].copy()
    q += rng.standard_normal(q.shape, dtype=np.float32) * noise
    q /= np.maximum(np.linalg.norm(q, axis=1, keepdims=True), 1e-12)
    return np.ascontiguousarray(q, np.float32)


def planner_r(board: str | None) -> tuple[int, str]:
    """The planner's R and where it came from."""
    from shelfrank.device.planner import DEFAULT_R

    if board:
        from shelfrank.device.boards import load_board

        cfg = load_board(board)
        r = getattr(cfg, "first_pass_r", None)
        if r:
            return int(r), f"board {cfg.name}'s first_pass_r"
    return int(DEFAULT_R), "the planner's default (shelfrank.device.planner.DEFAULT_R)"


def _recall(got: np.ndarray, want: np.ndarray) -> float:
    hits = sum(len(set(g[g >= 0].tolist()) & set(w[w >= 0].tolist())) for g, w in zip(got, want, strict=True))
    return hits / want.size


def run_two_pass(
    base: np.ndarray,
    sizes: list[int],
    *,
    r: int,
    repeats: int,
    warmup: int,
    roofline_gbps: float,
    quick: bool,
    seed: int,
    k: int = 10,
    progress: Progress,
) -> tuple[list[TwoPassResult], list[TwoPassSweepRow], list[BoardEstimate]]:
    """Two-pass and exact int8 at each size (1 thread, batch 1), on the same expanded rows."""
    results: list[TwoPassResult] = []
    sweep: list[TwoPassSweepRow] = []
    n_score = QUICK_SCORE_QUERIES if quick else SCORE_QUERIES
    for n in sorted(sizes):
        if n > k:
            res, rows = _one_size(
                base,
                n,
                r=min(r, n),
                k=k,
                repeats=repeats,
                warmup=warmup,
                n_score=n_score,
                roofline_gbps=roofline_gbps,
                seed=seed,
                progress=progress,
            )
            results.append(res)
            sweep += rows
    return results, sweep, board_estimates(sorted(sizes), r, base.shape[1])


def _one_size(
    base: np.ndarray,
    n: int,
    *,
    r: int,
    k: int,
    repeats: int,
    warmup: int,
    n_score: int,
    roofline_gbps: float,
    seed: int,
    progress: Progress,
) -> tuple[TwoPassResult, list[TwoPassSweepRow]]:
    from shelfrank.device.codes import catalog_mean, derive_codes
    from shelfrank.device.planner import two_pass_topk

    t0 = time.perf_counter()
    rows, scales = expand_real(base, n, seed=seed + n)
    mean = catalog_mean(rows, scales)
    codes = derive_codes(rows, scales, mean)
    progress(f"two-pass N={n:,}: rows expanded (σ {NOISE}) and codes derived in {time.perf_counter() - t0:.1f} s")

    def tp(q: np.ndarray, rr: int = r) -> np.ndarray:
        return two_pass_topk(q, rows, k, codes=codes, mean=mean, r=rr, scales=scales)[0]

    def first(q: np.ndarray) -> np.ndarray:  # R = k: the rescore reads only k rows
        return two_pass_topk(q, rows, k, codes=codes, mean=mean, r=k, scales=scales)[0]

    def exact(q: np.ndarray) -> np.ndarray:
        return topk(q, rows, k, scales=scales)[0]

    queries = noisy_queries(base, warmup + repeats, seed=seed + 1)
    times, _ = time_interleaved({"exact_int8": exact, "two_pass": tp, "first_pass": first}, queries, warmup)
    med = {m: statistics.median(v) for m, v in times.items()}
    score_q = noisy_queries(base, n_score, seed=seed + 2)
    want = topk(score_q, rows, k, scales=scales)[0]
    got = np.stack([tp(q) for q in score_q])
    gbps = codes.nbytes / (med["first_pass"] / 1e3) / 1e9
    res = TwoPassResult(
        n=n,
        r=r,
        recall_at_10_vs_exact_int8=_recall(got, want),
        ms_p50=med["two_pass"],
        exact_int8_ms_p50=med["exact_int8"],
        speedup=med["exact_int8"] / med["two_pass"],
        first_pass_ms_p50=med["first_pass"],
        code_bytes=int(codes.nbytes),
        first_pass_gbps=gbps,
        first_pass_roofline_pct=100.0 * gbps / roofline_gbps,
        queries=n_score,
        data=f"real embeddings expanded to N (σ {NOISE})",
    )
    progress(
        f"two-pass N={n:,} R={r}: {res.ms_p50:.2f} ms vs exact int8 {res.exact_int8_ms_p50:.2f} ms, "
        f"recall@10 {res.recall_at_10_vs_exact_int8:.4f}"
    )
    # the R sweep: every R timed interleaved with the exact scan (the same queries as the main row),
    # recall on a third of the scoring queries
    sweep_r = [rs for rs in R_SWEEP if k <= rs <= n]
    fns: dict[str, Callable[[np.ndarray], np.ndarray]] = {"exact_int8": exact}
    fns.update({str(rs): (lambda q, rs=rs: tp(q, rs)) for rs in sweep_r})
    sweep_times, _ = time_interleaved(fns, queries, warmup)
    exact_ms = statistics.median(sweep_times["exact_int8"])
    sweep_q = score_q[: max(20, n_score // 3)]
    sweep: list[TwoPassSweepRow] = []
    for rs in sweep_r:
        got_s = np.stack([tp(q, rs) for q in sweep_q])
        ms = statistics.median(sweep_times[str(rs)])
        sweep.append(
            TwoPassSweepRow(
                n=n,
                r=rs,
                recall_at_10_vs_exact_int8=_recall(got_s, want[: len(sweep_q)]),
                ms_p50=ms,
                exact_int8_ms_p50=exact_ms,
                speedup=exact_ms / ms,
            )
        )
    progress(f"two-pass N={n:,}: R sweep {', '.join(str(s.r) for s in sweep)} done")
    return res, sweep


def board_estimates(sizes: list[int], r: int, d: int) -> list[BoardEstimate]:
    """Exact int8 and two-pass floors on each board at each size (bytes per pass ÷ bandwidth)."""
    row_bytes = d + 4  # int8 row + its float32 scale
    code = (d + 7) // 8
    lines = -(-d // LINE) + 1  # a row's lines when it starts anywhere, plus its scale's line
    out = []
    for name, _label, gbps in BOARDS:
        for n in sizes:
            exact = n * row_bytes
            out.append(
                BoardEstimate(
                    board=name,
                    gbps=gbps,
                    n=n,
                    r=None,
                    scan="exact int8",
                    first_pass_bytes=exact,
                    rescore_bytes=0,
                    first_pass_ms=exact / (gbps * 1e9) * 1e3,
                    rescore_ms=0.0,
                    total_ms=exact / (gbps * 1e9) * 1e3,
                )
            )
            rr = min(r, n)
            fp, rs = n * code, rr * lines * LINE
            out.append(
                BoardEstimate(
                    board=name,
                    gbps=gbps,
                    n=n,
                    r=rr,
                    scan="two-pass",
                    first_pass_bytes=fp,
                    rescore_bytes=rs,
                    first_pass_ms=fp / (gbps * 1e9) * 1e3,
                    rescore_ms=rs / (gbps * 1e9) * 1e3,
                    total_ms=(fp + rs) / (gbps * 1e9) * 1e3,
                )
            )
    return out


def info(r: int, r_from: str, source: dict[str, Any] | None, available: bool, reason: str = "") -> dict[str, Any]:
    """The ``two_pass_info`` block: where R and the rows came from, which kernel ran, the notes."""
    from shelfrank import _native

    native = hasattr(_native, "topk_two_pass")
    kernel = "native (shelfrank._native.topk_two_pass)" if native else "numpy (no native two-pass in this build)"
    src = (source or {}).get("source")
    note = (
        f"R = {r} ({r_from}); rows: {src}, expanded to N: copy 0 of each item is the item, copy c ≥ 1 is "
        f"normalise(e + σ·g), σ = {NOISE} per coordinate, then int8; queries are items with fresh noise of the "
        f"same σ. Recall@10 is against the exact int8 scan of the same rows ({SCORE_QUERIES} queries, "
        f"{QUICK_SCORE_QUERIES} with --quick). Scan: {kernel}. 'first pass alone' is the two-pass scan at "
        "R = k (the rescore reads only k rows); its GB/s is the code bytes over that time, against the "
        "1-thread read probe."
        if available
        else f"Two-pass rows not measured: {reason}."
    )
    boards_note = (
        "Published bandwidths: Raspberry Pi 4 ≈ 5.5 GB/s (STREAM), Raspberry Pi 5 ≈ 17 GB/s (LPDDR4X peak), Jetson "
        f"Orin Nano 68 GB/s (LPDDR5 peak). Exact int8 reads N × {384 + 4} bytes at d = 384; the two-pass first pass "
        f"reads N × 48 code bytes, its rescore R rows at random places counted as whole {LINE}-byte lines. One "
        "Cortex core rarely reaches the peak: real scans are slower than these floors."
    )
    return {
        "available": available,
        "r": r,
        "r_from": r_from,
        "noise": NOISE,
        "kernel": kernel,
        "source": src,
        "reason": reason or None,
        "note": note,
        "boards_note": boards_note,
    }
