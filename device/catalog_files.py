"""Reading and writing one catalog version's files (shared by export, publish and sync).

A catalog version is a folder with ``items.sqlite`` (row, item_id, title, category, brand, price,
in_stock, popularity; and its FTS5 index ``items_fts``, device/lexical.py), ``emb.i8.npy`` (N × d int8)
and ``scale.f32.npy`` (N float32); optionally the hybrid's neighbour table (``nbr.*.npy``) and the
binary codes of the two-pass scan (``codes.u8.npy``, N × ceil(d/8) uint8, device/codes.py); the
ids and titles again as memory-mapped string columns (``ids.*``, ``titles.*``: a UTF-8 blob and
int64 end offsets, device/columns.py), so that a device holds no per-item Python objects for them.
"""

from __future__ import annotations

import os
import sqlite3
from dataclasses import dataclass
from pathlib import Path

import numpy as np

from shelfrank.device.codes import CODES_FILE
from shelfrank.device.columns import write_strings
from shelfrank.device.lexical import build_fts
from shelfrank.errors import InputError

COLUMNS = ("item_id", "title", "category", "brand", "price", "in_stock", "popularity")
FILES = {"rows": "emb.i8.npy", "scales": "scale.f32.npy", "items": "items.sqlite"}
# optional: the hybrid ranker's co-occurrence neighbours of each row (device/ranker.py)
NEIGHBOR_FILES = {"nbr_ids": "nbr.i32.npy", "nbr_weights": "nbr.f16.npy"}
# optional: the binary codes of the two-pass scan (device/codes.py); the mean is the manifest's
CODE_FILES = {"codes": CODES_FILE}
# the ids and titles of items.sqlite as string columns (device/columns.py), memory-mapped on the device;
# a catalog without them (an older bundle) is read into memory from items.sqlite
TEXT_FILES = {
    "ids": "ids.u8.npy",
    "id_ends": "ids.ends.npy",
    "titles": "titles.u8.npy",
    "title_ends": "titles.ends.npy",
}


