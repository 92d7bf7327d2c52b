"""The search-quality report (quality.json's top-level ``search`` key, and quality.md).

Query sets are built from the catalog itself (seeded), each evaluated for dense-only, lexical-only
and hybrid search through the device's own code (``shelfrank.device.search``):

- ``exact_title``: an item's title → the item (items sharing the identical title count as hits);
- ``word_dropped``: the title with one word left out (titles of ≥ 3 words);
- ``one_typo``: the title with one typo in one word of ≥ 5 letters: an adjacent swap, a dropped,
  doubled or substituted letter;
- ``brand`` / ``category`` (catalogs that have them): the brand or category name → any item of it.

Recall@1, Recall@10 and MRR@10 per set and mode, search latency end to end (text in, items out,
1 thread) per mode, and the FTS index's size against the catalog SQLite without it.
"""

from __future__ import annotations

import shutil
import sqlite3
import tempfile
import time
from pathlib import Path
from typing import Any

import numpy as np

from shelfrank.device.catalog import Catalog
from shelfrank.device.catalog_files import FILES
from shelfrank.device.encoder import TextEncoder
from shelfrank.device.lexical import FTS_TABLE
from shelfrank.device.search import MODES, SearchParams, candidates, clean_query, fuse, ranked, search
from shelfrank.export.data import Dataset

K = 10
#: the issue's targets: (query set, metric, minimum) for the hybrid mode
TARGETS = (("exact_title", "recall@1", 0.95), ("word_dropped", "recall@10", 0.9), ("one_typo", "recall@10", 0.8))
_LETTERS = "abcdefghijklmnopqrstuvwxyz"
#: w_lexical tried by the fit (w_dense = 1): cosines of near-identical titles differ by a few
#: hundredths, so even 0.05 lets the FTS break their ties; the large ones let it decide
W_LEXICAL_GRID = (0.0, 0.02, 0.05, 0.1, 0.2, 0.3, 0.5, 0.75, 1.0, 1.5, 2.0, 3.0, 5.0, 10.0)


def _norm(title: str) -> str:
    return " ".join(title.casefold().split())


def typo(word: str, rng: np.random.Generator) -> str:
    """``word`` with one seeded typo: an adjacent swap, a dropped, doubled or substituted letter
    (never the word itself)."""
    for _ in range(20):
        i = int(rng.integers(len(word)))
        kind = int(rng.integers(4))
        if kind == 0 and i < len(word) - 1:
            out = word[:i] + word[i + 1] + word[i] + word[i + 2 :]
        elif kind == 1:
            out = word[:i] + word[i + 1 :]
        elif kind == 2:
            out = word[:i] + word[i] + word[i:]
        else:
            c = _LETTERS[int(rng.integers(26))]
            out = word[:i] + (c.upper() if word[i].isupper() else c) + word[i + 1 :]
        if out != word:
            return out
    return word[:-1]


def query_sets(ds: Dataset, *, n: int, seed: int) -> dict[str, list[tuple[str, list[int]]]]:
    """{set name: [(query, hit rows)]}, at most ``n`` queries per set, seeded."""
    cat = ds.catalog
    rng = np.random.default_rng(seed)
    same: dict[str, list[int]] = {}
    for row, t in enumerate(cat.titles):
        same.setdefault(_norm(t), []).append(row)
    sample = rng.permutation(len(cat))
    sets: dict[str, list[tuple[str, list[int]]]] = {"exact_title": [], "word_dropped": [], "one_typo": []}
    for row in sample.tolist():
        title = cat.titles[row]
        hits = same[_norm(title)]
        words = title.split()
        if len(sets["exact_title"]) < n:
            sets["exact_title"].append((title, hits))
        if len(sets["word_dropped"]) < n and len(words) >= 3:
            drop = int(rng.integers(len(words)))
            sets["word_dropped"].append((" ".join(words[:drop] + words[drop + 1 :]), hits))
        long = [i for i, w in enumerate(words) if len(w) >= 5 and w.isalpha()]
        if len(sets["one_typo"]) < n and long:
            i = long[int(rng.integers(len(long)))]
            sets["one_typo"].append((" ".join([*words[:i], typo(words[i], rng), *words[i + 1 :]]), hits))
        if all(len(v) >= n for v in sets.values()):
            break
    for name, col in (("brand", cat.brand), ("category", cat.category)):
        groups: dict[str, list[int]] = {}
        for row, v in enumerate(col):
            if v:
                groups.setdefault(v, []).append(row)
        if groups:
            names = sorted(groups)
            pick = rng.permutation(len(names))[:n]
            sets[name] = [(names[i], groups[names[i]]) for i in pick.tolist()]
    return sets


