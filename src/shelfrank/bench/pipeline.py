"""``shelfrank bench BUNDLE``: the on-device pipeline, stage by stage, against the naive pipeline.

Per stage (1 thread, batch 1, after warm-up; p50/p95/p99): for ``recommend`` with a 20-event
history — history read, user tower, int8 top-k, end to end on the tower-only path (cache cleared
each time); for ``search`` — tokenize, encode, top-k, end to end. The hybrid ranker against the
tower-only path: ``recommend(ranker="hybrid")`` and ``recommend(ranker="tower")`` timed in the
same run, interleaved call by call after warm-up, p50/p95 and their ratio, with the hybrid's extra
stages timed inside its calls; the bundle's ranker entry, or default ``RankerParams()`` for a
bundle without one (said in the report). The catalog is the bundle's, expanded to each size of
the sweep (rows perturbed and re-quantised) with a full-size neighbour table (M from the bundle's
table, else 50; its bytes against the int8 rows' bytes). Baselines in the same run: the naive
pipeline (the fine-tuned teacher in torch fp32 over the history text at 128 tokens + a numpy fp32
scan), when ``--baselines DIR`` holds the export's teacher and torch is installed. Also: import
time, open time and peak RSS, each measured in a fresh process; and which text encoder the board
runs (fp16 under GPU providers or int8 on the CPU, with the fallback reason) with the provider
that actually ran each node type, from onnxruntime's profiler — so a CPU fallback is never taken
for GPU speed. Which scan the planner ran (exact int8, or two-pass over the catalog's binary codes)
is recorded per size (``scan``), with the two-pass top-k timed beside the exact one when the
catalog has codes.

The result is one :class:`~shelfrank.bench.pipeline_record.PipelineRecord`, printed as Markdown,
JSON or CSV (:mod:`shelfrank.bench.record`); progress goes to stderr.
"""

from __future__ import annotations

import argparse
import json
import logging
import platform
import subprocess
import sys
import tempfile
import textwrap
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

import numpy as np

from shelfrank.bench.expand import expand_catalog
from shelfrank.bench.ort_profile import encoder_provider_profile
from shelfrank.bench.pipeline_record import (
    RECOMMEND_E2E,
    SCAN_STAGE,
    SEARCH_DENSE,
    SEARCH_E2E,
    TOWER_STAGE,
    PipelineRecord,
    plot,
)
from shelfrank.bench.record import emit
from shelfrank.device.catalog_files import CatalogData, read_catalog_dir, write_catalog_dir
from shelfrank.timing import time_calls, time_interleaved

logger = logging.getLogger(__name__)
Progress = Callable[[str], None]


_PROBE = textwrap.dedent(
    """
    import json, resource, sys, time
    def peak_rss_mb():
        # VmHWM: this process's own high-water mark. ru_maxrss would also count the parent's
        # RSS at fork+exec time (Linux carries it across execve).
        try:
            for line in open("/proc/self/status"):
                if line.startswith("VmHWM:"):
                    return int(line.split()[1]) / 1024
        except OSError:
            pass
        return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024
    t0 = time.perf_counter()
    import shelfrank.device
    t_import = time.perf_counter() - t0
    from shelfrank.device import Recommender
    bundle, pub, state, catalog, n_queries = sys.argv[1:6]
    t0 = time.perf_counter()
    rec = Recommender.open(bundle, public_key=pub or None, state_dir=state)
    t_open = time.perf_counter() - t0
    if catalog:
        rec._swap_catalog(catalog, 10**6)
    if rec.ranker is None:  # the bench times the hybrid (default parameters) for a bundle without one
        from shelfrank.device.ranker import RankerParams
        rec.ranker = RankerParams()
    ids = rec.catalog.item_ids
    for i in range(20):
        rec.record("bench-user", ids[(i * 7919) % len(ids)], ("view", "click", "cart", "purchase")[i % 4])
    for _ in range(int(n_queries)):
        rec._cache.clear()
        rec.recommend("bench-user", k=10)
    print(json.dumps({"import_s": t_import, "open_s": t_open,
                      "peak_rss_mb": peak_rss_mb()}))
    """
)


