"""The hybrid ranker on the device (device/ranker.py, ``Recommender._hybrid``) against a slow
pure-Python reference written here from the formula in device/ranker.py's docstring, and against
the export's batched version (export/fusion.py); its fallbacks (no history, ``ranker="tower"``, a
bundle without a ``ranker`` entry, a catalog without neighbours); bad neighbour tables and ranker
entries refused at open. No torch: the tiny hybrid bundle of tests/conftest.py."""

from __future__ import annotations

import json
import math
import shutil
from dataclasses import replace
from pathlib import Path

import numpy as np
import pytest

from shelfrank.device import Recommender
from shelfrank.device import bundle as bfmt
from shelfrank.device.catalog_files import NEIGHBOR_FILES
from shelfrank.device.ranker import RankerParams
from shelfrank.device.text import ACTION_IDS, ACTIONS
from shelfrank.errors import BundleError, InputError
from shelfrank.testing import publisher_key, resign_bundle

# ---- the reference: slow, one item at a time, float64 -------------------------------------------


def kernel_scores(cat, u) -> list[float]:
    """Every row's score as the int8 scan computes it (native/src/common.cpp): the query quantised to
    int8 with one symmetric scale max|u|/127 (round half away from zero), then, in float32,
    dot(q8, x8_i) · (scale_i · qscale)."""
    f32 = np.float32
    uq = [f32(x) for x in u]
    qscale = max(abs(x) for x in uq) / f32(127.0)
    q8 = []
    for x in uq:
        v = float(x / qscale)
        q8.append(max(-127, min(127, math.floor(abs(v) + 0.5) * (1 if v >= 0 else -1))))
    out = []
    for i in range(len(cat)):
        dot = sum(a * int(b) for a, b in zip(q8, cat.rows[i].tolist(), strict=True))
        out.append(float(f32(dot) * (f32(cat.scales[i]) * qscale)))
    return out


def allowed(cat, where: dict | None) -> list[bool]:
    """The ``where`` filter, item by item (the keys these tests use)."""
    where = where or {}
    out = []
    for r in range(len(cat)):
        it = cat.item(r)
        ok = True
        if "category" in where:
            ok &= it.category in ([where["category"]] if isinstance(where["category"], str) else where["category"])
        if "max_price" in where:
            ok &= it.price is not None and it.price <= where["max_price"]
        if "in_stock" in where:
            ok &= it.in_stock == where["in_stock"]
        if "deny_ids" in where:
            ok &= it.item_id not in where["deny_ids"]
        out.append(bool(ok))
    return out


def recent_steps(rec, user: str, recent: int) -> list[tuple[int, int]]:
    """The shopper's newest ``recent`` steps, newest first: the last 4 × max_events events (the
    tower's window), consecutive events on one item merged into its strongest action."""
    index = rec.catalog.index
    steps: list[tuple[int, int]] = []
    for e in rec.history(user)[-rec.max_events * 4 :]:
        if e.item_id not in index:
            continue
        row, act = index[e.item_id], ACTION_IDS[e.action]
        if steps and steps[-1][0] == row:
            steps[-1] = (row, max(act, steps[-1][1]))
        else:
            steps.append((row, act))
    return steps[::-1][:recent]


def reference(rec, user: str, *, exclude_seen=True, where=None, params=None) -> list[tuple[int, float]]:
    """Every eligible row with its score, best first, as device/ranker.py's docstring defines it."""
    return _reference(rec, user, exclude_seen=exclude_seen, where=where, params=params)[0]


