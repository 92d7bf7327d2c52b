"""The on-device API on a real (tiny) signed bundle: events, queries, filters, errors, privacy."""

from __future__ import annotations

import json
import logging
import subprocess
import sys
import threading

import numpy as np
import pytest

from shelfrank.device import Recommender
from shelfrank.errors import BundleError, InputError, SignatureError, UnknownFilterValueError, UnknownItemError


def test_cold_start_is_popularity(rec):
    got = rec.recommend("new-shopper", k=5)
    assert len(got) == 5
    pops = [rec.catalog.popularity[rec.catalog.index[r.item_id]] for r in got]
    assert pops == sorted(pops, reverse=True) and pops[0] == pytest.approx(rec.catalog.popularity.max())


def test_record_is_reflected_in_the_next_call(rec, item_ids):
    before = [r.item_id for r in rec.recommend("u1", k=10)]
    rec.record("u1", item_ids[7], "view")
    after = rec.recommend("u1", k=10)
    assert [r.item_id for r in after] != before
    assert item_ids[7] not in [r.item_id for r in after]  # exclude_seen
    # the tiny tower's user vector after one event is that item's own row: its neighbours come first
    sim = [r.item_id for r in rec.similar(item_ids[7], k=10)]
    assert [r.item_id for r in after][:3] == sim[:3]
    rec.record("u1", item_ids[8], "purchase")
    assert [r.item_id for r in rec.recommend("u1", k=10)] != [r.item_id for r in after]


def test_exclude_seen_false_can_return_history(rec, item_ids):
    rec.record("u2", item_ids[3], "purchase")
    top = rec.recommend("u2", k=1, exclude_seen=False)
    assert top[0].item_id == item_ids[3] and top[0].score == pytest.approx(1.0, abs=0.02)


def test_results_are_typed_records(rec, item_ids):
    r = rec.similar(item_ids[0], k=3)[0]
    assert isinstance(r.item_id, str) and isinstance(r.score, float) and isinstance(r.title, str)
    assert r.in_stock in (True, False)


def test_similar_never_returns_the_item(rec, item_ids):
    for item in item_ids[:20]:
        assert item not in [r.item_id for r in rec.similar(item, k=10)]


def test_search_finds_the_title(rec, item_ids):
    title = rec.catalog.item(42).title
    got = rec.search(title, k=5)
    assert rec.catalog.item_ids[42] in [r.item_id for r in got]


def test_where_filters(rec, item_ids):
    cat = rec.catalog
    category = cat.item(0).category
    for r in rec.search("game", k=20, where={"category": category}):
        assert r.category == category
    for r in rec.recommend("nobody", k=20, where={"max_price": 30, "min_price": 10, "in_stock": True}):
        assert 10 <= r.price <= 30 and r.in_stock
    brands = sorted({cat.item(r).brand for r in range(40)} - {None})[:2]
    assert {r.brand for r in rec.similar(item_ids[1], k=30, where={"brand": brands})} <= set(brands)
    allow = item_ids[10:13]
    assert {r.item_id for r in rec.similar(item_ids[1], k=10, where={"allow_ids": allow})} == set(allow)
    deny = [r.item_id for r in rec.similar(item_ids[1], k=3)]
    assert not set(deny) & {r.item_id for r in rec.similar(item_ids[1], k=10, where={"deny_ids": deny})}
    # a category or brand the catalog lacks is an error naming it (issue 15, defect 9), never a silent []
    with pytest.raises(UnknownFilterValueError, match="'no such category' is not in catalog version 1") as e:
        rec.similar(item_ids[1], k=5, where={"category": "no such category"})
    assert e.value.field == "where.category" and isinstance(e.value, InputError)
    with pytest.raises(UnknownFilterValueError, match=f"did you mean {category!r}"):
        rec.recommend("nobody", where={"category": [category, category.lower()]})
    with pytest.raises(UnknownFilterValueError, match="where\\['brand'\\]"):
        rec.search("game", where={"brand": [*brands, "Nobrand"]})


@pytest.mark.parametrize(
    "where,needle",
    [
        ({"colour": "red"}, "unknown where key"),
        ({"max_price": "cheap"}, "finite number"),
        ({"in_stock": 1}, "True or False"),
        ({"brand": 5}, "string or a list"),
    ],
)
def test_bad_where_is_a_value_error(rec, where, needle):
    with pytest.raises(ValueError, match=needle):
        rec.recommend("u", where=where)


