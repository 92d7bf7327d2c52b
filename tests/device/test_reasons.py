"""Explained results (issue 15, build 2): every result says why it is there and what its score
measures — cold start, the tower, the hybrid (co-occurrence drivers against a slow reference from
the neighbour table), repeats, similar and search — on the tiny bundles of tests/conftest.py."""

from __future__ import annotations

import numpy as np
import pytest

from shelfrank.device.catalog import REASONS, SCORE_KINDS
from shelfrank.device.text import ACTION_IDS, ACTIONS

VERBS = {"view": "viewed", "click": "clicked", "cart": "added to your cart", "purchase": "bought"}


def well_formed(items) -> None:
    for it in items:
        assert it.reason in REASONS and it.score_kind in SCORE_KINDS
        assert isinstance(it.reason_text, str) and it.reason_text.strip()
        assert isinstance(it.reason_items, tuple) and all(isinstance(i, str) for i in it.reason_items)


def window(rec, user: str) -> list[str]:
    """The tower's recent items, newest first, once each (consecutive events on one item are one step)."""
    index = rec.catalog.index
    steps: list[str] = []
    for e in rec.history(user)[-rec.max_events * 4 :]:
        if e.item_id in index and (not steps or steps[-1] != e.item_id):
            steps.append(e.item_id)
    return list(dict.fromkeys(reversed(steps[-rec.max_events :])))


def newest_action(rec, user: str, item_id: str) -> str:
    """The reason's verb: the strongest action of the newest run of events on the item."""
    run: list[str] = []
    for e in reversed(rec.history(user)):
        if e.item_id == item_id:
            run.append(e.action)
        elif run:
            break
    return max(run, key=lambda a: ACTION_IDS[a])


def closest_recent(rec, user: str, item_id: str) -> str:
    """The recent item whose vector is closest to ``item_id`` (float64; ties to the newest)."""
    cat = rec.catalog
    recent = window(rec, user)
    if item_id in recent:
        return item_id
    v = cat.vectors(np.array([cat.index[item_id]])).astype(np.float64)[0]
    sims = [float(cat.vectors(np.array([cat.index[r]])).astype(np.float64)[0] @ v) for r in recent]
    return recent[int(np.argmax(sims))]


def cooc_drivers(rec, user: str, item_id: str) -> list[str]:
    """The recent items (the ranker's window) whose neighbour lists hold ``item_id``, by the weight
    they gave it (decay^age × action weight × W), best first, at most 3; one item's steps add up."""
    cat, p = rec.catalog, rec.ranker
    index = cat.index
    steps: list[tuple[int, int]] = []
    for e in rec.history(user)[-rec.max_events * 4 :]:
        if e.item_id not in index:
            continue
        row, act = index[e.item_id], ACTION_IDS[e.action]
        if steps and steps[-1][0] == row:
            steps[-1] = (row, max(act, steps[-1][1]))
        else:
            steps.append((row, act))
    target = index[item_id]
    weight: dict[int, float] = {}
    for age, (row, act) in enumerate(steps[::-1][: p.recent]):
        for j, w in zip(
            cat.neighbor_ids[row].tolist(), cat.neighbor_weights[row].astype(np.float64).tolist(), strict=True
        ):
            if j == target:
                weight[row] = weight.get(row, 0.0) + p.decay**age * p.action_weights[act] * w
    best = sorted((r for r in weight if weight[r] > 0), key=lambda r: (-weight[r], r))[:3]
    return [cat.item_ids[r] for r in best]


def shop(rec, user: str, n: int = 12, seed: int = 0) -> None:
    rng = np.random.default_rng(seed)
    for j, r in enumerate(rng.choice(len(rec.catalog), n, replace=False)):
        rec.record(user, rec.catalog.item_ids[int(r)], ACTIONS[j % 4], ts=1000.0 + j)


def test_cold_start_is_popular_and_says_its_score_is_popularity(hybrid_rec):
    got = hybrid_rec.recommend("nobody", k=8)
    well_formed(got)
    assert {(it.reason, it.score_kind, it.reason_items) for it in got} == {("popular", "popularity", ())}
    pop = hybrid_rec.catalog.popularity
    assert [it.score for it in got] == pytest.approx([float(pop[hybrid_rec.catalog.index[it.item_id]]) for it in got])


@pytest.mark.parametrize("diversity", [0.0, 0.5])
def test_tower_results_name_the_closest_recent_item(rec, diversity):
    shop(rec, "t")
    got = rec.recommend("t", k=10, diversity=diversity)  # this bundle has no ranker: the tower
    well_formed(got)
    assert got and all(it.reason == "history" and it.score_kind == "cosine" for it in got)
    for it in got:
        (src,) = it.reason_items
        assert src == closest_recent(rec, "t", it.item_id)
        title = rec.catalog.item(rec.catalog.index[src]).title
        assert it.reason_text == f"because you {VERBS[newest_action(rec, 't', src)]} “{title}”"