@dataclass
class CatalogData:
    """A catalog version in memory: one metadata dict per row, int8 rows and their scales."""

    items: list[dict]
    rows: np.ndarray
    scales: np.ndarray
    # (ids int32 (N, M), -1 padded; weights float16 (N, M)): the co-occurrence neighbours, or None
    neighbors: tuple[np.ndarray, np.ndarray] | None = None
    # uint8 (N, ceil(d/8)): the binary codes (device/codes.py), or None
    codes: np.ndarray | None = None

    def check(self, dim: int, where: str) -> None:
        """Refuse NaN/inf, wrong dtypes or dimensions, duplicate or empty ids (``where`` names the source)."""
        n = len(self.items)
        if self.rows.dtype != np.int8 or self.rows.shape != (n, dim):
            raise InputError(f"{where}: rows must be int8 ({n}, {dim}), got {self.rows.dtype} {self.rows.shape}")
        if self.scales.dtype != np.float32 or self.scales.shape != (n,):
            raise InputError(f"{where}: scales must be float32 ({n},), got {self.scales.dtype} {self.scales.shape}")
        if not np.isfinite(self.scales).all() or (self.scales < 0).any():
            bad = int(np.flatnonzero(~np.isfinite(self.scales) | (self.scales < 0))[0])
            raise InputError(f"{where}: scale of item {self.items[bad].get('item_id')!r} is NaN, inf or negative")
        ids = [it.get("item_id") for it in self.items]
        if any(not isinstance(i, str) or not i for i in ids):
            raise InputError(f"{where}: every item needs a non-empty string item_id")
        if len(set(ids)) != n:
            raise InputError(f"{where}: duplicate item ids")
        if self.neighbors is not None:
            nid, nw = self.neighbors
            if (
                nid.dtype != np.int32
                or nid.ndim != 2
                or nid.shape[0] != n
                or nw.dtype != np.float16
                or nw.shape != nid.shape
            ):
                raise InputError(f"{where}: neighbours must be int32 and float16 arrays of shape ({n}, M)")
            if nid.size and (nid.min() < -1 or nid.max() >= n):
                raise InputError(f"{where}: a neighbour id is outside -1..{n - 1}")
            if nw.size and not (np.isfinite(nw).all() and nw.min() >= 0):
                raise InputError(f"{where}: neighbour weights must be finite and >= 0")
        if self.codes is not None and (self.codes.dtype != np.uint8 or self.codes.shape != (n, (dim + 7) // 8)):
            raise InputError(
                f"{where}: codes must be uint8 ({n}, {(dim + 7) // 8}), got {self.codes.dtype} {self.codes.shape}"
            )

    def neighbors_for(self, old_rows: np.ndarray) -> tuple[np.ndarray, np.ndarray] | None:
        """The neighbour table of a new catalog whose row j was this catalog's row ``old_rows[j]``
        (-1: an item this one does not have), renumbered.

        Every neighbour still names the same item; a neighbour missing from the new catalog leaves
        the list (the rest move up, -1 pads the end), so a removed item never comes back as a
        candidate; a new item starts with no neighbours.
        """
        if self.neighbors is None:
            return None
        nid, nw = self.neighbors
        old_rows = np.asarray(old_rows, np.int64)
        new_of = np.full(len(self.items) + 1, -1, np.int64)  # index -1 (padding) maps to -1
        have = old_rows >= 0
        new_of[old_rows[have]] = np.flatnonzero(have)
        ids = np.full((len(old_rows), nid.shape[1]), -1, np.int64)
        ids[have] = new_of[nid[old_rows[have]]]
        w = np.zeros(ids.shape, np.float16)
        w[have] = nw[old_rows[have]]
        w[ids < 0] = 0
        order = np.argsort(ids < 0, axis=1, kind="stable")  # kept entries first, in their order
        return np.take_along_axis(ids, order, 1).astype(np.int32), np.take_along_axis(w, order, 1)


def write_catalog_dir(root: str | Path, data: CatalogData, *, fsync: bool = True) -> dict[str, str]:
    """Write the three files (and the neighbour table and the codes, when it has them) into ``root``
    (created); returns {role: file name}."""
    root = Path(root)
    root.mkdir(parents=True, exist_ok=True)
    np.save(root / FILES["rows"], np.ascontiguousarray(data.rows, np.int8))
    np.save(root / FILES["scales"], np.ascontiguousarray(data.scales, np.float32))
    db = root / FILES["items"]
    if db.exists():
        db.unlink()
    con = sqlite3.connect(db)
    with con:
        con.execute(
            "CREATE TABLE items (row INTEGER PRIMARY KEY, item_id TEXT UNIQUE NOT NULL, title TEXT NOT NULL, "
            "category TEXT, brand TEXT, price REAL, in_stock INTEGER NOT NULL, popularity REAL NOT NULL)"
        )
        con.executemany(
            "INSERT INTO items VALUES (?,?,?,?,?,?,?,?)",
            (
                (
                    i,
                    it["item_id"],
                    it["title"],
                    it.get("category"),
                    it.get("brand"),
                    it.get("price"),
                    int(bool(it.get("in_stock", True))),
                    float(it.get("popularity") or 0.0),
                )
                for i, it in enumerate(data.items)
            ),
        )
        build_fts(con)  # lexical search (device/lexical.py); without FTS5 here, logged and skipped
    con.close()
    files = dict(FILES)
    if data.neighbors is not None:
        np.save(root / NEIGHBOR_FILES["nbr_ids"], np.ascontiguousarray(data.neighbors[0], np.int32))
        np.save(root / NEIGHBOR_FILES["nbr_weights"], np.ascontiguousarray(data.neighbors[1], np.float16))
        files.update(NEIGHBOR_FILES)
    else:
        for name in NEIGHBOR_FILES.values():
            (root / name).unlink(missing_ok=True)
    write_strings(root / TEXT_FILES["ids"], root / TEXT_FILES["id_ends"], (it["item_id"] for it in data.items))
    write_strings(root / TEXT_FILES["titles"], root / TEXT_FILES["title_ends"], (it["title"] for it in data.items))
    files.update(TEXT_FILES)
    if data.codes is not None:
        np.save(root / CODES_FILE, np.ascontiguousarray(data.codes, np.uint8))
        files.update(CODE_FILES)
    else:
        (root / CODES_FILE).unlink(missing_ok=True)
    if fsync:
        for name in files.values():
            with open(root / name, "rb") as f:
                os.fsync(f.fileno())
        fd = os.open(root, os.O_RDONLY)
        try:
            os.fsync(fd)
        finally:
            os.close(fd)
    return files


def read_catalog_dir(root: str | Path) -> CatalogData:
    root = Path(root)
    con = sqlite3.connect(f"file:{root / FILES['items']}?mode=ro&immutable=1", uri=True)
    try:
        recs = con.execute(f"SELECT {', '.join(COLUMNS)} FROM items ORDER BY row").fetchall()
    finally:
        con.close()
    items = [dict(zip(COLUMNS, r, strict=True)) for r in recs]
    for it in items:
        it["in_stock"] = bool(it["in_stock"])
    nbr = None
    if (root / NEIGHBOR_FILES["nbr_ids"]).exists():
        nbr = (np.load(root / NEIGHBOR_FILES["nbr_ids"]), np.load(root / NEIGHBOR_FILES["nbr_weights"]))
    codes = np.load(root / CODES_FILE) if (root / CODES_FILE).exists() else None
    return CatalogData(items, np.load(root / FILES["rows"]), np.load(root / FILES["scales"]), nbr, codes)