def _probe(bundle: Path, pub: str | None, catalog: Path | None, n_queries: int, tmp: Path) -> dict[str, float]:
    script = tmp / "probe.py"
    script.write_text(_PROBE)
    out = subprocess.run(
        [
            sys.executable,
            str(script),
            str(bundle),
            pub or "",
            str(tmp / f"state-{time.monotonic_ns()}"),
            str(catalog or ""),
            str(n_queries),
        ],
        capture_output=True,
        text=True,
        timeout=600,
        check=True,
    )
    return json.loads(out.stdout.strip().splitlines()[-1])


def _faiss_sq8(rows_f32: np.ndarray, u: np.ndarray, runs: int) -> dict | str:
    try:
        import faiss
    except ImportError:
        return "not available (pip install faiss-cpu)"
    faiss.omp_set_num_threads(1)
    index = faiss.IndexScalarQuantizer(rows_f32.shape[1], faiss.ScalarQuantizer.QT_8bit, faiss.METRIC_INNER_PRODUCT)
    index.train(rows_f32[: min(len(rows_f32), 65536)])
    index.add(rows_f32)
    q = u[None].astype(np.float32)
    return time_calls(lambda: index.search(q, 10), runs)


def _naive(baselines: Path | None, history_texts: list[str], rows_f32: np.ndarray, runs: int) -> dict | str:
    if baselines is None or not (baselines / "teacher").is_dir():
        return "not available (pass --baselines BUNDLE.baselines with the export's fine-tuned teacher)"
    try:
        import torch
        from transformers import BertModel
    except ImportError:
        return "not available (needs torch + transformers: pip install 'shelfrank[export]')"
    from shelfrank.export.models import MeanPoolEncoder
    from shelfrank.export.train import Tokens

    torch.set_num_threads(1)
    enc = MeanPoolEncoder(BertModel.from_pretrained(baselines / "teacher", local_files_only=True)).eval()
    tok = Tokens(str(baselines / "teacher" / "tokenizer.json"), 128)
    k = iter(range(10**9))

    def run():
        ids, mask = tok([history_texts[next(k) % len(history_texts)]])
        pad = 128 - ids.shape[1]  # the naive pipeline pads every history to 128 tokens
        ids = torch.nn.functional.pad(ids, (0, pad))
        mask = torch.nn.functional.pad(mask, (0, pad))
        with torch.inference_mode():
            u = enc(ids, mask)[0].numpy()
        s = rows_f32 @ u
        top = np.argpartition(-s, 10)[:10]
        return top[np.argsort(-s[top])]

    return time_calls(run, runs)


