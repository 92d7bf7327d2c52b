"""The FTS index through catalog sync: added, updated and removed items (delta and snapshot)."""

from __future__ import annotations

import json
import shutil
import sqlite3

import pytest

from shelfrank.device import Recommender
from shelfrank.device import bundle as bfmt
from shelfrank.device.lexical import FTS_TABLE
from shelfrank.testing import publish_records


@pytest.fixture(scope="module")
def shop(sync_bundle, tmp_path_factory):
    """A publish folder with version 2: three items removed, one retitled, two added."""
    items = [dict(r) for r in sync_bundle["records"]]
    out = tmp_path_factory.mktemp("cdn-search") / "shop"
    v2 = [dict(r) for r in items[3:]]
    old_title = v2[0]["title"]
    v2[0]["title"] = "Zephyrine Obsidian Monocle"  # words no other item has
    v2.append(dict(sync_bundle["new_item"]))  # NEW-1: Aurora Quantum Espresso Grinder
    v2.append(
        dict(item_id="NEW-2", title="Quokkaline Velvet Hammock", category="Outdoor", brand="Nimbus", price=15.0)
        | {"in_stock": False}
    )
    publish_records(sync_bundle["bundle"], out, v2, sync_bundle["key"])
    return dict(
        bundle=sync_bundle["bundle"],
        pub=sync_bundle["pub"],
        key=sync_bundle["key"],
        dir=out,
        removed=items[:3],
        retitled=v2[0]["item_id"],
        old_title=old_title,
    )


def _open(shop, state):
    return Recommender.open(shop["bundle"], public_key=shop["pub"], state_dir=state)


def _fts_consistent(cat) -> None:
    """FTS5's integrity check (the index agrees with the ``items`` rows it was built from), on a
    copy: the catalog file itself is immutable."""
    copy = cat.root.parent / f"check-{cat.version}.sqlite"
    shutil.copyfile(cat.root / "items.sqlite", copy)
    con = sqlite3.connect(copy)
    try:
        con.execute(f"INSERT INTO {FTS_TABLE}({FTS_TABLE}, rank) VALUES('integrity-check', 1)")
        assert con.execute(f"SELECT COUNT(*) FROM {FTS_TABLE}").fetchone()[0] == len(cat)
    finally:
        con.close()
        copy.unlink()


@pytest.mark.parametrize("method", ["delta", "snapshot"])
def test_fts_follows_sync_adds_updates_and_removes(shop, tmp_path, method):
    src = shop["dir"]
    if method == "snapshot":
        src = tmp_path / "cdn"
        shutil.copytree(shop["dir"], src)
        idx = json.loads((src / "index.json").read_text())
        idx["signed"]["deltas"] = []
        from shelfrank.export.publish import sign_index

        (src / "index.json").write_bytes(sign_index(idx["signed"], bfmt.load_private_key(shop["key"])))
    rec = _open(shop, tmp_path / "state")
    try:
        before = rec.search(shop["removed"][0]["title"], k=5, mode="lexical")
        assert shop["removed"][0]["item_id"] in [i.item_id for i in before]
        res = rec.sync(src)
        assert res.method == method and rec.catalog.version == 2
        cat = rec.catalog
        assert cat.lexical.available
        _fts_consistent(cat)
        # added: found by its words, lexically and fused; out of stock, still found
        for mode in ("lexical", "hybrid"):
            assert rec.search("Aurora Quantum Espresso Grinder", k=3, mode=mode)[0].item_id == "NEW-1"
            assert rec.search("quokkaline hammock", k=3, mode=mode)[0].item_id == "NEW-2"
            assert rec.search("quokaline", k=3, mode=mode)[0].item_id == "NEW-2"  # a typo, corrected
        # updated: the new title finds it, the old title's unique words no longer point at it
        assert [i.item_id for i in rec.search("Zephyrine Obsidian Monocle", k=1, mode="lexical")] == [shop["retitled"]]
        assert [i.item_id for i in rec.search("zephyrin", k=1, mode="lexical")] == [shop["retitled"]]  # prefix
        removed = {r["item_id"] for r in shop["removed"]}
        # removed: never returned, by any mode, for their own titles
        for r in shop["removed"]:
            for mode in ("lexical", "hybrid", "dense"):
                got = {i.item_id for i in rec.search(r["title"], k=len(cat), mode=mode)}
                assert not got & removed, (mode, r["title"])
        # every lexical result is a live row whose text holds the words
        for i in rec.search("Aurora", k=50, mode="lexical"):
            assert i.item_id in cat.index and "aurora" in f"{i.title} {i.brand} {i.category}".lower()
    finally:
        rec.close()


def test_a_reopened_synced_catalog_keeps_its_fts(shop, tmp_path):
    rec = _open(shop, tmp_path / "s")
    rec.sync(shop["dir"])
    rec.close()
    rec = _open(shop, tmp_path / "s")
    try:
        assert rec.catalog.version == 2 and rec.catalog.lexical.available
        assert rec.search("quokkaline", k=1, mode="lexical")[0].item_id == "NEW-2"
    finally:
        rec.close()
