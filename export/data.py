"""Export input: a shop's items and shopper events, loaded into compact arrays.

Formats (DESIGN.md, "Data formats"):
- items: CSV, JSONL or Parquet with ``item_id`` (string) and ``title``; optional ``category``,
  ``brand``, ``price``, ``in_stock``.
- events: ``user_id``, ``item_id``, ``action`` ∈ {view, click, cart, purchase}, optional ``ts``
  (file order otherwise): epoch seconds (a number, or a string of one) or an ISO 8601 date-time
  (``2020-03-01 09:30:00``, ``2020-03-01T09:30:00Z``, ``…+02:00``, fractional seconds, a bare
  date); one without a zone is UTC. Events with equal ``ts`` keep their file order (a basket).

Bad input raises :class:`ExportValidationError` naming the file, row and field; events whose item
is unknown are skipped with one counted warning (a shop's log routinely mentions delisted items).
"""

from __future__ import annotations

import csv
import json
import logging
import math
from collections.abc import Iterable, Iterator
from dataclasses import dataclass, field
from datetime import date, datetime, timezone
from pathlib import Path
from typing import Any

import numpy as np

from shelfrank.device.history import add_step
from shelfrank.errors import ExportValidationError

logger = logging.getLogger(__name__)

ACTIONS = ("view", "click", "cart", "purchase")
ACTION_IDS = {a: i for i, a in enumerate(ACTIONS)}
ITEM_FIELDS = ("item_id", "title", "category", "brand", "price", "in_stock")


@dataclass
class Catalog:
    """Items in row order; row i of every array and list describes the same item."""

    item_ids: list[str]
    titles: list[str]
    category: list[str | None]
    brand: list[str | None]
    price: np.ndarray  # float64, NaN when unknown
    in_stock: np.ndarray  # bool

    def __len__(self) -> int:
        return len(self.item_ids)

    def index(self) -> dict[str, int]:
        return {item_id: row for row, item_id in enumerate(self.item_ids)}

    def record(self, row: int) -> dict[str, Any]:
        price = float(self.price[row])
        return {
            "item_id": self.item_ids[row],
            "title": self.titles[row],
            "category": self.category[row],
            "brand": self.brand[row],
            "price": None if math.isnan(price) else price,
            "in_stock": bool(self.in_stock[row]),
        }


@dataclass
class Events:
    """Interactions in time order (``ts`` if given, else file order), as catalog rows."""

    user: np.ndarray  # int32 index into Dataset.users
    item: np.ndarray  # int32 catalog row
    action: np.ndarray  # int8 ACTION_IDS
    ts: np.ndarray | None = None  # float64 seconds, when the source has timestamps

    def __len__(self) -> int:
        return len(self.user)


@dataclass
class Dataset:
    name: str
    catalog: Catalog
    events: Events
    users: list[str]
    notes: list[str] = field(default_factory=list)

    def sequences(self) -> list[list[tuple[int, int]]]:
        """Per user, the distinct-item steps in time order as (row, strongest action).

        Consecutive events on the same item (view → click → cart on one product page) collapse
        into one step that keeps the strongest action, so "the next item" is a different item.
        """
        seqs: list[list[tuple[int, int]]] = [[] for _ in self.users]
        ev = self.events
        for u, i, a in zip(ev.user.tolist(), ev.item.tolist(), ev.action.tolist(), strict=True):
            add_step(seqs[u], i, a)
        return seqs


# ---- reading files ------------------------------------------------------------------------


