"""Reading and writing one catalog version's files (shared by export, publish and sync).

A catalog version is a folder with ``items.sqlite`` (row, item_id, title, category, brand, price,
in_stock, popularity), ``emb.i8.npy`` (N × d int8) and ``scale.f32.npy`` (N float32).
"""

from __future__ import annotations

import os
import sqlite3
from dataclasses import dataclass
from pathlib import Path

import numpy as np

from shelfrank.errors import InputError

COLUMNS = ("item_id", "title", "category", "brand", "price", "in_stock", "popularity")
FILES = {"rows": "emb.i8.npy", "scales": "scale.f32.npy", "items": "items.sqlite"}


@dataclass
class CatalogData:
    """A catalog version in memory: one metadata dict per row, int8 rows and their scales."""

    items: list[dict]
    rows: np.ndarray
    scales: np.ndarray

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


def write_catalog_dir(root: str | Path, data: CatalogData, *, fsync: bool = True) -> dict[str, str]:
    """Write the three files into ``root`` (created); returns {role: file name}."""
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
    con.close()
    if fsync:
        for name in FILES.values():
            with open(root / name, "rb") as f:
                os.fsync(f.fileno())
        fd = os.open(root, os.O_RDONLY)
        try:
            os.fsync(fd)
        finally:
            os.close(fd)
    return dict(FILES)


def read_catalog_dir(root: str | Path) -> CatalogData:
    root = Path(root)
    con = sqlite3.connect(f"file:{root / FILES['items']}?mode=ro&immutable=1", uri=True)
    try:
        recs = con.execute(f"SELECT {', '.join(COLUMNS)} FROM items ORDER BY row").fetchall()
    finally:
        con.close()
    items = [dict(zip(COLUMNS, r)) for r in recs]
    for it in items:
        it["in_stock"] = bool(it["in_stock"])
    return CatalogData(items, np.load(root / FILES["rows"]), np.load(root / FILES["scales"]))
