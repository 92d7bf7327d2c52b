"""Search (device/search.py, device/lexical.py): the fused order against a slow pure-Python
reference (BM25 included), bad input, the dense-only fallbacks, and the Recommender's modes."""

from __future__ import annotations

import logging
import math
import re
import sqlite3
import time

import numpy as np
import pytest

from shelfrank.device import lexical as lx
from shelfrank.device import search as srch
from shelfrank.device.catalog import Catalog
from shelfrank.device.catalog_files import CatalogData, write_catalog_dir
from shelfrank.device.kernel import quantize_rows
from shelfrank.errors import InputError

DIM = 8
WORDS = ["aurora", "quantum", "espresso", "grinder", "nimbus", "trail", "tent", "kestrel", "wireless", "controller"]
WORDS += ["harbor", "classic", "running", "socks", "tundra", "headlamp", "orange", "black", "pro", "max"]


class FakeEncoder:
    """A deterministic stand-in for the text encoder: a unit vector seeded by the text."""

    dim = DIM

    def encode(self, texts):
        out = []
        for t in texts:
            rng = np.random.default_rng(sum(map(ord, t)) % 10_007)
            v = rng.normal(size=DIM)
            out.append(v / np.linalg.norm(v))
        return np.asarray(out, np.float32)


def _items(n: int, seed: int = 0) -> list[dict]:
    rng = np.random.default_rng(seed)
    brands = ["Aurora", "Nimbus", "Kestrel", "Harbor", None]
    cats = ["Kitchen", "Outdoor", "Controllers", None]
    items = []
    for i in range(n):
        words = rng.choice(WORDS, size=int(rng.integers(2, 6)), replace=True)
        items.append(
            dict(
                item_id=f"I{i}",
                title=" ".join(w.capitalize() for w in words) + f" {i % 7}",
                category=cats[i % len(cats)],
                brand=brands[i % len(brands)],
                price=float(10 + i),
                in_stock=i % 3 != 0,
                popularity=0.0,
            )
        )
    items[5]["title"] = items[6]["title"]  # identical titles: a tie for BM25, split by the cosine
    return items


def _write(root, items, seed: int = 0) -> Catalog:
    rng = np.random.default_rng(seed)
    vecs = rng.normal(size=(len(items), DIM)).astype(np.float32)
    vecs /= np.linalg.norm(vecs, axis=1, keepdims=True)
    rows, scales = quantize_rows(vecs)
    write_catalog_dir(root, CatalogData(items, rows, scales.astype(np.float32)), fsync=False)
    return Catalog(root, version=1, dim=DIM)


@pytest.fixture()
def cat(tmp_path) -> Catalog:
    return _write(tmp_path / "cat", _items(40))


# ---- a slow reference ----------------------------------------------------------------------------


def _ref_bm25(items: list[dict], words: list[str], prefix_last: bool, any_word: bool = False) -> dict[int, float]:
    """FTS5's bm25() (k1 = 1.2, b = 0.75, column weights), score = −bm25 > 0, for every row holding
    every phrase of ``words`` (``any_word``: any of them; the last one as a prefix when asked)."""
    cols = [[lx.terms(it.get(c) or "") for c in ("title", "brand", "category")] for it in items]

    def hits(row: int, i: int) -> list[int]:
        w = words[i]
        if prefix_last and i == len(words) - 1:
            return [sum(t.startswith(w) for t in col) for col in cols[row]]
        return [col.count(w) for col in cols[row]]

    n = len(items)
    avgdl = sum(len(t) for c in cols for t in c) / n
    idf = []
    for i in range(len(words)):
        n_hit = sum(1 for r in range(n) if sum(hits(r, i)))
        v = math.log((n - n_hit + 0.5) / (n_hit + 0.5))
        idf.append(v if v > 0 else 1e-6)
    out = {}
    for r in range(n):
        per = [hits(r, i) for i in range(len(words))]
        if not (any if any_word else all)(sum(h) for h in per):
            continue
        dl = sum(len(t) for t in cols[r])
        s = 0.0
        for i, h in enumerate(per):
            f = sum(wt * x for wt, x in zip(lx.COLUMN_WEIGHTS, h, strict=True))
            s += idf[i] * f * 2.2 / (f + 1.2 * (0.25 + 0.75 * dl / avgdl))
        out[r] = s
    return out