def _metrics(results: list[np.ndarray], hits: list[list[int]]) -> dict[str, float]:
    r1 = r10 = mrr = 0.0
    for rows, want in zip(results, hits, strict=True):
        top = rows[:K].tolist()
        w = set(want)
        first = next((i for i, r in enumerate(top) if r in w), None)
        if first is not None:
            r1 += first == 0
            r10 += 1
            mrr += 1.0 / (first + 1)
    n = max(1, len(results))
    return {"recall@1": round(r1 / n, 4), "recall@10": round(r10 / n, 4), "mrr@10": round(mrr / n, 4)}


def fit_params(
    cat: Catalog, sets: dict[str, list[tuple[str, list[int]]]], encoder: TextEncoder, *, base: SearchParams
) -> tuple[SearchParams, dict[str, Any]]:
    """w_lexical (w_dense = 1) maximising the mean over query sets of hybrid MRR@10 (ties: the
    smaller weight), on query sets other than the reported ones.

    Returns:
        (the fitted parameters, a record of the fit for the report).
    """
    prepared = {}
    for name, qs in sets.items():
        texts = [clean_query(q) for q, _ in qs]
        vecs = encoder.encode(texts)
        prepared[name] = (
            [candidates(cat, v, t, K, None, base) for t, v in zip(texts, vecs, strict=True)],
            [h for _, h in qs],
        )
    table = []
    for w in W_LEXICAL_GRID:
        p = SearchParams(w_dense=1.0, w_lexical=w, candidates=base.candidates)
        per_set = {
            name: _metrics([fuse(*c, p, K)[0] for c in cands], hits)["mrr@10"]
            for name, (cands, hits) in prepared.items()
        }
        table.append((float(np.mean(list(per_set.values()))), w, per_set))
    best = max(table, key=lambda t: (t[0], -t[1]))
    fitted = SearchParams(w_dense=1.0, w_lexical=best[1], candidates=base.candidates)
    record = {
        "objective": "mean over query sets of hybrid MRR@10",
        "queries": {name: len(qs) for name, qs in sets.items()},
        "grid": {f"{w:g}": round(obj, 4) for obj, w, _ in table},
        "best": round(best[0], 4),
    }
    return fitted, record


def fts_size(db: Path) -> dict[str, Any]:
    """Bytes of ``items.sqlite`` with its FTS index and without it (a vacuumed copy, dropped)."""
    with tempfile.TemporaryDirectory() as tmp:
        copy = Path(tmp) / "items.sqlite"
        shutil.copyfile(db, copy)
        con = sqlite3.connect(copy)
        try:
            con.execute(f"DROP TABLE IF EXISTS {FTS_TABLE}")
            con.commit()
            con.execute("VACUUM")
        finally:
            con.close()
        without = copy.stat().st_size
    with_fts = db.stat().st_size
    return {
        "sqlite_bytes": with_fts,
        "sqlite_bytes_without_fts": without,
        "fts_bytes": with_fts - without,
        "fts_ratio": round((with_fts - without) / max(1, without), 3),
    }


def evaluate_search(
    ds: Dataset,
    catalog_dir: str | Path,
    encoder: TextEncoder,
    *,
    n_queries: int = 200,
    seed: int = 0,
    params: SearchParams | None = None,
    latency_runs: int = 30,
) -> tuple[dict[str, Any], list[str]]:
    """The ``search`` report for a catalog folder (``write_catalog_dir``'s) made from ``ds``.

    Without ``params``, the fusion weight is fitted (:func:`fit_params`) on query sets drawn with
    seed + 1; the report's ``fusion`` entry is then the manifest's ``search`` entry to ship.

    Returns:
        (the dict for quality.json's ``search`` key, Markdown lines for quality.md).
    """
    root = Path(catalog_dir)
    dim = int(np.load(root / FILES["rows"], mmap_mode="r").shape[1])
    cat = Catalog(root, version=0, dim=dim)
    fit = None
    if params is None and cat.lexical.available:
        params, fit = fit_params(cat, query_sets(ds, n=n_queries, seed=seed + 1), encoder, base=SearchParams())
    p = params or SearchParams()
    sets = query_sets(ds, n=n_queries, seed=seed)
    report: dict[str, Any] = {
        "k": K,
        "seed": seed,
        "fusion": p.to_manifest(),
        "fit": fit,
        "lexical": {"available": cat.lexical.available, "reason": cat.lexical.reason, "typos": "vocabulary"},
        "sets": {},
        "queries": {name: len(qs) for name, qs in sets.items()},
    }
    for name, qs in sets.items():
        texts = [clean_query(q) for q, _ in qs]
        vecs = encoder.encode(texts)
        hits = [h for _, h in qs]
        report["sets"][name] = {}
        for mode in MODES:
            out = [ranked(cat, v, t, K, None, mode=mode, params=p)[0] for t, v in zip(texts, vecs, strict=True)]
            report["sets"][name][mode] = _metrics(out, hits)
    lat_q = [q for q, _ in sets["exact_title"][: max(1, latency_runs)]]
    report["latency_ms"] = {}
    for mode in MODES:
        for q in lat_q[:3]:  # warm-up: the vocabulary, the encoder's first runs
            search(cat, encoder, q, K, mode=mode, params=p)
        times = []
        for q in lat_q:
            t0 = time.perf_counter()
            search(cat, encoder, q, K, mode=mode, params=p)
            times.append((time.perf_counter() - t0) * 1e3)
        report["latency_ms"][mode] = {
            "p50": round(float(np.percentile(times, 50)), 3),
            "p95": round(float(np.percentile(times, 95)), 3),
        }
    report["size"] = fts_size(root / FILES["items"])
    report["n_items"] = len(cat)
    report["targets"] = [
        {
            "set": s,
            "metric": m,
            "target": t,
            "hybrid": report["sets"][s]["hybrid"][m],
            "met": report["sets"][s]["hybrid"][m] >= t,
        }
        for s, m, t in TARGETS
    ]
    report["hybrid_at_least_dense"] = all(
        report["sets"][s]["hybrid"][m] >= report["sets"][s]["dense"][m]
        for s in report["sets"]
        for m in ("recall@1", "recall@10", "mrr@10")
    )
    return report, render_search(report)