def _rows(path: Path) -> Iterator[tuple[int, dict[str, Any]]]:
    """(line number, record) for CSV, JSONL or Parquet; the line number names the row in errors."""
    suffix = path.suffix.lower()
    if not path.is_file():
        raise ExportValidationError(f"{path}: no such file")
    if suffix in (".jsonl", ".ndjson", ".json"):
        with path.open("rb") as f:
            for lineno, raw in enumerate(f, 1):
                if not raw.strip():
                    continue
                try:
                    rec = json.loads(raw.decode("utf-8-sig"))  # -sig: tolerate a leading BOM
                except UnicodeDecodeError as e:
                    raise ExportValidationError(f"{path}:{lineno}: not UTF-8 ({e.reason})") from e
                except json.JSONDecodeError as e:
                    raise ExportValidationError(f"{path}:{lineno}: not valid JSON ({e.msg})") from e
                if not isinstance(rec, dict):
                    raise ExportValidationError(f"{path}:{lineno}: expected a JSON object per line")
                yield lineno, rec
    elif suffix in (".csv", ".tsv"):
        try:
            with path.open(newline="", encoding="utf-8-sig") as f:  # -sig: Excel writes a BOM
                reader = csv.DictReader(f, delimiter="\t" if suffix == ".tsv" else ",")
                for rec in reader:
                    yield reader.line_num, rec
        except UnicodeDecodeError as e:
            # the decoder works on chunks, so e.start is not a file offset: find the line itself
            lineno, reason = _first_non_utf8_line(path)
            raise ExportValidationError(f"{path}:{lineno}: not UTF-8 ({reason or e.reason})") from e
    elif suffix == ".parquet":
        try:
            import pyarrow.parquet as pq
        except ImportError as e:
            raise ImportError("reading Parquet needs pyarrow: pip install pyarrow") from e
        for n, rec in enumerate(pq.read_table(path).to_pylist(), 1):
            yield n, rec
    else:
        raise ExportValidationError(f"{path}: unknown format {suffix!r}; use .csv, .tsv, .jsonl or .parquet")


def _first_non_utf8_line(path: Path) -> tuple[int, str]:
    with path.open("rb") as f:
        for lineno, raw in enumerate(f, 1):  # b"\n" never occurs inside a UTF-8 sequence
            try:
                raw.decode("utf-8")
            except UnicodeDecodeError as e:
                return lineno, f"byte {e.start + 1} of the line: {e.reason}"
    return 0, ""


def _require(path: Path, lineno: int, rec: dict[str, Any], names: Iterable[str]) -> None:
    missing = [n for n in names if n not in rec]
    if missing:
        have = ", ".join(str(k) for k in rec) or "none"  # str(): a long CSV row adds a None key
        raise ExportValidationError(f"{path}:{lineno}: missing column(s) {', '.join(missing)} (have: {have})")


def _text(value: Any) -> str | None:
    if value is None:
        return None
    s = str(value).strip()
    return s or None


def _bool(path: Path, lineno: int, name: str, value: Any) -> bool:
    if value is None or value == "":
        return True
    if isinstance(value, bool):
        return value
    s = str(value).strip().lower()
    if s in ("1", "true", "yes", "y", "t"):
        return True
    if s in ("0", "false", "no", "n", "f"):
        return False
    raise ExportValidationError(f"{path}:{lineno}: field {name!r} must be a boolean, got {value!r}")


def _price(path: Path, lineno: int, value: Any) -> float:
    if value is None or value == "":
        return math.nan
    try:
        p = float(value)
    except (TypeError, ValueError) as e:
        raise ExportValidationError(f"{path}:{lineno}: field 'price' must be a number, got {value!r}") from e
    if not math.isfinite(p) or p < 0:
        raise ExportValidationError(f"{path}:{lineno}: field 'price' must be finite and >= 0, got {value!r}")
    return p


TS_FORMS = (
    "epoch seconds (1583055000, 1583055000.25, also quoted) or an ISO 8601 date-time "
    "(2020-03-01 09:30:00, 2020-03-01T09:30:00Z, 2020-03-01T09:30:00.250+02:00, 2020-03-01); "
    "no zone means UTC"
)