def _ref_search(cat: Catalog, items, text, k, mask, p, enc, user=None) -> list[tuple[int, float]]:
    """The fused ranking recomputed from its definition with every row a candidate (candidates ≥ N);
    ``user``: a personalised search's user vector (+ w_user · (w_dense + w_lexical) · its cosine to each row)."""
    text = srch.clean_query(text)
    q = enc.encode([text])[0].astype(np.float64)
    words, prefix = srch.query_words(text, cat.lexical)
    allowed = [r for r in range(len(items)) if mask is None or mask[r]]
    lex: dict[int, float] = {}
    if words:
        for r, s in _ref_bm25(items, words, prefix).items():
            lex[r] = s
        if len(words) > 1 and len(lex) < p.candidates:
            rare = srch._rare(words, cat.lexical.vocabulary(), len(items))
            pre = bool(rare) and prefix and rare[-1] == words[-1]
            for r, s in (_ref_bm25(items, rare, pre, any_word=True) if rare else {}).items():
                lex.setdefault(r, s)
    lex = {r: s for r, s in lex.items() if r in allowed}
    top = max(lex.values(), default=0.0)
    scored = []
    for r in allowed:
        v = cat.rows[r].astype(np.float64) * float(cat.scales[r])
        f = p.w_lexical * (max(lex.get(r, 0.0), 0.0) / top if top > 0 else 0.0)
        personal = (
            0.0 if user is None else p.w_user * (p.w_dense + p.w_lexical) * float(v @ np.asarray(user, np.float64))
        )
        scored.append((-(p.w_dense * float(v @ q) + f + personal), r))
    scored.sort()
    return [(r, -s) for s, r in scored[:k]]


@pytest.mark.parametrize(
    "text",
    [
        "Aurora Quantum Espresso",
        "quantum grinder",
        "espreso grinder",  # a dropped letter
        "nimbus trial tent",  # an adjacent swap
        "kestrel wirelesss",  # a doubled letter
        "headlamq",  # a substitution
        "Harbor Cla",  # still typing
        "socks 3",
        "Aurora",
        "zzz qqq",  # nothing lexical: the dense order
    ],
)
@pytest.mark.parametrize("where", [None, {"in_stock": True}, {"brand": ["Nimbus", "Aurora"], "max_price": 40}])
@pytest.mark.parametrize("k", [1, 5, 60])
def test_fused_order_equals_a_slow_reference(cat, text, where, k):
    items = _items(40)
    p = srch.SearchParams(w_dense=1.0, w_lexical=0.7, candidates=100)
    enc = FakeEncoder()
    rows, scores = srch.search(cat, enc, text, k, where=where, params=p)
    want = _ref_search(cat, items, text, k, cat.mask(where), p, enc)
    assert rows.tolist() == [r for r, _ in want]
    np.testing.assert_allclose(scores, [s for _, s in want], rtol=1e-4, atol=1e-5)
    allowed = len(items) if where is None else int(cat.mask(where).sum())
    assert len(rows) == min(k, allowed)


def test_lexical_scores_are_fts5_bm25(cat):
    items = _items(40)
    for words in (["aurora"], ["quantum", "grinder"], ["socks", "3"], ["tent", "nimbus", "trail"]):
        got = dict(cat.lexical.query(words, limit=None))
        want = _ref_bm25(items, words, False)
        assert set(got) == set(want)
        for r, s in want.items():
            assert got[r] == pytest.approx(s, rel=1e-6)


@pytest.mark.parametrize("prefix", [False, True])
def test_scores_made_here_equal_fts5s_bm25(cat, monkeypatch, prefix):
    """An all-words query of few rows is scored in Python (lexical.bm25), a larger one by FTS5's
    bm25(): the two give the same rows and scores, prefix queries included."""
    queries = (["aurora"], ["quantum", "grinder"], ["socks", "3"], ["tent", "nimbus", "tr"], ["c"], ["harbor", "cla"])
    here = {tuple(w): cat.lexical.query(w, limit=None, prefix_last=prefix) for w in queries}
    monkeypatch.setattr(lx, "OWN_SCORE_MAX_ROWS", 0)  # every query to bm25()
    for w in queries:
        fts = cat.lexical.query(w, limit=None, prefix_last=prefix)
        assert [r for r, _ in here[tuple(w)]] == [r for r, _ in fts], w
        np.testing.assert_allclose([s for _, s in here[tuple(w)]], [s for _, s in fts], rtol=1e-9)
    assert any(here.values())


