"""Batch calls (issue 15, build 1): ``recommend_many`` and ``search_many`` give one list per input,
in input order, equal (ids, scores, reasons) to the single calls — every ranker path, filters,
diversity, seen items, cold shoppers, duplicates, batches split across the kernel's batch size."""

from __future__ import annotations

import numpy as np
import pytest

import shelfrank.device.recommender as recmod
from shelfrank.device.text import ACTIONS
from shelfrank.errors import InputError, UnknownFilterValueError


def shoppers(rec, n: int, seed: int = 0) -> list[str]:
    rng = np.random.default_rng(seed)
    users = [f"b{seed}-{i}" for i in range(n)]
    for i, u in enumerate(users):
        for j, r in enumerate(rng.choice(len(rec.catalog), 1 + i % 9, replace=False)):
            rec.record(u, rec.catalog.item_ids[int(r)], ACTIONS[(i + j) % 4], ts=100.0 + j)
    return users


OPTIONS = [
    {},
    {"k": 1},
    {"k": 37},
    {"ranker": "tower"},
    {"exclude_seen": False},
    {"diversity": 0.4},
    {"where": {"in_stock": True, "max_price": 60}},
    {"where": {"allow_ids": []}},  # nothing passes: every list empty
    {"k": 1000},  # past the catalog: everything that passes, in order
]


@pytest.mark.parametrize("kw", OPTIONS, ids=lambda kw: ",".join(f"{k}={v}" for k, v in kw.items()) or "default")
@pytest.mark.parametrize("which", ["hybrid_rec", "rec"])
def test_recommend_many_equals_the_single_calls(request, which, kw, monkeypatch):
    rec = request.getfixturevalue(which)
    monkeypatch.setattr(recmod, "BATCH", 4)  # several kernel batches, the last one short
    users = shoppers(rec, 9)
    users = [users[0], "cold-shopper", *users[1:], users[3]]  # a cold start and a duplicate among them
    single = [rec.recommend(u, **kw) for u in users]
    rec._cache.clear()  # the batch computes the user vectors itself
    many = rec.recommend_many(users, **kw)
    assert many == single
    assert any(many) or kw.get("where") == {"allow_ids": []}
    assert rec.recommend_many(users, **kw) == single  # and from the cache


def test_recommend_many_uses_one_batch_scan(hybrid_rec, monkeypatch):
    users = shoppers(hybrid_rec, 10, seed=1)
    calls: list[tuple] = []
    real = hybrid_rec.planner.topk  # every dense scan goes through the planner (device/planner.py)

    def spy(cat, q, *a, **kw):
        calls.append(np.shape(q))
        return real(cat, q, *a, **kw)

    monkeypatch.setattr(hybrid_rec.planner, "topk", spy)
    hybrid_rec.recommend_many([*users, "cold"], k=5)
    assert calls == [(10, hybrid_rec.dim)]  # the cold shopper needs no scan


def test_recommend_many_inputs(hybrid_rec):
    assert hybrid_rec.recommend_many([]) == []
    assert hybrid_rec.recommend_many(("a", "b"), k=2) == [hybrid_rec.recommend("a", 2), hybrid_rec.recommend("b", 2)]
    with pytest.raises(InputError, match="user_ids must be a list of strings, got str"):
        hybrid_rec.recommend_many("u1")
    with pytest.raises(InputError, match="user_ids must hold strings only, got 7"):
        hybrid_rec.recommend_many(["u1", 7])
    with pytest.raises(InputError, match="k must be a positive integer"):
        hybrid_rec.recommend_many(["u1"], k=0)
    with pytest.raises(InputError, match=r"empty|user"):
        hybrid_rec.recommend_many(["u1", ""])
    with pytest.raises(UnknownFilterValueError):
        hybrid_rec.recommend_many(["u1"], where={"brand": "Nobrand"})


def test_search_many_equals_the_single_calls(hybrid_rec):
    cat = hybrid_rec.catalog
    texts = [cat.item(3).title, "game", cat.item(40).title, "game"]
    where = {"in_stock": True}
    assert hybrid_rec.search_many(texts, 6, where=where) == [hybrid_rec.search(t, 6, where=where) for t in texts]
    assert hybrid_rec.search_many([]) == []
    with pytest.raises(InputError, match="texts must be a list of strings"):
        hybrid_rec.search_many("game")
    with pytest.raises(InputError):
        hybrid_rec.search_many(["game", "  "])
