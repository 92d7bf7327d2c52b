"""The catalog a device serves: item metadata (SQLite), int8 rows (memory-mapped) and filters."""

from __future__ import annotations

import logging
import sqlite3
import threading
from array import array
from collections.abc import Mapping
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np

from shelfrank.errors import BundleError, InputError, UnknownItemError

logger = logging.getLogger(__name__)

WHERE_KEYS = ("category", "brand", "min_price", "max_price", "in_stock", "allow_ids", "deny_ids")


@dataclass(frozen=True)
class Item:
    """One recommended item: what a shop's app shows."""

    item_id: str
    score: float
    title: str
    category: str | None
    brand: str | None
    price: float | None
    in_stock: bool


class Catalog:
    """Rows and metadata of one catalog version, read-only and safe to share between threads."""

    def __init__(self, root: str | Path, *, version: int, dim: int) -> None:
        root = Path(root)
        self.root, self.version = root, version
        try:
            # a plain ndarray view of the read-only mapping: no np.memmap overhead per indexing
            self.rows = np.load(root / "emb.i8.npy", mmap_mode="r").view(np.ndarray)
            self.scales = np.load(root / "scale.f32.npy")
        except (OSError, ValueError) as e:
            raise BundleError(f"{root}: catalog rows unreadable: {e}") from e
        if self.rows.dtype != np.int8 or self.rows.ndim != 2 or self.rows.shape[1] != dim:
            raise BundleError(
                f"{root / 'emb.i8.npy'}: expected int8 rows of dimension {dim}, got {self.rows.dtype} {self.rows.shape}"
            )
        if self.scales.dtype != np.float32 or self.scales.shape != (self.rows.shape[0],):
            raise BundleError(f"{root / 'scale.f32.npy'}: expected float32 ({self.rows.shape[0]},)")
        if not np.isfinite(self.scales).all():
            raise BundleError(f"{root / 'scale.f32.npy'}: NaN or inf scales")
        n = self.rows.shape[0]
        # Only what every query needs stays in Python objects (ids, filter codes, prices, stock,
        # popularity); titles and the rest are read from SQLite for the k results of a query.
        # At 100k items this keeps ~25 MB of strings out of the process.
        try:
            self._con = sqlite3.connect(
                f"file:{root / 'items.sqlite'}?mode=ro&immutable=1", uri=True, check_same_thread=False
            )
            cursor = self._con.execute(
                "SELECT row, item_id, category, brand, price, in_stock, popularity FROM items ORDER BY row"
            )
            # streamed into compact columns: no per-row tuples or duplicate strings stay alive
            self.item_ids: list[str] = []
            price, stock, pop = array("d"), array("b"), array("f")
            cat_codes, brand_codes = array("i"), array("i")
            self._cat_vocab: dict[str, int] = {}
            self._brand_vocab: dict[str, int] = {}
            for expected, (row, item_id, category, brand, p, in_stock, popularity) in enumerate(cursor):
                if row != expected:
                    raise BundleError(f"{root / 'items.sqlite'}: row numbers are not 0..N-1 (row {row})")
                self.item_ids.append(item_id)
                cat_codes.append(-1 if category is None else self._cat_vocab.setdefault(category, len(self._cat_vocab)))
                brand_codes.append(-1 if brand is None else self._brand_vocab.setdefault(brand, len(self._brand_vocab)))
                price.append(np.nan if p is None else p)
                stock.append(1 if in_stock else 0)
                pop.append(popularity)
        except sqlite3.Error as e:
            raise BundleError(f"{root / 'items.sqlite'}: unreadable item table: {e}") from e
        if len(self.item_ids) != n:
            raise BundleError(f"{root / 'items.sqlite'}: {len(self.item_ids)} items for {n} embedding rows")
        self._db_lock = threading.Lock()
        self.price = np.frombuffer(price, np.float64).copy()
        self.in_stock = np.frombuffer(stock, np.int8).astype(bool)
        self.popularity = np.frombuffer(pop, np.float32).copy()
        self._cat_codes = np.frombuffer(cat_codes, np.int32).copy()
        self._brand_codes = np.frombuffer(brand_codes, np.int32).copy()
        self.index = {item_id: i for i, item_id in enumerate(self.item_ids)}

    def __len__(self) -> int:
        return len(self.item_ids)

    def row(self, item_id: str) -> int:
        try:
            return self.index[item_id]
        except KeyError:
            raise UnknownItemError(f"unknown item id {item_id!r} (catalog version {self.version})") from None

    def vectors(self, rows: np.ndarray) -> np.ndarray:
        """Dequantised rows (float32): int8 × per-row scale."""
        return self.rows[rows].astype(np.float32) * self.scales[rows, None]

    def items(self, rows: list[int], scores: list[float]) -> list[Item]:
        """Result records for catalog rows (one SQLite read for all of them)."""
        if not rows:
            return []
        marks = ",".join("?" * len(rows))
        with self._db_lock:
            meta = {
                r[0]: r[1:]
                for r in self._con.execute(
                    f"SELECT row, title, category, brand FROM items WHERE row IN ({marks})", [int(r) for r in rows]
                )
            }
        out = []
        for row, score in zip(rows, scores):
            title, category, brand = meta[int(row)]
            price = float(self.price[row])
            out.append(
                Item(
                    self.item_ids[row],
                    float(score),
                    title,
                    category,
                    brand,
                    None if np.isnan(price) else price,
                    bool(self.in_stock[row]),
                )
            )
        return out

    def item(self, row: int, score: float = 0.0) -> Item:
        return self.items([row], [score])[0]

    def rows_where(self, where: Mapping[str, Any]) -> np.ndarray:
        """Row numbers passing a ``where`` filter (same keys as queries)."""
        m = self.mask(where)
        return np.arange(len(self)) if m is None else np.flatnonzero(m)

    def mask(self, where: Mapping[str, Any] | None) -> np.ndarray | None:
        """The kernel mask for a ``where`` filter (None when nothing is filtered).

        Raises:
            InputError: an unknown key or a value of the wrong type.
        """
        if not where:
            return None
        unknown = set(where) - set(WHERE_KEYS)
        if unknown:
            raise InputError(f"unknown where key(s) {sorted(unknown)}; allowed: {', '.join(WHERE_KEYS)}")
        m = np.ones(len(self), bool)
        for key, codes, vocab in (
            ("category", self._cat_codes, self._cat_vocab),
            ("brand", self._brand_codes, self._brand_vocab),
        ):
            if where.get(key) is not None:
                wanted = _str_list(key, where[key])
                m &= np.isin(codes, [vocab[v] for v in wanted if v in vocab])
        for key, op in (("min_price", np.greater_equal), ("max_price", np.less_equal)):
            if where.get(key) is not None:
                v = where[key]
                if isinstance(v, bool) or not isinstance(v, (int, float)) or not np.isfinite(v):
                    raise InputError(f"where[{key!r}] must be a finite number, got {v!r}")
                m &= op(self.price, v)  # an unknown (NaN) price never passes a price filter
        if where.get("in_stock") is not None:
            if not isinstance(where["in_stock"], bool):
                raise InputError(f"where['in_stock'] must be True or False, got {where['in_stock']!r}")
            m &= self.in_stock == where["in_stock"]
        if where.get("allow_ids") is not None:
            allow = np.zeros(len(self), bool)
            allow[[self.index[i] for i in _str_list("allow_ids", where["allow_ids"]) if i in self.index]] = True
            m &= allow
        if where.get("deny_ids") is not None:
            m[[self.index[i] for i in _str_list("deny_ids", where["deny_ids"]) if i in self.index]] = False
        return m


def _str_list(key: str, value: Any) -> list[str]:
    if isinstance(value, str):
        return [value]
    if isinstance(value, (list, tuple, set, frozenset)) and all(isinstance(v, str) for v in value):
        return list(value)
    raise InputError(f"where[{key!r}] must be a string or a list of strings, got {value!r}")
