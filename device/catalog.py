"""The catalog a device serves: item metadata (SQLite), int8 rows (memory-mapped) and filters."""

from __future__ import annotations

import logging
import sqlite3
from array import array
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any, NamedTuple

import numpy as np

from shelfrank.device.catalog_files import NEIGHBOR_FILES, TEXT_FILES
from shelfrank.device.codes import CODES_FILE, check_codes, check_mean
from shelfrank.device.columns import IdIndex, Strings, load_strings, release_pages, release_strings
from shelfrank.device.formats import REASONS as REASONS  # re-exported: what Item.reason takes
from shelfrank.device.formats import ROW_SCALE_MAX
from shelfrank.device.formats import SCORE_KINDS as SCORE_KINDS  # and Item.score_kind
from shelfrank.device.lexical import LexicalIndex
from shelfrank.device.planner import Planner
from shelfrank.errors import BundleError, InputError, UnknownFilterValueError, UnknownItemError

logger = logging.getLogger(__name__)

WHERE_KEYS = ("category", "brand", "min_price", "max_price", "in_stock", "allow_ids", "deny_ids")


class Reason(NamedTuple):
    """Why one item is in a result: ``kind`` (one of ``REASONS``), the item ids that drove it
    (the shopper's recent items, or the query item) and one English sentence for a shop's screen."""

    kind: str
    items: tuple[str, ...]
    text: str


#: the reason of every result of a text query
SEARCH_MATCH = Reason("search", (), "matches your search")
#: the reason of a cold-start result (a shopper without history)
POPULAR = Reason("popular", (), "popular in this shop")


@dataclass(frozen=True)
class Item:
    """One recommended item: what a shop's app shows, and why it is there.

    ``score`` is higher-is-better within one result list; ``score_kind`` says what it measures
    (``SCORE_KINDS``: a popularity is no cosine similarity, so never compare the two).
    ``reason`` is one of ``REASONS`` (both from :mod:`shelfrank.device.formats`), ``reason_items``
    the item ids that drove it (e.g. the recent item the result is closest to) and ``reason_text``
    says it in English ("because you viewed “Trail Tent”"); an app that localises builds its own
    text from the first two.
    """

    item_id: str
    score: float
    title: str
    category: str | None
    brand: str | None
    price: float | None
    in_stock: bool
    score_kind: str
    reason: str
    reason_items: tuple[str, ...]
    reason_text: str