def test_diacritics_fold_as_the_fts_index_folds_them(tmp_path, monkeypatch):
    items = _items(12)
    items[3]["title"] = "Pokémon Café Édition"
    items[4]["title"] = "Pokemon Cafe Edition Deluxe"
    c = _write(tmp_path / "cat", items)
    odd = ["Pokémon", "CAFÉ", "Ñandú", "Tiếng", "Việt", "İstanbul", "Łódź", "ſtraße", "Ǿ", "Ελλάδα", "서울", "ﬁne"]
    con = sqlite3.connect(":memory:")
    con.execute(f"CREATE VIRTUAL TABLE t USING fts5(x, tokenize='{lx.TOKENIZE}')")
    con.executemany("INSERT INTO t VALUES (?)", [(w,) for w in odd])
    con.execute("CREATE VIRTUAL TABLE v USING fts5vocab(t, row)")
    assert sorted(t for w in odd for t in lx.terms(w)) == sorted(t for (t,) in con.execute("SELECT term FROM v"))
    for text in ("pokemon cafe", "Pokémon Café"):
        got = c.lexical.query(lx.terms(text), limit=None)
        assert [r for r, _ in got] == [3, 4]  # both hold both words; the shorter title first
        monkeypatch.setattr(lx, "OWN_SCORE_MAX_ROWS", 0)
        np.testing.assert_allclose([s for _, s in got], [s for _, s in c.lexical.query(lx.terms(text), limit=None)])
        monkeypatch.undo()


def test_the_any_word_query_keeps_the_rarest_words_within_its_budget(monkeypatch):
    monkeypatch.setattr(srch, "ANY_WORD_MAX_DOCS", 1000)
    vocab = {"a": 10, "b": 300, "c": 600, "d": 900, "e": 5000}
    n = 1_000_000  # share cap 20,000: the budget binds
    assert srch._rare(["e", "d", "c", "b", "a"], vocab, n) == ["c", "b", "a"]  # 10 + 300 + 600 <= 1000
    assert srch._rare(["e", "d"], vocab, n) == ["d"]
    assert srch._rare(["e"], vocab, n) == []  # nothing rare enough: no any-word query
    assert srch._rare(list("abcdefghij"), {}, n) == list("abcdefgh")  # held by none: MAX_OR_TERMS


def test_lexical_mode_puts_all_word_matches_first_with_decreasing_scores(cat):
    rows, scores = srch.search(cat, None, "quantum grinder socks", 40, mode="lexical")
    assert np.all(np.diff(scores) <= 0)
    all_words = set(_ref_bm25(_items(40), ["quantum", "grinder", "socks"], False))
    n = len(all_words)
    assert set(rows[:n].tolist()) == all_words


def test_ties_go_to_the_lower_row(cat):
    rows, scores = srch.fuse(
        np.array([3, 7, 9]), np.zeros(3, np.float32), np.zeros(3, np.float32), srch.SearchParams(), 3
    )
    assert rows.tolist() == [3, 7, 9] and scores.tolist() == [0, 0, 0]


def test_an_out_of_stock_item_is_found_unless_where_says_otherwise(cat):
    items = _items(40)
    row = next(i for i, it in enumerate(items) if not it["in_stock"] and i not in (5, 6))
    title = items[row]["title"]
    assert row in srch.search(cat, None, title, 10, mode="lexical")[0].tolist()
    assert row in srch.search(cat, FakeEncoder(), title, 10)[0].tolist()
    assert row not in srch.search(cat, FakeEncoder(), title, 10, where={"in_stock": True})[0].tolist()


@pytest.mark.parametrize("typo", ["espreso", "esspresso", "epsresso", "espresdo", "espresso"])
def test_one_typo_finds_the_word(cat, typo):
    words, _ = srch.query_words(f"{typo} ", cat.lexical)
    assert words == ["espresso"]


def test_a_word_still_being_typed_matches_as_a_prefix(cat):
    words, prefix = srch.query_words("harbor classi", cat.lexical)
    assert words == ["harbor", "classi"] and prefix
    rows, _ = srch.search(cat, None, "harbor classi", 40, mode="lexical")
    items = _items(40)
    both = [
        r
        for r in range(40)
        if "classic" in lx.terms(items[r]["title"]) and "harbor" in lx.terms(f"{items[r]['title']} {items[r]['brand']}")
    ]
    assert both and sorted(rows[: len(both)].tolist()) == both
    words, prefix = srch.query_words("harbor classi ", cat.lexical)  # a space: the word is complete
    assert not prefix and words == ["harbor", "classic"]


# ---- bad input -------------------------------------------------------------------------------------


