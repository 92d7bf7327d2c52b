"""Merchandising rules (device/rules.py): the order of application on real bundles, set locally and
published → synced (real publish folders, real SQLite), bad documents refused while the previous
rules keep serving."""

from __future__ import annotations

import datetime as dt
import json
import shutil

import msgspec
import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from shelfrank.device import Recommender
from shelfrank.device.formats import MAX_K, Rules
from shelfrank.errors import ExportValidationError, RulesError, SyncError
from shelfrank.export.publish import publish_rules, sign_index
from shelfrank.testing import publish_records, publisher_key

# ---- applied on the device -----------------------------------------------------------------------


def ids(items) -> list[str]:
    return [it.item_id for it in items]


def test_pin_puts_an_item_at_its_position(rec):
    base = ids(rec.recommend("nobody", k=10))
    tail = rec.catalog.item_ids[rec.catalog.popularity_order()[-1]]  # the least popular: never ranked here
    rec.set_rules({"format_version": 1, "pin": [{"item_id": tail, "position": 3}]})
    got = rec.recommend("nobody", k=10)
    assert ids(got) == [*base[:2], tail, *base[2:9]]
    assert got[2].reason == "pinned" and got[2].reason_text == "featured by the shop"
    assert {it.reason for i, it in enumerate(got) if i != 2} == {"popular"}
    # a pinned item that was ranked keeps its own score and moves (no duplicate)
    rec.set_rules({"format_version": 1, "pin": [{"item_id": base[6], "position": 1}]})
    assert ids(rec.recommend("nobody", k=10)) == [base[6], *base[:6], *base[7:]]


def test_a_filter_pin_takes_the_best_ranked_match(rec):
    base = rec.recommend("nobody", k=10)
    category = base[4].category
    first = next(it.item_id for it in base if it.category == category)
    rec.set_rules({"format_version": 1, "pin": [{"where": {"category": category}, "position": 1}]})
    got = ids(rec.recommend("nobody", k=10))
    assert got[0] == first and got.count(first) == 1


def test_boost_and_bury_reorder_the_pool(rec):
    base = ids(rec.recommend("nobody", k=60))
    rec.set_rules({"format_version": 1, "boost": [{"ids": [base[5]], "positions": 3}]})
    assert ids(rec.recommend("nobody", k=10)) == [base[0], base[1], base[5], base[2], base[3], base[4], *base[6:10]]
    # an item beyond k comes into view when its boost reaches (the pool is over-fetched)
    rec.set_rules({"format_version": 1, "boost": [{"ids": [base[30]], "positions": 30}]})
    assert ids(rec.recommend("nobody", k=10))[0] == base[30]
    rec.set_rules({"format_version": 1, "bury": [{"ids": base[:2]}]})
    assert ids(rec.recommend("nobody", k=10)) == base[2:12]
    # bury wins over boost: one sort, buried last
    rec.set_rules({"format_version": 1, "boost": [{"ids": [base[3]], "positions": 3}], "bury": [{"ids": [base[3]]}]})
    assert base[3] not in ids(rec.recommend("nobody", k=10))


def test_category_caps(rec):
    pool = rec.recommend("nobody", k=80)
    rec.set_rules({"format_version": 1, "category_caps": {"*": 1}})
    got = rec.recommend("nobody", k=10)
    cats = [it.category for it in got]
    assert len(set(cats)) == len(cats)
    want, seen = [], set()
    for it in pool:  # the first of each category, in the ranked order
        if it.category not in seen:
            seen.add(it.category)
            want.append(it.item_id)
    assert ids(got) == want[:10]
    cats = [it.category for it in pool[:20]]
    top = max(set(cats), key=cats.count)  # the commonest category of the first 20 (4 of them)
    rec.set_rules({"format_version": 1, "category_caps": {top: 2}})  # only that one capped
    got = rec.recommend("nobody", k=20)
    assert cats.count(top) > 2 and sum(it.category == top for it in got) == 2
    tops = [it.item_id for it in pool if it.category == top]
    assert ids(got) == [it.item_id for it in pool if it.item_id not in tops[2:]][:20]


