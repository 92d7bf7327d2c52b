"""Export input loading (export/data.py), the demo shop, and offline evaluation (export/evaluate.py).

Fast: no torch except the two tiny tower-budget tests (seconds); the one ``data`` test reads the
Amazon Video Games copy.
"""

from __future__ import annotations

import json
import logging
import re
from pathlib import Path

import numpy as np
import pytest

from shelfrank.errors import ExportValidationError, ShelfrankError
from shelfrank.export.data import (
    ACTION_IDS,
    ACTIONS,
    Dataset,
    Events,
    leave_one_out,
    load_amazon_games,
    load_events,
    load_files,
    load_items,
    make_split,
    parse_ts,
    time_split,
)
from shelfrank.export.demo_shop import make_demo_shop
from shelfrank.export.evaluate import (
    evaluate,
    item_knn,
    item_similarity,
    popularity,
    popularity_scores,
    random_scores,
    target_ranks,
)

# ---- helpers ----------------------------------------------------------------------------------


def write_csv(path: Path, header: list[str], rows: list[list[object]]) -> Path:
    lines = [",".join(header)] + [",".join("" if v is None else str(v) for v in r) for r in rows]
    path.write_text("\n".join(lines) + "\n", encoding="utf-8")
    return path


def write_jsonl(path: Path, recs: list[dict]) -> Path:
    path.write_text("".join(json.dumps(r) + "\n" for r in recs), encoding="utf-8")
    return path


ITEMS = [
    ["A", "Alpha console", "Consoles", "Nimbus", 300, 1],
    ["B", "Beta pad", "Controllers", "", "", 0],
    ["C", "Gamma game", "Games", "Orbit", 40.5, "true"],
]
ITEM_HEADER = ["item_id", "title", "category", "brand", "price", "in_stock"]


@pytest.fixture
def items_csv(tmp_path: Path) -> Path:
    return write_csv(tmp_path / "items.csv", ITEM_HEADER, ITEMS)


def expect_error(fn, *, file: Path, line: int | None, field: str | None):
    """Call fn; it must raise ExportValidationError naming the file, the line and the field."""
    with pytest.raises(ExportValidationError) as ei:
        fn()
    msg = str(ei.value)
    assert str(file) in msg, msg
    if line is not None:
        assert re.search(rf"{re.escape(str(file))}:{line}\b", msg), msg
    if field is not None:
        assert field in msg, msg
    assert isinstance(ei.value, ValueError) and isinstance(ei.value, ShelfrankError)
    return msg


# ---- load_items / load_events: good input --------------------------------------------------------


def test_load_items_csv_and_jsonl_agree(tmp_path: Path, items_csv: Path):
    recs = [dict(zip(ITEM_HEADER, r, strict=True)) for r in ITEMS]
    recs[1]["brand"] = None
    recs[1]["price"] = None
    recs[1]["in_stock"] = False
    recs[2]["in_stock"] = True
    jl = write_jsonl(tmp_path / "items.jsonl", recs)
    for cat in (load_items(items_csv), load_items(jl)):
        assert cat.item_ids == ["A", "B", "C"]
        assert cat.titles == ["Alpha console", "Beta pad", "Gamma game"]
        assert cat.category == ["Consoles", "Controllers", "Games"]
        assert cat.brand == ["Nimbus", None, "Orbit"]
        assert cat.price[0] == 300 and np.isnan(cat.price[1]) and cat.price[2] == 40.5
        assert cat.in_stock.tolist() == [True, False, True]
        assert cat.index() == {"A": 0, "B": 1, "C": 2}
        assert cat.record(1)["price"] is None


def test_load_items_tolerates_bom(tmp_path: Path):
    p = tmp_path / "items.csv"
    p.write_bytes(b"\xef\xbb\xbfitem_id,title\nA,Alpha\n")
    assert load_items(p).item_ids == ["A"]


def test_load_events_file_order_and_ts_order(tmp_path: Path, items_csv: Path):
    cat = load_items(items_csv)
    no_ts = write_csv(
        tmp_path / "ev.csv",
        ["user_id", "item_id", "action"],
        [["u1", "B", "view"], ["u2", "A", "Purchase"], ["u1", "C", "cart"]],
    )
    ev, users = load_events(no_ts, cat)
    assert users == ["u1", "u2"] and ev.ts is None
    assert ev.user.tolist() == [0, 1, 0] and ev.item.tolist() == [1, 0, 2]
    assert ev.action.tolist() == [ACTION_IDS["view"], ACTION_IDS["purchase"], ACTION_IDS["cart"]]
    with_ts = write_jsonl(
        tmp_path / "ev.jsonl",
        [
            {"user_id": "u1", "item_id": "B", "action": "view", "ts": 30},
            {"user_id": "u2", "item_id": "A", "action": "click", "ts": 10},
            {"user_id": "u1", "item_id": "C", "action": "cart", "ts": 10},  # tie: file order
        ],
    )
    ev, _ = load_events(with_ts, cat)
    assert ev.ts.tolist() == [10, 10, 30]
    assert ev.item.tolist() == [0, 2, 1]