def parse_ts(value: Any) -> float:
    """Epoch seconds (float) from a ``ts`` value; see :data:`TS_FORMS` for what is accepted.

    A string of digits is epoch seconds, never a basic-format date (``20200301``). ISO 8601 goes
    through :meth:`datetime.fromisoformat` (``Z`` read as UTC first, for Python 3.10); a naive
    date-time is UTC, so a log written in one shop's local time still orders correctly.

    Raises:
        ValueError: not one of the accepted forms, or not finite.
    """
    if isinstance(value, bool):  # bool is an int: True is no timestamp
        raise ValueError("a boolean is not a timestamp")
    if isinstance(value, (int, float)):
        t = float(value)
    elif isinstance(value, datetime):  # Parquet timestamp columns (and pandas.Timestamp)
        t = (value if value.tzinfo else value.replace(tzinfo=timezone.utc)).timestamp()
    elif isinstance(value, date):
        t = datetime(value.year, value.month, value.day, tzinfo=timezone.utc).timestamp()
    elif isinstance(value, str):
        s = value.strip()
        try:
            t = float(s)
        except ValueError:
            if s[-1:] in ("Z", "z"):
                s = s[:-1] + "+00:00"
            dt = datetime.fromisoformat(s)  # ValueError when it is not ISO 8601 either
            t = (dt if dt.tzinfo else dt.replace(tzinfo=timezone.utc)).timestamp()
    else:
        raise ValueError(f"a {type(value).__name__} is not a timestamp")
    if not math.isfinite(t):
        raise ValueError("not finite")
    return t


def load_items(path: str | Path) -> Catalog:
    """Read an items file. Raises ExportValidationError on missing columns, empty titles or duplicates."""
    path = Path(path)
    ids: list[str] = []
    titles: list[str] = []
    cats: list[str | None] = []
    brands: list[str | None] = []
    prices: list[float] = []
    stock: list[bool] = []
    seen: dict[str, int] = {}
    for lineno, rec in _rows(path):
        _require(path, lineno, rec, ("item_id", "title"))
        item_id = _text(rec["item_id"])
        if item_id is None:
            raise ExportValidationError(f"{path}:{lineno}: field 'item_id' is empty")
        if item_id in seen:
            raise ExportValidationError(
                f"{path}:{lineno}: duplicate item_id {item_id!r} (first at row {seen[item_id]})"
            )
        title = _text(rec["title"])
        if title is None:
            raise ExportValidationError(f"{path}:{lineno}: field 'title' is empty for item {item_id!r}")
        seen[item_id] = lineno
        ids.append(item_id)
        titles.append(title)
        cats.append(_text(rec.get("category")))
        brands.append(_text(rec.get("brand")))
        prices.append(_price(path, lineno, rec.get("price")))
        stock.append(_bool(path, lineno, "in_stock", rec.get("in_stock")))
    if not ids:
        raise ExportValidationError(f"{path}: no items")
    return Catalog(ids, titles, cats, brands, np.asarray(prices, np.float64), np.asarray(stock, bool))


def load_events(path: str | Path, catalog: Catalog) -> tuple[Events, list[str]]:
    """Read an events file against ``catalog``; unknown items are skipped and counted."""
    path = Path(path)
    index = catalog.index()
    users: dict[str, int] = {}
    u_col: list[int] = []
    i_col: list[int] = []
    a_col: list[int] = []
    t_col: list[float] = []
    has_ts: bool | None = None
    unknown = 0
    for lineno, rec in _rows(path):
        _require(path, lineno, rec, ("user_id", "item_id", "action"))
        user = _text(rec["user_id"])
        if user is None:
            raise ExportValidationError(f"{path}:{lineno}: field 'user_id' is empty")
        action = (_text(rec["action"]) or "").lower()
        if action not in ACTION_IDS:
            raise ExportValidationError(
                f"{path}:{lineno}: field 'action' must be one of {', '.join(ACTIONS)}, got {rec['action']!r}"
            )
        ts_raw = rec.get("ts")
        row_has_ts = ts_raw not in (None, "")
        if has_ts is None:
            has_ts = row_has_ts
        elif has_ts != row_has_ts:
            raise ExportValidationError(f"{path}:{lineno}: field 'ts' must be given on every row or on none")
        row = index.get(_text(rec["item_id"]) or "")
        if row is None:
            unknown += 1
            continue
        if row_has_ts:
            try:
                t_col.append(parse_ts(ts_raw))
            except (ValueError, OverflowError) as e:
                raise ExportValidationError(f"{path}:{lineno}: field 'ts' must be {TS_FORMS}; got {ts_raw!r}") from e
        u_col.append(users.setdefault(user, len(users)))
        i_col.append(row)
        a_col.append(ACTION_IDS[action])
    if unknown:
        logger.warning("%s: skipped %d event(s) whose item_id is not in the items file", path, unknown)
    if not u_col:
        raise ExportValidationError(f"{path}: no usable events")
    ev = Events(np.asarray(u_col, np.int32), np.asarray(i_col, np.int32), np.asarray(a_col, np.int8))
    if has_ts:
        ts = np.asarray(t_col, np.float64)
        order = np.lexsort((np.arange(len(ts)), ts))  # stable: file order breaks ties
        ev = Events(ev.user[order], ev.item[order], ev.action[order], ts[order])
    return ev, list(users)