def _reference(rec, user: str, *, exclude_seen=True, where=None, params=None) -> tuple[list, int]:
    """(the ranking, how many candidates lead it)."""
    cat = rec.catalog
    p = params or rec.ranker
    n = len(cat)
    ok = allowed(cat, where)
    index = cat.index
    seen = {index[e.item_id] for e in rec.history(user) if e.item_id in index} if exclude_seen else set()
    eligible = [j for j in range(n) if ok[j] and j not in seen]
    u = rec.user_vector(user)
    if u is None:  # no history: the bundle's popularity
        pop = [float(cat.popularity[j]) for j in eligible]
        return sorted(zip(eligible, pop, strict=True), key=lambda t: (-t[1], t[0])), 0
    ks = kernel_scores(cat, u)
    by_tower = sorted(eligible, key=lambda j: (-ks[j], j))
    if p is None:  # no ranker: the tower alone
        return [(j, ks[j]) for j in by_tower], 0
    # h_0 newest: weight decay^a · action_weight[act_a]
    hw = [(row, p.decay**a * p.action_weights[act]) for a, (row, act) in enumerate(recent_steps(rec, user, p.recent))]
    cooc: dict[int, float] = {}
    if cat.neighbors is not None:
        ids, w = cat.neighbors
        for h, wa in hw:
            for j, wj in zip(ids[h].tolist(), w[h].tolist(), strict=True):
                if j >= 0:
                    cooc[j] = cooc.get(j, 0.0) + wa * wj
    cooc = {j: c for j, c in cooc.items() if c > 0 and j not in seen}
    cmax = max(cooc.values(), default=0.0) or 1.0
    repeat: dict[int, float] = {}
    if not exclude_seen:
        for h, wa in hw:
            repeat[h] = repeat.get(h, 0.0) + wa

    def tower(j: int) -> float:
        return sum(float(u[d]) * int(cat.rows[j, d]) * float(cat.scales[j]) for d in range(cat.rows.shape[1]))

    def score(j: int) -> float:
        pop = math.log(1 + 1000 * max(float(cat.popularity[j]), 0.0)) / math.log(1001)
        return (
            p.w_tower * tower(j) + p.w_cooc * cooc.get(j, 0.0) / cmax + p.w_pop * pop + p.w_repeat * repeat.get(j, 0.0)
        )

    cand = set(by_tower[: p.candidates]) | {j for j in cooc if ok[j]}
    if not exclude_seen:
        cand |= {h for h, wa in hw if wa > 0 and ok[h]}
    fused = sorted(((j, score(j)) for j in cand), key=lambda t: (-t[1], t[0]))
    low = min((s for _, s in fused), default=0.0)
    rest = [(j, ks[j] + low - 2.0) for j in by_tower if j not in cand]  # below every candidate, tower order
    return fused + rest, len(fused)


def mmr_reference(cat, ranked: list[tuple[int, float]], k: int, lam: float) -> list[int]:
    """Maximal marginal relevance as device/ranker.py's ``mmr`` docstring states it."""
    rows = [r for r, _ in ranked]
    s = [x for _, x in ranked]
    vecs = []
    for r in rows:
        v = [int(x) * float(cat.scales[r]) for x in cat.rows[r].tolist()]
        norm = math.sqrt(sum(x * x for x in v)) or 1.0
        vecs.append([x / norm for x in v])
    lo, hi = min(s), max(s)
    rel = [(x - lo) / (hi - lo) if hi > lo else 1.0 for x in s]
    picked = [0]
    while len(picked) < min(k, len(rows)):
        best, best_gain = -1, -math.inf
        for i in range(len(rows)):
            if i in picked:
                continue
            closest = max(sum(a * b for a, b in zip(vecs[i], vecs[j], strict=True)) for j in picked)
            gain = (1 - lam) * rel[i] - lam * closest
            if gain > best_gain:  # strictly: the better-ranked candidate wins a tie
                best, best_gain = i, gain
        picked.append(best)
    return [rows[i] for i in picked]


TOL = 2e-5  # float32 (device) against float64 (reference)


def assert_ranks_as(rec, got, want: list[tuple[int, float]], k: int) -> None:
    """``got`` (Items) is the reference's first k, scores to float32 precision; two rows may trade
    places only where the reference scores them within TOL of each other."""
    cat = rec.catalog
    ref = dict(want)
    want = want[:k]
    got_rows = [cat.index[it.item_id] for it in got]
    assert len(got_rows) == len(want), (got_rows, want)
    for pos, (row, it, (wrow, ws)) in enumerate(zip(got_rows, got, want, strict=True)):
        assert row in ref, f"position {pos}: row {row} is not eligible"
        assert it.score == pytest.approx(ref[row], abs=TOL), f"position {pos}: row {row}"
        if row != wrow:
            assert abs(ref[row] - ws) <= TOL, f"position {pos}: row {row} ({ref[row]}) instead of {wrow} ({ws})"
    assert len(set(got_rows)) == len(got_rows)


