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
for GPU speed.
"""

from __future__ import annotations

import argparse
import json
import platform
import subprocess
import sys
import tempfile
import textwrap
import time
from pathlib import Path
from typing import Any

import numpy as np

from shelfrank.device.catalog_files import CatalogData, read_catalog_dir, write_catalog_dir
from shelfrank.device.kernel import quantize_rows
from shelfrank.timing import time_calls, time_interleaved

DEFAULT_NEIGHBORS = 50  # what the export writes per item (the bundle's M wins when it has a table)


def expand_catalog(
    base: CatalogData, n: int, *, seed: int = 0, noise: float = 0.05, neighbors: int | None = None
) -> CatalogData:
    """``n`` items: the base catalog repeated, each copy's rows perturbed and re-quantised, with a
    full-size neighbour table (see :func:`expand_neighbors`)."""
    rng = np.random.default_rng(seed)
    m = len(base.items)
    src = np.arange(n) % m
    vecs = base.rows[src].astype(np.float32) * base.scales[src, None]
    copy = src != np.arange(n)
    vecs[copy] += rng.standard_normal((int(copy.sum()), vecs.shape[1])).astype(np.float32) * noise
    vecs /= np.maximum(np.linalg.norm(vecs, axis=1, keepdims=True), 1e-12)
    rows, scales = quantize_rows(np.ascontiguousarray(vecs))
    items = []
    for j, i in enumerate(src.tolist()):
        it = dict(base.items[i])
        if j >= m:
            it["item_id"] = f"{it['item_id']}~{j // m}"
        items.append(it)
    return CatalogData(items, rows, scales, expand_neighbors(base, n, rng=rng, m=neighbors))


def expand_neighbors(
    base: CatalogData, n: int, *, rng: np.random.Generator, m: int | None = None
) -> tuple[np.ndarray, np.ndarray]:
    """The neighbour table of the expanded catalog (item j is copy j // N0 of base item j % N0).

    With a base table: each copy keeps its base item's neighbour pattern, mapped into its own copy
    (neighbour b of base item i becomes b + c·N0 in copy c, or b itself where that row is past
    ``n``), weights and -1 padding as they are; M is the base table's. Without one (a bundle
    exported before the hybrid ranker): ``m`` (default 50) distinct random neighbours per item
    over the whole expanded catalog, never the item itself, with a decaying weight profile
    (w_r = s / (1 + r), s log-normal per item). Uniform random ids make the largest candidate
    union (the history items' lists overlap only by chance): a pessimistic case for the hybrid's
    latency.
    """
    n0 = len(base.items)
    if base.neighbors is not None:
        bid, bw = (np.asarray(a) for a in base.neighbors)
        m = bid.shape[1]
    else:
        m = DEFAULT_NEIGHBORS if m is None else int(m)
        k = max(0, min(m, n - 1))
        gap = max(1, (n - 1) // max(k, 1))
        decay = 1.0 / (1.0 + np.arange(k))
    ids = np.full((n, m), -1, np.int32)
    w = np.zeros((n, m), np.float16)
    for lo in range(0, n, _BLOCK):  # in blocks: no (n, M) int64 temporaries at 1M items
        j = np.arange(lo, min(n, lo + _BLOCK))
        if base.neighbors is not None:
            b = bid[j % n0].astype(np.int64)
            shifted = b + ((j // n0) * n0)[:, None]
            ids[j] = np.where((b >= 0) & (shifted < n), shifted, b)
            w[j] = bw[j % n0]
        elif k:
            # distinct offsets 1..n-1 from each item: a cumulative sum of positive gaps below n
            offsets = np.cumsum(rng.integers(1, gap + 1, (len(j), k)), axis=1)
            offsets = rng.permuted(offsets, axis=1)  # the strongest neighbour is anywhere in the catalog
            ids[j, :k] = (j[:, None] + offsets) % n
            w[j, :k] = rng.lognormal(0.0, 0.5, (len(j), 1)) * decay
    return ids, w


_BLOCK = 65536


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

    stages["user tower (incl. history read)"] = time_calls(tower, runs)
    stages["int8 top-k"] = time_calls(lambda: topk(u, cat.rows, 10, scales=cat.scales), runs)
    for t in sorted({2, threads} - {1}):
        stages[f"int8 top-k, {t} threads"] = time_calls(
            lambda t=t: topk(u, cat.rows, 10, scales=cat.scales, threads=t), runs
        )

    # "The rest" is measured inside the same calls: the user tower's ONNX run and the top-k scan
    # are timed where recommend() makes them (stages timed alone run with warmer caches).
    import shelfrank.device.recommender as recmod

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

    stages["recommend end to end"] = time_calls(e2e, runs)
    plain_topk, plain_session = recmod.topk, rec._tower
    rec._tower, recmod.topk = _TimedSession(plain_session), timed_topk
    try:
        rest_samples = []
        for _ in range(runs):
            inner["model"] = inner["topk"] = 0.0
            t0 = time.perf_counter()
            e2e()
            rest_samples.append(time.perf_counter() - t0 - inner["model"] - inner["topk"])
    finally:
        rec._tower, recmod.topk = plain_session, plain_topk
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
        "search end to end": time_calls(lambda: rec.search(text, k=10), runs),
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
        "rest_share": rest / stages["recommend end to end"]["p50_ms"],
        "search": search,
        "hybrid": hybrid,
        "baselines": base_stages,
        "naive": naive,
    }
    if isinstance(naive, dict):
        entry["speedup_vs_naive"] = naive["p50_ms"] / stages["recommend end to end"]["p50_ms"]
    return entry, cat_dir


def _hybrid_vs_tower(rec, user: str, runs: int) -> dict[str, Any]:
    """``recommend(k=10)`` by the hybrid and by the tower alone, interleaved; then the hybrid's
    stages, timed where ``Recommender._hybrid`` calls them (functions wrapped in its module)."""
    import shelfrank.device.recommender as recmod

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


def parse_profile(path: str | Path, *, skip_first_run: bool = True) -> dict[str, Any]:
    """Which execution provider ran each node type, from an onnxruntime profile (JSON trace).

    Node events (``cat == "Node"``) carry ``args.op_name`` and ``args.provider``. Nodes are counted
    once each; ``runs`` and kernel time ``us`` add up over the profiled runs, leaving out the
    first ``model_run`` (where TensorRT builds its engine) when there are several.

    Returns:
        {"by_op": {op: {provider: {"nodes", "runs", "us"}}}, "by_provider": {provider: {"nodes",
        "us", "time_share"}}, "model_runs": n}

    Raises:
        ValueError: the file is not a profile, or it holds no node events.
    """
    try:
        events = json.loads(Path(path).read_text())
    except (OSError, ValueError) as e:
        raise ValueError(f"{path}: not a readable onnxruntime profile: {e}") from e
    if not isinstance(events, list):
        raise ValueError(f"{path}: not an onnxruntime profile (expected a JSON list of trace events)")
    runs = sorted(
        (e["ts"], e["ts"] + e["dur"]) for e in events if e.get("cat") == "Session" and e.get("name") == "model_run"
    )
    warm = runs[0] if skip_first_run and len(runs) > 1 else None
    by_op: dict[str, dict[str, dict[str, Any]]] = {}
    for e in events:
        args = e.get("args") or {}
        if e.get("cat") != "Node" or "provider" not in args or "op_name" not in args:
            continue  # session events; fence events carry no provider
        cell = by_op.setdefault(args["op_name"], {}).setdefault(args["provider"], {"nodes": set(), "runs": 0, "us": 0})
        cell["nodes"].add(e["name"])
        if warm is None or not warm[0] <= e.get("ts", -1) <= warm[1]:
            cell["runs"] += 1
            cell["us"] += int(e.get("dur", 0))
    if not by_op:
        raise ValueError(f"{path}: no node events with a provider (was the profiler on during a run?)")
    by_provider: dict[str, dict[str, Any]] = {}
    for provs in by_op.values():
        for prov, cell in provs.items():
            cell["nodes"] = len(cell["nodes"])
            tot = by_provider.setdefault(prov, {"nodes": 0, "us": 0})
            tot["nodes"] += cell["nodes"]
            tot["us"] += cell["us"]
    total_us = sum(t["us"] for t in by_provider.values())
    for t in by_provider.values():
        t["time_share"] = t["us"] / total_us if total_us else 0.0
    return {
        "by_op": {op: dict(sorted(p.items())) for op, p in sorted(by_op.items())},
        "by_provider": dict(sorted(by_provider.items(), key=lambda kv: -kv[1]["us"])),
        "model_runs": len(runs),
    }


def encoder_provider_profile(enc, feeds: dict[str, np.ndarray], *, calls: int, prefix: str) -> dict[str, Any]:
    """Run ``enc``'s model (same file, threads, providers and options) ``calls`` + 1 times under
    onnxruntime's profiler; :func:`parse_profile` of the trace, the first run left out of the times."""
    from shelfrank.device.encoder import make_session

    sess = make_session(enc.model_path, threads=enc.threads, providers=enc.providers, profile_prefix=prefix)
    for _ in range(calls + 1):
        sess.run(["embedding"], feeds)
    path = sess.end_profiling()
    try:
        report = parse_profile(path)
    finally:
        Path(path).unlink(missing_ok=True)
    return {"calls": calls, "session_providers": list(sess.get_providers()), **report}


def run_bench(
    bundle: Path,
    *,
    public_key: str | None,
    sizes: list[int],
    runs: int,
    baselines: Path | None,
    board: str | None = None,
    probe_queries: int = 200,
) -> dict[str, Any]:
    from shelfrank.device import Recommender
    from shelfrank.device.kernel import active_isa
    from shelfrank.sysinfo import system_info

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
            entry, cat_dir = _one_size(rec, base, n, runs, tmp, rng, baselines, threads)
            report["sizes"][n] = entry
            if n == max(sizes):
                report["process_at_max_size"] = _probe(bundle, public_key, cat_dir, probe_queries, tmp)
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
    return report


def render(report: dict[str, Any]) -> str:
    s = report["system"]
    lines = [
        f"# shelfrank bench {report['bundle']}",
        "",
        f"{s['cpu']} ({s['machine']}, {s['cores']} cores), kernel ISA {report['isa']}, onnxruntime "
        f"{s['onnxruntime']}, shelfrank {s['shelfrank']} ({s['commit']}); 1 thread, batch 1, "
        f"{report['runs']} runs after warm-up.",
        "",
    ]
    if "board" in report:
        b = report["board"]
        lines += [
            f"Board config {b['name']} ({b['cpu']}, expects {b['expected_isa']}, {b['threads']} threads): "
            f"{b['this_machine']}.",
            "",
        ]
    o = report["bundle_open"]
    lines.append(
        f"Fresh process: `import shelfrank.device` {o['import_s'] * 1e3:.0f} ms, `Recommender.open` "
        f"{o['open_s'] * 1e3:.0f} ms."
    )
    if "process_at_max_size" in report:
        p = report["process_at_max_size"]
        lines.append(
            f"Peak RSS with the {max(report['sizes']):,}-item catalog after 200 recommends: {p['peak_rss_mb']:.0f} MB."
        )
    if "encoder" in report:
        lines += ["", *render_encoder(report["encoder"])]
    lines += ["", "| catalog | stage | p50 ms | p95 ms | p99 ms |", "| ---: | :--- | ---: | ---: | ---: |"]
    for n, e in report["sizes"].items():
        for group in ("recommend", "search"):
            for name, st in e[group].items():
                lines.append(f"| {n:,} | {name} | {st['p50_ms']:.3f} | {st['p95_ms']:.3f} | {st['p99_ms']:.3f} |")
        lines.append(f"| {n:,} | the rest of recommend (p50, timed inside the calls) | {e['rest_p50_ms']:.3f} | | |")
        for name, st in e.get("baselines", {}).items():
            if isinstance(st, dict):
                lines.append(
                    f"| {n:,} | baseline: {name} | {st['p50_ms']:.3f} | {st['p95_ms']:.3f} | {st['p99_ms']:.3f} |"
                )
            else:
                lines.append(f"| {n:,} | baseline: {name} | {st} | | |")
        if isinstance(e["naive"], dict):
            nv = e["naive"]
            lines.append(
                f"| {n:,} | naive: teacher torch fp32 @128 + numpy fp32 scan | {nv['p50_ms']:.2f} | "
                f"{nv['p95_ms']:.2f} | {nv['p99_ms']:.2f} |"
            )
    lines += ["", *render_hybrid(report)]
    lines += ["", "| catalog | recommend p50 ms | rest share | × naive |", "| ---: | ---: | ---: | ---: |"]
    for n, e in report["sizes"].items():
        sp = f"{e['speedup_vs_naive']:.1f}×" if "speedup_vs_naive" in e else str(e["naive"])
        lines.append(
            f"| {n:,} | {e['recommend']['recommend end to end']['p50_ms']:.3f} | {e['rest_share']:.0%} | {sp} |"
        )
    return "\n".join(lines) + "\n"


HYBRID_TARGET = 1.3  # issue 11: hybrid p50 ≤ 1.3× the tower-only path at 100k items, same run


def render_hybrid(report: dict[str, Any]) -> list[str]:
    """Markdown: the hybrid against the tower-only path, the neighbour table's size, the stage split."""
    lines = [
        "## Hybrid ranker against the tower-only path",
        "",
        f'`recommend(k=10)` with `ranker="hybrid"` and `ranker="tower"`, interleaved call by call in '
        f"the same run (cache cleared each call); ranker: {report.get('ranker', '?')}. Target: hybrid "
        f"p50 ≤ {HYBRID_TARGET}× the tower-only path at 100k; neighbour table ≤ 1× the int8 rows.",
        "",
        "| catalog | tower p50 ms | tower p95 ms | hybrid p50 ms | hybrid p95 ms | hybrid / tower p50 | p95 | "
        "candidates | M | neighbour table MB | int8 rows MB | table / rows |",
        "| ---: | ---: | ---: | ---: | ---: | ---: | ---: | ---: | ---: | ---: | ---: | ---: |",
    ]
    for n, e in report["sizes"].items():
        h = e["hybrid"]
        nb = h["neighbors"]
        lines.append(
            f"| {n:,} | {h['tower']['p50_ms']:.3f} | {h['tower']['p95_ms']:.3f} | {h['hybrid']['p50_ms']:.3f} | "
            f"{h['hybrid']['p95_ms']:.3f} | **{h['ratio_p50']:.2f}×** | {h['ratio_p95']:.2f}× | {h['candidates']} | "
            f"{nb['m']} | {nb['table_bytes'] / 1e6:.1f} | {nb['rows_bytes'] / 1e6:.1f} | {nb['table_over_rows']:.2f}× |"
        )
    first = next(iter(report["sizes"].values()))["hybrid"]["neighbors"]["from"]
    lines += [
        "",
        f"Neighbour table: {first}. Stages of the hybrid, timed inside its calls (p50 ms each):",
        "",
        "| catalog | stage | p50 ms |",
        "| ---: | :--- | ---: |",
    ]
    for n, e in report["sizes"].items():
        for name, ms in e["hybrid"]["stages_p50_ms"].items():
            lines.append(f"| {n:,} | {name} | {ms:.3f} |")
    return lines


def render_encoder(enc: dict[str, Any]) -> list[str]:
    """Markdown: which text encoder ran, on what, and which provider ran each node type."""
    prof = enc["profile"]
    shares = ", ".join(f"{p} {t['time_share']:.0%}" for p, t in prof["by_provider"].items())
    lines = [
        "## Text encoder: which provider ran what",
        "",
        f"Encoder `{enc['file']}` ({enc['precision']}); onnxruntime session providers "
        f"{', '.join(prof['session_providers'])}; share of kernel time over {prof['calls']} profiled calls: {shares}.",
    ]
    if enc.get("gpu_providers"):
        lines.append(
            f"The board asks for {', '.join(enc['gpu_providers'])}: "
            + (
                "in use."
                if enc.get("fallback_reason") is None
                else f"**CPU fallback** — {enc['fallback_reason']}. The encoder figures are CPU figures."
            )
        )
    lines += [
        "",
        f"| op type | provider | nodes | kernel µs ({prof['calls']} calls) |",
        "| :--- | :--- | ---: | ---: |",
    ]
    for op, provs in prof["by_op"].items():
        for prov, cell in provs.items():
            lines.append(f"| {op} | {prov} | {cell['nodes']} | {cell['us']} |")
    return lines


def plot(report: dict[str, Any], out: str) -> str:
    """PNG of p50 latency against catalog size, one line per stage; returns what it did."""
    try:
        import matplotlib

        matplotlib.use("Agg")
        import matplotlib.pyplot as plt
    except ImportError:
        return "plot not written: matplotlib is not installed (pip install matplotlib)"
    sizes = sorted(report["sizes"])
    fig, ax = plt.subplots(figsize=(7, 4.5))
    stages = [k for group in ("recommend", "search") for k in report["sizes"][sizes[0]][group]]
    for stage in stages:
        ys = [
            next(e[g][stage]["p50_ms"] for g in ("recommend", "search") if stage in e[g])
            for e in (report["sizes"][n] for n in sizes)
        ]
        ax.plot(sizes, ys, marker="o", label=stage)
    nv = [report["sizes"][n]["naive"] for n in sizes]
    if all(isinstance(v, dict) for v in nv):
        ax.plot(sizes, [v["p50_ms"] for v in nv], marker="x", linestyle="--", color="black", label="naive pipeline")
    ax.set_xscale("log")
    ax.set_yscale("log")
    ax.set_xlabel("catalog items")
    ax.set_ylabel("p50 latency (ms, 1 thread unless stated)")
    ax.set_title(f"shelfrank on {report['system']['cpu']} ({report['isa']})")
    ax.grid(True, which="both", alpha=0.3)
    ax.legend(fontsize=7)
    fig.tight_layout()
    fig.savefig(out, dpi=120)
    plt.close(fig)
    return f"wrote {out}"


def main(args: argparse.Namespace) -> int:
    sizes = [int(x) for x in (args.sizes or ("10000,100000" if args.quick else "10000,100000,1000000")).split(",")]
    runs = args.repeats or (50 if args.quick else 200)
    baselines = Path(args.baselines) if args.baselines else None
    if baselines is None and Path(str(Path(args.target)) + ".baselines").is_dir():
        baselines = Path(str(Path(args.target)) + ".baselines")
    report = run_bench(
        Path(args.target), public_key=args.public_key, sizes=sizes, runs=runs, baselines=baselines, board=args.board
    )
    md = render(report)
    print(md)
    if args.json:
        Path(args.json).write_text(json.dumps(report, indent=2, default=str))
    if args.md:
        Path(args.md).write_text(md)
    if args.plot:
        print(plot(report, args.plot))
    return 0
