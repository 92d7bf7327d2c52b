"""``shelfrank bench kernel``: batch-1 exact top-10 against numpy and faiss, with a memory roofline,
and the two-pass scan (binary codes first) against the exact int8 scan on real embeddings.

A benchmark, not a test: it prints figures. Every method runs in the same process on the same data,
with warm-up and interleaved repetitions (so drift hits all methods alike); medians and p90 are
reported with ratios against numpy fp32 measured in the same run. The memory roofline is the best of
5 sequential reads of a 1 GiB buffer (``read_bandwidth``) measured in this run; a method's roofline
time is its matrix bytes divided by that bandwidth. The int8 recall@10 against exact fp32 is
measured on the random data and, when available, on all-MiniLM-L6-v2 embeddings of the Amazon Video
Games item titles; the two-pass rows use those embeddings expanded to each N (:mod:`.two_pass`).

The result is one :class:`~shelfrank.bench.kernel_record.KernelRecord`, printed as Markdown, JSON
or CSV (:mod:`shelfrank.bench.record`); progress goes to stderr.

Heavy imports (faiss, torch, transformers) stay inside functions.
"""

from __future__ import annotations

import argparse
import logging
import platform
import statistics
import sys
import time
from collections.abc import Callable

import numpy as np

from shelfrank.bench import two_pass
from shelfrank.bench.kernel_data import MODEL_NAME, load_real_embeddings, random_unit_rows
from shelfrank.bench.kernel_env import ThreadPins, _import_faiss, _loadavg, environment_info
from shelfrank.bench.kernel_measure import (
    _faiss_search,
    _numpy_topk,
    _ours,
    _percentile,
    _recall,
    build_faiss,
    int8_recall,
    rescore_cost,
    time_interleaved,
)
from shelfrank.bench.kernel_record import ELEM_BYTES, METHODS, KernelCell, KernelRecord, evaluate_targets
from shelfrank.bench.record import emit
from shelfrank.device.kernel import active_isa, quantize_rows, read_bandwidth

logger = logging.getLogger(__name__)

__all__ = ["main", "run_benchmark"]

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

Progress = Callable[[str], None]