def test_unknown_items_skipped_with_one_counted_warning(tmp_path: Path, items_csv: Path, caplog):
    cat = load_items(items_csv)
    p = write_csv(
        tmp_path / "ev.csv",
        ["user_id", "item_id", "action"],
        [["u1", "A", "view"], ["u1", "ZZ", "view"], ["u2", "YY", "cart"], ["u2", "C", "click"]],
    )
    with caplog.at_level(logging.WARNING, logger="shelfrank.export.data"):
        ev, _ = load_events(p, cat)
    assert len(ev) == 2 and ev.item.tolist() == [0, 2]
    warnings = [r for r in caplog.records if r.levelno == logging.WARNING]
    assert len(warnings) == 1
    assert "skipped 2 event(s)" in warnings[0].getMessage() and str(p) in warnings[0].getMessage()


# ---- load_items / load_events: bad input -------------------------------------------------------


def test_items_missing_column(tmp_path: Path):
    p = write_csv(tmp_path / "items.csv", ["item_id", "name"], [["A", "Alpha"]])
    expect_error(lambda: load_items(p), file=p, line=2, field="title")
    j = write_jsonl(tmp_path / "items.jsonl", [{"item_id": "A", "title": "x"}, {"title": "y"}])
    expect_error(lambda: load_items(j), file=j, line=2, field="item_id")


def test_items_missing_column_with_overlong_row(tmp_path: Path):
    p = tmp_path / "items.csv"
    p.write_text("item_id,name\nA,Alpha,extra\n", encoding="utf-8")
    expect_error(lambda: load_items(p), file=p, line=2, field="title")


def test_items_empty_title(tmp_path: Path):
    p = write_csv(tmp_path / "items.csv", ["item_id", "title"], [["A", "Alpha"], ["B", "  "]])
    expect_error(lambda: load_items(p), file=p, line=3, field="title")


def test_items_duplicate_id(tmp_path: Path):
    p = write_csv(tmp_path / "items.csv", ["item_id", "title"], [["A", "Alpha"], ["B", "Beta"], ["A", "Again"]])
    msg = expect_error(lambda: load_items(p), file=p, line=4, field="item_id")
    assert "duplicate" in msg and "'A'" in msg


@pytest.mark.parametrize("field,value", [("price", "cheap"), ("price", "-1"), ("in_stock", "maybe")])
def test_items_bad_typed_fields(tmp_path: Path, field: str, value: str):
    row = {"item_id": "B", "title": "Beta", "price": "", "in_stock": ""}
    row[field] = value
    p = write_csv(tmp_path / "items.csv", list(row), [["A", "Alpha", "", ""], list(row.values())])
    expect_error(lambda: load_items(p), file=p, line=3, field=field)


def test_items_non_utf8_csv_names_the_line(tmp_path: Path):
    p = tmp_path / "items.csv"
    body = "item_id,title\n" + "".join(f"I{i},Title {i}\n" for i in range(3000))  # > one decode chunk
    p.write_bytes(body.encode() + b"BAD,Caf\xe9 latte\n")
    msg = expect_error(lambda: load_items(p), file=p, line=3002, field=None)
    assert "UTF-8" in msg


def test_items_non_utf8_jsonl_names_the_line(tmp_path: Path):
    p = tmp_path / "items.jsonl"
    p.write_bytes(b'{"item_id": "A", "title": "ok"}\n{"item_id": "B", "title": "Caf\xe9"}\n')
    msg = expect_error(lambda: load_items(p), file=p, line=2, field=None)
    assert "UTF-8" in msg


def test_items_bad_json_and_unknown_format(tmp_path: Path):
    p = tmp_path / "items.jsonl"
    p.write_text('{"item_id": "A", "title": "ok"}\n{"item_id": \n', encoding="utf-8")
    expect_error(lambda: load_items(p), file=p, line=2, field=None)
    x = tmp_path / "items.xlsx"
    x.write_bytes(b"")
    expect_error(lambda: load_items(x), file=x, line=None, field=None)
    expect_error(lambda: load_items(tmp_path / "nope.csv"), file=tmp_path / "nope.csv", line=None, field=None)


def test_empty_items_and_empty_events(tmp_path: Path, items_csv: Path):
    p = write_csv(tmp_path / "no_items.csv", ["item_id", "title"], [])
    msg = expect_error(lambda: load_items(p), file=p, line=None, field=None)
    assert "no items" in msg
    cat = load_items(items_csv)
    e = write_csv(tmp_path / "ev.csv", ["user_id", "item_id", "action"], [])
    assert "no usable events" in expect_error(lambda: load_events(e, cat), file=e, line=None, field=None)


def test_events_all_unknown_is_empty(tmp_path: Path, items_csv: Path, caplog):
    cat = load_items(items_csv)
    e = write_csv(tmp_path / "ev.csv", ["user_id", "item_id", "action"], [["u", "ZZ", "view"]])
    with caplog.at_level(logging.WARNING, logger="shelfrank.export.data"):
        expect_error(lambda: load_events(e, cat), file=e, line=None, field=None)


def test_events_bad_action(tmp_path: Path, items_csv: Path):
    cat = load_items(items_csv)
    e = write_csv(tmp_path / "ev.csv", ["user_id", "item_id", "action"], [["u", "A", "view"], ["u", "B", "wishlist"]])
    msg = expect_error(lambda: load_events(e, cat), file=e, line=3, field="action")
    assert "wishlist" in msg


