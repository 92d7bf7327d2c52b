"""The kernel bench's measurements: each method a callable query -> ids, timed interleaved; recall
against exact fp32 (by ids, and tie-aware); the cost of an exact rescore of an int8 candidate pool.
"""

from __future__ import annotations

import statistics
import time
from collections.abc import Callable
from typing import Any

import numpy as np

from shelfrank.device.kernel import topk

K = 10
SEED = 20240611
SQ8_TRAIN_ROWS = 65_536
Progress = Callable[[str], None]


def _numpy_topk(rows: np.ndarray, k: int) -> Callable[[np.ndarray], np.ndarray]:
    def run(q: np.ndarray) -> np.ndarray:
        s = q @ rows.T
        top = np.argpartition(s, -k)[-k:]
        return top[np.argsort(-s[top], kind="stable")]

    return run


def _ours(
    rows: np.ndarray, k: int, threads: int, scales: np.ndarray | None = None
) -> Callable[[np.ndarray], np.ndarray]:
    def run(q: np.ndarray) -> np.ndarray:
        return topk(q, rows, k, scales=scales, threads=threads)[0]

    return run


def _faiss_search(index: Any, k: int) -> Callable[[np.ndarray], np.ndarray]:
    def run(q: np.ndarray) -> np.ndarray:
        return index.search(q.reshape(1, -1), k)[1][0]

    return run


def build_faiss(faiss: Any, rows: np.ndarray, progress: Progress) -> dict[str, Any]:
    """IndexFlatIP and IndexScalarQuantizer(QT_8bit, inner product) over ``rows``."""
    n, d = rows.shape
    t0 = time.perf_counter()
    flat = faiss.IndexFlatIP(d)
    sq = faiss.IndexScalarQuantizer(d, faiss.ScalarQuantizer.QT_8bit, faiss.METRIC_INNER_PRODUCT)
    rng = np.random.default_rng(SEED + 7)
    sample = rows if n <= SQ8_TRAIN_ROWS else rows[np.sort(rng.choice(n, SQ8_TRAIN_ROWS, replace=False))]
    sq.train(np.ascontiguousarray(sample))
    for b in range(0, n, 1 << 18):
        flat.add(rows[b : b + (1 << 18)])
        sq.add(rows[b : b + (1 << 18)])
    progress(
        f"  faiss indexes for N={n:,} built in {time.perf_counter() - t0:.1f} s (SQ8 trained on {len(sample):,} rows)"
    )
    return {"faiss_flat_ip": flat, "faiss_sq8": sq}


# (name, label, bytes per element of the matrix it scans)
METHODS = (
    ("numpy_fp32", "numpy fp32 (gemv + argpartition)", 4),
    ("faiss_flat_ip", "faiss IndexFlatIP", 4),
    ("faiss_sq8", "faiss IndexScalarQuantizer QT_8bit", 1),
    ("ours_fp32", "shelfrank topk fp32", 4),
    ("ours_int8", "shelfrank topk int8", 1),
)
LABELS = {m: label for m, label, _ in METHODS}
ELEM_BYTES = {m: b for m, _, b in METHODS}


def _percentile(xs: list[float], p: float) -> float:
    return float(np.percentile(np.asarray(xs), p))


def time_interleaved(
    fns: dict[str, Callable[[np.ndarray], np.ndarray]], queries: np.ndarray, warmup: int
) -> tuple[dict[str, list[float]], dict[str, list[np.ndarray]]]:
    """Times every method once per query, rotating the order each repetition; first ``warmup`` queries
    are untimed. Returns per-method times (ms) and result ids (timed repetitions only)."""
    names = list(fns)
    times: dict[str, list[float]] = {m: [] for m in names}
    ids: dict[str, list[np.ndarray]] = {m: [] for m in names}
    for r, q in enumerate(queries):
        rot = r % len(names)
        for m in names[rot:] + names[:rot]:
            t0 = time.perf_counter_ns()
            out = fns[m](q)
            dt = (time.perf_counter_ns() - t0) / 1e6
            if r >= warmup:
                times[m].append(dt)
                ids[m].append(np.asarray(out))
    return times, ids


def _recall(got: np.ndarray, want: np.ndarray) -> float:
    """Mean |got ∩ want| / k over the rows of two (B, k) id arrays."""
    got = np.atleast_2d(got)
    want = np.atleast_2d(want)
    hits = sum(len(set(g.tolist()) & set(w.tolist())) for g, w in zip(got, want, strict=True))
    return hits / want.size