def test_bad_calls_are_named(rec, item_ids):
    with pytest.raises(UnknownItemError, match="unknown item id 'nope'"):
        rec.record("u", "nope", "view")
    with pytest.raises(UnknownItemError):
        rec.similar("nope")
    with pytest.raises(InputError, match="unknown action 'like'"):
        rec.record("u", item_ids[0], "like")
    with pytest.raises(InputError, match="user_id must be a non-empty string"):
        rec.record("  ", item_ids[0], "view")
    with pytest.raises(InputError, match="k must be a positive integer"):
        rec.recommend("u", k=0)
    with pytest.raises(InputError, match="non-empty string"):
        rec.search("")
    assert isinstance(UnknownItemError("x"), KeyError) and isinstance(UnknownItemError("x"), ValueError)


def test_history_and_forget_leave_no_trace(rec, item_ids, tmp_path):
    assert rec.history("ghost") == []
    secret = "shopper-with-a-very-recognisable-id-8c1f"
    for i in range(30):
        rec.record(secret, item_ids[i], "view", ts=1000.0 + i)
    assert [e.item_id for e in rec.history(secret)] == item_ids[:30]
    rec.forget(secret)
    assert rec.history(secret) == []
    assert rec.recommend(secret, k=3) == rec.recommend("never-seen", k=3)
    for f in (tmp_path / "state").glob("events.sqlite*"):
        assert secret.encode() not in f.read_bytes(), f.name


def test_history_is_bounded(bundle_and_key, tmp_path, item_ids):
    bundle, pub = bundle_and_key
    r = Recommender.open(bundle, public_key=pub, state_dir=tmp_path / "s")
    r.events.max_history = 5
    for i in range(12):
        r.record("u", item_ids[i], "click")
    assert [e.item_id for e in r.history("u")] == item_ids[7:12]
    r.close()


def test_events_outlive_the_process(bundle_and_key, tmp_path, item_ids):
    bundle, pub = bundle_and_key
    r = Recommender.open(bundle, public_key=pub, state_dir=tmp_path / "s")
    r.record("u", item_ids[2], "cart")
    r.close()
    r2 = Recommender.open(bundle, public_key=pub, state_dir=tmp_path / "s")
    assert [(e.item_id, e.action) for e in r2.history("u")] == [(item_ids[2], "cart")]
    r2.close()


def test_concurrent_readers_and_writers(rec, item_ids):
    errors: list[BaseException] = []

    def reader():
        try:
            for j in range(40):
                got = rec.recommend(f"user-{j % 5}", k=10)
                assert 0 < len(got) <= 10
        except BaseException as e:
            errors.append(e)

    def writer():
        try:
            for j in range(60):
                rec.record(f"user-{j % 5}", item_ids[j], "view")
        except BaseException as e:
            errors.append(e)

    threads = [threading.Thread(target=reader) for _ in range(4)] + [threading.Thread(target=writer)]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    assert not errors, errors


def test_open_refuses_a_damaged_bundle(bundle_copy, bundle_and_key, tmp_path):
    _, pub = bundle_and_key
    rows = bundle_copy / "catalog" / "emb.i8.npy"
    data = bytearray(rows.read_bytes())
    data[-1] ^= 0xFF
    rows.write_bytes(bytes(data))
    with pytest.raises(BundleError, match=r"emb\.i8\.npy: sha256 differs"):
        Recommender.open(bundle_copy, public_key=pub, state_dir=tmp_path / "s")


def test_open_refuses_another_publisher(bundle_and_key, tmp_path):
    from shelfrank.device import bundle as bfmt

    _, other = bfmt.generate_keypair(tmp_path / "other.key")
    with pytest.raises(SignatureError):
        Recommender.open(bundle_and_key[0], public_key=other, state_dir=tmp_path / "s")


def test_pinned_key_in_state_is_used(bundle_and_key, tmp_path):
    from shelfrank.device import bundle as bfmt

    state = tmp_path / "s"
    state.mkdir()
    _, other = bfmt.generate_keypair(tmp_path / "other.key")
    (state / "trusted.pub").write_bytes(other.read_bytes())
    with pytest.raises(SignatureError):
        Recommender.open(bundle_and_key[0], state_dir=state)


def test_unpinned_open_warns(bundle_and_key, tmp_path, caplog):
    with caplog.at_level(logging.WARNING, logger="shelfrank"):
        Recommender.open(bundle_and_key[0], state_dir=tmp_path / "s").close()
    assert "unpinned" in caplog.text