def test_events_missing_column_and_empty_user(tmp_path: Path, items_csv: Path):
    cat = load_items(items_csv)
    e = write_csv(tmp_path / "ev.csv", ["user_id", "item_id"], [["u", "A"]])
    expect_error(lambda: load_events(e, cat), file=e, line=2, field="action")
    e2 = write_csv(tmp_path / "ev2.csv", ["user_id", "item_id", "action"], [["u", "A", "view"], ["", "A", "view"]])
    expect_error(lambda: load_events(e2, cat), file=e2, line=3, field="user_id")


def test_events_ts_on_some_rows_only(tmp_path: Path, items_csv: Path):
    cat = load_items(items_csv)
    e = write_csv(
        tmp_path / "ev.csv",
        ["user_id", "item_id", "action", "ts"],
        [["u", "A", "view", 1], ["u", "B", "view", 2], ["u", "C", "view", ""]],
    )
    expect_error(lambda: load_events(e, cat), file=e, line=4, field="ts")
    e2 = write_csv(
        tmp_path / "ev2.csv",
        ["user_id", "item_id", "action", "ts"],
        [["u", "A", "view", ""], ["u", "B", "view", 5]],
    )
    expect_error(lambda: load_events(e2, cat), file=e2, line=3, field="ts")


@pytest.mark.parametrize("ts", ["soon", "nan", "inf"])
def test_events_bad_ts(tmp_path: Path, items_csv: Path, ts: str):
    cat = load_items(items_csv)
    e = write_csv(
        tmp_path / "ev.csv",
        ["user_id", "item_id", "action", "ts"],
        [["u", "A", "view", 1], ["u", "B", "view", ts]],
    )
    expect_error(lambda: load_events(e, cat), file=e, line=3, field="ts")


def test_load_files_and_sequences_collapse_funnels(tmp_path: Path, items_csv: Path):
    e = write_csv(
        tmp_path / "ev.csv",
        ["user_id", "item_id", "action"],
        [
            ["u", "A", "view"],
            ["u", "A", "cart"],
            ["u", "A", "click"],  # one step, strongest = cart
            ["v", "C", "view"],
            ["u", "B", "view"],
            ["u", "A", "purchase"],
        ],
    )
    ds = load_files(items_csv, e, name="t")
    assert ds.users == ["u", "v"]
    assert ds.sequences() == [[(0, 2), (1, 0), (0, 3)], [(2, 0)]]


# ---- splits ------------------------------------------------------------------------------------


def _dataset(seqs: list[list[int]], ts: list[list[float]] | None = None, n_items: int = 10) -> Dataset:
    from shelfrank.export.data import Catalog

    cat = Catalog(
        [f"I{i}" for i in range(n_items)],
        [f"t{i}" for i in range(n_items)],
        [None] * n_items,
        [None] * n_items,
        np.full(n_items, np.nan),
        np.ones(n_items, bool),
    )
    u = [k for k, s in enumerate(seqs) for _ in s]
    i = [r for s in seqs for r in s]
    ev = Events(np.asarray(u, np.int32), np.asarray(i, np.int32), np.full(len(i), 3, np.int8))
    if ts is not None:
        t = np.asarray([x for s in ts for x in s], np.float64)
        order = np.lexsort((np.arange(len(t)), t))
        ev = Events(ev.user[order], ev.item[order], ev.action[order], t[order])
    return Dataset("t", cat, ev, [f"u{k}" for k in range(len(seqs))])


def test_leave_one_out():
    ds = _dataset([[1, 2, 3, 4], [5, 6], [7, 8, 9]])
    sp = leave_one_out(ds)
    assert sp.kind == "leave-one-out"
    rows = lambda steps: [r for r, _ in steps]  # noqa: E731
    assert [rows(s) for s in sp.train] == [[1, 2], [5, 6], [7]]
    assert [(u, rows(h), t) for u, h, t in sp.valid] == [(0, [1, 2], 3), (2, [7], 8)]
    assert [(u, rows(h), t) for u, h, t in sp.test] == [(0, [1, 2, 3], 4), (2, [7, 8], 9)]
    # no held-out target ever leaks into train
    for u, _, t in sp.test + sp.valid:
        assert t not in rows(sp.train[u])
    assert len(leave_one_out(ds, min_len=5).test) == 0


def test_time_split():
    # global times: quantiles of 20 evenly spaced timestamps
    seqs = [[1, 2, 3, 4, 5, 6, 7, 8, 9, 0], [2, 3, 4, 5, 6, 7, 8, 9, 0, 1]]
    ts = [[float(2 * k) for k in range(10)], [float(2 * k + 1) for k in range(10)]]
    ds = _dataset(seqs, ts)
    sp = time_split(ds, valid_frac=0.2, test_frac=0.2)
    t_test, t_valid = np.quantile(np.arange(20.0), 0.8), np.quantile(np.arange(20.0), 0.6)
    assert sp.kind == "time"
    for u, seq in enumerate(seqs):
        times = ts[u]
        n_train = sum(t < t_valid for t in times)
        assert [r for r, _ in sp.train[u]] == seq[:n_train]
    for cases, lo, hi in ((sp.valid, t_valid, t_test), (sp.test, t_test, np.inf)):
        assert len(cases) == 2
        for u, hist, target in cases:
            k = len(hist)
            assert [r for r, _ in hist] == seqs[u][:k] and target == seqs[u][k]
            assert lo <= ts[u][k] < hi  # the first step of the period is the target
            assert ts[u][k - 1] < lo
    with pytest.raises(ExportValidationError, match="timestamps"):
        time_split(_dataset([[1, 2, 3]]))


