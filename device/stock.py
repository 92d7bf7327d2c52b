"""Live stock and price on the device, without a catalog publish (docs/device.md, "Live stock and price").

Two ways in, one store: ``Recommender.update_stock({item_id: {"in_stock": bool, "price": float}})``
(a till, a kiosk) and the publisher's signed ``stock.json`` feed (``shelfrank publish --stock``,
pinned by the index, applied by ``sync``). Both write ``STATE/stock.sqlite`` in one SQLite
transaction (all of an update or none of it), then swap in a copy of the catalog with the new
``in_stock``/``price`` columns (``Catalog.with_stock``): the next call's ``where`` filters and
results see them, a call already running keeps the catalog it started with.

The updates hold for the catalog version they were made on: a new catalog version (a sync) carries
the publisher's own stock and prices, and the store starts over for it. Later writes win per item
(a local update after a feed, or the other way round). Unknown item ids: ``update_stock`` raises
``UnknownItemError`` and applies nothing, unless ``skip_unknown=True`` (then they are counted); a feed
skips and counts them (logged).
"""

from __future__ import annotations

import json
import logging
import os
import sqlite3
import threading
from collections.abc import Mapping
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import msgspec
import numpy as np

from shelfrank.device.catalog import Catalog
from shelfrank.device.formats import rules as rfmt
from shelfrank.errors import StockError, UnknownItemError

logger = logging.getLogger(__name__)

__all__ = ["StockResult", "StockStore"]

_SCHEMA = """
CREATE TABLE IF NOT EXISTS stock (item_id TEXT PRIMARY KEY, in_stock INTEGER NOT NULL,
                                  price REAL, price_set INTEGER NOT NULL);
CREATE TABLE IF NOT EXISTS meta (key TEXT PRIMARY KEY, value INTEGER NOT NULL);
"""


@dataclass(frozen=True)
class StockResult:
    """What one stock update did: items ``applied``, unknown ids ``skipped`` (their first few in
    ``unknown``), on ``catalog_version``; ``feed_version`` for a synced feed."""

    applied: int
    skipped: int
    catalog_version: int
    unknown: tuple[str, ...] = ()
    feed_version: int | None = None


