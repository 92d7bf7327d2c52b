"""The catalog's compact columns (device/columns.py): memory-mapped ids and titles, the id index;
an older catalog without the string files reads the same from items.sqlite; damaged files are
typed errors naming the file."""

from __future__ import annotations

import numpy as np
import pytest

from shelfrank.device.catalog import Catalog
from shelfrank.device.catalog_files import TEXT_FILES, read_catalog_dir, write_catalog_dir
from shelfrank.device.columns import IdIndex, Strings
from shelfrank.errors import BundleError, UnknownItemError


@pytest.fixture()
def catalog_dir(rec, tmp_path):
    root = tmp_path / "cat"
    write_catalog_dir(root, read_catalog_dir(rec.catalog.root), fsync=False)
    return root


def test_strings_and_id_index():
    ids = Strings.build(["a", "ß-2", "", "a-long-id-" * 20, "z"])
    assert len(ids) == 5 and ids[1] == "ß-2" and ids[-1] == "z" and ids[1:3] == ["ß-2", ""]
    assert list(ids) == ["a", "ß-2", "", "a-long-id-" * 20, "z"] and ids == list(ids)
    with pytest.raises(IndexError):
        ids[5]
    index = IdIndex(ids)
    assert [index[i] for i in ids] == list(range(5)) and len(index) == 5
    assert "nope" not in index and index.get("nope") is None and 3 not in index
    assert index.rows_of(["z", "nope", "a", "ß-2"]).tolist() == [4, -1, 0, 1]
    with pytest.raises(KeyError):
        index["nope"]
    assert IdIndex(Strings.build([])).rows_of(["a"]).tolist() == [-1]


def test_mapped_columns_equal_the_sqlite_ones(catalog_dir, rec):
    new = Catalog(catalog_dir, version=1, dim=rec.dim)
    assert isinstance(new.item_ids, Strings)
    for name in TEXT_FILES.values():  # an older catalog: no string files, read from items.sqlite
        (catalog_dir / name).unlink()
    old = Catalog(catalog_dir, version=1, dim=rec.dim)
    assert list(new.item_ids) == list(old.item_ids) == list(rec.catalog.item_ids)
    assert [new.title(i) for i in range(len(new))] == [old.title(i) for i in range(len(old))]
    some = list(old.item_ids)[::37]
    assert [new.index[i] for i in some] == [old.index[i] for i in some]
    assert new.items([3, 1], [0.5, 0.25]) == old.items([3, 1], [0.5, 0.25])
    with pytest.raises(UnknownItemError):
        new.row("no-such-item")


def test_damaged_string_columns_are_bundle_errors(catalog_dir, rec):
    ends = np.load(catalog_dir / TEXT_FILES["title_ends"])
    bad = ends.copy()
    bad[5], bad[6] = bad[6], bad[5]
    np.save(catalog_dir / TEXT_FILES["title_ends"], bad)
    with pytest.raises(BundleError, match=r"titles\.ends\.npy: end offsets decrease"):
        Catalog(catalog_dir, version=1, dim=rec.dim)
    np.save(catalog_dir / TEXT_FILES["title_ends"], ends[:-1])
    with pytest.raises(BundleError, match=r"titles\.ends\.npy: expected int64 \(\d+,\) end offsets"):
        Catalog(catalog_dir, version=1, dim=rec.dim)
    np.save(catalog_dir / TEXT_FILES["title_ends"], ends)
    ids = np.load(catalog_dir / TEXT_FILES["ids"])
    ids[0] = ord("#")  # the first id's first letter
    np.save(catalog_dir / TEXT_FILES["ids"], ids)
    with pytest.raises(BundleError, match=r"ids\.u8\.npy: row 0 disagrees with items\.sqlite"):
        Catalog(catalog_dir, version=1, dim=rec.dim)