@pytest.mark.parametrize("text", ["", "   ", "\n\t ", "\x00\x01"])
def test_empty_or_whitespace_text_is_a_typed_error(cat, text):
    with pytest.raises(InputError, match="non-empty string"):
        srch.search(cat, FakeEncoder(), text, 5)
    assert issubclass(InputError, ValueError)


@pytest.mark.parametrize("text", [b"aurora", None, 3, ["aurora"]])
def test_text_that_is_not_a_string_is_a_typed_error(cat, text):
    with pytest.raises(InputError, match="non-empty string"):
        srch.search(cat, FakeEncoder(), text, 5)


@pytest.mark.parametrize(
    "text",
    [
        '"aurora',
        'aurora"',
        '""',
        "aurora*",
        "*",
        "NEAR(aurora quantum, 2)",
        "aurora NEAR quantum",
        "-aurora",
        "aurora -quantum",
        "(aurora OR quantum",
        "title:aurora",
        "brand : Nimbus",
        "aurora AND NOT quantum",
        "^aurora + {quantum}",
        "'; DROP TABLE items; --",
        "aurora'quantum",
    ],
)
def test_fts_syntax_is_plain_words(cat, text):
    plain = " ".join(lx.terms(text))
    for mode in srch.MODES:
        rows, _ = srch.search(cat, FakeEncoder(), text, 10, mode=mode)
        if mode == "lexical" and plain:
            want, _ = srch.search(cat, FakeEncoder(), plain + (" " if not text[-1].isalnum() else ""), 10, mode=mode)
            assert rows.tolist() == want.tolist()
    assert len(Catalog(cat.root, version=1, dim=DIM)) == 40  # nothing was dropped


def test_long_text_is_cut_before_tokenizing(cat, monkeypatch):
    seen = []
    real = lx.terms
    monkeypatch.setattr(srch, "terms", lambda t: seen.append(len(t)) or real(t))
    text = "aurora quantum " * 60_000  # 900 KB
    t0 = time.perf_counter()
    for mode in srch.MODES:
        srch.search(cat, FakeEncoder(), text, 5, mode=mode)
    assert time.perf_counter() - t0 < 1.0
    assert max(seen) <= srch.MAX_QUERY_CHARS
    words, _ = srch.query_words(" ".join(f"w{i}x" for i in range(5000)), cat.lexical)
    assert len(words) <= srch.MAX_TERMS


@pytest.mark.parametrize(
    "text", ["aurora \udcff quantum", "\ud800", "aurora\x00quantum\x1b[2J", "grinder \u200b\ufeff"]
)
def test_undecodable_and_control_characters_are_handled(cat, text):
    for mode in srch.MODES:
        srch.search(cat, FakeEncoder(), text, 5, mode=mode)
    assert "\x00" not in srch.clean_query("aurora\x00quantum")


def test_bad_k_and_mode_are_typed_errors(cat):
    for k in (0, -1, 1.5, True, None):
        with pytest.raises(InputError, match="k must be a positive integer"):
            srch.search(cat, FakeEncoder(), "aurora", k)
    with pytest.raises(InputError, match="search mode must be one of"):
        srch.search(cat, FakeEncoder(), "aurora", 5, mode="bm25")
    with pytest.raises(InputError, match="needs the text encoder"):
        srch.search(cat, None, "aurora", 5, mode="hybrid")


# ---- fallbacks --------------------------------------------------------------------------------------


def test_dense_only_when_this_sqlite_lacks_fts5(cat, monkeypatch, caplog):
    monkeypatch.setattr(lx, "_probe", lambda con: "SQLite here cannot read the FTS5 index (no such module: fts5)")
    with caplog.at_level(logging.WARNING, logger="shelfrank"):
        c2 = Catalog(cat.root, version=1, dim=DIM)
    assert not c2.lexical.available and "no such module: fts5" in caplog.text
    enc = FakeEncoder()
    for text in ("aurora quantum", "espreso"):
        hybrid = srch.search(c2, enc, text, 10)
        dense = srch.search(c2, enc, text, 10, mode="dense")
        assert hybrid[0].tolist() == dense[0].tolist()
        assert srch.search(c2, enc, text, 10, mode="lexical")[0].tolist() == []


