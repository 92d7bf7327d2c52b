"""Personalised search (``search(text, k, user_id=...)``, device/search.py): the shopper's user
vector as a re-rank term over the fused candidates, against the slow reference of test_search.py;
off without a user or a history; typed errors; the Recommender and the service body."""

from __future__ import annotations

import logging
from dataclasses import replace

import numpy as np
import pytest

from shelfrank.device import lexical as lx
from shelfrank.device import search as srch
from shelfrank.device.catalog import Catalog
from shelfrank.errors import InputError

from .test_search import DIM, FakeEncoder, _items, _ref_search, _write


@pytest.fixture()
def cat(tmp_path) -> Catalog:
    return _write(tmp_path / "cat", _items(40))


def _unit(seed: int) -> np.ndarray:
    v = np.random.default_rng(seed).normal(size=DIM)
    return (v / np.linalg.norm(v)).astype(np.float32)


@pytest.mark.parametrize("text", ["Aurora Quantum Espresso", "espreso grinder", "Harbor Cla", "zzz qqq", "socks"])
@pytest.mark.parametrize("where", [None, {"in_stock": True}])
@pytest.mark.parametrize("k", [1, 5, 60])
def test_personalised_order_equals_the_slow_reference(cat, text, where, k):
    p = srch.SearchParams(w_dense=1.0, w_lexical=0.7, candidates=100, w_user=0.4)
    enc, u = FakeEncoder(), _unit(3)
    rows, scores = srch.search(cat, enc, text, k, where=where, params=p, user=u)
    want = _ref_search(cat, _items(40), text, k, cat.mask(where), p, enc, user=u)
    assert rows.tolist() == [r for r, _ in want]
    np.testing.assert_allclose(scores, [s for _, s in want], rtol=1e-4, atol=1e-5)


def test_the_user_term_moves_the_shoppers_kind_of_item_up(cat):
    """A user vector equal to one candidate's vector lifts it above the plain search's first."""
    enc = FakeEncoder()
    plain, _ = srch.search(cat, enc, "aurora", 10)
    liked = int(plain[5])
    u = cat.vectors(np.array([liked]))[0]
    u = u / np.linalg.norm(u)
    p = srch.SearchParams(w_lexical=0.5, w_user=2.0)
    personal, _ = srch.search(cat, enc, "aurora", 10, params=p, user=u)
    assert personal[0] == liked and plain[0] != liked


def test_the_user_term_re_ranks_only_the_fused_candidates(cat):
    """With few candidates, a user vector pointing at an item no retriever found leaves it out."""
    enc = FakeEncoder()
    p = srch.SearchParams(candidates=3, w_user=5.0)
    cand = srch.candidates(cat, enc.encode(["aurora"])[0], "aurora", 3, None, p)[0]
    outside = next(r for r in range(len(cat)) if r not in set(cand.tolist()))
    u = cat.vectors(np.array([outside]))[0]
    rows, _ = srch.search(cat, enc, "aurora", 3, params=p, user=u / np.linalg.norm(u))
    assert outside not in rows.tolist() and set(rows.tolist()) <= set(cand.tolist())


def test_a_zero_weight_or_no_user_is_the_plain_search(cat):
    enc, u = FakeEncoder(), _unit(7)
    plain = srch.search(cat, enc, "quantum grinder", 10)
    off = srch.search(cat, enc, "quantum grinder", 10, params=replace(srch.SearchParams(), w_user=0.0), user=u)
    assert plain[0].tolist() == off[0].tolist()
    np.testing.assert_array_equal(plain[1], off[1])
    on = srch.search(cat, enc, "quantum grinder", 10, params=replace(srch.SearchParams(), w_user=1.0), user=u)
    assert on[1].tolist() != plain[1].tolist()


@pytest.mark.parametrize("mode", ["dense", "lexical"])
def test_a_user_outside_the_hybrid_mode_is_a_typed_error(cat, mode):
    with pytest.raises(InputError, match="needs mode 'hybrid'"):
        srch.search(cat, FakeEncoder(), "aurora", 5, mode=mode, user=_unit(1))


