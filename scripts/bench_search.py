"""Search latency at 100k items: hybrid against dense-only and lexical-only, interleaved (issue 12:
hybrid p50 ≤ 1.5× dense-only in the same run).

The catalog (``--bundle``, else built once and cached by scripts/memory_1m.py's recipe: the
all-MiniLM-L6-v2 embeddings of the Amazon Video Games titles expanded to N items, the real titles
with variant suffixes, binary codes, the tiny 384-d test encoder of ``shelfrank.testing``) is
searched with queries drawn from its own titles (seeded): the exact title, the title with one word
dropped, the title with one typo, and a title being typed (its first word and the first 3 letters
of the second). Every query runs in every mode once per round, the modes' order alternating, after
a warm-up round; the figures are per call, ``Recommender.search`` end to end (cleaning, encoding,
the FTS queries, the scan, the fusion, the items). Also: one 800 KB query (cut before tokenizing).

    .venv/bin/python scripts/bench_search.py                       # 100k items, 200 queries, 3 rounds
    .venv/bin/python scripts/bench_search.py --bundle B --rounds 5 --json out.json
"""

from __future__ import annotations

import argparse
import importlib.util
import json
import os
import sys
import tempfile
import threading
import time
from pathlib import Path

import numpy as np

MODES = ("hybrid", "dense", "lexical")
#: the hybrid with its FTS queries run after the scan, in the caller's thread (as before they overlapped)
SEQUENTIAL = "hybrid, FTS not overlapped"
KINDS = ("exact", "word dropped", "one typo", "typing")


def _build(n: int) -> tuple[Path, Path]:
    """scripts/memory_1m.py's bundle of ``n`` items (cached under its WORK folder)."""
    spec = importlib.util.spec_from_file_location("memory_1m", Path(__file__).with_name("memory_1m.py"))
    mem = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(mem)
    from shelfrank.bench.kernel_data import load_real_embeddings, read_titles

    emb, info = load_real_embeddings(None, lambda s: print(s, file=sys.stderr))
    if emb is None:
        raise SystemExit(f"error: no real embeddings to build the catalog from: {info.get('reason')}")
    titles = read_titles(Path(info["titles"])) if info.get("titles") else [f"Item {i}" for i in range(len(emb))]
    bundle = mem.build(n, np.ascontiguousarray(emb, np.float32), titles)
    return bundle, bundle.parent / "keys" / "publisher.key.pub"