def load_files(items: str | Path, events: str | Path, *, name: str = "files") -> Dataset:
    catalog = load_items(items)
    ev, users = load_events(events, catalog)
    return Dataset(name, catalog, ev, users)


# ---- the Amazon Video Games 2018 copy (LLMRank processing) ----------------------------------

AMAZON_GAMES_DIR = "amazon_video_games_2018_llmrank"


def load_amazon_games(data_dir: str | Path) -> Dataset:
    """The Amazon Review 2018 Video Games copy: titles only, one behaviour type, per-user order.

    ``data_dir`` is the ``shared/data`` folder (or the dataset folder itself). Every review is
    mapped to ``purchase``; there are no timestamps, so only the leave-one-out split applies.
    """
    root = Path(data_dir)
    if (root / AMAZON_GAMES_DIR).is_dir():
        root = root / AMAZON_GAMES_DIR
    item_path, test_path = root / "Games.item", root / "Games-6k.test.inter"
    for p in (item_path, test_path):
        if not p.is_file():
            raise ExportValidationError(f"{p}: not found; pass --data-dir pointing at shared/data")
    ids: list[str] = []
    titles: list[str] = []
    with item_path.open(encoding="utf-8") as f:
        header = f.readline().rstrip("\n").split("\t")
        if header[:2] != ["item_id:token", "title:token_seq"]:
            raise ExportValidationError(f"{item_path}:1: unexpected header {header}")
        for lineno, line in enumerate(f, 2):
            parts = line.rstrip("\n").split("\t")
            if len(parts) < 2 or not parts[1].strip():
                raise ExportValidationError(f"{item_path}:{lineno}: missing title")
            ids.append(parts[0])
            titles.append(parts[1].strip())
    n = len(ids)
    catalog = Catalog(ids, titles, [None] * n, [None] * n, np.full(n, np.nan), np.ones(n, bool))
    index = catalog.index()
    users: list[str] = []
    u_col: list[int] = []
    i_col: list[int] = []
    with test_path.open(encoding="utf-8") as f:
        f.readline()
        for lineno, line in enumerate(f, 2):
            user, hist, last = line.rstrip("\n").split("\t")
            u = len(users)
            users.append(user)
            for tok in [*hist.split(), last]:
                row = index.get(tok)
                if row is None:
                    raise ExportValidationError(f"{test_path}:{lineno}: unknown item id {tok!r}")
                u_col.append(u)
                i_col.append(row)
    ev = Events(np.asarray(u_col, np.int32), np.asarray(i_col, np.int32), np.full(len(u_col), 3, np.int8))
    return Dataset("amazon-games", catalog, ev, users, notes=["one behaviour type, mapped to purchase"])


# ---- splits ---------------------------------------------------------------------------------


@dataclass
class Split:
    """Training sequences plus held-out (history, target) cases, as catalog rows.

    ``train`` holds each user's sequence without its held-out items; ``valid``/``test`` hold
    (user, history steps, target row). ``cut`` says where a time split cut (``valid_from`` and
    ``test_from`` in epoch seconds, and the fractions of events they leave after them); it is
    ``None`` for leave-one-out. :meth:`describe` is the one line a report prints.
    """

    kind: str
    train: list[list[tuple[int, int]]]
    valid: list[tuple[int, list[tuple[int, int]], int]]
    test: list[tuple[int, list[tuple[int, int]], int]]
    # each user's steps known before the test targets (train + the valid step): what co-occurrence
    # and popularity are built from when the test split is scored (None: ``train``)
    before_test: list[list[tuple[int, int]]] | None = None
    cut: dict[str, float] | None = None

    def describe(self) -> str:
        if self.kind == "leave-one-out":
            return "leave-one-out (valid = each shopper's second-to-last step, test = the last)"
        if self.cut is None:
            return self.kind
        c = self.cut
        return (
            f"{self.kind} (valid targets from {_when(c['valid_from'])}, test targets from "
            f"{_when(c['test_from'])}: the last {c['valid_frac']:.0%} + {c['test_frac']:.0%} of events)"
        )