def test_a_catalog_written_without_fts5_is_served_dense_only(tmp_path, monkeypatch, caplog):
    monkeypatch.setattr(lx, "_CREATE", "CREATE VIRTUAL TABLE items_fts USING no_such_module(title)")
    with caplog.at_level(logging.WARNING, logger="shelfrank"):
        c = _write(tmp_path / "c", _items(20))
    assert "catalog written without lexical search" in caplog.text
    assert not c.lexical.available and "no FTS index" in c.lexical.reason
    enc = FakeEncoder()
    assert srch.search(c, enc, "aurora", 5)[0].tolist() == srch.search(c, enc, "aurora", 5, mode="dense")[0].tolist()


def test_the_fts_tables_are_external_content_over_items(cat):
    import sqlite3

    con = sqlite3.connect(cat.root / "items.sqlite")
    try:
        sql = con.execute("SELECT sql FROM sqlite_master WHERE name = 'items_fts'").fetchone()[0]
        cols = [r[1] for r in con.execute("PRAGMA table_info(items_fts)")]
    finally:
        con.close()
    assert "content='items'" in sql and "content_rowid='row'" in sql
    assert "item_id" not in cols
    assert re.search(r"fts5\(title, brand, category", sql)


# ---- the Recommender ------------------------------------------------------------------------------


def test_recommender_search_modes(rec):
    title = rec.catalog.item(42).title
    for mode in srch.MODES:
        got = rec.search(title, k=5, mode=mode)
        assert rec.catalog.item_ids[42] in [r.item_id for r in got], mode
    with pytest.raises(InputError, match="search mode"):
        rec.search(title, k=5, mode="nope")


def test_recommender_lexical_mode_does_not_load_the_encoder(rec):
    rec.search("game", k=3, mode="lexical")
    assert rec.encoder_info["loaded"] is False


def test_search_params_from_the_manifest():
    assert srch.SearchParams.from_manifest(None) == srch.SearchParams()
    p = srch.SearchParams(w_dense=1.0, w_lexical=2.0, candidates=50)
    assert srch.SearchParams.from_manifest(p.to_manifest()) == p
    from shelfrank.errors import BundleError

    for bad in (
        {"kind": "rrf"},
        {"kind": "weighted", "w_lexical": float("nan")},
        {"kind": "weighted", "candidates": 0},
    ):
        with pytest.raises(BundleError):
            srch.SearchParams.from_manifest(bad)


# ---- latency: the FTS queries beside the encoder, prefixes in the any-word query -------------------


def test_fts_queries_overlapped_or_inline_give_the_same_results(cat, monkeypatch):
    import threading

    enc, p = FakeEncoder(), srch.SearchParams(candidates=7)
    texts = ["Aurora Quantum Espresso", "espreso grinder", "Harbor Cla", "zzz qqq"]
    overlapped = [srch.search(cat, enc, t, 5, params=p) for t in texts]
    monkeypatch.setattr(srch._OVERLAP, "slots", threading.BoundedSemaphore(1))
    srch._OVERLAP.slots.acquire()  # every worker busy: each call runs its FTS queries itself
    inline = [srch.search(cat, enc, t, 5, params=p) for t in texts]
    for (r1, s1), (r2, s2) in zip(overlapped, inline, strict=True):
        assert r1.tolist() == r2.tolist()
        np.testing.assert_array_equal(s1, s2)


def test_a_forked_child_searches_with_its_own_workers(cat):
    import multiprocessing

    enc = FakeEncoder()
    want = srch.search(cat, enc, "quantum grinder", 5)[0].tolist()  # the parent's pool has a worker now
    ctx = multiprocessing.get_context("fork")
    with ctx.Pool(1) as pool:
        got = pool.apply_async(_search_rows, (cat.root, "quantum grinder")).get(timeout=60)
    assert got == want


def _search_rows(root, text):
    return srch.search(Catalog(root, version=1, dim=DIM), FakeEncoder(), text, 5)[0].tolist()


def test_a_common_prefix_is_left_out_of_the_any_word_query(cat):
    vocab = {"pictek": 24, "game": 9000, "games": 4000, "gamma": 5}
    assert srch._rare(["pictek", "gam"], vocab, 100_000) == ["pictek", "gam"]  # as a word: held by none
    assert srch._rare(["pictek", "gam"], vocab, 100_000, last_prefix_df=13_005) == ["pictek"]
    words = cat.lexical.vocabulary()
    for p in ("au", "qu", "gr", "zz"):
        held = sum(n for w, n in words.items() if w.startswith(p))
        assert cat.lexical.prefix_docs(p, cap=10**9) == held
        first = next((n for w, n in sorted(words.items()) if w.startswith(p)), 0)
        assert cat.lexical.prefix_docs(p, cap=0) == first  # stops once past the cap