def test_allow_and_deny_join_the_mask(rec):
    base = rec.recommend("nobody", k=10)
    denied = base[0].category
    rec.set_rules({"format_version": 1, "deny": {"where": {"category": denied}, "ids": [base[1].item_id]}})
    got = rec.recommend("nobody", k=10)
    assert len(got) == 10 and all(it.category != denied for it in got) and base[1].item_id not in ids(got)
    allow = ids(rec.catalog.items(range(20, 27), [0.0] * 7))
    rec.set_rules({"format_version": 1, "allow": {"ids": allow}})
    assert set(ids(rec.recommend("nobody", k=10))) == set(allow)
    # a pin obeys the lists and the call's where
    rec.set_rules({"format_version": 1, "deny": {"ids": [allow[0]]}, "pin": [{"item_id": allow[0], "position": 1}]})
    assert allow[0] not in ids(rec.recommend("nobody", k=10))
    out = next(i for i in range(len(rec.catalog)) if not rec.catalog.in_stock[i])
    out_id = rec.catalog.item_ids[out]
    rec.set_rules({"format_version": 1, "pin": [{"item_id": out_id, "position": 1}]})
    assert ids(rec.recommend("nobody", k=5))[0] == out_id
    assert out_id not in ids(rec.recommend("nobody", k=5, where={"in_stock": True}))


def test_every_surface_and_the_next_call(hybrid_rec):
    rec = hybrid_rec
    items = list(rec.catalog.item_ids)
    for i in (3, 8, 13):
        rec.record("shopper", items[i], "view")
    seen = items[3]
    for diversity in (0.0, 0.5):
        for ranker in ("hybrid", "tower"):
            base = ids(rec.recommend("shopper", k=8, diversity=diversity, ranker=ranker))
            tail = next(i for i in reversed(items) if i not in base and i != seen)
            rec.set_rules(
                {"format_version": 1, "pin": [{"item_id": tail, "position": 2}, {"item_id": seen, "position": 1}]}
            )
            got = rec.recommend("shopper", k=8, diversity=diversity, ranker=ranker)
            # the seen item is never pinned back (exclude_seen); the next call already has the rules
            assert ids(got) == [base[0], tail, *base[1:7]] and got[1].reason == "pinned"
            many = rec.recommend_many(["shopper", "nobody"], k=8, diversity=diversity, ranker=ranker)
            assert many[0] == got and ids(many[1])[1] == tail
            rec.set_rules(None)
            assert ids(rec.recommend("shopper", k=8, diversity=diversity, ranker=ranker)) == base
    sim = ids(rec.similar(items[0], k=7))
    rec.set_rules({"format_version": 1, "bury": [{"ids": sim[:1]}], "pin": [{"item_id": items[0], "position": 1}]})
    assert ids(rec.similar(items[0], k=6)) == sim[1:7]  # never the item itself, even pinned
    rec.set_rules({"format_version": 1, "surfaces": ["recommend"], "bury": [{"ids": sim[:1]}]})
    assert ids(rec.similar(items[0], k=6)) == sim[:6]


