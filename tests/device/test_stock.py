"""Live stock and price (device/stock.py): local updates and the published feed (real publish folders,
real SQLite), seen by the very next call's filters; bad updates typed, nothing half-applied."""

from __future__ import annotations

import json
import shutil
import sqlite3

import pytest

from shelfrank.device import Recommender
from shelfrank.device.formats import MAX_STOCK_ITEMS
from shelfrank.errors import ExportValidationError, StockError, SyncError, UnknownItemError
from shelfrank.export.publish import publish_stock, sign_index
from shelfrank.testing import publish_records, publisher_key


def ids(items) -> list[str]:
    return [it.item_id for it in items]


def in_stock_row(rec) -> int:
    return next(i for i in range(len(rec.catalog)) if rec.catalog.in_stock[i])


def test_update_stock_is_seen_by_the_next_call(rec):
    base = rec.recommend("nobody", k=5, where={"in_stock": True})
    top = base[0].item_id
    res = rec.update_stock({top: {"in_stock": False}})
    assert (res.applied, res.skipped, res.catalog_version) == (1, 0, 1)
    got = rec.recommend("nobody", k=5, where={"in_stock": True})
    assert top not in ids(got) and ids(got)[:4] == ids(base)[1:]
    # unfiltered it is still listed, and says it is out of stock
    assert next(it for it in rec.recommend("nobody", k=300) if it.item_id == top).in_stock is False
    assert rec.similar(base[1].item_id, k=len(rec.catalog) - 1, where={"in_stock": True}).count(top) == 0
    assert top not in ids(rec.search("game", k=50, where={"in_stock": True}, mode="lexical"))
    # the price: the next call's price filter and the item both have it
    rec.update_stock({top: {"price": 0.5, "in_stock": True}})
    cheap = rec.recommend("nobody", k=5, where={"max_price": 0.5})
    assert ids(cheap) == [top] and cheap[0].price == 0.5 and cheap[0].in_stock
    rec.update_stock({top: {"price": None}})  # unknown: no price filter passes it
    assert top not in ids(rec.recommend("nobody", k=300, where={"min_price": 0}))
    assert rec.catalog.item(rec.catalog.index[top]).price is None


def test_partial_entries_keep_the_other_field(rec):
    row = in_stock_row(rec)
    item = rec.catalog.item_ids[row]
    rec.update_stock({item: {"price": 7.25}})
    assert rec.catalog.in_stock[row] and rec.catalog.price[row] == 7.25
    rec.update_stock({item: {"in_stock": False}})
    assert not rec.catalog.in_stock[row] and rec.catalog.price[row] == 7.25
    con = sqlite3.connect(rec.state_dir / "stock.sqlite")
    assert con.execute("SELECT in_stock, price, price_set FROM stock WHERE item_id = ?", (item,)).fetchone() == (
        0,
        7.25,
        1,
    )
    con.close()


def test_unknown_ids_apply_nothing_unless_skipped(rec):
    row = in_stock_row(rec)
    item = rec.catalog.item_ids[row]
    before = rec.catalog
    with pytest.raises(UnknownItemError, match=r"1 item id.*'NOPE'.*nothing applied"):
        rec.update_stock({item: {"in_stock": False}, "NOPE": {"in_stock": False}})
    assert rec.catalog is before and rec.catalog.in_stock[row]
    assert not (rec.state_dir / "stock.sqlite").exists() or _rows(rec) == []
    res = rec.update_stock({item: {"in_stock": False}, "NOPE": {"in_stock": False}}, skip_unknown=True)
    assert (res.applied, res.skipped, res.unknown) == (1, 1, ("NOPE",)) and not rec.catalog.in_stock[row]


def _rows(rec):
    con = sqlite3.connect(rec.state_dir / "stock.sqlite")
    try:
        return con.execute("SELECT * FROM stock").fetchall()
    finally:
        con.close()


@pytest.mark.parametrize(
    ("bad", "match"),
    [
        ({"x": {"in_stock": "yes"}}, "Expected `bool`"),
        ({"x": {"price": -1}}, ">= 0"),
        ({"x": {"price": 1e13}}, "<= 1000000000000"),
        ({"x": {}}, "needs in_stock, price or both"),
        ({"x": {"in_stock": True, "colour": "red"}}, "unknown field `colour`"),
        ({"": {"in_stock": True}}, "length >= 1"),
        ([("x", {"in_stock": True})], "expected"),
        ({"x": [True]}, "Expected `object`"),
    ],
)
def test_bad_updates_are_typed_and_apply_nothing(rec, bad, match):
    row = in_stock_row(rec)
    good = {rec.catalog.item_ids[row]: {"in_stock": False}}
    before = rec.catalog
    with pytest.raises(StockError, match=match):
        rec.update_stock({**good, **bad} if isinstance(bad, dict) else bad)
    assert rec.catalog is before and rec.catalog.in_stock[row]
    assert isinstance(StockError("x"), ValueError)


