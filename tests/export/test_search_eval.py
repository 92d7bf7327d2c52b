"""The search-quality report's query sets and figures (export/search_eval.py), without torch."""

from __future__ import annotations

import numpy as np

from shelfrank.export import data as D
from shelfrank.export.search_eval import K, evaluate_search, query_sets, render_search, typo


def _edit_distance(a: str, b: str) -> int:
    """Optimal string alignment distance (an adjacent swap counts as one edit)."""
    d = [[max(i, j) if min(i, j) == 0 else 0 for j in range(len(b) + 1)] for i in range(len(a) + 1)]
    for i in range(1, len(a) + 1):
        for j in range(1, len(b) + 1):
            d[i][j] = min(d[i - 1][j] + 1, d[i][j - 1] + 1, d[i - 1][j - 1] + (a[i - 1] != b[j - 1]))
            if i > 1 and j > 1 and a[i - 1] == b[j - 2] and a[i - 2] == b[j - 1]:
                d[i][j] = min(d[i][j], d[i - 2][j - 2] + 1)
    return d[len(a)][len(b)]


def _dataset(titles, brands=None, cats=None) -> D.Dataset:
    n = len(titles)
    cat = D.Catalog(
        [f"I{i}" for i in range(n)],
        list(titles),
        cats or [None] * n,
        brands or [None] * n,
        np.full(n, np.nan),
        np.ones(n, bool),
    )
    return D.Dataset("t", cat, D.Events(np.zeros(0, np.int32), np.zeros(0, np.int32), np.zeros(0, np.int8)), [])


def test_a_typo_is_one_edit(tmp_path):
    rng = np.random.default_rng(0)
    for w in ["grinder", "Espresso", "headlamp", "quantum", "abcde"] * 40:
        t = typo(w, rng)
        assert t != w and _edit_distance(t, w) == 1


def test_query_sets_are_seeded_and_hits_share_the_title():
    titles = [f"Aurora Quantum Grinder {i % 30}" for i in range(60)] + ["Nimbus Tent"]
    ds = _dataset(titles, brands=["Aurora"] * 60 + ["Nimbus"], cats=["Kitchen"] * 61)
    a, b = query_sets(ds, n=20, seed=3), query_sets(ds, n=20, seed=3)
    assert a == b and a != query_sets(ds, n=20, seed=4)
    for q, hits in a["exact_title"]:
        assert sorted(hits) == [r for r, t in enumerate(titles) if t == q] and len(hits) in (1, 2)
    for q, hits in a["word_dropped"]:
        assert len(q.split()) == len(titles[hits[0]].split()) - 1
    for q, hits in a["one_typo"]:
        diff = [(x, y) for x, y in zip(q.split(), titles[hits[0]].split(), strict=False) if x != y]
        assert len(diff) == 1 and _edit_distance(*diff[0]) == 1 and len(diff[0][1]) >= 5
    assert {q for q, _ in a["brand"]} == {"Aurora", "Nimbus"} and a["category"] == [("Kitchen", list(range(61)))]


def test_the_report_on_a_tiny_catalog(tmp_path):
    from shelfrank.device.catalog_files import CatalogData, write_catalog_dir
    from shelfrank.device.kernel import quantize_rows

    rng = np.random.default_rng(1)
    words = ["aurora", "quantum", "espresso", "grinder", "nimbus", "trail", "tent", "kestrel", "wireless", "max"]
    titles = [" ".join(rng.choice(words, 4)).title() + f" {i}" for i in range(50)]
    ds = _dataset(titles, brands=["Aurora", "Nimbus"] * 25)

    class Enc:
        def encode(self, texts):
            v = np.stack([np.random.default_rng(len(t)).normal(size=8) for t in texts]).astype(np.float32)
            return v / np.linalg.norm(v, axis=1, keepdims=True)

    vecs = Enc().encode(titles)
    rows, scales = quantize_rows(vecs)
    items = [{**ds.catalog.record(i), "popularity": 0.0} for i in range(50)]
    write_catalog_dir(tmp_path / "c", CatalogData(items, rows, scales.astype(np.float32)), fsync=False)
    r, lines = evaluate_search(ds, tmp_path / "c", Enc(), n_queries=30, latency_runs=5)
    assert r["k"] == K and set(r["sets"]) == {"exact_title", "word_dropped", "one_typo", "brand"}
    for modes in r["sets"].values():
        assert set(modes) == {"hybrid", "dense", "lexical"}
        for m in modes.values():
            assert 0 <= m["recall@1"] <= m["recall@10"] <= 1 and m["recall@1"] <= m["mrr@10"] <= m["recall@10"]
    assert r["sets"]["exact_title"]["lexical"]["recall@1"] == 1.0
    assert r["fit"] is not None and r["fusion"]["kind"] == "weighted"
    assert r["size"]["fts_bytes"] > 0 and set(r["latency_ms"]) == {"hybrid", "dense", "lexical"}
    assert lines == render_search(r) and any("| exact_title |" in x for x in lines)


def test_manifest_declares_the_search_entry():
    from shelfrank.device.formats import Manifest

    assert "search" in Manifest.__struct_fields__