def test_bad_documents_are_typed_and_the_previous_rules_keep_serving(rec):
    base = ids(rec.recommend("nobody", k=5))
    good = {"format_version": 1, "bury": [{"ids": base[:1]}]}
    rec.set_rules(good)
    after = ids(rec.recommend("nobody", k=5))
    local = (rec.state_dir / "rules" / "local.json").read_bytes()
    past = (dt.datetime.now(dt.timezone.utc) - dt.timedelta(hours=1)).isoformat()
    for bad, match in [
        ({"format_version": 1, "bost": []}, "unknown field `bost`"),
        ({"format_version": 2}, "format_version 2 is not supported"),
        ({"format_version": 1, "bury": [{}]}, "needs ids, a non-empty where"),
        ({"format_version": 1, "bury": [{"where": {"colour": "red"}}]}, "colour"),
        ({"format_version": 1, "boost": [{"ids": ["x"], "positions": 0}]}, "positions"),
        ({"format_version": 1, "pin": [{"item_id": "x", "position": 1, "where": {"brand": "y"}}]}, "exactly one"),
        ({"format_version": 1, "pin": [{"item_id": base[1], "position": 1}] * 2}, "same position"),
        ({"format_version": 1, "pin": [{"item_id": base[1], "position": MAX_K + 1}]}, "position"),
        ({"format_version": 1, "deny": {"ids": ["a"] * 1001}}, "length <= 1000"),
        ({"format_version": 1, "bury": [{"where": {"category": "No Such Category"}}]}, "No Such Category"),
        ({"format_version": 1, "category_caps": {"No Such Category": 1}}, "No Such Category"),
        ({"format_version": 1, "pin": [{"item_id": "NO-SUCH-ITEM", "position": 1}]}, "NO-SUCH-ITEM"),
        ({"format_version": 1, "expires": past}, "expired"),
        ("not a mapping", "mapping"),
    ]:
        with pytest.raises(RulesError, match=match):
            rec.set_rules(bad)
        assert ids(rec.recommend("nobody", k=5)) == after
    assert (rec.state_dir / "rules" / "local.json").read_bytes() == local
    assert isinstance(RulesError("x"), ValueError)  # an input error for a local caller


def test_local_rules_survive_reopen_and_a_broken_file_is_ignored(bundle_and_key, tmp_path):
    bundle, pub = bundle_and_key
    with Recommender.open(bundle, public_key=pub, state_dir=tmp_path / "s") as rec:
        base = ids(rec.recommend("nobody", k=6))
        rec.set_rules({"format_version": 1, "bury": [{"ids": base[:1]}]})
    with Recommender.open(bundle, public_key=pub, state_dir=tmp_path / "s") as rec:
        assert ids(rec.recommend("nobody", k=5)) == base[1:6]
        assert isinstance(rec.merch.local, Rules)
        other = Recommender.open(bundle, public_key=pub, state_dir=tmp_path / "s")
        other.set_rules(None)  # another process clears them: refresh sees it
        assert rec.refresh() and ids(rec.recommend("nobody", k=5)) == base[:5]
        other.set_rules({"format_version": 1, "bury": [{"ids": base[:1]}]})
        assert rec.refresh() and ids(rec.recommend("nobody", k=5)) == base[1:6]
        (rec.state_dir / "rules" / "local.json").write_text('{"format_version": 1, "bury": "oops"}')
        assert rec.refresh()  # logged; the rules that were serving keep serving, nothing raises
        assert ids(rec.recommend("nobody", k=5)) == base[1:6]
        other.close()


def test_rules_document_ignored_after_it_expires(rec):
    base = ids(rec.recommend("nobody", k=5))
    soon = dt.datetime.now(dt.timezone.utc) + dt.timedelta(seconds=3600)
    rec.set_rules({"format_version": 1, "bury": [{"ids": base[:1]}], "expires": soon.isoformat()})
    assert ids(rec.recommend("nobody", k=5)) != base
    rec.merch.local = msgspec.structs.replace(rec.merch.local, expires=soon - dt.timedelta(days=1))  # time passes
    assert ids(rec.recommend("nobody", k=5)) == base


# ---- published → synced --------------------------------------------------------------------------


@pytest.fixture()
def cdn(published, tmp_path):
    """A private copy of the shared publish folder (catalog versions 2 and 3)."""
    dst = tmp_path / "cdn"
    shutil.copytree(published["dir"], dst)
    return dst


@pytest.fixture()
def srec(published, tmp_path):
    r = Recommender.open(published["bundle"], public_key=published["pub"], state_dir=tmp_path / "state")
    yield r
    r.close()