def render_search(r: dict[str, Any]) -> list[str]:
    """quality.md's search section."""
    lines = [
        "",
        f"## Search ({r['n_items']:,} items; query sets from the catalog, seed {r['seed']})",
        "",
        "| query set | queries | mode | Recall@1 | Recall@10 | MRR@10 |",
        "| :--- | ---: | :--- | ---: | ---: | ---: |",
    ]
    for name, modes in r["sets"].items():
        for mode, m in modes.items():
            lines.append(
                f"| {name} | {r['queries'][name]:,} | {mode} | {m['recall@1']:.3f} | {m['recall@10']:.3f} | "
                f"{m['mrr@10']:.3f} |"
            )
    lat = ", ".join(f"{mode} p50 {v['p50']:.2f} ms / p95 {v['p95']:.2f} ms" for mode, v in r["latency_ms"].items())
    size = r["size"]
    f = r["fusion"]
    lines += [
        "",
        f"Fusion: score = {f['w_dense']:g} · cosine + {f['w_lexical']:g} · BM25 / best BM25 over "
        f"{f['candidates']} dense ∪ {f['candidates']} lexical candidates"
        + (f" (w_lexical fitted on other query sets, seed {r['seed'] + 1})" if r.get("fit") else "")
        + "; typos corrected against the catalog's vocabulary.",
        f"Latency end to end (text in, items out; 1 thread, this machine): {lat}.",
        f"FTS index: {size['fts_bytes'] / 1e6:.2f} MB, {size['fts_ratio']:.2f}× the catalog SQLite without it "
        f"({size['sqlite_bytes_without_fts'] / 1e6:.2f} MB).",
    ]
    if not r["lexical"]["available"]:
        lines.append(f"**Lexical search unavailable ({r['lexical']['reason']}): hybrid is dense-only.**")
    for t in r["targets"]:
        if not t["met"]:
            lines.append(
                f"**Search target missed: {t['set']} hybrid {t['metric']} {t['hybrid']:.3f} < {t['target']}.**"
            )
    if not r["hybrid_at_least_dense"]:
        lines.append("**Search: hybrid is below dense-only on some query set and metric.**")
    return lines


def evaluate_rows(
    ds: Dataset,
    rows8: np.ndarray,
    scales: np.ndarray,
    encoder_file: str | Path,
    tokenizer_file: str | Path,
    *,
    max_len: int,
    seed: int = 0,
    n_queries: int = 200,
) -> dict[str, Any]:
    """:func:`evaluate_search` on a temporary catalog folder written from the bundle's rows the way
    the bundle's is (``write_catalog_dir``, so with the same FTS index), with the bundle's encoder:
    the export's report before it signs. Returns the dict for quality.json's ``search`` key."""
    from shelfrank.device.catalog_files import CatalogData, write_catalog_dir

    items = [{**ds.catalog.record(i), "popularity": 0.0} for i in range(len(ds.catalog))]
    enc = TextEncoder(encoder_file, tokenizer_file, max_len=max_len, threads=1)
    with tempfile.TemporaryDirectory(prefix="shelfrank-search-") as tmp:
        write_catalog_dir(tmp, CatalogData(items, rows8, np.asarray(scales, np.float32)), fsync=False)
        report, _ = evaluate_search(ds, tmp, enc, n_queries=n_queries, seed=seed)
    return report