class StockStore:
    """``STATE/stock.sqlite``: the live in_stock/price of the items of one catalog version."""

    def __init__(self, state_dir: Path) -> None:
        self.path = Path(state_dir) / "stock.sqlite"
        self._lock = threading.Lock()  # one writer at a time in this process (SQLite serialises processes)
        self._stat = self._stats()

    # ---- the file ---------------------------------------------------------------------------

    def _connect(self) -> sqlite3.Connection:
        self.path.parent.mkdir(parents=True, exist_ok=True)
        con = sqlite3.connect(self.path, timeout=30, isolation_level=None)
        con.executescript(_SCHEMA)
        return con

    def _stats(self) -> tuple | None:
        try:
            st = os.stat(self.path)
        except OSError:
            return None
        return st.st_ino, st.st_mtime_ns, st.st_size

    def changed(self) -> bool:
        """True (once) when the file changed since this store last read or wrote it (another process's
        sync or update): one ``stat``."""
        st = self._stats()
        if st == self._stat:
            return False
        self._stat = st
        return True

    def refresh(self, rec) -> bool:
        """Serve the updates another process wrote since this store last looked (one ``stat`` when
        none did): every stored update on top of ``rec``'s catalog (last writer wins). True when it
        swapped the catalog."""
        if not self.changed():
            return False
        cat = rec.catalog
        new = self.apply(cat)  # read outside the query lock
        with rec._lock:
            # a sync or an update swapped first (rare): the store read again, on top of what serves
            rec.catalog = new if rec.catalog is cat else self.apply(rec.catalog)
        return True

    def _meta(self, con: sqlite3.Connection, key: str, default: int = -1) -> int:
        row = con.execute("SELECT value FROM meta WHERE key = ?", (key,)).fetchone()
        return default if row is None else int(row[0])

    def feed_version(self, catalog_version: int) -> int:
        """The version of the last feed applied for ``catalog_version`` (-1: none)."""
        if not self.path.exists():
            return -1
        con = self._connect()
        try:
            if self._meta(con, "catalog_version") != catalog_version:
                return -1
            return self._meta(con, "feed_version")
        finally:
            con.close()

    def write(self, catalog_version: int, entries: list[tuple[str, int, float]], *, feed: int | None = None) -> None:
        """Upsert (item id, in_stock -1/0/1, price: inf = unchanged, NaN = unknown) in one transaction;
        a store made for another catalog version is emptied first, in the same transaction."""
        con = self._connect()
        try:
            con.execute("BEGIN IMMEDIATE")
            try:
                if self._meta(con, "catalog_version") != catalog_version:
                    con.execute("DELETE FROM stock")
                    con.execute("INSERT OR REPLACE INTO meta VALUES ('catalog_version', ?)", (catalog_version,))
                    con.execute("INSERT OR REPLACE INTO meta VALUES ('feed_version', -1)")
                con.executemany(
                    "INSERT INTO stock VALUES (?, ?, ?, ?) ON CONFLICT(item_id) DO UPDATE SET "
                    "in_stock = CASE WHEN excluded.in_stock >= 0 THEN excluded.in_stock ELSE stock.in_stock END, "
                    "price = CASE WHEN excluded.price_set THEN excluded.price ELSE stock.price END, "
                    "price_set = MAX(stock.price_set, excluded.price_set)",
                    (
                        (i, s, None if np.isinf(p) or np.isnan(p) else float(p), 0 if np.isinf(p) else 1)
                        for i, s, p in entries
                    ),
                )
                if feed is not None:
                    con.execute("INSERT OR REPLACE INTO meta VALUES ('feed_version', ?)", (feed,))
                con.execute("COMMIT")
            except BaseException:
                con.execute("ROLLBACK")
                raise
        finally:
            con.close()
        self._stat = self._stats()

    def apply(self, cat: Catalog) -> Catalog:
        """``cat`` with every stored update made for its version (``cat`` itself when there are none)."""
        if not self.path.exists():
            return cat
        con = self._connect()
        try:
            if self._meta(con, "catalog_version") != cat.version:
                return cat
            rows = con.execute("SELECT item_id, in_stock, price, price_set FROM stock").fetchall()
        finally:
            con.close()
        if not rows:
            return cat
        ids = [r[0] for r in rows]
        stock = np.asarray([r[1] for r in rows], np.int8)
        price = np.asarray([np.inf if not r[3] else (np.nan if r[2] is None else r[2]) for r in rows], np.float64)
        return _with(cat, ids, stock, price)[0]

    # ---- updates ---------------------------------------------------------------------------

    def update(self, rec, updates: Mapping[str, Any], *, skip_unknown: bool = False) -> StockResult:
        """``Recommender.update_stock``: check, write in one transaction, swap the catalog.

        Raises:
            StockError: not a mapping of item id → {in_stock, price}, or over ``MAX_STOCK_ITEMS``.
            UnknownItemError: ids the served catalog lacks (nothing applied) unless ``skip_unknown``.
        """
        if not isinstance(updates, Mapping):
            raise StockError(f"update_stock: expected {{item_id: {{in_stock, price}}}}, got {type(updates).__name__}")
        entries = rfmt.decode_stock_items(dict(updates), where="update_stock")
        with self._lock:
            cat = rec.catalog
            known, unknown = _split(cat, entries)
            if unknown and not skip_unknown:
                raise UnknownItemError(
                    f"update_stock: {len(unknown)} item id(s) not in catalog version {cat.version} "
                    f"({', '.join(map(repr, unknown[:5]))}); nothing applied (skip_unknown=True applies the rest)"
                )
            self.write(cat.version, known)
            self._swap(rec, cat, known)
        return StockResult(len(known), len(unknown), cat.version, tuple(unknown[:10]))

    def check_feed(self, raw: bytes, cat: Catalog, where: str) -> rfmt.StockFeed | None:
        """A downloaded ``stock.json`` for ``cat``: the feed, or None when it is for another catalog
        version (logged) or already applied.

        Raises:
            StockError: not a stock feed, or older than the one applied (a rollback).
        """
        try:
            obj = json.loads(raw)
        except ValueError as e:
            raise StockError(f"{where}: not valid JSON ({e}); republish the stock feed") from e
        feed = rfmt.decode_stock_feed(obj, where=where)
        if feed.catalog_version != cat.version:
            logger.info("%s: for catalog version %d, serving %d; skipped", where, feed.catalog_version, cat.version)
            return None
        have = self.feed_version(cat.version)
        if feed.version < have:
            raise StockError(
                f"{where}: version {feed.version} is older than the feed applied ({have}): a rollback, refused"
            )
        return None if feed.version == have else feed

    def apply_feed(self, feed: rfmt.StockFeed, cat: Catalog, where: str) -> tuple[Catalog, StockResult]:
        """Write ``feed`` (unknown ids skipped and counted) and return ``cat`` with it applied (the
        caller swaps it in)."""
        with self._lock:
            known, unknown = _split(cat, feed.items)
            if unknown:
                logger.warning("%s: %d item id(s) not in catalog version %d skipped", where, len(unknown), cat.version)
            self.write(cat.version, known, feed=feed.version)
            new = _with(cat, [i for i, _, _ in known], *_columns(known))[0] if known else cat
        return new, StockResult(len(known), len(unknown), cat.version, tuple(unknown[:10]), feed.version)

    def _swap(self, rec, cat: Catalog, known: list[tuple[str, int, float]]) -> None:
        if not known:
            return
        ids, (stock, price) = [i for i, _, _ in known], _columns(known)
        new = _with(cat, ids, stock, price)[0]
        with rec._lock:
            current = rec.catalog
            if current is cat:
                rec.catalog = new
            elif current.version == cat.version:  # another swap of this version came first: apply on top
                rec.catalog = _with(current, ids, stock, price)[0]
            # else a sync serves a newer version: these updates were for the old one


def _split(cat: Catalog, entries: Mapping[str, rfmt.StockEntry]) -> tuple[list[tuple[str, int, float]], list[str]]:
    ids = list(entries)
    rows = cat.index.rows_of(ids)
    known, unknown = [], []
    for item_id, row in zip(ids, rows.tolist(), strict=True):
        if row < 0:
            unknown.append(item_id)
            continue
        e = entries[item_id]
        stock = -1 if e.in_stock is msgspec.UNSET else int(e.in_stock)
        price = np.inf if e.price is msgspec.UNSET else (np.nan if e.price is None else float(e.price))
        known.append((item_id, stock, price))
    return known, unknown


def _columns(known: list[tuple[str, int, float]]) -> tuple[np.ndarray, np.ndarray]:
    return np.asarray([s for _, s, _ in known], np.int8), np.asarray([p for _, _, p in known], np.float64)


def _with(cat: Catalog, ids: list[str], stock: np.ndarray, price: np.ndarray) -> tuple[Catalog, int]:
    """``cat`` with the stock/price of ``ids`` (ids it lacks left out); and how many it lacked."""
    rows = cat.index.rows_of(ids)
    ok = rows >= 0
    return cat.with_stock(rows[ok], stock[ok], price[ok]), int((~ok).sum())