def test_publish_then_sync_applies_rules_with_the_catalog(srec, published, cdn):
    # NEW-3 is only in catalog version 3: the rules are checked against the catalog they arrive with
    body = publish_rules(cdn, {"pin": [{"item_id": "NEW-3", "position": 1}]}, key=published["key"])
    assert (
        body["version"] == 1
        and json.loads((cdn / "index.json").read_text())["signed"]["rules"]["path"] == "rules/1.json"
    )
    res = srec.sync(cdn)
    assert (res.to_version, res.rules, res.stock) == (3, "version 1", "none")
    got = srec.recommend("nobody", k=5)
    assert got[0].item_id == "NEW-3" and got[0].reason == "pinned"
    assert srec.sync(cdn).rules == "up to date"
    # a rules-only publish: the same catalog version, a re-signed index
    publish_rules(cdn, {"bury": [{"ids": ["NEW-3"]}]}, key=published["key"])
    res = srec.sync(cdn)
    assert (res.method, res.rules) == ("up to date", "version 2")
    assert "NEW-3" not in ids(srec.recommend("nobody", k=5))
    # a catalog publish keeps the rules entry
    records = [srec.catalog.item(i) for i in range(len(srec.catalog))]
    fields = ("item_id", "title", "category", "brand", "price", "in_stock")
    publish_records(
        published["bundle"], cdn, [{f: getattr(it, f) for f in fields} for it in records[1:]], _key_path(published)
    )
    assert json.loads((cdn / "index.json").read_text())["signed"]["rules"]["path"] == "rules/2.json"
    res = srec.sync(cdn)
    assert (res.to_version, res.rules) == (4, "up to date") and "NEW-3" not in ids(srec.recommend("nobody", k=5))


def _key_path(published):
    return publisher_key(published["bundle"])


def test_publish_refuses_rules_the_catalog_cannot_satisfy(published, cdn):
    with pytest.raises(ExportValidationError, match="No Such Category"):
        publish_rules(
            cdn, {"boost": [{"where": {"category": "No Such Category"}, "positions": 2}]}, key=published["key"]
        )
    with pytest.raises(ExportValidationError, match="unknown field"):
        publish_rules(cdn, {"pins": []}, key=published["key"])
    assert "rules" not in json.loads((cdn / "index.json").read_text())["signed"]
    with pytest.raises(ExportValidationError, match="no such index"):
        publish_rules(cdn / "nowhere", {}, key=published["key"])


def _resign_rules(cdn, key, doc: dict, name: str) -> None:
    """Put ``doc`` in the folder as a rules file the index pins, bypassing publish's checks (a hostile
    or buggy publisher)."""
    from shelfrank.device import bundle as bfmt

    path = cdn / "rules" / name
    path.parent.mkdir(exist_ok=True)
    path.write_bytes(bfmt.canonical_json(doc))
    idx = json.loads((cdn / "index.json").read_text())
    idx["signed"]["rules"] = {"path": f"rules/{name}", "sha256": bfmt.sha256_file(path), "size": path.stat().st_size}
    (cdn / "index.json").write_bytes(sign_index(idx["signed"], key))


def test_bad_synced_rules_keep_the_previous_rules(srec, published, cdn):
    key = published["key"]
    srec.sync(cdn)  # catalog version 3, no rules yet
    base = ids(srec.recommend("nobody", k=6))
    publish_rules(cdn, {"bury": [{"ids": base[:1]}]}, key=key)
    srec.sync(cdn)
    good = ids(srec.recommend("nobody", k=5))
    assert good == base[1:6]
    for doc, match in [
        ({"format_version": 1, "version": 5, "bury": [{"where": {"category": "Nope"}}]}, "Nope"),
        ({"format_version": 1, "version": 5, "extra": 1}, "unknown field"),
        ({"format_version": 1, "version": 0}, "rollback"),
    ]:
        _resign_rules(cdn, key, doc, "bad.json")
        with pytest.raises(RulesError, match=match) as e:
            srec.sync(cdn)
        assert isinstance(e.value, SyncError)
        assert ids(srec.recommend("nobody", k=5)) == good
    # a tampered file: the index's hash refuses it
    bad = cdn / "rules" / "bad.json"
    bad.write_bytes(bad.read_bytes().replace(b'"version": 0', b'"version": 9'))  # same size, another hash
    with pytest.raises(SyncError, match="sha256 mismatch"):
        srec.sync(cdn)
    assert ids(srec.recommend("nobody", k=5)) == good