def test_unknown_format_version(bundle_copy, tmp_path):
    m = json.loads((bundle_copy / "manifest.json").read_text())
    m["format_version"] = 7
    (bundle_copy / "manifest.json").write_text(json.dumps(m))
    with pytest.raises(BundleError, match="format_version 7"):
        Recommender.open(bundle_copy, state_dir=tmp_path / "s")


def test_unknown_board_is_named(bundle_and_key, tmp_path):
    with pytest.raises(ValueError, match=r"unknown board 'toaster'; known: .*rpi5"):
        Recommender.open(bundle_and_key[0], public_key=bundle_and_key[1], board="toaster", state_dir=tmp_path / "s")


def test_board_config_sets_threads(bundle_and_key, tmp_path):
    r = Recommender.open(bundle_and_key[0], public_key=bundle_and_key[1], board="rpi5", state_dir=tmp_path / "s")
    assert r.threads == 2 and len(r.recommend("u", k=3)) == 3
    r.close()


def test_import_is_lean():
    heavy = "('torch', 'transformers', 'optimum')"
    code = f"import sys, shelfrank.device; print(sorted(m for m in {heavy} if m in sys.modules))"
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=120, check=True)
    assert out.stdout.strip() == "[]"


def test_open_and_recommend_load_no_network_stack(bundle_and_key, tmp_path):
    """urllib.request (and with it ssl, ~5 MB resident) loads only for an HTTP sync."""
    bundle, pub = bundle_and_key
    code = (
        "import sys; from shelfrank.device import Recommender; "
        f"r = Recommender.open({str(bundle)!r}, public_key={str(pub) if pub else None!r}, "
        f"state_dir={str(tmp_path)!r}); "
        "r.recommend('u', k=3); print(sorted(m for m in ('ssl', 'urllib.request') if m in sys.modules))"
    )
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=120, check=True)
    assert out.stdout.strip() == "[]"


def test_nan_rows_in_catalog_are_refused(bundle_copy, tmp_path):
    """A bundle whose scales contain NaN (re-signed, so only the content check can catch it)."""
    from shelfrank.device import bundle as bfmt

    scales = np.load(bundle_copy / "catalog" / "scale.f32.npy")
    scales[3] = np.nan
    np.save(bundle_copy / "catalog" / "scale.f32.npy", scales)
    key, _ = bfmt.generate_keypair(tmp_path / "k")
    m = json.loads((bundle_copy / "manifest.json").read_text())
    m["catalog"]["sha256"]["scales"] = bfmt.sha256_file(bundle_copy / "catalog" / "scale.f32.npy")
    bfmt.sign_bundle(bundle_copy, m, bfmt.load_private_key(key))
    with pytest.raises(BundleError, match="NaN or inf scales"):
        Recommender.open(bundle_copy, public_key=tmp_path / "k.pub", state_dir=tmp_path / "s")


def test_history_cache_matches_the_database(bundle_and_key, tmp_path, item_ids):
    """The in-memory histories (written through by record/forget, LRU over users) always equal
    what a fresh reader of the database sees, with users evicted and re-read along the way."""
    from shelfrank.device.events import EventStore
    from shelfrank.device.text import ACTIONS

    bundle, pub = bundle_and_key
    r = Recommender.open(bundle, public_key=pub, state_dir=tmp_path / "s")
    r.events._cache_users, r.events.max_history = 2, 4
    rng = np.random.default_rng(0)
    users = ["a", "b", "c"]
    for step in range(80):
        u = users[rng.integers(3)]
        if rng.random() < 0.1:
            r.forget(u)
        else:
            r.record(u, item_ids[rng.integers(len(item_ids))], ACTIONS[rng.integers(4)], ts=float(step))
        r.history(users[rng.integers(3)])  # fills and reorders the cache
        fresh = EventStore(tmp_path / "s" / "events.sqlite", max_history=4)
        try:
            for w in [u, *reversed(r.events._recent), *users]:  # cached users first: hits are checked
                assert r.history(w) == fresh.history(w), (step, w)
                assert r.events.history(w, limit=2) == fresh.history(w)[-2:]
        finally:
            fresh.close()
        assert len(r.events._recent) <= 2
    mine = r.history("a")
    mine.clear()  # the caller's copy: the store's cache is untouched
    assert r.history("a") == r.events.history("a")
    r.close()