# ---- demo shop -----------------------------------------------------------------------------------


@pytest.fixture(scope="module")
def demo() -> Dataset:
    return make_demo_shop(n_items=600, n_users=800, seed=3)


def test_demo_shop_deterministic():
    a, b = (make_demo_shop(n_items=300, n_users=150, seed=3) for _ in range(2))
    assert a.users == b.users
    assert a.catalog.item_ids == b.catalog.item_ids and a.catalog.titles == b.catalog.titles
    assert a.catalog.category == b.catalog.category and a.catalog.brand == b.catalog.brand
    np.testing.assert_array_equal(a.catalog.price, b.catalog.price)
    np.testing.assert_array_equal(a.catalog.in_stock, b.catalog.in_stock)
    for f in ("user", "item", "action", "ts"):
        np.testing.assert_array_equal(getattr(a.events, f), getattr(b.events, f))
    other = make_demo_shop(n_items=300, n_users=150, seed=4)
    assert other.catalog.titles != a.catalog.titles


def test_demo_shop_plausible(demo: Dataset):
    cat, ev = demo.catalog, demo.events
    assert len(cat) == 600 and len(demo.users) == 800
    assert len(set(cat.item_ids)) == len(cat)
    assert set(np.unique(ev.action).tolist()) == set(range(len(ACTIONS)))
    counts = np.bincount(ev.action, minlength=4)
    assert counts[0] > counts[1] > counts[2] > counts[3] > 0  # the funnel narrows
    assert 0.7 < cat.in_stock.mean() < 0.98  # a mix of in and out of stock
    assert cat.in_stock[ev.item[ev.action == ACTION_IDS["purchase"]]].all()  # nobody buys out-of-stock
    assert np.all(np.diff(ev.ts) >= 0)
    assert len(set(cat.category)) >= 10 and all(c for c in cat.category) and all(b for b in cat.brand)
    assert np.all(cat.price > 0)
    lens = [len(s) for s in demo.sequences()]
    assert 10 < np.mean(lens) < 40 and min(lens) >= 3
    # shoppers' logs are interleaved in time, not one after another
    assert (np.diff(ev.user) != 0).sum() > 5 * len(demo.users)


# ---- evaluate ----------------------------------------------------------------------------------


def test_target_ranks_tie_rule():
    s = np.array([[0.5, 0.9, 0.5, 0.1, 0.5]], np.float32)
    # target 2 (0.5): one strictly higher (row 1) + one tie at a lower row (row 0) -> rank 2
    assert target_ranks(s, np.array([2])).tolist() == [2]
    assert target_ranks(s, np.array([0])).tolist() == [1]  # ties at higher rows don't count
    assert target_ranks(s, np.array([4])).tolist() == [3]
    assert target_ranks(s, np.array([1])).tolist() == [0]


def test_evaluate_hand_made_ranks():
    n = 6
    table = np.array(
        [
            [0.9, 0.8, 0.7, 0.6, 0.5, 0.4],  # history {0}: target 2 -> items 1 above -> rank 1
            [0.3, 0.3, 0.3, 0.3, 0.3, 0.3],  # all tied, history {1}: target 4 -> rows 0,2,3 -> rank 3
            [0.0, 0.2, 0.9, 0.9, 0.1, 0.0],  # history {2, 3} masked: target 1 -> rank 0
            [0.5, 0.1, 0.1, 0.1, 0.1, 0.1],  # target 0 in history -> masked -> miss
        ],
        np.float32,
    )
    cases = [(0, [(0, 3)], 2), (1, [(1, 0)], 4), (2, [(2, 0), (3, 1)], 1), (3, [(0, 1)], 0)]
    by_history = {tuple(h): table[i] for i, (_, h, _) in enumerate(cases)}

    def score_fn(histories):
        return np.stack([by_history[tuple(h)] for h in histories])

    r = evaluate(score_fn, cases, n, ks=(1, 2, 4), batch=3)
    ranks = [1, 3, 0, None]
    for k in (1, 2, 4):
        hits = [x is not None and x < k for x in ranks]
        assert r[f"recall@{k}"] == pytest.approx(np.mean(hits))
        nd = [1 / np.log2(x + 2) if h else 0.0 for x, h in zip(ranks, hits, strict=True)]
        assert r[f"ndcg@{k}"] == pytest.approx(np.mean(nd))
    assert r["cases"] == 4 and r["target_in_history"] == 1 and r["sample"] is None
    # without masking, case 2's target stays at rank 2 (0.9, 0.9 above) and case 3 becomes rank 0
    r2 = evaluate(score_fn, cases, n, ks=(1,), exclude_seen=False)
    assert r2["recall@1"] == pytest.approx(1 / 4) and r2["target_in_history"] == 0