def test_bad_rules_with_a_catalog_change_still_move_the_catalog(srec, published, cdn):
    _resign_rules(
        cdn,
        published["key"],
        {"format_version": 1, "version": 1, "pin": [{"item_id": "GONE", "position": 1}]},
        "1.json",
    )
    with pytest.raises(RulesError, match=r"catalog synced to version 3, but: .*GONE"):
        srec.sync(cdn)
    assert srec.catalog.version == 3 and srec.merch.doc(srec.catalog) is None


def test_local_rules_win_over_published(srec, published, cdn):
    publish_rules(cdn, {"pin": [{"item_id": "NEW-3", "position": 1}]}, key=published["key"])
    mine = srec.catalog.item_ids[7]  # in catalog versions 1 and 3
    srec.set_rules({"format_version": 1, "pin": [{"item_id": mine, "position": 1}]})
    srec.sync(cdn)
    assert ids(srec.recommend("nobody", k=3))[0] == mine
    srec.set_rules(None)
    assert ids(srec.recommend("nobody", k=3))[0] == "NEW-3"


def test_a_serving_process_sees_rules_another_process_synced(published, cdn, tmp_path):
    publish_rules(cdn, {"pin": [{"item_id": "NEW-3", "position": 2}]}, key=published["key"])
    state = tmp_path / "shared-state"
    serving = Recommender.open(published["bundle"], public_key=published["pub"], state_dir=state)
    syncing = Recommender.open(published["bundle"], public_key=published["pub"], state_dir=state)
    try:
        syncing.sync(cdn)
        assert serving.refresh()
        assert serving.catalog.version == 3 and ids(serving.recommend("nobody", k=3))[1] == "NEW-3"
        assert not serving.refresh()  # nothing new: a readlink and two stats
    finally:
        serving.close()
        syncing.close()


def test_the_cli_publishes_rules_and_stock_and_sync_says_so(published, cdn, tmp_path, capsys):
    from shelfrank.cli import main

    key = str(_key_path(published))
    rules, stock = tmp_path / "rules.json", tmp_path / "stock.json"
    rules.write_text(json.dumps({"pin": [{"item_id": "NEW-3", "position": 1}], "category_caps": {"*": 3}}))
    stock.write_text(json.dumps({"NEW-3": {"price": 42.0}}))
    argv = ["publish", "--bundle", str(published["bundle"]), "--out", str(cdn), "--key", key]
    assert main([*argv, "--rules", str(rules), "--stock", str(stock)]) == 0
    out = capsys.readouterr().out.splitlines()
    assert out == [
        f"published rules version 1 to {cdn}",
        f"published stock feed version 1 (1 items) for catalog version 3 to {cdn}",
    ]
    state = ["--public-key", str(published["pub"]), "--state", str(tmp_path / "state")]
    assert main(["sync", str(published["bundle"]), str(cdn), *state]) == 0
    assert capsys.readouterr().out.strip().endswith("rules version 1, stock version 1 (1 items, 0 unknown skipped)")
    with Recommender.open(published["bundle"], public_key=published["pub"], state_dir=tmp_path / "state") as r:
        top = r.recommend("nobody", k=3)[0]
        assert (top.item_id, top.price, top.reason) == ("NEW-3", 42.0, "pinned")
    # bad input: one error line, no traceback
    rules.write_text('{"pin": [{"item_id": "NEW-3"}]}')
    for extra, needle in [
        (["--rules", str(rules)], "'pin[0]': Object missing required field `position`"),
        (["--rules", str(tmp_path / "none.json")], "cannot read"),
        ([], "nothing to publish"),
    ]:
        assert main([*argv, *extra]) == 2
        err = capsys.readouterr().err.strip().splitlines()
        assert len(err) == 1 and err[0].startswith("error: ") and needle in err[0], err


