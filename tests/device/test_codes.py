"""Binary codes in the catalog (device/codes.py) and the scan planner (device/planner.py): codes
written at export, kept by sync (renumbered, added, removed) equal to freshly derived ones; the
two-pass scan through the planner against the exact scan; bad codes, mean and R; an old bundle
without codes."""

from __future__ import annotations

import json
import shutil
from pathlib import Path

import numpy as np
import pytest

from shelfrank.device import Recommender
from shelfrank.device import bundle as bfmt
from shelfrank.device.boards import BoardConfigError, parse_board
from shelfrank.device.catalog import Catalog
from shelfrank.device.codes import CODES_FILE, catalog_mean, derive_codes
from shelfrank.device.kernel import topk
from shelfrank.device.planner import Planner, two_pass_topk
from shelfrank.errors import BundleError, InputError
from shelfrank.testing import build_device_bundle, publisher_key, resign_bundle


def _numpy_codes(rows: np.ndarray, scales: np.ndarray, mean: np.ndarray) -> np.ndarray:
    """The codes' definition in numpy: the sign of (int8 row x scale - mean), little-endian bits."""
    v = rows.astype(np.float32) * scales[:, None]
    return np.packbits(v - mean > 0, axis=1, bitorder="little")


def _numpy_two_pass(q, rows, k, *, codes, mean, r, scales, mask):
    """The two-pass scan in numpy: the r rows nearest by Hamming distance (ties to the lower row,
    masked rows never enter), rescored by the exact kernel."""
    n = rows.shape[0]
    ham = np.bitwise_count(codes ^ np.packbits(q - mean > 0, bitorder="little")).sum(axis=1, dtype=np.int64)
    key = ham * (n + 1) + np.arange(n)
    allowed = np.arange(n) if mask is None else np.flatnonzero(mask)
    cand = np.sort(allowed[np.argsort(key[allowed], kind="stable")[:r]])
    ids, scores = topk(q, np.ascontiguousarray(rows[cand]), k, scales=scales[cand])
    return np.where(ids >= 0, cand[np.maximum(ids, 0)], -1), scores


def fresh_codes(cat: Catalog, mean: np.ndarray) -> np.ndarray:
    return _numpy_codes(np.asarray(cat.rows), cat.scales, mean)