def _one_size(
    rec, base: CatalogData, n: int, runs: int, tmp: Path, rng, baselines: Path | None, threads: int
) -> tuple[dict, Path]:
    from shelfrank.device.kernel import topk
    from shelfrank.device.text import ACTIONS, history_text

    cat_dir = tmp / f"catalog-{n}"
    data = expand_catalog(base, n)
    mean = getattr(rec, "catalog_mean", None)
    if mean is not None:  # the codes the export would ship for these rows (device/codes.py)
        from shelfrank.device.codes import derive_codes

        data.codes = derive_codes(data.rows, data.scales, mean)
    write_catalog_dir(cat_dir, data, fsync=False)
    rec._swap_catalog(cat_dir, 10**6 + n)
    cat = rec.catalog
    user = f"bench-{n}"
    picks = rng.choice(len(base.items), 20, replace=False)
    for j, i in enumerate(picks):
        rec.record(user, cat.item_ids[int(i)], ACTIONS[j % 4])
    u = rec.user_vector(user)
    stages: dict[str, Any] = {}
    # record() writes each event through to the in-memory history, so recommend after an event
    # reads no SQLite; the cold read (a user not among the recently active) is shown beside it
    stages["history read"] = time_calls(lambda: rec.events.history(user, limit=rec.max_events * 4), runs)

    def cold_history():
        rec.events._recent.pop(user, None)
        rec.events.history(user)

    stages["history read, not cached (SQLite)"] = time_calls(cold_history, runs)

    def tower():
        rec._cache.clear()
        rec.user_vector(user)

    stages[TOWER_STAGE] = time_calls(tower, runs)
    stages[SCAN_STAGE] = time_calls(lambda: topk(u, cat.rows, 10, scales=cat.scales), runs)
    planner = getattr(rec, "planner", None)
    if planner is not None and getattr(cat, "codes", None) is not None:
        from shelfrank.device.planner import two_pass_topk

        r = max(planner.r, 10)
        stages[f"two-pass top-k (binary codes, R = {r})"] = time_calls(
            lambda: two_pass_topk(u, cat.rows, 10, codes=cat.codes, mean=cat.mean, r=r, scales=cat.scales), runs
        )
    for t in sorted({2, threads} - {1}):
        stages[f"int8 top-k, {t} threads"] = time_calls(
            lambda t=t: topk(u, cat.rows, 10, scales=cat.scales, threads=t), runs
        )

    # "The rest" is measured inside the same calls: the user tower's ONNX run and the top-k scan
    # are timed where recommend() makes them (stages timed alone run with warmer caches): the
    # catalog's own topk (the planner's scan) is shadowed on the instance for those calls.
    inner = {"model": 0.0, "topk": 0.0}

    class _TimedSession:
        def __init__(self, sess):
            self.sess = sess

        def run(self, *a, **kw):
            t0 = time.perf_counter()
            try:
                return self.sess.run(*a, **kw)
            finally:
                inner["model"] += time.perf_counter() - t0

    def timed_topk(*a, **kw):
        t0 = time.perf_counter()
        try:
            return plain_topk(*a, **kw)
        finally:
            inner["topk"] += time.perf_counter() - t0

    def e2e():
        rec._cache.clear()
        rec.recommend(user, k=10, ranker="tower")

    before = dict(planner.counts) if planner is not None else {}
    stages[RECOMMEND_E2E] = time_calls(e2e, runs)
    scan = None
    if planner is not None:
        scan = {**planner.describe(cat), "ran": {k: v - before.get(k, 0) for k, v in planner.counts.items()}}
    plain_topk, plain_session = cat.topk, rec._tower
    rec._tower, cat.topk = _TimedSession(plain_session), timed_topk
    try:
        rest_samples = []
        for _ in range(runs):
            inner["model"] = inner["topk"] = 0.0
            t0 = time.perf_counter()
            e2e()
            rest_samples.append(time.perf_counter() - t0 - inner["model"] - inner["topk"])
    finally:
        rec._tower = plain_session
        del cat.topk  # the class's method again
    rest = float(np.median(rest_samples)) * 1e3
    hybrid = _hybrid_vs_tower(rec, user, runs)
    nid, nw = cat.neighbors
    hybrid["neighbors"] = {
        "m": int(nid.shape[1]),
        "table_bytes": int(nid.nbytes + nw.nbytes),
        "rows_bytes": int(cat.rows.nbytes),
        "table_over_rows": (nid.nbytes + nw.nbytes) / cat.rows.nbytes,
        "from": "the bundle's table, mapped into each copy"
        if base.neighbors is not None
        else "random (the bundle has none)",
    }
    text = cat.item(int(picks[0])).title
    enc = rec.encoder
    feeds = enc.tokenize([text])
    precision = rec.encoder_info.get("precision", "int8")
    search = {
        "tokenize": time_calls(lambda: enc.tokenize([text]), runs),
        f"encode ({precision} ONNX)": time_calls(lambda: enc.run(feeds), runs),
        # the hybrid (FTS5 + dense, the default) against the dense-only mode, interleaved
        **time_interleaved(
            {
                SEARCH_E2E: lambda: rec.search(text, k=10),
                SEARCH_DENSE: lambda: rec.search(text, k=10, mode="dense"),
            },
            runs,
        ),
    }
    hist = [(e.action, cat.item(cat.index[e.item_id]).title) for e in reversed(rec.history(user))]
    rows_f32 = cat.rows.astype(np.float32) * cat.scales[:, None]
    # baselines of the same stages, in the same run
    base_stages: dict[str, Any] = {}

    def numpy_scan():
        sc = rows_f32 @ u
        top = np.argpartition(-sc, 10)[:10]
        return top[np.argsort(-sc[top])]

    base_stages["numpy fp32 scan (matmul + argpartition)"] = time_calls(numpy_scan, runs)
    fp32_onnx = baselines / "encoder_fp32.onnx" if baselines else None
    if fp32_onnx is not None and fp32_onnx.is_file():
        from shelfrank.device.encoder import TextEncoder

        enc32 = TextEncoder(
            fp32_onnx,
            rec.bundle / rec.manifest.tokenizer.file,
            max_len=rec.manifest.model.max_len,
            threads=1,
        )
        base_stages["encode (fp32 ONNX student, baselines)"] = time_calls(lambda: enc32.run(feeds), runs)
    else:
        base_stages["encode (fp32 ONNX student, baselines)"] = "not available (no --baselines DIR)"
    base_stages["faiss SQ8 scan"] = _faiss_sq8(rows_f32, u, runs)
    naive = _naive(baselines, [history_text(hist)], rows_f32, max(10, runs // 4))
    entry = {
        "recommend": stages,
        "rest_p50_ms": rest,
        "rest_share": rest / stages[RECOMMEND_E2E]["p50_ms"],
        "search": search,
        "search_hybrid_over_dense_p50": search[SEARCH_E2E]["p50_ms"] / search[SEARCH_DENSE]["p50_ms"],
        "hybrid": hybrid,
        "baselines": base_stages,
        "naive": naive,
        "scan": scan,
    }
    if isinstance(naive, dict):
        entry["speedup_vs_naive"] = naive["p50_ms"] / stages[RECOMMEND_E2E]["p50_ms"]
    return entry, cat_dir


def _hybrid_vs_tower(rec, user: str, runs: int) -> dict[str, Any]:
    """``recommend(k=10)`` by the hybrid and by the tower alone, interleaved; then the hybrid's
    stages, timed where ``Recommender._hybrid`` calls them (functions wrapped in its module)."""
    import shelfrank.device.hybrid as recmod  # the hybrid step's module: its stages are names there

    def call(ranker: str):
        def run():
            rec._cache.clear()
            rec.recommend(user, k=10, ranker=ranker)

        return run

    both = time_interleaved({"hybrid": call("hybrid"), "tower": call("tower")}, runs)
    out: dict[str, Any] = {
        **both,
        "ratio_p50": both["hybrid"]["p50_ms"] / both["tower"]["p50_ms"],
        "ratio_p95": both["hybrid"]["p95_ms"] / both["tower"]["p95_ms"],
    }
    # the stage split: each wrapped function adds its time to the call's tally
    spent: dict[str, float] = {}
    wrapped = {
        "cooc_scores": "neighbour gather + unique + sums (cooc_scores)",
        "topk": "int8 top-k of the tower's candidates",
        "fuse": "fuse + sort",
        "pop_feature": "fuse + sort",
        # the sort: its partial form where the module has one (it calls order: wrap one of them)
        "_best" if hasattr(recmod, "_best") else "order": "fuse + sort",
    }
    plain = {name: getattr(recmod, name) for name in wrapped}
    n_cand: list[int] = []

    def timed(name):
        fn = plain[name]

        def run(*a, **kw):
            t0 = time.perf_counter()
            try:
                return fn(*a, **kw)
            finally:
                spent[wrapped[name]] = spent.get(wrapped[name], 0.0) + time.perf_counter() - t0
                if name == "fuse":
                    n_cand.append(len(a[1]))

        return run

    plain_hybrid = rec._hybrid

    def timed_hybrid(*a, **kw):
        t0 = time.perf_counter()
        try:
            return plain_hybrid(*a, **kw)
        finally:
            spent["_hybrid"] = spent.get("_hybrid", 0.0) + time.perf_counter() - t0

    samples: dict[str, list[float]] = {}
    for name in wrapped:
        setattr(recmod, name, timed(name))
    rec._hybrid = timed_hybrid
    try:
        run = call("hybrid")
        for _ in range(runs):
            spent.clear()
            run()
            rest = spent.pop("_hybrid") - sum(spent.values())
            spent["candidate union + dequantise + dot products (the rest of _hybrid)"] = rest
            for name, t in spent.items():
                samples.setdefault(name, []).append(t)
    finally:
        for name, fn in plain.items():
            setattr(recmod, name, fn)
        del rec._hybrid
    out["stages_p50_ms"] = {name: float(np.median(t)) * 1e3 for name, t in samples.items()}
    out["candidates"] = int(np.median(n_cand)) if n_cand else 0
    return out


def run_bench(
    bundle: Path,
    *,
    public_key: str | None,
    sizes: list[int],
    runs: int,
    baselines: Path | None,
    board: str | None = None,
    probe_queries: int = 200,
    progress: Progress = logger.info,
) -> PipelineRecord:
    """Runs the whole bench of ``bundle`` and returns every raw number as one record."""
    from shelfrank.bench.sysinfo import system_info
    from shelfrank.device import Recommender
    from shelfrank.device.kernel import active_isa

    report: dict[str, Any] = {"system": system_info(), "bundle": str(bundle), "runs": runs, "threads": 1, "sizes": {}}
    threads = 1
    if board:
        from shelfrank.device.boards import load_board

        cfg = load_board(board)
        threads = cfg.threads
        report["board"] = {"name": cfg.name, "cpu": cfg.cpu, "expected_isa": cfg.expected_isa, "threads": cfg.threads}
        isa = report["system"]["active_isa"]
        same_arch = (cfg.expected_isa in ("neon", "neon_dot")) == (isa in ("neon", "neon_dot"))
        report["board"]["this_machine"] = (
            "matches"
            if same_arch and (isa == cfg.expected_isa or cfg.name == "x86-64-dev")
            else f"NOT this board: this machine is {report['system']['cpu']} ({isa}); figures are for this machine"
        )
    base = read_catalog_dir(bundle / "catalog")
    with tempfile.TemporaryDirectory(prefix="shelfrank-bench-") as tmpd:
        tmp = Path(tmpd)
        progress("fresh process: import and open")
        report["bundle_open"] = _probe(bundle, public_key, None, 0, tmp)
        # the board's providers choose the text encoder (fp16 on a GPU, else int8 on the CPU);
        # timings stay at 1 thread
        rec = Recommender.open(bundle, public_key=public_key, state_dir=tmp / "state", board=board, threads=1)
        if rec.ranker is None:
            from shelfrank.device.ranker import RankerParams

            rec.ranker = RankerParams()
            report["ranker"] = f"default {rec.ranker} (the bundle has no ranker entry)"
        else:
            report["ranker"] = f"the bundle's: {rec.ranker}"
        rng = np.random.default_rng(0)
        for n in sizes:
            t0 = time.perf_counter()
            progress(f"N={n:,}: expanding the catalog, then {runs} runs per stage")
            entry, cat_dir = _one_size(rec, base, n, runs, tmp, rng, baselines, threads)
            report["sizes"][n] = entry
            progress(
                f"N={n:,}: recommend p50 {entry['recommend'][RECOMMEND_E2E]['p50_ms']:.2f} ms, "
                f"hybrid/tower {entry['hybrid']['ratio_p50']:.2f}x, search hybrid/dense "
                f"{entry['search_hybrid_over_dense_p50']:.2f}x ({time.perf_counter() - t0:.0f} s)"
            )
            if n == max(sizes):
                progress(f"N={n:,}: peak RSS in a fresh process ({probe_queries} recommends)")
                report["process_at_max_size"] = _probe(bundle, public_key, cat_dir, probe_queries, tmp)
        progress("text encoder: provider profile")
        enc = rec.encoder
        report["encoder"] = {
            **rec.encoder_info,
            "profile": encoder_provider_profile(
                enc, enc.tokenize([base.items[0]["title"]]), calls=5, prefix=str(tmp / "ort-profile")
            ),
        }
        rec.close()
    report["isa"] = active_isa()
    report["machine"] = platform.machine()
    return PipelineRecord(**report)


def main(args: argparse.Namespace) -> int:
    sizes = [int(x) for x in (args.sizes or ("10000,100000" if args.quick else "10000,100000,1000000")).split(",")]
    runs = args.repeats or (50 if args.quick else 200)
    baselines = Path(args.baselines) if args.baselines else None
    if baselines is None and Path(str(Path(args.target)) + ".baselines").is_dir():
        baselines = Path(str(Path(args.target)) + ".baselines")
    t0 = time.perf_counter()

    def progress(msg: str) -> None:
        print(f"[{time.perf_counter() - t0:6.1f} s] {msg}", file=sys.stderr, flush=True)

    record = run_bench(
        Path(args.target),
        public_key=args.public_key,
        sizes=sizes,
        runs=runs,
        baselines=baselines,
        board=args.board,
        progress=progress,
    )
    emit(record, args, progress)
    if args.plot:
        progress(plot(record, args.plot))
    return 0