SPLITS = ("leave-one-out", "time")


def _when(t: float) -> str:
    """An epoch-seconds cut as UTC ISO 8601 (the raw number too, when it is not a plausible date)."""
    if 0 <= t < 4e9:  # 1970 … 2096: a date; outside, the shop's ts was some other counter
        spec = "seconds" if t == int(t) else "milliseconds"  # a quantile cut falls between events
        return datetime.fromtimestamp(t, timezone.utc).isoformat(timespec=spec).replace("+00:00", "Z")
    return f"ts {t:g}"


def leave_one_out(ds: Dataset, *, min_len: int = 3) -> Split:
    """valid = second-to-last step, test = last step; users shorter than ``min_len`` only train."""
    train, valid, test = [], [], []
    for u, seq in enumerate(ds.sequences()):
        if len(seq) < min_len:
            train.append(seq)
            continue
        train.append(seq[:-2])
        valid.append((u, seq[:-2], seq[-2][0]))
        test.append((u, seq[:-1], seq[-1][0]))
    before = [s if len(s) < min_len else s[:-1] for s in ds.sequences()]
    return Split("leave-one-out", train, valid, test, before_test=before)


def time_split(ds: Dataset, *, valid_frac: float = 0.1, test_frac: float = 0.1) -> Split:
    """Global time split: the last ``test_frac`` of events (by ts) are test targets, the
    ``valid_frac`` before them valid targets; histories are everything before the target."""
    if ds.events.ts is None:
        raise ExportValidationError(f"{ds.name}: the time split needs timestamps ('ts'); use leave-one-out")
    ts = ds.events.ts
    t_test, t_valid = np.quantile(ts, 1 - test_frac), np.quantile(ts, 1 - test_frac - valid_frac)
    train, valid, test = [], [], []
    before: list[list[tuple[int, int]]] = []
    per_user: list[list[tuple[int, int, float]]] = [[] for _ in ds.users]
    for u, i, a, t in zip(ds.events.user.tolist(), ds.events.item.tolist(), ds.events.action.tolist(), ts, strict=True):
        s = per_user[u]
        if s and s[-1][0] == i:
            if a > s[-1][1]:
                s[-1] = (i, a, s[-1][2])
        else:
            s.append((i, a, float(t)))
    for u, seq in enumerate(per_user):
        steps = [(i, a) for i, a, _ in seq]
        cut_v = sum(1 for *_, t in seq if t < t_valid)
        cut_t = sum(1 for *_, t in seq if t < t_test)
        train.append(steps[:cut_v])
        before.append(steps[:cut_t])
        if cut_v < len(seq) and cut_v > 0 and cut_v < cut_t:
            valid.append((u, steps[:cut_v], steps[cut_v][0]))
        if cut_t < len(seq) and cut_t > 0:
            test.append((u, steps[:cut_t], steps[cut_t][0]))
    cut = {"valid_from": float(t_valid), "test_from": float(t_test), "valid_frac": valid_frac, "test_frac": test_frac}
    logger.info("time split: valid targets from %s, test from %s", _when(cut["valid_from"]), _when(cut["test_from"]))
    return Split("time", train, valid, test, before_test=before, cut=cut)


def make_split(ds: Dataset, kind: str) -> Split:
    """The split named ``kind`` (one of :data:`SPLITS`).

    Raises:
        ExportValidationError: an unknown kind, or ``time`` on data without timestamps.
    """
    if kind == "leave-one-out":
        return leave_one_out(ds)
    if kind == "time":
        return time_split(ds)
    raise ExportValidationError(f"unknown split {kind!r}; use one of {', '.join(SPLITS)}")