def queries(titles: list[str], n: int, seed: int) -> list[tuple[str, str]]:
    """(kind, text) for ``n`` titles of ≥ 2 words per kind, seeded."""
    rng = np.random.default_rng(seed)
    out: list[tuple[str, str]] = []
    picks = [t for t in (titles[int(i)] for i in rng.choice(len(titles), 8 * n, replace=False)) if len(t.split()) >= 2]
    for t in picks[:n]:
        words = t.split()
        out.append(("exact", t))
        drop = int(rng.integers(len(words)))
        out.append(("word dropped", " ".join(words[:drop] + words[drop + 1 :])))
        long = [i for i, w in enumerate(words) if len(w) >= 5 and w.isalpha()]
        if long:
            i = long[int(rng.integers(len(long)))]
            w = words[i]
            j = int(rng.integers(1, len(w) - 1))
            words2 = list(words)
            words2[i] = w[:j] + w[j + 1] + w[j] + w[j + 2 :]  # an adjacent swap
            out.append(("one typo", " ".join(words2)))
        out.append(("typing", f"{words[0]} {words[1][:3]}"))
    return out


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--bundle", help="a bundle to search (default: build/reuse scripts/memory_1m.py's)")
    ap.add_argument("--public-key", help="its publisher key (default: BUNDLE/../keys/publisher.key.pub)")
    ap.add_argument(
        "--items",
        type=int,
        default=100_000,
        help="catalog size (default 100000): built so, or a smaller --bundle's catalog expanded to it "
        "(shelfrank.bench.expand, as `shelfrank bench` does: its titles repeated)",
    )
    ap.add_argument("--queries", type=int, default=50, help="titles per query kind (default 50)")
    ap.add_argument("--rounds", type=int, default=3)
    ap.add_argument("--seed", type=int, default=0)
    ap.add_argument("--json", help="also write the figures here")
    a = ap.parse_args(argv)

    from shelfrank.device import Recommender
    from shelfrank.device import search as srch
    from shelfrank.timing import latency_stats

    if a.bundle:
        bundle = Path(a.bundle)
        pub = Path(a.public_key) if a.public_key else bundle.parent / "keys" / "publisher.key.pub"
    else:
        bundle, pub = _build(a.items)
    with tempfile.TemporaryDirectory() as tmp:
        rec = Recommender.open(bundle, public_key=pub if pub.is_file() else None, state_dir=Path(tmp) / "state")
        if len(rec.catalog) < a.items:
            from shelfrank.bench.expand import expand_catalog
            from shelfrank.device.catalog_files import read_catalog_dir, write_catalog_dir

            write_catalog_dir(Path(tmp) / "cat", expand_catalog(read_catalog_dir(rec.catalog.root), a.items))
            rec._swap_catalog(Path(tmp) / "cat", 10**6 + a.items)  # as `shelfrank bench` swaps its sizes in
        cat = rec.catalog
        titles = [cat.title(r) for r in range(len(cat))]
        qs = queries(titles, a.queries, a.seed)
        busy = threading.BoundedSemaphore(1)
        busy.acquire()  # no free worker: the FTS queries run in the caller, after the scan

        def sequential(text: str):
            free, srch._OVERLAP.slots = srch._OVERLAP.slots, busy
            try:
                return rec.search(text, 10)
            finally:
                srch._OVERLAP.slots = free

        calls = {m: (lambda text, m=m: rec.search(text, 10, mode=m)) for m in MODES}
        calls[SEQUENTIAL] = sequential
        names = list(calls)
        for _, text in qs:  # warm-up: the encoder, the FTS pages, the vocabulary
            for m in names:
                calls[m](text)
        ts: dict[str, dict[str, list[float]]] = {m: {k: [] for k in KINDS} for m in names}
        i = 0
        for _ in range(a.rounds):
            for kind, text in qs:
                for m in names if i % 2 == 0 else names[::-1]:
                    t0 = time.perf_counter()
                    calls[m](text)
                    ts[m][kind].append(time.perf_counter() - t0)
                i += 1
        big = ("wireless controller " * 40_000)[:800_000]
        t0 = time.perf_counter()
        rec.search(big, 10)
        big_s = time.perf_counter() - t0
        lexical = cat.lexical.available
        rec.close()
    stats = {m: latency_stats([t for k in KINDS for t in ts[m][k]]) for m in names}
    per_kind = {m: {k: latency_stats(ts[m][k]) for k in KINDS if ts[m][k]} for m in names}
    ratio = stats["hybrid"]["p50_ms"] / stats["dense"]["p50_ms"]
    doc = {
        "bundle": str(bundle),
        "items": len(titles),
        "fts": lexical,
        "queries": len(qs),
        "rounds": a.rounds,
        "seed": a.seed,
        "all": stats,
        "per_kind": per_kind,
        "hybrid_over_dense_p50": ratio,
        "sequential_over_dense_p50": stats[SEQUENTIAL]["p50_ms"] / stats["dense"]["p50_ms"],
        "cpus": os.cpu_count(),
        "query_800kb_s": big_s,
    }
    print(f"{len(titles):,} items ({bundle}), FTS {'on' if lexical else 'OFF'}; {len(qs)} queries x {a.rounds} rounds")
    print("| mode | p50 ms | p95 ms | " + " | ".join(f"{k} p50" for k in KINDS) + " |")
    print("| :--- | ---: | ---: | " + " | ".join("---:" for _ in KINDS) + " |")
    for m in names:
        s = stats[m]
        kinds = " | ".join(f"{per_kind[m][k]['p50_ms']:.2f}" if k in per_kind[m] else "-" for k in KINDS)
        print(f"| {m} | {s['p50_ms']:.2f} | {s['p95_ms']:.2f} | {kinds} |")
    seq = doc["sequential_over_dense_p50"]
    print(
        f"\nhybrid / dense p50 = {ratio:.2f}x (target <= 1.5x; FTS not overlapped: {seq:.2f}x), {os.cpu_count()} CPUs"
    )
    print(f"an 800 KB query: {big_s * 1e3:.0f} ms")
    if a.json:
        Path(a.json).write_text(json.dumps(doc, indent=2))
    return 0


if __name__ == "__main__":
    sys.exit(main())