# ---- fuzz: whatever the document, success or a ShelfrankError ----------------------------------

_leaf = st.one_of(
    st.none(),
    st.booleans(),
    st.integers(min_value=-(2**70), max_value=2**70),
    st.floats(allow_nan=False, allow_infinity=False),
    st.sampled_from(["", "*", "Kitchen", "SKU-00001", "a\x00b", "2999-01-01T00:00:00+00:00", "recommend"]),
    st.text(max_size=8),
)
_json = st.recursive(
    _leaf,
    lambda kids: st.lists(kids, max_size=3) | st.dictionaries(st.text(max_size=6), kids, max_size=3),
    max_leaves=10,
)
_VALID = {
    "format_version": 1,
    "surfaces": ["recommend", "similar"],
    "allow": {"where": {"in_stock": True}},
    "deny": {"ids": ["SKU-00002"], "where": {"brand": "Aurora"}},
    "boost": [{"where": {"category": "Kitchen"}, "positions": 3}],
    "bury": [{"where": {"max_price": 2.0}}],
    "category_caps": {"Kitchen": 2, "*": 4},
    "pin": [{"item_id": "SKU-00001", "position": 1}, {"where": {"category": "Coffee"}, "position": 4}],
}


def _mutate(doc, data):
    """``doc`` with one to three values replaced by any JSON value, keys dropped or added."""
    doc = json.loads(json.dumps(doc))
    for _ in range(data.draw(st.integers(1, 3))):
        node = doc
        while isinstance(node, (dict, list)) and node and data.draw(st.booleans()):
            key = data.draw(st.sampled_from(sorted(node) if isinstance(node, dict) else list(range(len(node)))))
            if not isinstance(node[key], (dict, list)):
                break
            node = node[key]
        if isinstance(node, dict) and node:
            key = data.draw(st.sampled_from(sorted(node)))
            op = data.draw(st.sampled_from(["replace", "drop", "add"]))
            if op == "replace":
                node[key] = data.draw(_json)
            elif op == "drop":
                del node[key]
            else:
                node[data.draw(st.text(max_size=6))] = data.draw(_json)
        elif isinstance(node, list) and node:
            node[data.draw(st.integers(0, len(node) - 1))] = data.draw(_json)
    return doc


@pytest.mark.fuzz
def test_fuzz_rules_and_stock(rec):
    from shelfrank.errors import ShelfrankError

    rec.set_rules({"format_version": 1})  # the tiny bundle's catalog: SKU-00001 … exists
    ok = ids(rec.recommend("nobody", k=5))

    @settings(max_examples=400, deadline=None, database=None, suppress_health_check=[HealthCheck.too_slow])
    @given(st.data())
    def run(data):
        doc = _mutate(_VALID, data) if data.draw(st.booleans()) else data.draw(_json)
        try:
            rec.set_rules(doc)
        except ShelfrankError:
            pass
        try:
            rec.merch.check_published(json.dumps(doc).encode(), rec.catalog, "fuzz")
        except ShelfrankError:
            pass
        try:
            rec.update_stock(data.draw(_json) if data.draw(st.booleans()) else {"SKU-00003": data.draw(_json)})
        except ShelfrankError:
            pass
        rec.recommend("nobody", k=5)  # whatever was accepted serves
        rec.similar("SKU-00001", k=3)

    run()
    rec.set_rules({"format_version": 1})
    assert len(rec.recommend("nobody", k=5)) == len(ok)