class Catalog:
    """Rows and metadata of one catalog version, read-only and safe to share between threads."""

    def __init__(
        self,
        root: str | Path,
        *,
        version: int,
        dim: int,
        mean: np.ndarray | None = None,
        planner: Planner | None = None,
    ) -> None:
        """Open the catalog folder ``root``.

        ``mean``: the bundle's catalog mean (``catalog.mean``); with it the binary codes
        (``codes.u8.npy``, device/codes.py) are opened for the two-pass scan, without it (or
        without the file: an older bundle) every scan is exact. ``planner`` picks the scan
        (device/planner.py; default: ``Planner()``).

        Raises:
            BundleError: a file is unreadable or breaks its shape, dtype or range (naming it and the fix).
        """
        root = Path(root)
        self.root, self.version = root, version
        self.planner = planner if planner is not None else Planner()
        try:
            # a plain ndarray view of the read-only mapping: no np.memmap overhead per indexing
            mapped = np.load(root / "emb.i8.npy", mmap_mode="r")
            self.rows = mapped.view(np.ndarray)
            self.scales = np.load(root / "scale.f32.npy", mmap_mode="r").view(np.ndarray)
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
        if len(self.scales) and not (0 <= self.scales.min() and self.scales.max() <= ROW_SCALE_MAX):
            raise BundleError(
                f"{root / 'scale.f32.npy'}: scales outside [0, {ROW_SCALE_MAX:.6g}] (rows are unit-norm, so "
                "max|x|/127 <= 1/127): not made by the encoder; re-export or republish the catalog"
            )
        n = self.rows.shape[0]
        self.neighbors = load_neighbors(root, n)
        self.codes, self.mean = load_codes(root, n, dim, mean)
        if self.planner.choose(self, 10) == "two_pass":
            # a two-pass query reads a few hundred scattered rows: only those rows' pages are to come
            # into memory (device/columns.release_pages; docs/device.md, "Memory")
            release_pages(mapped, root / "emb.i8.npy")
        # Everything a query returns is held in compact columns read once from SQLite: no Python
        # object per item (docs/device.md, "Memory"): ids and titles each in one UTF-8 blob with
        # offsets (device/columns.py; memory-mapped from the catalog's ids.*/titles.* files when it
        # has them), the id -> row index as sorted hashes, category/brand as codes into small
        # vocabularies. Queries never touch SQLite: a result costs a few memory reads, not a B-tree
        # walk through pages the row scan has just pushed out of the caches.
        mapped_ids = load_strings(root / TEXT_FILES["ids"], root / TEXT_FILES["id_ends"], n)
        mapped_titles = load_strings(root / TEXT_FILES["titles"], root / TEXT_FILES["title_ends"], n)
        price, stock, pop = array("d"), array("b"), array("f")
        cat_codes, brand_codes = array("i"), array("i")
        ids, id_ends, hashes = bytearray(), array("q"), array("q")
        titles, title_ends = bytearray(), array("q")
        bad = None  # the first row whose id or title disagrees with the string columns
        self._cat_vocab: dict[str, int] = {}
        self._brand_vocab: dict[str, int] = {}
        try:
            con = sqlite3.connect(f"file:{root / 'items.sqlite'}?mode=ro&immutable=1", uri=True)
            try:
                cursor = con.execute(
                    "SELECT row, item_id, title, category, brand, price, in_stock, popularity FROM items ORDER BY row"
                )
                for expected, (row, item_id, title, category, brand, p, in_stock, popularity) in enumerate(cursor):
                    if row != expected:
                        raise BundleError(f"{root / 'items.sqlite'}: row numbers are not 0..N-1 (row {row})")
                    hashes.append(hash(item_id))
                    if mapped_ids is None:
                        ids += item_id.encode()
                        id_ends.append(len(ids))
                    elif bad is None and (row >= n or mapped_ids.raw(row) != item_id.encode()):
                        bad = ("ids", row)
                    if mapped_titles is None:
                        titles += title.encode()
                        title_ends.append(len(titles))
                    elif bad is None and not row & 63 and (row >= n or mapped_titles.raw(row) != title.encode()):
                        bad = ("titles", row)  # one title in 64 compared: the blob is signed or written here
                    cat_codes.append(
                        -1 if category is None else self._cat_vocab.setdefault(category, len(self._cat_vocab))
                    )
                    brand_codes.append(
                        -1 if brand is None else self._brand_vocab.setdefault(brand, len(self._brand_vocab))
                    )
                    price.append(np.nan if p is None else p)
                    stock.append(1 if in_stock else 0)
                    pop.append(popularity)
            finally:
                con.close()
        except sqlite3.Error as e:
            raise BundleError(f"{root / 'items.sqlite'}: unreadable item table: {e}") from e
        if len(hashes) != n:
            raise BundleError(f"{root / 'items.sqlite'}: {len(hashes)} items for {n} embedding rows")
        if bad is not None:
            raise BundleError(
                f"{root / TEXT_FILES[bad[0]]}: row {bad[1]} disagrees with items.sqlite; re-export the bundle "
                "or republish the catalog"
            )
        for strings, name in ((mapped_ids, "ids"), (mapped_titles, "titles")):
            if strings is not None:  # checked: from here on only what a query reads comes in
                release_strings(strings, root / TEXT_FILES[name], root / TEXT_FILES[name[:-1] + "_ends"])
        #: the item id of every row (a read-only sequence of str)
        self.item_ids = mapped_ids if mapped_ids is not None else Strings(ids, id_ends)
        self._titles = mapped_titles if mapped_titles is not None else Strings(titles, title_ends)
        self._cat_names = [None, *self._cat_vocab]  # code + 1 -> name
        self._brand_names = [None, *self._brand_vocab]
        self._cat_code_list, self._brand_code_list = cat_codes, brand_codes
        self._price_list = price
        # numpy views share the arrays' memory (the arrays are never resized after this)
        self.price = np.frombuffer(price, np.float64)
        self.in_stock = np.frombuffer(stock, np.int8).view(bool)
        self.popularity = np.frombuffer(pop, np.float32)
        self._cat_codes = np.frombuffer(cat_codes, np.int32)
        self._brand_codes = np.frombuffer(brand_codes, np.int32)
        for a in (self.price, self.in_stock, self.popularity, self._cat_codes, self._brand_codes):
            a.flags.writeable = False
        #: item id -> row (a read-only Mapping; ``index.rows_of(ids)`` for many at once)
        self.index = IdIndex(self.item_ids, hashes)
        del hashes
        # the FTS index's connection, opened now: a sync may delete this folder while it serves
        self.lexical = LexicalIndex(root / "items.sqlite")

    def __len__(self) -> int:
        return self.rows.shape[0]

    def topk(
        self, query: np.ndarray, k: int, *, mask: np.ndarray | None = None, threads: int = 1
    ) -> tuple[np.ndarray, np.ndarray]:
        """The ``k`` best rows for ``query`` ((d,) or (B, d)) by the planner's scan (exact or two-pass),
        as ``kernel.topk`` returns them; ``self.planner`` records which ran."""
        return self.planner.topk(self, query, k, mask=mask, threads=threads)

    @property
    def neighbor_ids(self) -> np.ndarray | None:
        """(N, M) int32 co-occurrence neighbours of each row, -1 padded (None: no table)."""
        return None if self.neighbors is None else self.neighbors[0]

    @property
    def neighbor_weights(self) -> np.ndarray | None:
        """(N, M) float16 weights of :attr:`neighbor_ids` (0 where padded; None: no table)."""
        return None if self.neighbors is None else self.neighbors[1]

    def row(self, item_id: str) -> int:
        """The row of an item id.

        Raises:
            UnknownItemError: the id is not in this catalog version.
        """
        try:
            return self.index[item_id]
        except KeyError:
            raise UnknownItemError(f"unknown item id {item_id!r} (catalog version {self.version})") from None

    def vectors(self, rows: np.ndarray) -> np.ndarray:
        """Dequantised rows (float32): int8 × per-row scale."""
        # cast, then scale in place: the same float32 products as a mixed-type multiply, which
        # casts through a buffer (a third slower on the hybrid's ~1,000 candidate rows)
        out = self.rows[rows].astype(np.float32)
        out *= self.scales[rows][:, None]
        return out

    def items(
        self,
        rows: Sequence[int],
        scores: Sequence[float],
        *,
        score_kind: str = "cosine",
        reasons: Reason | Sequence[Reason] = SEARCH_MATCH,
    ) -> list[Item]:
        """Result records for catalog rows (from memory; no I/O).

        Args:
            rows, scores: the rows, best first, and their scores.
            score_kind: what the scores measure (``SCORE_KINDS``).
            reasons: one :class:`Reason` for every row, or one per row (default: a search match).
        """
        out = []
        ids, titles, stock, price = self.item_ids, self._titles, self.in_stock, self._price_list
        per_row = not isinstance(reasons, Reason)
        why = reasons
        for i, (row, score) in enumerate(zip(rows, scores, strict=False)):
            row = int(row)
            p = price[row]
            if per_row:
                why = reasons[i]
            out.append(
                Item(
                    ids[row],
                    float(score),
                    titles[row],
                    self._cat_names[self._cat_code_list[row] + 1],
                    self._brand_names[self._brand_code_list[row] + 1],
                    None if p != p else p,
                    bool(stock[row]),
                    score_kind,
                    why.kind,
                    why.items,
                    why.text,
                )
            )
        return out

    @property
    def category_codes(self) -> np.ndarray:
        """(N,) int32: each row's category as a code into :attr:`categories` (-1: no category)."""
        return self._cat_codes

    @property
    def categories(self) -> list[str]:
        """The category names of this catalog version, by code."""
        return list(self._cat_vocab)

    def with_stock(self, rows: np.ndarray, in_stock: np.ndarray, price: np.ndarray) -> Catalog:
        """This catalog with live stock and prices for ``rows`` (device/stock.py): a shallow copy sharing
        everything but the two columns, so a query holding this one never sees a half-applied update.

        Per row: ``in_stock`` -1 (unchanged), 0 or 1; ``price`` the new price, NaN (unknown) or inf
        (unchanged)."""
        import copy

        new = copy.copy(self)
        new._price_list = array("d", self._price_list)
        new.price = np.frombuffer(new._price_list, np.float64)
        stock = np.array(self.in_stock, np.int8)
        rows = np.asarray(rows, np.int64)
        set_stock = np.asarray(in_stock) >= 0
        stock[rows[set_stock]] = np.asarray(in_stock)[set_stock]
        set_price = ~np.isinf(np.asarray(price, np.float64))
        new.price[rows[set_price]] = np.asarray(price, np.float64)[set_price]  # writes _price_list too
        new.in_stock = stock.view(bool)
        for a in (new.price, new.in_stock):
            a.flags.writeable = False
        return new

    _pop_order: np.ndarray | None = None

    def popularity_order(self) -> np.ndarray:
        """Every row by popularity, most popular first, ties to the lower row (sorted on first use,
        then kept: a cold start walks its head instead of sorting the catalog per call)."""
        if self._pop_order is None:  # two threads may both sort once: the same answer
            self._pop_order = np.lexsort((np.arange(len(self)), -self.popularity))
        return self._pop_order

    def popular_rows(self, k: int, mask: np.ndarray | None, skip: frozenset[int] = frozenset()) -> list[int]:
        """The ``k`` most popular rows ``mask`` allows, leaving out ``skip`` (ties to the lower row; a
        NaN/inf popularity never ranks): the head of :meth:`popularity_order` walked in growing
        blocks, the same rows as sorting the masked popularity without a sort per call."""
        order, pop = self.popularity_order(), self.popularity
        rows: list[int] = []
        start, step = 0, k + len(skip)
        while len(rows) < k and start < len(order):
            blk = order[start : start + step]
            ok = np.isfinite(pop[blk])
            if mask is not None:
                ok &= mask[blk]
            rows += [r for r in blk[ok].tolist() if r not in skip][: k - len(rows)]
            start, step = start + step, step * 4
        return rows

    def title(self, row: int) -> str:
        """The title of one row (from memory)."""
        return self._titles[row]

    def item(self, row: int, score: float = 0.0) -> Item:
        """One row as an :class:`Item` (a cosine ``score`` with a search-match reason: for display)."""
        return self.items([row], [score])[0]

    def rows_where(self, where: Mapping[str, Any]) -> np.ndarray:
        """Row numbers passing a ``where`` filter (same keys as queries)."""
        m = self.mask(where)
        return np.arange(len(self)) if m is None else np.flatnonzero(m)

    def mask(self, where: Mapping[str, Any] | None) -> np.ndarray | None:
        """The kernel mask for a ``where`` filter (None when nothing is filtered).

        A category or brand must be one the catalog has (a typo would otherwise match nothing);
        ids in ``allow_ids``/``deny_ids`` that it lacks are ignored (a shop's list may name items
        a sync removed).

        Raises:
            UnknownFilterValueError: (an InputError) a category or brand this catalog version does
                not have; its ``field`` is ``where.category`` or ``where.brand``.
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
                missing = [v for v in wanted if v not in vocab]
                if missing:  # a typo or a name the catalog lost would otherwise give [] in silence
                    raise UnknownFilterValueError(
                        f"where[{key!r}]: {_names(missing)} not in catalog version {self.version}"
                        f"{_did_you_mean(missing[0], vocab)}; it has {len(vocab)} {key} values",
                        field=f"where.{key}",
                    )
                m &= np.isin(codes, [vocab[v] for v in wanted])
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
            rows = self.index.rows_of(_str_list("allow_ids", where["allow_ids"]))
            allow[rows[rows >= 0]] = True
            m &= allow
        if where.get("deny_ids") is not None:
            rows = self.index.rows_of(_str_list("deny_ids", where["deny_ids"]))
            m[rows[rows >= 0]] = False
        return m


def _names(values: list[str]) -> str:
    shown = ", ".join(repr(v) for v in values[:5]) + (f" and {len(values) - 5} more" if len(values) > 5 else "")
    return shown + (" is" if len(values) == 1 else " are")


def _did_you_mean(value: str, vocab: Mapping[str, int]) -> str:
    import difflib

    close = difflib.get_close_matches(value, list(vocab), n=3, cutoff=0.6)
    if not close:  # a different case is the commonest slip: "shoes" for "Shoes"
        close = [v for v in vocab if v.casefold() == value.casefold()][:3]
    return f" (did you mean {', '.join(map(repr, close))}?)" if close else ""


def _str_list(key: str, value: Any) -> list[str]:
    if isinstance(value, str):
        return [value]
    if isinstance(value, (list, tuple, set, frozenset)) and all(isinstance(v, str) for v in value):
        return list(value)
    raise InputError(f"where[{key!r}] must be a string or a list of strings, got {value!r}")


def load_codes(root: Path, n: int, dim: int, mean: np.ndarray | None) -> tuple[np.ndarray | None, np.ndarray | None]:
    """(codes memory-mapped, mean float32) for the two-pass scan, or (None, mean) when the catalog has
    no ``codes.u8.npy`` or no mean is given (the exact scan serves it).

    Raises:
        BundleError: codes that are not uint8 (n, ceil(dim/8)), or a mean that is not dim finite numbers.
    """
    if mean is not None:
        mean = np.asarray(mean, np.float32)
        check_mean(mean, dim, f"{root}: the bundle's catalog mean")
    path = root / CODES_FILE
    if mean is None or not path.exists():
        return None, mean
    try:
        codes = np.load(path, mmap_mode="r").view(np.ndarray)
    except (OSError, ValueError) as e:
        raise BundleError(
            f"{path}: binary codes unreadable ({e}); re-export the bundle or republish the catalog"
        ) from e
    check_codes(codes, n, dim, path)
    return codes, mean


def load_neighbors(root: Path, n: int) -> tuple[np.ndarray, np.ndarray] | None:
    """The catalog's co-occurrence neighbour table (memory-mapped), or None when it has none.

    ``nbr.i32.npy``: (n, M) int32 rows of each item's neighbours, -1 padding; ``nbr.f16.npy``:
    (n, M) float16 weights, finite and ≥ 0 (0 where padded).

    Raises:
        BundleError: one file without the other, a shape that disagrees with the catalog, an id
            out of range, or a NaN/inf/negative weight (naming the file and the fix).
    """
    ids_path, w_path = root / NEIGHBOR_FILES["nbr_ids"], root / NEIGHBOR_FILES["nbr_weights"]
    if not ids_path.exists() and not w_path.exists():
        return None
    fix = "re-export the bundle or republish the catalog"
    try:
        ids = np.load(ids_path, mmap_mode="r").view(np.ndarray)
        w = np.load(w_path, mmap_mode="r").view(np.ndarray)
    except (OSError, ValueError) as e:
        raise BundleError(f"{root}: neighbour table unreadable ({e}); {fix}") from e
    if ids.dtype != np.int32 or ids.ndim != 2 or ids.shape[0] != n or ids.shape[1] > 4096:
        raise BundleError(
            f"{ids_path}: expected int32 ({n}, M ≤ 4096) neighbour ids, got {ids.dtype} {ids.shape}; {fix}"
        )
    if w.dtype != np.float16 or w.shape != ids.shape:
        raise BundleError(f"{w_path}: expected float16 {ids.shape} neighbour weights, got {w.dtype} {w.shape}; {fix}")
    # checked in blocks read from the files, not through the mappings: the check neither makes a
    # full-size temporary nor leaves the whole table resident (a query touches only the rows it gathers)
    for bi, bw in zip(_blocks(ids_path, ids), _blocks(w_path, w), strict=True):
        if bi.size and (bi.min() < -1 or bi.max() >= n):
            raise BundleError(f"{ids_path}: field ids: a neighbour id outside -1..{n - 1}; {fix}")
        if bw.size and not (np.isfinite(bw).all() and bw.min() >= 0):
            raise BundleError(f"{w_path}: field weights: NaN, inf or negative weights; {fix}")
    return ids, w


def _blocks(path: Path, mapped: np.ndarray, rows: int = 8192):
    """The rows of the .npy at ``path`` (``mapped`` is its mapping: dtype, shape, offset), in blocks."""
    fmt = np.lib.format
    with open(path, "rb") as f:
        major, _ = fmt.read_magic(f)
        (fmt.read_array_header_1_0 if major == 1 else fmt.read_array_header_2_0)(f)  # the header's length varies
        row_bytes = mapped.dtype.itemsize * int(np.prod(mapped.shape[1:], dtype=np.int64))
        for _ in range(0, mapped.shape[0], rows):
            buf = f.read(rows * row_bytes)
            yield np.frombuffer(buf, mapped.dtype).reshape(-1, *mapped.shape[1:])