def run_benchmark(
    sizes: list[int],
    threads: list[int],
    repeats: int,
    *,
    quick: bool = False,
    real_embeddings: str | None = None,
    board: str | None = None,
    progress: Progress = logger.info,
) -> KernelRecord:
    """Runs the whole benchmark and returns every raw number as one record."""
    from shelfrank.bench.sysinfo import system_info

    t_start = time.perf_counter()
    faiss = _import_faiss()
    pins = ThreadPins(faiss)
    loadavg_start = _loadavg()
    config = {
        "sizes": sizes,
        "threads": threads,
        "repeats": repeats,
        "warmup": WARMUP,
        "d": D,
        "k": K,
        "seed": SEED,
        "quick": quick,
        "probe_bytes": PROBE_BYTES,
        "methods": [m for m, _, _ in METHODS if faiss is not None or not m.startswith("faiss")],
    }

    # roofline first, before the catalog occupies memory
    roof: dict[str, float] = {}
    for t in sorted({1, *threads}):
        roof[str(t)] = read_bandwidth(PROBE_BYTES, repeats=5, threads=t)
        progress(f"read probe: {PROBE_BYTES / 2**30:.0f} GiB, {t} thread(s): {roof[str(t)]:.2f} GB/s")

    n_max = max(sizes)
    t0 = time.perf_counter()
    rows_all = random_unit_rows(n_max, D, SEED)
    rows8_all, scales_all = quantize_rows(rows_all)
    progress(f"data: {n_max:,} x {D} random unit rows + int8 in {time.perf_counter() - t0:.1f} s")
    queries = random_unit_rows(WARMUP + repeats, D, SEED + 1)
    n_recall = QUICK_RECALL_QUERIES if quick else RECALL_QUERIES
    recall_queries = random_unit_rows(n_recall, D, SEED + 2)
    max_threads = max(threads)

    cells: list[KernelCell] = []
    random_recall: list[dict] = []
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
                roof_ms = nbytes / (roof[str(t)] * 1e9) * 1e3
                cells.append(
                    KernelCell(
                        n=n,
                        threads=t,
                        method=m,
                        median_ms=med,
                        p90_ms=_percentile(times[m], 90),
                        min_ms=min(times[m]),
                        times_ms=times[m],
                        matrix_bytes=nbytes,
                        gbps=nbytes / (med / 1e3) / 1e9,
                        roofline_ms=roof_ms,
                        roofline_pct=100.0 * roof_ms / med,
                        roofline_1t_pct=100.0 * (nbytes / (roof["1"] * 1e9) * 1e3) / med,
                        recall_vs_numpy=_recall(np.stack(ids[m]), exact),
                    )
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
    by_key = {(c.n, c.threads, c.method): c for c in cells}
    for c in cells:
        c.vs_numpy = by_key[(c.n, c.threads, "numpy_fp32")].median_ms / c.median_ms
        one = by_key.get((c.n, 1, c.method))
        c.vs_1_thread = one.median_ms / c.median_ms if one else None

    # rescore cost on the largest random catalog (1 thread)
    progress(f"rescore cost at N={n_max:,} (1 thread)")
    pins.set(1)
    rescore_random = rescore_cost(rows_all, rows8_all, scales_all, queries, RESCORE_POOLS, WARMUP)
    pins.restore()
    del rows_all, rows8_all, scales_all

    emb, info = load_real_embeddings(real_embeddings, progress, cache_only=quick)
    real = _real_recall(emb, info, real_embeddings, repeats, max_threads, pins, progress)

    # the two-pass scan on the real embeddings expanded to each size (1 thread)
    r_plan, r_from = two_pass.planner_r(board)
    tp_rows, sweep, boards = [], [], two_pass.board_estimates(sorted(sizes), r_plan, D)
    if emb is None:
        tp_info = two_pass.info(r_plan, r_from, info, False, f"no real embeddings ({info.get('reason')})")
        progress(f"two-pass rows skipped: {tp_info['reason']}")
    elif emb.shape[1] != D:
        tp_info = two_pass.info(r_plan, r_from, info, False, f"real embeddings have d={emb.shape[1]}, not {D}")
    else:
        pins.set(1)
        tp_rows, sweep, boards = two_pass.run_two_pass(
            emb,
            sizes,
            r=r_plan,
            repeats=repeats,
            warmup=WARMUP,
            roofline_gbps=roof["1"],
            quick=quick,
            seed=SEED + 11,
            k=K,
            progress=progress,
        )
        pins.restore()
        tp_info = two_pass.info(r_plan, r_from, info, True)

    record = KernelRecord(
        system=system_info(),
        platform=platform.platform(),
        config=config,
        environment=environment_info(faiss),
        loadavg_start=loadavg_start,
        roofline_gbps=roof,
        cells=cells,
        recall_random=random_recall,
        rescore_cost_random=rescore_random,
        recall_real=real,
        two_pass=tp_rows,
        two_pass_r_sweep=sweep,
        two_pass_info=tp_info,
        board_estimates=boards,
        targets=[],
        elapsed_s=0.0,
        loadavg_end=None,
    )
    record.targets = evaluate_targets(record)
    record.elapsed_s = time.perf_counter() - t_start
    record.loadavg_end = _loadavg()
    return record


def _real_recall(emb, info, real_embeddings, repeats, max_threads, pins, progress) -> dict:
    """int8 recall@10 and rescore cost on the real embeddings (each query item left out)."""
    real: dict = {"available": emb is not None, **info}
    if emb is None:
        progress(f"real embeddings not available: {info.get('reason')}")
        return real
    pins.set(max_threads)
    emb8, emb_scales = quantize_rows(emb)
    rng = np.random.default_rng(SEED + 3)
    nq = min(RECALL_QUERIES, len(emb))
    qids = np.sort(rng.choice(len(emb), nq, replace=False))
    t0 = time.perf_counter()
    real.update(int8_recall(emb, emb8, emb_scales, emb[qids], self_ids=qids, threads=max_threads, pools=RESCORE_POOLS))
    real["d"] = int(emb.shape[1])
    real["model"] = MODEL_NAME if not real_embeddings else None
    pins.set(1)
    cost_q = emb[rng.choice(len(emb), WARMUP + repeats, replace=len(emb) < WARMUP + repeats)]
    real["rescore_cost"] = rescore_cost(emb, emb8, emb_scales, cost_q, RESCORE_POOLS, WARMUP)
    pins.restore()
    progress(
        f"real embeddings ({len(emb):,} x {emb.shape[1]}): int8 recall@{K} "
        f"{real['int8']['recall']:.4f} ({time.perf_counter() - t0:.1f} s)"
    )
    return real


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
    """``shelfrank bench kernel``: runs the benchmark, prints it in ``--format`` (md), writes
    --json / --md / --csv files."""
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
    record = run_benchmark(
        sizes,
        threads,
        int(repeats),
        quick=quick,
        real_embeddings=getattr(args, "real_embeddings", None),
        board=getattr(args, "board", None),
        progress=progress,
    )
    emit(record, args, progress)
    return 0