# ---- shoppers ------------------------------------------------------------------------------------


def _with_neighbours(rec) -> tuple[list[int], list[int]]:
    ids = rec.catalog.neighbor_ids
    has = (ids >= 0).sum(1)
    return [int(r) for r in np.flatnonzero(has >= 4)], [int(r) for r in np.flatnonzero(has == 0)]


def shop(rec, user: str, steps: list[tuple[int, str]]) -> None:
    for t, (row, action) in enumerate(steps):
        rec.record(user, rec.catalog.item_ids[row], action, ts=1000.0 + t)


def make_shoppers(rec) -> list[str]:
    """Shoppers whose histories exercise every part of the score (see the comments)."""
    full, none = _with_neighbours(rec)
    # a few items, every action: co-occurrence and tower candidates
    shop(rec, "few", [(full[0], "view"), (full[1], "click"), (full[2], "purchase")])
    # longer than the tower's window (24 events) and ``recent`` (5 steps); repeats, and runs on one
    # item that merge into one step with the strongest action
    long = [(full[i % 9], ACTIONS[i % 4]) for i in range(27)]
    long += [(full[3], "view"), (full[3], "cart"), (full[3], "click"), (full[0], "purchase"), (full[3], "view")]
    shop(rec, "long", long)
    # one item without neighbours: no co-occurrence at all (tower and popularity only)
    shop(rec, "lonely", [(none[0], "purchase")])
    # an item and its own neighbours: the seen neighbours are no candidates and do not set the scale
    nb = [int(j) for j in rec.catalog.neighbor_ids[full[4]] if j >= 0][:2]
    shop(rec, "own", [(nb[0], "view"), (nb[1], "cart"), (full[4], "purchase")])
    return ["few", "long", "lonely", "own"]


@pytest.fixture()
def hrec(hybrid_rec):
    hybrid_rec.shoppers = make_shoppers(hybrid_rec)
    return hybrid_rec


# ---- the fused ranking equals the reference --------------------------------------------------------


def test_the_tiny_bundle_has_what_the_tests_need(hrec):
    p = hrec.ranker
    assert p is not None and p.w_repeat > 0 and p.candidates == 20 and p.recent == 5
    full, none = _with_neighbours(hrec)
    assert len(full) > 20 and len(none) > 5
    assert hrec.catalog.neighbor_ids.shape == (len(hrec.catalog), 8)


@pytest.mark.parametrize("exclude_seen", [True, False])
@pytest.mark.parametrize("k", [1, 10, 45, 1000])  # 45 > candidates (20) + neighbours; 1000 > the catalog
def test_fused_ranking_equals_the_reference(hrec, k, exclude_seen):
    for user in hrec.shoppers:
        want = reference(hrec, user, exclude_seen=exclude_seen)
        got = hrec.recommend(user, k=k, exclude_seen=exclude_seen)
        assert_ranks_as(hrec, got, want, k)  # k = 1000: every eligible row once


def test_the_candidates_lead_and_the_rest_follows_in_tower_order(hrec):
    """The candidates (tower top-N ∪ neighbours) rank first by the fused score; below them, by at
    least 1, the rest in the tower's order."""
    cat = hrec.catalog
    for user in hrec.shoppers:
        want, n_cand = _reference(hrec, user)
        assert n_cand > hrec.ranker.candidates or user == "lonely"  # the neighbours add candidates
        got = hrec.recommend(user, k=n_cand + 15)
        rows = [cat.index[it.item_id] for it in got]
        assert set(rows[:n_cand]) == {r for r, _ in want[:n_cand]}
        assert got[n_cand - 1].score - got[n_cand].score >= 0.9
        tower = _tower_reference(hrec, user)
        assert rows[n_cand:] == [r for r, _ in tower if r not in set(rows[:n_cand])][:15]
    # co-occurrence brings in items the tower alone ranks below its top N
    for user in ("long", "own"):
        top = [r for r, _ in reference(hrec, user)[:5]]
        by_tower = [r for r, _ in _tower_reference(hrec, user)]
        assert any(by_tower.index(r) >= hrec.ranker.candidates for r in top), user