def test_export_writes_codes_and_mean(rec):
    m = rec.manifest
    assert m.catalog.files["codes"] == f"catalog/{CODES_FILE}" and f"catalog/{CODES_FILE}" in m.files
    cat = rec.catalog
    mean = catalog_mean(np.asarray(cat.rows), cat.scales)
    np.testing.assert_array_equal(np.asarray(m.catalog.mean, np.float32), mean)
    assert cat.codes.dtype == np.uint8 and cat.codes.shape == (len(cat), (rec.dim + 7) // 8)
    np.testing.assert_array_equal(cat.codes, fresh_codes(cat, mean))
    np.testing.assert_array_equal(derive_codes(cat.rows, cat.scales, mean), fresh_codes(cat, mean))
    # a bit is the sign of (value - mean), little-endian within its byte
    v = cat.rows[3].astype(np.float32) * cat.scales[3] - mean
    assert [(cat.codes[3, j // 8] >> (j % 8)) & 1 for j in range(rec.dim)] == list((v > 0).astype(int))


def _codes_by_id(cat: Catalog) -> dict[str, bytes]:
    return {item_id: cat.codes[i].tobytes() for i, item_id in enumerate(cat.item_ids)}


@pytest.mark.parametrize("method", ["delta", "snapshot"])
def test_sync_keeps_codes_equal_to_fresh_ones(published, tmp_path, method):
    r = Recommender.open(published["bundle"], public_key=published["pub"], state_dir=tmp_path / "state")
    try:
        before = _codes_by_id(r.catalog)
        src = published["dir"]
        if method == "snapshot":  # no delta from version 1: the snapshot
            src = tmp_path / "cdn"
            shutil.copytree(published["dir"], src)
            idx = json.loads((src / "index.json").read_text())
            idx["signed"]["deltas"] = [d for d in idx["signed"]["deltas"] if d["from"] != 1]
            from shelfrank.export.publish import sign_index

            (src / "index.json").write_bytes(sign_index(idx["signed"], published["key"]))
        assert r.sync(src).method == method
        cat = r.catalog
        assert cat.version == 3 and cat.codes is not None
        np.testing.assert_array_equal(cat.codes, fresh_codes(cat, r.catalog_mean))
        after = _codes_by_id(cat)
        assert not set(published["removed"]) & set(after)  # removed items left with their rows
        assert {"NEW-1", "NEW-2", "NEW-3"} <= set(after)
        kept = set(before) & set(after)
        assert len(kept) > 100 and all(after[i] == before[i] for i in kept)  # renumbered, same codes
        # reopened from the state folder: the same codes, and the two-pass scan agrees with exact
        r.close()
        r = Recommender.open(published["bundle"], public_key=published["pub"], state_dir=tmp_path / "state")
        np.testing.assert_array_equal(r.catalog.codes, cat.codes)
        q = r.catalog.vectors(np.array([5]))[0]
        exact = topk(q, r.catalog.rows, 10, scales=r.catalog.scales)
        two = Planner("binary", r=len(r.catalog)).topk(r.catalog, q, 10)
        np.testing.assert_array_equal(two[0], exact[0])
    finally:
        r.close()


@pytest.mark.parametrize("where", [None, {"in_stock": True}, {"allow_ids": []}])
def test_two_pass_through_the_planner_equals_exact_when_r_covers_the_catalog(rec, where):
    cat = rec.catalog
    mask = cat.mask(where)
    planner = Planner("binary", r=len(cat))
    for row in (0, 7, 41):
        q = cat.vectors(np.array([row]))[0]
        exact = topk(q, cat.rows, 12, scales=cat.scales, mask=mask)
        got = planner.topk(cat, q, 12, mask=mask)
        np.testing.assert_array_equal(got[0], exact[0])
        np.testing.assert_array_equal(got[1].view(np.uint32), exact[1].view(np.uint32))  # the same score bits
    assert planner.counts == {"exact": 0, "two_pass": 3} and planner.last == "two_pass"
    # a batch of queries: row by row the same as single ones
    qs = cat.vectors(np.array([1, 2, 3]))
    ids, _ = planner.topk(cat, qs, 5, mask=mask)
    assert ids.shape == (3, 5)
    np.testing.assert_array_equal(ids[1], planner.topk(cat, qs[1], 5, mask=mask)[0])


def test_two_pass_rescores_exactly_and_honours_the_mask(rec):
    cat = rec.catalog
    q = cat.vectors(np.array([9]))[0]
    mask = np.zeros(len(cat), bool)
    mask[::3] = True
    ids, scores = two_pass_topk(q, cat.rows, 10, codes=cat.codes, mean=cat.mean, r=25, scales=cat.scales, mask=mask)
    assert (ids >= 0).all() and mask[ids].all()
    # every score is the exact int8 score of that row, best first, ties to the lower row
    full_ids, full_scores = topk(q, cat.rows, len(cat), scales=cat.scales)
    exact_of = dict(zip(full_ids.tolist(), full_scores.tolist(), strict=True))
    assert scores.tolist() == [exact_of[i] for i in ids.tolist()]
    assert list(zip(-scores, ids, strict=True)) == sorted(zip(-scores, ids, strict=True))
    # the numpy definition and the native kernel agree
    ref = _numpy_two_pass(q, cat.rows, 10, codes=cat.codes, mean=cat.mean, r=25, scales=cat.scales, mask=mask)
    np.testing.assert_array_equal(ids, ref[0])
    # fewer allowed rows than k: -1 / -inf fill, as the exact kernel
    few = np.zeros(len(cat), bool)
    few[[4, 5]] = True
    ids, scores = two_pass_topk(q, cat.rows, 5, codes=cat.codes, mean=cat.mean, r=25, scales=cat.scales, mask=few)
    assert sorted(ids[:2].tolist()) == [4, 5] and (ids[2:] == -1).all() and np.isneginf(scores[2:]).all()


def test_recommend_search_similar_go_through_the_planner(rec, bundle_and_key):
    rec.planner = planner = Planner("binary", r=len(rec.catalog))
    rec.catalog.planner = planner
    exact = Recommender.open(rec.bundle, public_key=bundle_and_key[1], state_dir=rec.state_dir / "exact")
    try:
        exact.catalog.planner = exact.planner = Planner("exact")
        item = rec.catalog.item_ids[3]
        rec.record("u", item, "view")
        exact.record("u", item, "view")
        assert rec.recommend("u", k=5) == exact.recommend("u", k=5)
        assert rec.similar(item, k=5) == exact.similar(item, k=5)
        assert rec.search("Tent", k=5, mode="dense") == exact.search("Tent", k=5, mode="dense")
        assert planner.counts["two_pass"] >= 3 and planner.counts["exact"] == 0
        assert exact.planner.counts["two_pass"] == 0 and exact.planner.last == "exact"
    finally:
        exact.close()


def test_auto_uses_exact_on_a_small_catalog(rec):
    p = Planner("auto", r=10)
    assert p.choose(rec.catalog, 10) == "exact"  # 2,000-odd rows: below the crossover
    assert p.describe(rec.catalog)["scan"] == "exact"
    assert Planner("auto", r=10, min_items=1).choose(rec.catalog, 10) == "two_pass"
    assert Planner("auto", r=len(rec.catalog), min_items=1).choose(rec.catalog, 10) == "exact"  # keeps most rows
    assert Planner("exact").choose(rec.catalog, 10) == "exact"


def test_bad_r_and_first_pass_are_typed_errors():
    with pytest.raises(InputError, match="r = 5 candidates cannot give k = 10"):
        two_pass_topk(
            np.zeros(8, np.float32),
            np.zeros((4, 8), np.int8),
            10,
            codes=np.zeros((4, 1), np.uint8),
            mean=np.zeros(8, np.float32),
            r=5,
            scales=np.ones(4, np.float32),
        )
    with pytest.raises(InputError, match="first_pass must be one of auto, exact, binary"):
        Planner("fast")
    with pytest.raises(InputError, match="first_pass_r must be an integer"):
        Planner("binary", r=0)


BOARD = """name = "t"
description = "test"
cpu = "any"
expected_isa = "scalar"
threads = 1
providers = ["CPUExecutionProvider"]
precision = "int8"
max_catalog_items = 1000
memory_budget_mb = 256
install_prefix = "/opt/shelfrank"
service_user = "shelfrank"
python = "python3"
"""


def test_board_first_pass_settings():
    cfg = parse_board(BOARD + 'first_pass = "binary"\nfirst_pass_r = 500\n', "t.toml")
    assert (cfg.first_pass, cfg.first_pass_r) == ("binary", 500)
    assert (parse_board(BOARD, "t.toml").first_pass, parse_board(BOARD, "t.toml").first_pass_r) == ("auto", 1000)
    with pytest.raises(BoardConfigError, match=r"t.toml: key 'first_pass_r'.*>= 10"):
        parse_board(BOARD + "first_pass_r = 5\n", "t.toml")
    with pytest.raises(BoardConfigError, match=r"t.toml: key 'first_pass_r'.*<= 100000"):
        parse_board(BOARD + "first_pass_r = 10000000\n", "t.toml")
    with pytest.raises(BoardConfigError, match=r"t.toml: key 'first_pass'"):
        parse_board(BOARD + 'first_pass = "pca"\n', "t.toml")


# ---- damaged and old bundles ---------------------------------------------------------------------


def _key(bundle: Path) -> Path:
    return publisher_key(bundle)


@pytest.fixture(scope="module")
def keyed_bundle(tmp_path_factory) -> Path:
    """A tiny bundle built here with its private key beside it (``SHELFRANK_TEST_BUNDLE``, the
    emulated runs' prebuilt bundle, has none: these tests re-sign what they break)."""
    return build_device_bundle(tmp_path_factory.mktemp("codes-bundle"))[0]


@pytest.fixture()
def own_bundle(keyed_bundle, tmp_path) -> Path:
    dst = tmp_path / "b" / "bundle"
    shutil.copytree(keyed_bundle.parent, dst.parent, dirs_exist_ok=True)
    return dst


def test_codes_of_the_wrong_shape_are_a_bundle_error(own_bundle, tmp_path):
    codes = np.load(own_bundle / "catalog" / CODES_FILE)
    np.save(own_bundle / "catalog" / CODES_FILE, codes[:-1])  # one row short
    resign_bundle(own_bundle, _key(own_bundle))
    with pytest.raises(BundleError, match=r"codes\.u8\.npy: expected uint8 binary codes of shape .*re-export"):
        Recommender.open(own_bundle, state_dir=tmp_path / "s")
    np.save(own_bundle / "catalog" / CODES_FILE, codes.astype(np.int16))
    resign_bundle(own_bundle, _key(own_bundle))
    with pytest.raises(BundleError, match=r"codes\.u8\.npy: expected uint8"):
        Recommender.open(own_bundle, state_dir=tmp_path / "s")


def test_a_mean_of_the_wrong_dimension_is_a_bundle_error(own_bundle, tmp_path):
    def cut(m):
        m["catalog"]["mean"] = m["catalog"]["mean"][:-1]
        return m

    resign_bundle(own_bundle, _key(own_bundle), edit=cut)
    with pytest.raises(BundleError, match=r"catalog\.mean has \d+ numbers, not model\.dim"):
        Recommender.open(own_bundle, state_dir=tmp_path / "s")

    def big(m):
        m["catalog"]["mean"] = [5.0] * len(m["catalog"]["mean"])
        return m

    resign_bundle(own_bundle, _key(own_bundle), edit=big)
    with pytest.raises(BundleError, match=r"catalog\.mean"):
        Recommender.open(own_bundle, state_dir=tmp_path / "s")

    def no_mean(m):
        m["catalog"].pop("mean")
        return m

    resign_bundle(own_bundle, _key(own_bundle), edit=no_mean)
    with pytest.raises(BundleError, match=r"catalog\.files\.codes without catalog\.mean"):
        Recommender.open(own_bundle, state_dir=tmp_path / "s")


def test_an_old_bundle_without_codes_opens_and_serves_exactly(own_bundle, keyed_bundle, tmp_path):
    (own_bundle / "catalog" / CODES_FILE).unlink()

    def old(m):
        m["catalog"].pop("mean")
        return m

    resign_bundle(own_bundle, _key(own_bundle), edit=old)
    manifest = bfmt.verify_bundle(own_bundle)
    assert "codes" not in manifest.catalog.files and manifest.catalog.mean is None
    r = Recommender.open(own_bundle, state_dir=tmp_path / "s")
    rec = Recommender.open(keyed_bundle, state_dir=tmp_path / "ref")  # the same bundle with its codes
    try:
        r.catalog.planner = r.planner = Planner("binary")
        assert r.catalog.codes is None and r.catalog_mean is None
        item = r.catalog.item_ids[2]
        for x in (r, rec):
            x.record("u", item, "click")
        assert r.recommend("u", k=6) == rec.recommend("u", k=6)
        assert r.similar(item, k=4) == rec.similar(item, k=4)
        assert r.planner.counts == {"exact": 2, "two_pass": 0}
    finally:
        r.close()
        rec.close()


def test_the_board_sets_the_planner(bundle_and_key, tmp_path):
    board = tmp_path / "b.toml"
    board.write_text(BOARD + 'first_pass = "binary"\nfirst_pass_r = 40\n')
    r = Recommender.open(bundle_and_key[0], public_key=bundle_and_key[1], state_dir=tmp_path / "s", board=str(board))
    try:
        assert (r.planner.first_pass, r.planner.r) == ("binary", 40) and r.catalog.planner is r.planner
        r.similar(r.catalog.item_ids[0], k=5)
        assert r.planner.last == "two_pass"
    finally:
        r.close()


def test_synced_codes_of_another_mean_are_not_used(published, tmp_path):
    r = Recommender.open(published["bundle"], public_key=published["pub"], state_dir=tmp_path / "state")
    r.sync(published["dir"])
    path = r.catalog.root
    r.close()
    meta = json.loads((path / "meta.json").read_text())
    assert len(meta["codes_mean"]) == 32
    (path / "meta.json").write_text(json.dumps({**meta, "codes_mean": "0" * 32}))  # a re-export since
    r = Recommender.open(published["bundle"], public_key=published["pub"], state_dir=tmp_path / "state")
    try:
        assert r.catalog.version == 3 and r.catalog.codes is None  # exact scans until the next sync
    finally:
        r.close()