@pytest.mark.parametrize("seed", range(6))
@pytest.mark.parametrize("exclude_seen", [True, False])
def test_hybrid_reasons_match_the_neighbour_table(hybrid_rec, seed, exclude_seen):
    user = f"h{seed}"
    shop(hybrid_rec, user, n=4 + seed, seed=seed)
    if seed % 2:  # an item again two steps later: one item at two steps of the window, its weights add up
        again = hybrid_rec.history(user)[-2].item_id
        hybrid_rec.record(user, again, "cart", ts=2000.0)
    got = hybrid_rec.recommend(user, k=hybrid_rec.ranker.candidates + 5, exclude_seen=exclude_seen)
    well_formed(got)
    assert all(it.score_kind == "fused" for it in got)
    kinds = set()
    for it in got:
        drivers = cooc_drivers(hybrid_rec, user, it.item_id)
        if drivers:
            assert (it.reason, list(it.reason_items)) == ("co-occurrence", drivers), it.item_id
            title = hybrid_rec.catalog.item(hybrid_rec.catalog.index[drivers[0]]).title
            verb = VERBS[newest_action(hybrid_rec, user, drivers[0])]
            assert it.reason_text == f"often chosen with “{title}”, which you {verb}"
        else:
            assert (it.reason, it.reason_items) == ("history", (closest_recent(hybrid_rec, user, it.item_id),))
        kinds.add(it.reason)
    assert "co-occurrence" in kinds  # the tiny table makes neighbours of every shopper's items


def test_a_repeat_names_itself(hybrid_rec):
    shop(hybrid_rec, "r", n=5, seed=3)
    recent = set(window(hybrid_rec, "r"))
    got = hybrid_rec.recommend("r", k=len(hybrid_rec.catalog), exclude_seen=False, ranker="tower")
    repeats = [it for it in got if it.item_id in recent]
    assert len(repeats) == len(recent)
    for it in repeats:
        assert it.reason == "history" and it.reason_items == (it.item_id,)
        assert it.reason_text.startswith("you ") and it.reason_text.endswith(" it recently")


def test_similar_and_search_reasons(hybrid_rec):
    item = hybrid_rec.catalog.item_ids[7]
    got = hybrid_rec.similar(item, k=5)
    well_formed(got)
    title = hybrid_rec.catalog.item(7).title
    assert {(it.reason, it.reason_items, it.reason_text, it.score_kind) for it in got} == {
        ("similar", (item,), f"similar to “{title}”", "cosine")
    }
    found = hybrid_rec.search(title, k=5)
    well_formed(found)
    assert found and all(it.reason == "search" for it in found)


def test_every_path_explains_every_result(hybrid_rec):
    shop(hybrid_rec, "all", n=9, seed=11)
    cat = hybrid_rec.catalog
    where = {"category": cat.item(0).category}
    for kw in (
        {},
        {"ranker": "tower"},
        {"diversity": 0.7},
        {"where": where},
        {"exclude_seen": False, "diversity": 0.3},
        {"k": len(cat)},  # past the candidates: the rest in tower order
    ):
        got = hybrid_rec.recommend("all", **{"k": 15, **kw})
        assert got
        well_formed(got)
        assert all(it.reason in ("history", "co-occurrence") for it in got), kw


@pytest.mark.parametrize("seed", range(8))
def test_cold_start_order_equals_sorting_the_masked_popularity(hybrid_rec, seed, monkeypatch):
    """The cold start walks the catalog's cached popularity order: the same rows as the full sort of
    the masked popularity (ties to the lower row), with ties made common and a NaN among them."""
    cat = hybrid_rec.catalog
    rng = np.random.default_rng(seed)
    pop = np.round(rng.random(len(cat)) * 4).astype(np.float32) / 4  # 5 values: many ties
    pop[rng.choice(len(cat), 3, replace=False)] = np.nan
    monkeypatch.setattr(cat, "popularity", pop)
    monkeypatch.setattr(cat, "_pop_order", None)
    mask = None if seed % 2 else rng.random(len(cat)) < (0.02 if seed % 4 == 0 else 0.6)
    skip = frozenset(rng.choice(len(cat), 5 * seed, replace=False).tolist())
    for k in (1, 7, 40, len(cat)):
        rows, scores = hybrid_rec._rank_rows(cat, None, k, mask, skip)
        m = np.ones(len(cat), bool) if mask is None else mask.copy()
        m[list(skip)] = False
        masked = np.where(m, pop, -np.inf)
        want = [int(r) for r in np.lexsort((np.arange(len(cat)), -masked))[:k] if np.isfinite(masked[r])]
        assert rows == want and scores == [float(pop[r]) for r in want]