@pytest.mark.parametrize(
    "where",
    [
        {"category": "Kitchen"},
        {"max_price": 40.0},
        {"in_stock": True},
        "deny-top",  # the reference's own best items denied: the next ones move up
    ],
)
@pytest.mark.parametrize("exclude_seen", [True, False])
def test_where_filters(hrec, where, exclude_seen):
    cat = hrec.catalog
    for user in hrec.shoppers:
        w = where
        if where == "deny-top":
            w = {"deny_ids": [cat.item_ids[r] for r, _ in reference(hrec, user, exclude_seen=exclude_seen)[:6]]}
        want = reference(hrec, user, exclude_seen=exclude_seen, where=w)
        assert want, w
        got = hrec.recommend(user, k=12, exclude_seen=exclude_seen, where=w)
        assert_ranks_as(hrec, got, want, 12)


def test_ties_go_to_the_lower_row(hrec):
    """Equal fused scores rank by row: all weights 0 (every candidate ties), co-occurrence alone
    (float16 weights tie often), and the exact order is checked (no tolerance)."""
    cat = hrec.catalog
    for p in (
        replace(hrec.ranker, w_tower=0.0, w_cooc=0.0, w_pop=0.0, w_repeat=0.0),
        replace(hrec.ranker, w_tower=0.0, w_cooc=1.0, w_pop=0.0, w_repeat=0.0),
    ):
        hrec.ranker = p
        for user in hrec.shoppers:
            want = reference(hrec, user, params=p)
            got = [cat.index[it.item_id] for it in hrec.recommend(user, k=40)]
            assert got == [r for r, _ in want[:40]]
            if p.w_cooc == 0:  # every candidate scores 0: the candidates in row order
                n_cand = sum(1 for _, s in want if s == 0.0)
                assert got[:n_cand] == sorted(got[:n_cand])


@pytest.mark.parametrize("lam", [0.3, 1.0])
@pytest.mark.parametrize("exclude_seen", [True, False])
def test_diversity_is_mmr_over_the_fused_ranking(hrec, lam, exclude_seen):
    cat = hrec.catalog
    for user in hrec.shoppers:
        for k in (5, 12):
            pool = reference(hrec, user, exclude_seen=exclude_seen)[: max(50, 5 * k)]
            want = mmr_reference(cat, pool, k, lam)
            got = hrec.recommend(user, k=k, exclude_seen=exclude_seen, diversity=lam)
            assert [cat.index[it.item_id] for it in got] == want
            ref = dict(pool)
            assert [it.score for it in got] == pytest.approx([ref[r] for r in want], abs=TOL)
    plain = hrec.recommend("few", k=10, diversity=0.0)
    assert plain == hrec.recommend("few", k=10)


def test_diversity_on_the_tower_path(hrec):
    cat = hrec.catalog
    pool = _tower_reference(hrec, "few")[:50]
    got = hrec.recommend("few", k=8, ranker="tower", diversity=0.5)
    assert [cat.index[it.item_id] for it in got] == mmr_reference(cat, pool, 8, 0.5)


@pytest.mark.parametrize("bad", [-0.1, 1.5, float("nan"), True, "0.5"])
def test_bad_diversity_and_ranker_are_refused(hrec, bad):
    with pytest.raises(InputError, match="diversity"):
        hrec.recommend("few", k=3, diversity=bad)
    with pytest.raises(InputError, match="ranker"):
        hrec.recommend("few", k=3, ranker="gbdt")


# ---- export and device rank the same --------------------------------------------------------------