def test_an_update_is_bounded(rec):
    with pytest.raises(StockError, match=f"length <= {MAX_STOCK_ITEMS}"):
        rec.update_stock({f"id-{i}": {"in_stock": False} for i in range(MAX_STOCK_ITEMS + 1)})


def test_updates_survive_reopen_and_reach_another_process(bundle_and_key, tmp_path):
    bundle, pub = bundle_and_key
    state = tmp_path / "s"
    with (
        Recommender.open(bundle, public_key=pub, state_dir=state) as a,
        Recommender.open(bundle, public_key=pub, state_dir=state) as b,
    ):
        row = in_stock_row(a)
        item = a.catalog.item_ids[row]
        assert not b.refresh()
        a.update_stock({item: {"in_stock": False, "price": 3.0}})
        assert b.catalog.in_stock[row]  # until it looks
        assert b.refresh() and not b.catalog.in_stock[row] and b.catalog.price[row] == 3.0
        assert not b.refresh()  # one stat when nothing changed
    with Recommender.open(bundle, public_key=pub, state_dir=state) as c:
        assert not c.catalog.in_stock[row] and item not in ids(c.recommend("x", k=300, where={"in_stock": True}))


# ---- published → synced --------------------------------------------------------------------------


@pytest.fixture()
def cdn(published, tmp_path):
    dst = tmp_path / "cdn"
    shutil.copytree(published["dir"], dst)
    return dst


@pytest.fixture()
def srec(published, tmp_path):
    r = Recommender.open(published["bundle"], public_key=published["pub"], state_dir=tmp_path / "state")
    yield r
    r.close()


def test_a_published_feed_is_applied_by_sync(srec, published, cdn):
    key = published["key"]
    body = publish_stock(cdn, {"NEW-3": {"in_stock": False, "price": 55.0}}, key=key)
    assert (body["version"], body["catalog_version"]) == (1, 3)
    res = srec.sync(cdn)  # the catalog 1 → 3 and its stock in one step: the first query has both
    assert (res.to_version, res.stock, res.rules) == (3, "version 1 (1 items, 0 unknown skipped)", "none")
    row = srec.catalog.index["NEW-3"]
    assert not srec.catalog.in_stock[row] and srec.catalog.price[row] == 55.0
    assert "NEW-3" not in ids(srec.recommend("nobody", k=200, where={"in_stock": True}))
    assert srec.sync(cdn).stock == "up to date"
    # a stock-only publish merges into the feed of this catalog version (a feed holds every change)
    publish_stock(cdn, {"NEW-2": {"in_stock": True}, "NEW-3": {"price": 50.0}}, key=key)
    res = srec.sync(cdn)
    assert (res.method, res.stock) == ("up to date", "version 2 (2 items, 0 unknown skipped)")
    a, b = srec.catalog.index["NEW-2"], srec.catalog.index["NEW-3"]
    assert srec.catalog.in_stock[a] and not srec.catalog.in_stock[b] and srec.catalog.price[b] == 50.0
    # a device that missed feed 1 gets all of it from feed 2
    with Recommender.open(published["bundle"], public_key=published["pub"], state_dir=cdn.parent / "late") as late:
        late.sync(cdn)
        assert not late.catalog.in_stock[late.catalog.index["NEW-3"]]