def test_evaluate_sample_and_errors():
    n = 20
    cases = [(u, [(u % n, 0)], (u + 1) % n) for u in range(100)]
    pop = np.linspace(1, 0, n, dtype=np.float32)
    fn = lambda hs: np.tile(pop, (len(hs), 1))  # noqa: E731
    a = evaluate(fn, cases, n, sample=30, seed=1)
    b = evaluate(fn, cases, n, sample=30, seed=1)
    assert a["cases"] == 30 and a["cases_total"] == 100 and a["sample"] == {"n": 30, "seed": 1}
    assert a["recall@10"] == b["recall@10"]
    with pytest.raises(ValueError, match="shape"):
        evaluate(lambda hs: np.zeros((len(hs), n - 1), np.float32), cases, n)
    with pytest.raises(ValueError, match="NaN"):
        evaluate(lambda hs: np.full((len(hs), n), np.nan, np.float32), cases, n)
    with pytest.raises(ValueError, match="outside"):
        evaluate(fn, [(0, [], n)], n)


def test_popularity_scores_recency():
    ds = _dataset([[1, 2, 3], [1, 3], [4]], n_items=6)
    p = popularity_scores(ds, 6)
    assert p.dtype == np.float32 and p.max() == 1.0
    np.testing.assert_allclose(p, np.array([0, 2, 1, 2, 1, 0]) / 2)
    # half-life of one step: newest steps count 1, one step back 0.5, two back 0.25
    ph = popularity_scores(ds, 6, half_life=1.0)
    raw = np.array([0, 0.25 + 0.5, 0.5, 1 + 1, 1, 0])
    np.testing.assert_allclose(ph, raw / raw.max(), rtol=1e-6)
    # a Split counts its train sequences only
    sp = leave_one_out(_dataset([[1, 2, 3, 4]], n_items=6))
    np.testing.assert_allclose(popularity_scores(sp, 6), [0, 1, 1, 0, 0, 0])


def test_item_similarity_window_and_normalisation():
    train = [[(0, 0), (1, 0), (2, 0)], [(0, 0), (1, 0)]]
    s = item_similarity(train, 4, window=1, alpha=0.5, length_weight=False, top_k=None).toarray()
    # c_01 = 2, n_0 = n_1 = 2 -> 1; c_12 = 1, n_1 = 2, n_2 = 1 -> 1/sqrt(2); 0-2 not within window 1
    assert s[0, 1] == pytest.approx(1.0) and s[1, 2] == pytest.approx(2**-0.5) and s[0, 2] == 0
    np.testing.assert_allclose(s, s.T)
    assert np.all(np.diag(s) == 0)
    s2 = item_similarity(train, 4, window=2, pair_decay=0.5, alpha=0.5, length_weight=False, top_k=None).toarray()
    assert s2[0, 2] == pytest.approx(0.5 / np.sqrt(2))
    s3 = item_similarity(train, 4, window=1, alpha=1.0, length_weight=False, top_k=1).toarray()
    assert (s3 > 0).sum(1).max() == 1  # one neighbour each
    assert s3[1, 0] == pytest.approx(1.0)  # c_10 / n_1 beats c_12 / n_1
    # length weighting: a pair in a sequence of length L counts 1 / log(1 + L)
    s4 = item_similarity(train, 4, window=1, alpha=0.5, top_k=None).toarray()
    assert s4[0, 1] == pytest.approx((1 / np.log(4) + 1 / np.log(3)) / 2)


def test_baselines_beat_random_on_demo(demo: Dataset):
    n = len(demo.catalog)
    sp = leave_one_out(demo)
    rnd = evaluate(random_scores(n), sp.test, n)
    pop = evaluate(popularity(sp, n), sp.test, n)
    knn = evaluate(item_knn(sp, n), sp.test, n)
    assert rnd["recall@10"] < 0.05
    assert pop["recall@10"] > 2 * rnd["recall@10"] and pop["ndcg@10"] > 2 * rnd["ndcg@10"]
    assert knn["recall@10"] > pop["recall@10"] and knn["ndcg@10"] > pop["ndcg@10"]
    assert knn["recall@50"] > knn["recall@10"]


# ---- the Amazon copy -----------------------------------------------------------------------------


@pytest.mark.data
def test_amazon_games_counts(shelfrank_data: Path):
    ds = load_amazon_games(shelfrank_data)
    assert len(ds.catalog) == 16_859
    assert len(ds.users) == 50_546
    assert len(ds.events) == 440_264
    assert set(np.unique(ds.events.action).tolist()) == {ACTION_IDS["purchase"]}
    assert ds.events.ts is None and all(ds.catalog.titles)
    sp = leave_one_out(ds)
    assert len(sp.test) == len(sp.valid) == 50_546  # every sequence has >= 5 items
    lens = np.bincount(ds.events.user)
    assert lens.min() == 5 and lens.max() == 50


# ---- timestamps: epoch seconds or ISO 8601 (issue 11) -------------------------------------------


ISO_AND_EPOCH = [
    # (as written in a shop's log, epoch seconds it means)
    ("2020-03-01 09:30:00", 1583055000.0),  # naive = UTC, space separator
    ("2020-03-01T09:30:00Z", 1583055000.0),
    ("2020-03-01T11:30:00+02:00", 1583055000.0),
    ("2020-03-01T09:30:00.250Z", 1583055000.25),
    ("2020-03-01", 1583020800.0),  # a bare date: midnight UTC
    ("1583055000", 1583055000.0),  # epoch seconds as a string
    (" 1583055000.5 ", 1583055000.5),
    (1583055000, 1583055000.0),
    (1583055000.5, 1583055000.5),
]