@pytest.mark.parametrize("where", [None, {"in_stock": True}])
def test_exclude_seen_equals_masking_every_seen_row(rec, item_ids, where):
    """Seen items are dropped from an over-fetched top-k: the same items and scores as a kernel
    mask over every seen row, also with more seen items than k."""
    from shelfrank.device.kernel import topk

    seen = item_ids[::7][:30]
    for i, item in enumerate(seen):
        rec.record("s", item, ("view", "click", "cart", "purchase")[i % 4])
    cat = rec.catalog
    mask = np.ones(len(cat), bool) if where is None else cat.mask(where)
    mask[[cat.index[i] for i in seen]] = False
    for k in (1, 10, 40):
        ids, scores = topk(rec.user_vector("s"), cat.rows, k, scales=cat.scales, mask=mask)
        got = rec.recommend("s", k=k, where=where)
        assert [g.item_id for g in got] == [cat.item_ids[i] for i in ids if i >= 0]
        assert [g.score for g in got] == pytest.approx(scores[ids >= 0].tolist())


def test_result_records_come_from_the_item_table(tmp_path):
    """Titles, categories, brands, prices and stock served from memory equal the SQLite table,
    multi-byte titles, missing categories and unknown prices included."""
    import sqlite3

    from shelfrank.device.catalog import Catalog
    from shelfrank.device.catalog_files import CatalogData, write_catalog_dir

    rng = np.random.default_rng(1)
    items = [
        {
            "item_id": f"id-{i}",
            "title": ["Café crème ☕", "", "plain", "日本語のタイトル"][i % 4] + f" {i}",
            "category": None if i % 3 == 0 else f"cat{i % 5}",
            "brand": None if i % 4 == 1 else f"brand{i % 2}",
            "price": None if i % 5 == 0 else float(i) / 3,
            "in_stock": bool(i % 2),
            "popularity": float(i),
        }
        for i in range(50)
    ]
    rows = rng.integers(-127, 128, (50, 8)).astype(np.int8)
    scales = np.full(50, 1 / 127, np.float32)  # what quantize_rows gives a unit-norm row at most
    write_catalog_dir(tmp_path / "c", CatalogData(items, rows, scales), fsync=False)
    cat = Catalog(tmp_path / "c", version=1, dim=8)
    con = sqlite3.connect(tmp_path / "c" / "items.sqlite")
    table = con.execute("SELECT row, item_id, title, category, brand, price, in_stock FROM items ORDER BY row")
    for row, *want in table:
        it = cat.item(row)
        assert [it.item_id, it.title, it.category, it.brand, it.price, it.in_stock] == [*want[:5], bool(want[5])]
    con.close()


def test_with_block_closes_and_close_is_idempotent(bundle_and_key, tmp_path):
    bundle, pub = bundle_and_key
    with Recommender.open(bundle, public_key=pub, state_dir=tmp_path / "s") as r:
        r.record("w", r.catalog.item_ids[0], "view")
        assert r.recommend("w", k=2)
    with pytest.raises(Exception, match="closed"):
        r.events.history("someone-not-cached")  # the event store's connection is closed
    r.close()  # again: no error
    with Recommender.open(bundle, public_key=pub, state_dir=tmp_path / "s") as r2:
        assert [e.item_id for e in r2.history("w")] == [r2.catalog.item_ids[0]]  # the event was durable


@pytest.mark.parametrize("xdg", ["", "relative/state", "."])
def test_an_empty_or_relative_xdg_state_home_is_ignored(bundle_and_key, tmp_path, monkeypatch, xdg):
    """Issue 15, defect 8: the XDG spec says to ignore such values; they must not put shopper
    history under the working directory."""
    from shelfrank.device.recommender import _state_dir_for

    home, cwd = tmp_path / "home", tmp_path / "cwd"
    cwd.mkdir()
    monkeypatch.setenv("HOME", str(home))
    monkeypatch.delenv("SHELFRANK_STATE", raising=False)
    monkeypatch.setenv("XDG_STATE_HOME", xdg)
    monkeypatch.chdir(cwd)
    state = _state_dir_for(bundle_and_key[0], None)
    assert state.is_absolute() and state.is_relative_to(home / ".local" / "state" / "shelfrank")
    Recommender.open(bundle_and_key[0], public_key=bundle_and_key[1]).close()
    assert (state / "events.sqlite").exists() and not any(cwd.iterdir())
    monkeypatch.setenv("XDG_STATE_HOME", str(tmp_path / "xdg"))  # an absolute one is used
    assert _state_dir_for(bundle_and_key[0], None).is_relative_to(tmp_path / "xdg" / "shelfrank")