@pytest.mark.parametrize("exclude_seen", [True, False])
@pytest.mark.parametrize("all_candidates", [False, True])
def test_device_ranks_as_the_export(hrec, exclude_seen, all_candidates):
    """export/fusion.py's batched ``hybrid_scores`` orders the catalog as the device does.

    One known difference: the device takes the tower's top N from its int8 scan, the export from
    float cosines, so the item at the N-th place can differ (here: one at k = 30). Compared are the
    top 10 with the bundle's N = 20, and the top 10, 30 and 60 with every row a candidate.
    """
    pytest.importorskip("scipy")
    from shelfrank.device.ranker import pop_feature
    from shelfrank.export import fusion

    cat = hrec.catalog
    if all_candidates:
        hrec.ranker = replace(hrec.ranker, candidates=len(cat))
    p = hrec.ranker
    rows = cat.vectors(np.arange(len(cat)))
    table = fusion.table_matrix(*cat.neighbors)
    pop = pop_feature(cat.popularity)
    for user in hrec.shoppers:
        steps = []  # the whole history collapsed, as the export's cases hold it
        for e in hrec.history(user):
            r, a = cat.index[e.item_id], ACTION_IDS[e.action]
            if steps and steps[-1][0] == r:
                steps[-1] = (r, max(a, steps[-1][1]))
            else:
                steps.append((r, a))
        u = hrec.user_vector(user)
        f = fusion.features([steps], u[None], rows, table, p)
        sc = fusion.hybrid_scores(f, pop, p, exclude_seen=exclude_seen)[0]
        ok = np.flatnonzero(np.isfinite(sc))
        want = [(int(r), float(sc[r])) for r in ok[np.lexsort((ok, -sc[ok]))]]
        for k in (10, 30, 60) if all_candidates else (10,):
            got = hrec.recommend(user, k=k, exclude_seen=exclude_seen)
            assert_ranks_as(hrec, got, want, k)
            assert_ranks_as(hrec, got, reference(hrec, user, exclude_seen=exclude_seen), k)


# ---- fallbacks -------------------------------------------------------------------------------------


def test_no_history_gets_the_popularity_order(hrec):
    cat = hrec.catalog
    order = sorted(range(len(cat)), key=lambda r: (-float(cat.popularity[r]), r))
    for ranker in ("hybrid", "tower"):
        got = hrec.recommend("nobody", k=15, ranker=ranker)
        assert [cat.index[it.item_id] for it in got] == order[:15]
        assert [it.score for it in got] == pytest.approx([float(cat.popularity[r]) for r in order[:15]])
    want = reference(hrec, "nobody", where={"category": "Kitchen"})
    assert_ranks_as(hrec, hrec.recommend("nobody", k=5, where={"category": "Kitchen"}), want, 5)


def _tower_reference(rec, user, **kw):
    saved, rec.ranker = rec.ranker, None
    try:
        return reference(rec, user, **kw)
    finally:
        rec.ranker = saved


def test_tower_ranker_is_the_tower_only_ranking(hrec):
    for user in hrec.shoppers:
        for exclude_seen in (True, False):
            want = _tower_reference(hrec, user, exclude_seen=exclude_seen)
            got = hrec.recommend(user, k=10, exclude_seen=exclude_seen, ranker="tower")
            assert_ranks_as(hrec, got, want, 10)
            assert got != hrec.recommend(user, k=10, exclude_seen=exclude_seen) or user == "lonely"


def _copy(hybrid_bundle, tmp_path) -> tuple[Path, Path]:
    dst = tmp_path / "bundle"
    shutil.copytree(hybrid_bundle[0], dst)
    return dst, publisher_key(hybrid_bundle[0])


def _open(bundle: Path, tmp_path: Path, name: str = "state") -> Recommender:
    return Recommender.open(bundle, public_key=bundle / bfmt.PUBLIC_KEY, state_dir=tmp_path / name)


def _drop_ranker(m: dict) -> dict:
    m.pop("ranker")
    return m


def test_a_bundle_without_a_ranker_entry_ranks_by_the_tower(hybrid_bundle, hrec, tmp_path):
    bundle, key = _copy(hybrid_bundle, tmp_path)
    resign_bundle(bundle, key, _drop_ranker)
    old = _open(bundle, tmp_path)
    try:
        assert old.ranker is None and old.catalog.neighbors is not None
        for user in make_shoppers(old):
            for ranker in ("hybrid", "tower"):
                got = old.recommend(user, k=10, ranker=ranker)
                assert_ranks_as(old, got, reference(old, user), 10)
                assert got == hrec.recommend(user, k=10, ranker="tower")
    finally:
        old.close()