@pytest.mark.parametrize("raw,epoch", ISO_AND_EPOCH)
def test_parse_ts_forms(raw, epoch: float):
    assert parse_ts(raw) == epoch


def test_parse_ts_datetime_objects():
    # what a Parquet timestamp column reads as; naive = UTC as for text
    from datetime import date, datetime, timedelta, timezone

    assert parse_ts(datetime(2020, 3, 1, 9, 30)) == 1583055000.0
    assert parse_ts(datetime(2020, 3, 1, 11, 30, tzinfo=timezone(timedelta(hours=2)))) == 1583055000.0
    assert parse_ts(date(2020, 3, 1)) == 1583020800.0


def test_iso_and_epoch_ts_give_the_same_order(tmp_path: Path, items_csv: Path):
    cat = load_items(items_csv)
    # one shopper's day, written once as ISO (mixed forms, zones) and once as epoch seconds
    when = [
        ("u1", "B", "view", "2020-03-01 10:00:00", 1583056800),
        ("u2", "A", "click", "2020-03-01T08:00:00-01:00", 1583053200),  # 09:00 UTC
        ("u1", "C", "cart", "2020-03-01T09:30:00.5Z", 1583055000.5),
        ("u2", "C", "purchase", "2020-02-29", 1582934400),
        ("u1", "A", "purchase", "2020-03-01 11:00", 1583060400),
    ]
    iso = write_csv(tmp_path / "iso.csv", ["user_id", "item_id", "action", "ts"], [w[:4] for w in when])
    epoch = write_jsonl(
        tmp_path / "epoch.jsonl",
        [{"user_id": u, "item_id": i, "action": a, "ts": t} for u, i, a, _, t in when],
    )
    ev_iso, users_iso = load_events(iso, cat)
    ev_epoch, users_epoch = load_events(epoch, cat)
    assert users_iso == users_epoch
    for col in ("user", "item", "action", "ts"):
        assert getattr(ev_iso, col).tolist() == getattr(ev_epoch, col).tolist(), col
    assert ev_iso.item.tolist() == [2, 0, 2, 1, 0]  # C (Feb 29), A 09:00, C 09:30, B 10:00, A 11:00


def test_equal_ts_keep_file_order_as_one_basket(tmp_path: Path, items_csv: Path):
    cat = load_items(items_csv)
    e = write_csv(
        tmp_path / "ev.csv",
        ["user_id", "item_id", "action", "ts"],
        [
            ["u", "C", "purchase", "2020-03-01 12:00:00"],
            ["u", "B", "purchase", "2020-03-01 09:30:00"],  # one basket, three items, one second
            ["u", "A", "purchase", "2020-03-01T09:30:00Z"],
            ["u", "C", "purchase", "2020-03-01T10:30:00+01:00"],
        ],
    )
    ev, _ = load_events(e, cat)
    assert ev.item.tolist() == [1, 0, 2, 2]


def test_repeat_purchases_survive_loading(tmp_path: Path, items_csv: Path):
    cat = load_items(items_csv)
    rows = [
        ["u", "A", "purchase", "2020-03-01 09:00:00"],
        ["u", "B", "purchase", "2020-03-02 09:00:00"],
        ["u", "A", "purchase", "2020-03-08 09:00:00"],  # bought again a week later
        ["u", "A", "purchase", "2020-03-08 09:00:00"],  # an identical row: kept as an event too
    ]
    e = write_csv(tmp_path / "ev.csv", ["user_id", "item_id", "action", "ts"], rows)
    ds = load_files(items_csv, e)
    assert len(ds.events) == 4 and ds.events.item.tolist() == [0, 1, 0, 0]
    # a repeat after another item is its own step; back-to-back events on one item are one step
    assert ds.sequences() == [[(0, 3), (1, 3), (0, 3)]]
    assert len(cat) == 3


@pytest.mark.parametrize("ts", ["soon", "2020-13-01", "01/03/2020 09:30", "2020-03-01 25:00:00", "true", "1e400"])
def test_bad_ts_names_file_line_and_accepted_forms(tmp_path: Path, items_csv: Path, ts: str):
    cat = load_items(items_csv)
    e = write_csv(
        tmp_path / "ev.csv",
        ["user_id", "item_id", "action", "ts"],
        [["u", "A", "view", "2020-03-01 09:30:00"], ["u", "B", "view", ts]],
    )
    msg = expect_error(lambda: load_events(e, cat), file=e, line=3, field="ts")
    assert repr(ts) in msg and "epoch seconds" in msg and "ISO 8601" in msg and "UTC" in msg, msg


def test_bad_ts_types_in_jsonl(tmp_path: Path, items_csv: Path):
    cat = load_items(items_csv)
    for bad in (True, [1], {"t": 1}):
        e = write_jsonl(tmp_path / "ev.jsonl", [{"user_id": "u", "item_id": "A", "action": "view", "ts": bad}])
        expect_error(lambda e=e: load_events(e, cat), file=e, line=1, field="ts")


# ---- choosing the split from the CLI; the time split's cut -----------------------------------