def test_personalised_without_fts_re_ranks_the_dense_candidates(cat, monkeypatch, caplog):
    monkeypatch.setattr(lx, "_probe", lambda con: "SQLite here cannot read the FTS5 index (no such module: fts5)")
    with caplog.at_level(logging.WARNING, logger="shelfrank"):
        c2 = Catalog(cat.root, version=1, dim=DIM)
    enc, u = FakeEncoder(), _unit(11)
    p = srch.SearchParams(candidates=100, w_user=0.5)
    rows, scores = srch.search(c2, enc, "aurora quantum", 5, params=p, user=u)
    v = c2.vectors(np.arange(len(c2)))
    want = v @ enc.encode(["aurora quantum"])[0] + 0.5 * (1.0 + 0.5) * (v @ u)  # w_user · (w_dense + w_lexical)
    ref = sorted(range(len(c2)), key=lambda r: (-want[r], r))[:5]
    assert rows.tolist() == ref
    np.testing.assert_allclose(scores, want[ref], rtol=1e-5, atol=1e-6)


def test_w_user_in_the_manifest():
    p = srch.SearchParams(w_user=0.25)
    assert srch.SearchParams.from_manifest(p.to_manifest()) == p
    assert srch.SearchParams.from_manifest({"kind": "weighted"}).w_user == srch.W_USER
    from shelfrank.errors import BundleError

    with pytest.raises(BundleError, match="w_user"):
        srch.SearchParams.from_manifest({"kind": "weighted", "w_user": -1})


# ---- the Recommender ------------------------------------------------------------------------------


def test_recommender_search_with_user_id(rec):
    c = rec.catalog
    title = c.item(42).title
    plain = rec.search(title, k=10)
    # a shopper with no history: the plain search, not an error
    assert [i.item_id for i in rec.search(title, k=10, user_id="nobody")] == [i.item_id for i in plain]
    brand = c.item(42).brand
    mine = [i for i in range(len(c)) if c.item(i).brand == brand and i != 42][:5]
    for r in mine:
        rec.record("fan", c.item_ids[r], "purchase")
    u = rec.user_vector("fan")
    assert u is not None
    params = srch.SearchParams.from_manifest(rec.manifest.search)
    want, scores = srch.search(c, rec.encoder, title, 10, params=params, user=u)
    got = rec.search(title, k=10, user_id="fan")
    assert [i.item_id for i in got] == [c.item_ids[r] for r in want.tolist()]
    assert [i.item_id for i in got] != [i.item_id for i in plain]
    assert [i.score for i in got] == pytest.approx(scores.tolist(), rel=1e-6)
    assert {i.score_kind for i in got} == {"fused"}


@pytest.mark.parametrize("user_id", ["", 7])
def test_recommender_bad_user_id_is_a_typed_error(rec, user_id):
    with pytest.raises(InputError, match="user_id"):
        rec.search("game", k=3, user_id=user_id)


def test_recommender_user_id_outside_hybrid_is_a_typed_error(rec):
    with pytest.raises(InputError, match="needs mode 'hybrid'"):
        rec.search("game", k=3, mode="lexical", user_id="fan")


def test_the_service_search_body_takes_user_id(rec):
    """``POST /v1/search`` with ``user_id``: the body decodes it and the operation passes it on."""
    from shelfrank.device import formats as fmt
    from shelfrank.device.service.endpoints import Service
    from shelfrank.errors import ShelfrankError

    c = rec.catalog
    for r in range(5):
        rec.record("fan", c.item_ids[r * 3], "purchase")
    svc = Service(rec)
    body = fmt.decode_request(b'{"text": "game", "k": 5, "user_id": "fan"}', fmt.SearchRequest)
    assert body.user_id == "fan"
    got = [it.item_id for it in svc.call("search", body).items]
    assert got == [i.item_id for i in rec.search("game", k=5, user_id="fan")]
    plain = fmt.decode_request(b'{"text": "game", "k": 5}', fmt.SearchRequest)
    assert plain.user_id is None
    assert [it.item_id for it in svc.call("search", plain).items] == [i.item_id for i in rec.search("game", k=5)]
    with pytest.raises(ShelfrankError):
        fmt.decode_request(b'{"text": "game", "user_id": ""}', fmt.SearchRequest)