def test_a_catalog_without_neighbour_files_ranks_without_cooccurrence(hybrid_bundle, tmp_path):
    bundle, key = _copy(hybrid_bundle, tmp_path)
    for name in NEIGHBOR_FILES.values():
        (bundle / "catalog" / name).unlink()
    resign_bundle(bundle, key)
    r = _open(bundle, tmp_path)
    try:
        assert r.catalog.neighbors is None and r.ranker is not None
        for user in make_shoppers_without_table(r):
            for exclude_seen in (True, False):
                want = reference(r, user, exclude_seen=exclude_seen)
                assert_ranks_as(r, r.recommend(user, k=10, exclude_seen=exclude_seen), want, 10)
                assert_ranks_as(r, r.recommend(user, k=40, exclude_seen=exclude_seen), want, 40)
    finally:
        r.close()


def make_shoppers_without_table(rec) -> list[str]:
    shop(rec, "a", [(3, "view"), (50, "click"), (77, "purchase")])
    shop(rec, "b", [(i * 7 % 300, ACTIONS[i % 4]) for i in range(12)])
    return ["a", "b"]


# ---- bad input, refused at open ----------------------------------------------------------------------


def _tamper(bundle: Path, ids=None, weights=None) -> None:
    cat = bundle / "catalog"
    if ids is not None:
        np.save(cat / NEIGHBOR_FILES["nbr_ids"], ids)
    if weights is not None:
        np.save(cat / NEIGHBOR_FILES["nbr_weights"], weights)


def _table(bundle: Path) -> tuple[np.ndarray, np.ndarray]:
    cat = bundle / "catalog"
    return np.load(cat / NEIGHBOR_FILES["nbr_ids"]), np.load(cat / NEIGHBOR_FILES["nbr_weights"])


def _set(a: np.ndarray, value) -> np.ndarray:
    a = a.copy()
    a[7, 2] = value
    return a


BAD_TABLES = {
    # name: (edit of (ids, weights), file named, words in the message)
    "id = n": (lambda i, w: (_set(i, len(i)), w), "nbr.i32.npy", "ids"),
    "id = -2": (lambda i, w: (_set(i, -2), w), "nbr.i32.npy", "ids"),
    "weight NaN": (lambda i, w: (i, _set(w, np.nan)), "nbr.f16.npy", "weights"),
    "weight inf": (lambda i, w: (i, _set(w, np.inf)), "nbr.f16.npy", "weights"),
    "weight < 0": (lambda i, w: (i, _set(w, -0.5)), "nbr.f16.npy", "weights"),
    "one row short": (lambda i, w: (i[:-1], w[:-1]), "nbr.i32.npy", "neighbour ids"),
    "one row more": (lambda i, w: (np.vstack([i, i[:1]]), np.vstack([w, w[:1]])), "nbr.i32.npy", "neighbour ids"),
    "weights of another shape": (lambda i, w: (i, w[:, :4]), "nbr.f16.npy", "neighbour weights"),
    "ids int64": (lambda i, w: (i.astype(np.int64), w), "nbr.i32.npy", "int32"),
    "weights float32": (lambda i, w: (i, w.astype(np.float32)), "nbr.f16.npy", "float16"),
    "ids 1-D": (lambda i, w: (i[:, 0].copy(), w[:, 0].copy()), "nbr.i32.npy", "neighbour ids"),
}


@pytest.mark.parametrize("case", list(BAD_TABLES))
def test_a_bad_neighbour_table_is_refused_at_open(hybrid_bundle, tmp_path, case):
    edit, name, words = BAD_TABLES[case]
    bundle, key = _copy(hybrid_bundle, tmp_path)
    _tamper(bundle, *edit(*_table(bundle)))
    resign_bundle(bundle, key)  # signed as it is: the runtime's own checks must refuse it
    with pytest.raises(BundleError) as e:
        _open(bundle, tmp_path).close()
    msg = str(e.value)
    assert name in msg and words in msg and "re-export" in msg, msg