def test_time_split_states_its_cut():
    seqs = [[1, 2, 3, 4, 5, 6, 7, 8, 9, 0], [2, 3, 4, 5, 6, 7, 8, 9, 0, 1]]
    day = 86400.0
    ts = [[1583020800.0 + day * 2 * k for k in range(10)], [1583020800.0 + day * (2 * k + 1) for k in range(10)]]
    sp = time_split(_dataset(seqs, ts))
    flat = np.sort(np.concatenate(ts))
    assert sp.cut == {
        "valid_from": float(np.quantile(flat, 0.8)),
        "test_from": float(np.quantile(flat, 0.9)),
        "valid_frac": 0.1,
        "test_frac": 0.1,
    }
    text = sp.describe()
    assert text.startswith("time (") and "2020-03-" in text and "Z" in text and "10%" in text, text
    assert leave_one_out(_dataset(seqs)).cut is None
    assert "leave-one-out" in leave_one_out(_dataset(seqs)).describe()
    # a ts that is no plausible date (a counter, or milliseconds) is printed as the number
    assert "ts 1.6e+12" in time_split(_dataset(seqs, [[1.6e12 + k for k in range(10)]] * 2)).describe()


def test_make_split_kinds():
    ds = _dataset([[1, 2, 3]], [[1.0, 2.0, 3.0]])
    assert make_split(ds, "leave-one-out").kind == "leave-one-out"
    assert make_split(ds, "time").kind == "time"
    with pytest.raises(ExportValidationError, match="unknown split"):
        make_split(ds, "random")
    with pytest.raises(ExportValidationError, match="timestamps"):
        make_split(_dataset([[1, 2, 3]]), "time")


def test_cli_export_split_option(tmp_path: Path, items_csv: Path, monkeypatch, capsys):
    from shelfrank import cli

    parse = cli.build_parser().parse_args
    base = ["export", "--dataset", "files", "--out", "o", "--key", "k"]
    assert parse(base).split == "leave-one-out"
    assert parse([*base, "--split", "time"]).split == "time"
    with pytest.raises(SystemExit):
        parse([*base, "--split", "random"])
    assert "random" in capsys.readouterr().err
    # the chosen split reaches run_export (stubbed: no training here)
    e = write_csv(
        tmp_path / "ev.csv",
        ["user_id", "item_id", "action", "ts"],
        [["u", it, "view", f"2020-03-0{d} 09:30:00"] for d, it in enumerate("ABCABCABC", 1)],
    )
    seen = {}

    def fake_run_export(ds, out, **kw):
        seen.update(kw)
        raise ShelfrankError("stop here")

    monkeypatch.setattr("shelfrank.export.pipeline.run_export", fake_run_export)
    argv = ["export", "--dataset", "files", "--items", str(items_csv), "--events", str(e), "--out", "o", "--key", "k"]
    assert cli.main([*argv, "--split", "time"]) == 2
    assert seen["split"].kind == "time" and seen["split"].cut is not None
    assert cli.main(argv) == 2 and seen["split"].kind == "leave-one-out"
    # the time split on data without ts: a clear error, before any training
    e2 = write_csv(tmp_path / "e2.csv", ["user_id", "item_id", "action"], [["u", "A", "view"], ["u", "B", "view"]])
    seen.clear()
    argv2 = ["export", "--dataset", "files", "--items", str(items_csv), "--events", str(e2), "--out", "o"]
    assert cli.main([*argv2, "--key", "k", "--split", "time"]) == 2
    assert "timestamps" in capsys.readouterr().err and not seen


def test_export_help_says_what_ts_takes(capsys):
    from shelfrank import cli

    with pytest.raises(SystemExit):
        cli.build_parser().parse_args(["export", "--help"])
    out = " ".join(capsys.readouterr().out.split())
    assert "ISO 8601" in out and "epoch seconds" in out and "UTC" in out and "--split" in out


# ---- --resume fingerprints (export/stages.py WorkFolder; no torch) -----------------------------


def _teacher_dir(path: Path, weights: bytes = b"w") -> Path:
    path.mkdir(exist_ok=True)
    (path / "config.json").write_text("{}")
    (path / "tokenizer.json").write_text("{}")
    (path / "model.safetensors").write_bytes(weights)
    (path / "README.md").write_text("not part of the fingerprint")
    return path