def test_a_new_catalog_version_starts_over(srec, published, cdn):
    srec.sync(cdn)
    records = [srec.catalog.item(i) for i in range(len(srec.catalog))]  # every one in stock
    assert all(it.in_stock for it in records if it.item_id in ("NEW-1", "NEW-3"))
    srec.update_stock({"NEW-3": {"in_stock": False}})
    publish_stock(cdn, {"NEW-1": {"in_stock": False}}, key=published["key"])
    srec.sync(cdn)
    assert (
        not srec.catalog.in_stock[srec.catalog.index["NEW-3"]]
        and not srec.catalog.in_stock[srec.catalog.index["NEW-1"]]
    )
    fields = ("item_id", "title", "category", "brand", "price", "in_stock")
    key_path = publisher_key(published["bundle"])
    publish_records(published["bundle"], cdn, [{f: getattr(it, f) for f in fields} for it in records], key_path)
    assert "stock" not in json.loads((cdn / "index.json").read_text())["signed"]  # a catalog publish drops it
    res = srec.sync(cdn)
    assert (res.to_version, res.stock) == (4, "none")
    # version 4 carries the publisher's own stock (in stock): the updates made for version 3 are gone
    assert srec.catalog.in_stock[srec.catalog.index["NEW-3"]] and srec.catalog.in_stock[srec.catalog.index["NEW-1"]]


def test_publish_refuses_what_the_catalog_lacks(published, cdn):
    with pytest.raises(ExportValidationError, match="'GONE'"):
        publish_stock(cdn, {"GONE": {"in_stock": False}}, key=published["key"])
    with pytest.raises(ExportValidationError, match="needs in_stock, price or both"):
        publish_stock(cdn, {"NEW-3": {}}, key=published["key"])
    assert "stock" not in json.loads((cdn / "index.json").read_text())["signed"]


def _resign_stock(cdn, key, doc: dict) -> None:
    from shelfrank.device import bundle as bfmt

    path = cdn / "stock" / "bad.json"
    path.parent.mkdir(exist_ok=True)
    path.write_bytes(bfmt.canonical_json(doc))
    idx = json.loads((cdn / "index.json").read_text())
    idx["signed"]["stock"] = {"path": "stock/bad.json", "sha256": bfmt.sha256_file(path), "size": path.stat().st_size}
    (cdn / "index.json").write_bytes(sign_index(idx["signed"], key))


def test_bad_feeds_keep_the_previous_stock(srec, published, cdn):
    key = published["key"]
    publish_stock(cdn, {"NEW-3": {"in_stock": False}}, key=key)
    srec.sync(cdn)
    row = srec.catalog.index["NEW-3"]
    feed = {"format_version": 1, "catalog_version": 3}
    for doc, match in [
        ({**feed, "version": 5, "items": {"NEW-3": {"in_stock": "no"}}}, "Expected `bool`"),
        ({**feed, "version": 5, "items": {}, "extra": 1}, "unknown field"),
        ({**feed, "version": 0, "items": {"NEW-3": {"in_stock": True}}}, "rollback"),
    ]:
        _resign_stock(cdn, key, doc)
        with pytest.raises(StockError, match=match) as e:
            srec.sync(cdn)
        assert isinstance(e.value, SyncError)
        assert not srec.catalog.in_stock[row]
    # ids this catalog lacks are skipped and counted; a feed for another catalog version is skipped
    _resign_stock(cdn, key, {**feed, "version": 6, "items": {"NEW-3": {"in_stock": True}, "GONE": {"price": 1.0}}})
    assert srec.sync(cdn).stock == "version 6 (1 items, 1 unknown skipped)" and srec.catalog.in_stock[row]
    _resign_stock(cdn, key, {**feed, "catalog_version": 2, "version": 7, "items": {"NEW-3": {"in_stock": False}}})
    assert srec.sync(cdn).stock == "up to date" and srec.catalog.in_stock[row]


def test_rules_that_read_stock_follow_it(rec):
    base = rec.recommend("nobody", k=10)
    cat0 = base[3].category
    rec.set_rules(
        {
            "format_version": 1,
            "allow": {"where": {"in_stock": True}},
            "boost": [{"where": {"category": cat0}, "positions": 100}],
            "pin": [{"where": {"in_stock": True, "max_price": 1.0}, "position": 1}],
        }
    )
    first = rec.recommend("nobody", k=10)
    assert first[1].category == cat0 and all(it.in_stock for it in first)
    victim, before = first[1].item_id, rec.merch._compiled[2]
    rec.update_stock({victim: {"in_stock": False}, first[5].item_id: {"price": 0.25}})
    after = rec.recommend("nobody", k=10)  # the stock-reading parts compiled again, the boost carried over
    assert victim not in ids(after) and after[1].category == cat0 and all(it.in_stock for it in after)
    assert (after[0].item_id, after[0].reason, after[0].price) == (first[5].item_id, "pinned", 0.25)
    now = rec.merch._compiled[2]
    assert now.parts["boost[0]"] is before.parts["boost[0]"] and now.parts["allow"] is not before.parts["allow"]