@pytest.mark.parametrize("missing", list(NEIGHBOR_FILES.values()))
def test_one_neighbour_file_without_the_other_is_refused(hybrid_bundle, tmp_path, missing):
    bundle, key = _copy(hybrid_bundle, tmp_path)
    (bundle / "catalog" / missing).unlink()
    with pytest.raises(BundleError, match=f"catalog/{missing}: listed in the manifest but missing"):
        _open(bundle, tmp_path, "s1").close()
    resign_bundle(bundle, key)  # a table half-signed: the loader names the missing file
    with pytest.raises(BundleError, match=missing.replace(".", r"\.")):
        _open(bundle, tmp_path, "s2").close()


def test_a_tampered_neighbour_table_fails_the_signature_check(hybrid_bundle, tmp_path):
    bundle, _ = _copy(hybrid_bundle, tmp_path)
    ids, _ = _table(bundle)
    _tamper(bundle, ids[:, ::-1].copy())  # valid ids, other order: only the hash can tell
    with pytest.raises(BundleError, match=r"nbr\.i32\.npy: sha256 differs"):
        _open(bundle, tmp_path).close()


BAD_RANKERS = {
    # name: (edit of the ranker entry, words in the message)
    "unknown kind": (lambda r: {**r, "kind": "gbdt-onnx"}, "kind 'gbdt-onnx'"),
    "no kind": (lambda r: {k: v for k, v in r.items() if k != "kind"}, "kind None"),
    "weights not an object": (lambda r: {**r, "weights": [1, 0.5]}, "ranker.weights"),
    "tower weight too large": (lambda r: {**r, "weights": {**r["weights"], "tower": 1e7}}, "w_tower"),
    "cooc weight a string": (lambda r: {**r, "weights": {**r["weights"], "cooc": "0.5"}}, "w_cooc"),
    "pop weight true": (lambda r: {**r, "weights": {**r["weights"], "popularity": True}}, "w_pop"),
    "decay 0": (lambda r: {**r, "decay": 0}, "decay"),
    "decay above 1": (lambda r: {**r, "decay": 1.5}, "decay"),
    "candidates 0": (lambda r: {**r, "candidates": 0}, "candidates"),
    "candidates a float": (lambda r: {**r, "candidates": 20.5}, "candidates"),
    "recent too long": (lambda r: {**r, "recent": 5000}, "recent"),
    "three action weights": (lambda r: {**r, "action_weights": [1, 1, 1]}, "action_weights"),
    "negative action weight": (lambda r: {**r, "action_weights": [1, -1, 1, 1]}, "action_weights"),
    "action weights a number": (lambda r: {**r, "action_weights": 3}, "ranker"),
}


@pytest.mark.parametrize("case", list(BAD_RANKERS))
def test_a_bad_ranker_entry_is_refused_at_open(hybrid_bundle, tmp_path, case):
    edit, words = BAD_RANKERS[case]
    bundle, key = _copy(hybrid_bundle, tmp_path)

    def bad(m: dict) -> dict:
        m["ranker"] = edit(m["ranker"])
        return m

    resign_bundle(bundle, key, bad)
    with pytest.raises(BundleError) as e:
        _open(bundle, tmp_path).close()
    msg = str(e.value)
    assert "manifest.json" in msg and words in msg, msg


def test_a_ranker_entry_that_is_not_an_object_is_refused(hybrid_bundle, tmp_path):
    bundle, key = _copy(hybrid_bundle, tmp_path)
    resign_bundle(bundle, key, lambda m: {**m, "ranker": "hybrid"})
    with pytest.raises(BundleError, match=r"manifest\.json: 'ranker': Expected `object"):
        _open(bundle, tmp_path).close()


def test_the_ranker_entry_round_trips():
    p = RankerParams(w_tower=1.0, w_cooc=0.3, w_pop=0.05, w_repeat=0.2, candidates=64, recent=7, decay=0.85)
    entry = json.loads(json.dumps(p.to_manifest(fit={"valid_ndcg@10": 0.1})))
    assert RankerParams.from_manifest(entry) == p