def test_resume_fingerprint_refuses_other_input(tmp_path: Path):
    from dataclasses import replace

    from shelfrank.export.pipeline import PRESETS
    from shelfrank.export.stages import WorkFolder

    ds = _dataset([[1, 2, 3, 4], [5, 6, 7]], [[1.0, 2.0, 3.0, 4.0], [1.5, 2.5, 3.5]])
    teacher = _teacher_dir(tmp_path / "bert")
    quick = PRESETS["quick"]
    fp = WorkFolder.fingerprint_of(ds, quick, teacher, None)
    assert fp == WorkFolder.fingerprint_of(ds, quick, teacher, leave_one_out(ds))  # None = the default split
    work = tmp_path / "out.work"

    st = WorkFolder(work, False, fp)
    assert not st.have("teacher.pt")
    (work / "teacher.pt").write_bytes(b"ckpt")
    st.completed("teacher.pt")
    assert not st.have("student.pt")  # claimed, never written: an interrupted stage
    # the same input resumes the finished checkpoint only
    st2 = WorkFolder(work, True, WorkFolder.fingerprint_of(ds, quick, teacher, None))
    assert st2.have("teacher.pt") and not st2.have("student.pt")
    assert json.loads((work / "fingerprint.json").read_text())["fingerprint"] == fp

    other_events = _dataset([[1, 2, 3, 4], [5, 6, 8]], [[1.0, 2.0, 3.0, 4.0], [1.5, 2.5, 3.5]])
    other_titles = _dataset([[1, 2, 3, 4], [5, 6, 7]], [[1.0, 2.0, 3.0, 4.0], [1.5, 2.5, 3.5]])
    other_titles.catalog.titles[3] = "a new title"
    other_ts = _dataset([[1, 2, 3, 4], [5, 6, 7]], [[1.0, 2.0, 3.0, 4.0], [1.5, 2.5, 9.5]])
    cases = {
        "dataset": WorkFolder.fingerprint_of(other_events, quick, teacher, None),
        "dataset ": WorkFolder.fingerprint_of(other_titles, quick, teacher, None),
        "dataset  ": WorkFolder.fingerprint_of(other_ts, quick, teacher, None),
        "preset": WorkFolder.fingerprint_of(ds, PRESETS["full"], teacher, None),
        "preset ": WorkFolder.fingerprint_of(ds, replace(quick, teacher_steps=81), teacher, None),
        "teacher": WorkFolder.fingerprint_of(ds, quick, _teacher_dir(tmp_path / "bert2", b"other"), None),
        "split": WorkFolder.fingerprint_of(ds, quick, teacher, time_split(ds)),
    }
    for part, other in cases.items():
        with pytest.raises(ExportValidationError) as ei:
            WorkFolder(work, True, other)
        msg = str(ei.value)
        assert str(work) in msg and "--resume" in msg and re.search(rf"\b{part.strip()}( \w+)? was", msg), msg
        assert sum(bool(re.search(rf"\b{k}( \w+)? was", msg)) for k in fp) == 1, msg  # only what changed
        if part == "preset ":
            assert "preset teacher_steps was 80, now 81" in msg and "max_len" not in msg, msg
    # the refusals left the folder as it was: the original input still resumes
    assert WorkFolder(work, True, fp).have("teacher.pt")
    # a README beside the weights is not part of the teacher
    (teacher / "README.md").write_text("edited")
    assert WorkFolder.fingerprint_of(ds, quick, teacher, None) == fp

    # a fresh run over the folder with other input: the old checkpoint stops counting at once
    WorkFolder(work, False, cases["preset"])
    assert not WorkFolder(work, True, cases["preset"]).have("teacher.pt")
    assert not (work / "teacher.pt").exists()


def test_resume_refuses_checkpoints_without_fingerprint(tmp_path: Path):
    from shelfrank.export.stages import WorkFolder

    work = tmp_path / "old.work"
    work.mkdir()
    (work / "export.log").write_text("log")
    WorkFolder(work, True, {"dataset": "d"})  # only a log: nothing to mistrust
    (work / "fingerprint.json").unlink()
    (work / "teacher.pt").write_bytes(b"from an older shelfrank")
    with pytest.raises(ExportValidationError, match=r"without a fingerprint\.json"):
        WorkFolder(work, True, {"dataset": "d"})
    (work / "fingerprint.json").write_text("{not json")
    with pytest.raises(ExportValidationError, match="unreadable"):
        WorkFolder(work, True, {"dataset": "d"})


# ---- the tower's budgets: inside the batch loop, and cases bounded by the data -----------------


def _tiny_tower_run(caplog, **cfg):
    pytest.importorskip("torch")
    from shelfrank.export.train import TowerConfig, train_tower

    rng = np.random.default_rng(0)
    rows = rng.standard_normal((40, 8)).astype(np.float32)
    train = [[(int(i), 0) for i in rng.integers(0, 40, size=12)] for _ in range(60)]  # 660 cases
    valid = [(u, seq[:-1], seq[-1][0]) for u, seq in enumerate(train[:10])]
    tcfg = TowerConfig(epochs=3, batch=8, hidden=16, layers=1, heads=1, max_events=5, **cfg)
    with caplog.at_level(logging.INFO, logger="shelfrank"):
        return train_tower(rows, train, valid, tcfg, desc="tiny tower")


def test_tower_time_budget_stops_mid_epoch(caplog):
    model, history = _tiny_tower_run(caplog, time_budget_s=0.0)
    assert len(history) == 1 and history[0]["batches"] == 1 and history[0]["stopped"] == "time budget"
    assert "ndcg@10" in history[0]  # the cut epoch is validated like a whole one
    assert "time budget (0 s) reached in epoch 1 after 1 of 83 batches" in caplog.text, caplog.text
    assert not model.training


def test_tower_cases_sampled_per_epoch(caplog):
    _, history = _tiny_tower_run(caplog, max_cases=100)
    assert [h["batches"] for h in history] == [13, 13, 13]
    assert "660 training cases; each epoch samples 100 of them (15.2%, seed 0)" in caplog.text, caplog.text
    caplog.clear()
    _, history = _tiny_tower_run(caplog, max_cases=10_000, time_budget_s=0.0)
    assert history[0]["batches"] == 1 and "660 training cases per epoch" in caplog.text