def exact_topk(
    rows: np.ndarray, queries: np.ndarray, k: int, *, exclude: np.ndarray | None = None, chunk: int = 64
) -> tuple[np.ndarray, np.ndarray]:
    """Exact fp32 top-k by BLAS for a batch, ties to the lower id; ``exclude[i]`` is left out of row i.

    Returns (ids (B, k), kth score (B,)) — the k-th best exact score, used for the tie-aware recall.
    """
    out = np.empty((len(queries), k), dtype=np.int64)
    kth = np.empty(len(queries), dtype=np.float32)
    for b in range(0, len(queries), chunk):
        s = queries[b : b + chunk] @ rows.T
        if exclude is not None:
            s[np.arange(len(s)), exclude[b : b + chunk]] = -np.inf
        # a small superset first (fast), then an exact (score desc, id asc) order inside it
        m = min(s.shape[1], 4 * k)
        part = np.argpartition(-s, m - 1, axis=1)[:, :m]
        for i in range(len(s)):
            cand = part[i]
            sc = s[i, cand]
            order = np.lexsort((cand, -sc))[:k]
            out[b + i] = cand[order]
            kth[b + i] = sc[order[-1]]
    return out, kth


def recall_stats(
    got: np.ndarray, want: np.ndarray, rows: np.ndarray, queries: np.ndarray, kth: np.ndarray
) -> dict[str, float]:
    """recall@k by ids, and tie-aware: a returned row counts when its exact score reaches the k-th."""
    exact_scores = np.einsum("bkd,bd->bk", rows[got], queries)
    tie_aware = float(np.mean(exact_scores >= kth[:, None] - 1e-6))
    return {"recall": _recall(got, want), "recall_tie_aware": tie_aware}


def _drop_self(ids: np.ndarray, self_ids: np.ndarray, keep: int) -> np.ndarray:
    out = np.empty((len(ids), keep), dtype=np.int64)
    for i, (row, s) in enumerate(zip(ids, self_ids, strict=True)):
        row = row[row != s]
        out[i] = row[:keep]
    return out


def int8_recall(
    rows: np.ndarray,
    rows8: np.ndarray,
    scales: np.ndarray,
    queries: np.ndarray,
    *,
    self_ids: np.ndarray | None,
    threads: int,
    pools: tuple[int, ...],
) -> dict[str, Any]:
    """recall@10 of int8 top-10 (and of int8 top-k' + exact fp32 rescore) against exact fp32."""
    extra = 0 if self_ids is None else 1
    want, kth = exact_topk(rows, queries, K, exclude=self_ids)
    res: dict[str, Any] = {"n": len(rows), "queries": len(queries)}
    got = topk(queries, rows8, K + extra, scales=scales, threads=threads)[0]
    got = got[:, :K] if self_ids is None else _drop_self(got, self_ids, K)
    res["int8"] = recall_stats(got, want, rows, queries, kth)
    res["rescore"] = {}
    for pool in pools:
        cand = topk(queries, rows8, pool + extra, scales=scales, threads=threads)[0]
        cand = cand[:, :pool] if self_ids is None else _drop_self(cand, self_ids, pool)
        top = np.stack([_rescore(rows, q, c, K) for q, c in zip(queries, cand, strict=True)])
        res["rescore"][str(pool)] = recall_stats(top, want, rows, queries, kth)
    return res


def _rescore(rows: np.ndarray, q: np.ndarray, cand: np.ndarray, k: int) -> np.ndarray:
    s = rows[cand] @ q
    order = np.lexsort((cand, -s))[:k]
    return cand[order]


def rescore_cost(
    rows: np.ndarray,
    rows8: np.ndarray,
    scales: np.ndarray,
    queries: np.ndarray,
    pools: tuple[int, ...],
    warmup: int,
) -> dict[str, Any]:
    """Per-query time (1 thread) of int8 top-10 vs int8 top-k' + exact fp32 rescore of k' rows."""
    fns: dict[str, Callable[[np.ndarray], np.ndarray]] = {"int8_top10": _ours(rows8, K, 1, scales)}
    for pool in pools:

        def two_stage(q: np.ndarray, pool: int = pool) -> np.ndarray:
            cand = topk(q, rows8, pool, scales=scales)[0]
            return _rescore(rows, q, cand, K)

        def rescore_only(q: np.ndarray, pool: int = pool) -> np.ndarray:
            return _rescore(rows, q, cand_cache[pool], K)

        fns[f"int8_top{pool}"] = _ours(rows8, pool, 1, scales)
        fns[f"int8_top{pool}+rescore"] = two_stage
        fns[f"rescore{pool}_only"] = rescore_only
    cand_cache = {pool: np.arange(pool, dtype=np.int64) * (len(rows) // pool) for pool in pools}
    times, _ = time_interleaved(fns, queries, warmup)
    med = {m: statistics.median(v) for m, v in times.items()}
    base = med["int8_top10"]
    out: dict[str, Any] = {"n": len(rows), "int8_top10_ms": base, "pools": {}}
    for pool in pools:
        out["pools"][str(pool)] = {
            "int8_topk_ms": med[f"int8_top{pool}"],
            "rescore_only_ms": med[f"rescore{pool}_only"],
            "two_stage_ms": med[f"int8_top{pool}+rescore"],
            "extra_ms": med[f"int8_top{pool}+rescore"] - base,
            "extra_pct": 100.0 * (med[f"int8_top{pool}+rescore"] - base) / base,
        }
    return out
