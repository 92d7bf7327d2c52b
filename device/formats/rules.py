"""Merchandising rules and the live stock feed: what ``shelfrank publish --rules/--stock`` signs and
what sync (or a kiosk's ``Recommender.set_rules`` / ``update_stock``) reads (docs/device.md,
"Merchandising rules" and "Live stock and price"), one definition for both sides.

In a publish folder, beside ``index.json``, whose signed ``rules`` and ``stock`` entries pin each
file's sha256 and size (signed like the catalog's files: a new one re-signs the index, with no new
catalog version)::

    rules/<n>.json     Rules       (its own version n)
    stock/<n>.json     StockFeed   (its own version n; for one catalog version)

Unknown fields are refused in both (a typo in a rule must not silently change what a shop shows),
and every list is bounded, as is each file (``RULES_MAX_BYTES``, ``STOCK_MAX_BYTES``).
"""

from __future__ import annotations

import datetime as _dt
import typing
from typing import Annotated, Any

import msgspec
from msgspec import Meta

from shelfrank.device.formats.common import NonNegativeInt, ShortText, convert
from shelfrank.device.formats.index import ItemId, _Price
from shelfrank.device.formats.request import MAX_K, Where
from shelfrank.errors import RulesError, StockError

RULES_NAME = "rules.json"
STOCK_NAME = "stock.json"
RULES_FORMAT = 1
STOCK_FORMAT = 1
#: a rules document is a few hundred rules at most; the stock feed up to MAX_STOCK_ITEMS entries
RULES_MAX_BYTES = 1 << 20
STOCK_MAX_BYTES = 16 << 20
MAX_PINS = 32
MAX_RULES = 64  # boosts, and buries
MAX_RULE_IDS = 1000  # item ids in one selector (allow/deny lists included)
MAX_CAPS = 256
MAX_STOCK_ITEMS = 100_000
#: where a rule applies: ``recommend`` (and ``recommend_many``), ``similar``
SURFACES = ("recommend", "similar")
Surface = typing.Literal[SURFACES]  # type: ignore[valid-type]
_Position = Annotated[int, Meta(ge=1, le=MAX_K)]
_AwareDatetime = Annotated[_dt.datetime, Meta(tz=True)]


class _Rule(msgspec.Struct, forbid_unknown_fields=True, frozen=True, kw_only=True):
    """A part of a rules document or stock feed: unknown fields are refused."""


class Selector(_Rule):
    """Which items a rule is about: these ``ids``, and every item passing ``where`` (the filter
    language of the queries' ``where``: category, brand, prices, in_stock, allow_ids, deny_ids)."""

    ids: Annotated[list[ItemId], Meta(max_length=MAX_RULE_IDS)] = []
    where: Where | None = None

    def __post_init__(self) -> None:
        if not self.ids and (self.where is None or self.where.as_filter() is None):
            raise ValueError("a rule needs ids, a non-empty where, or both")


class Boost(Selector, kw_only=True):
    """Matching items move up ``positions`` places in the ranked list (boosts of one item add up)."""

    positions: _Position


class Pin(_Rule):
    """``item_id`` (or the best-ranked item passing ``where``, else the most popular one) at ``position``
    (1 = first)."""

    position: _Position
    item_id: ItemId | None = None
    where: Where | None = None

    def __post_init__(self) -> None:
        if (self.item_id is None) == (self.where is None or self.where.as_filter() is None):
            raise ValueError("a pin needs exactly one of item_id or a non-empty where")


class Rules(_Rule):
    """A merchandising rules document, applied on the device in this order (docs/device.md): allow,
    deny (with the call's ``where``, as the scan's mask), then after ranking boost and bury, pins
    chosen, ``category_caps`` (``"*"``: every category not named), pins placed."""

    format_version: int
    version: NonNegativeInt = 0
    surfaces: Annotated[list[Surface], Meta(min_length=1, max_length=len(SURFACES))] = msgspec.field(
        default_factory=lambda: list(SURFACES)
    )
    allow: Selector | None = None
    deny: Selector | None = None
    boost: Annotated[list[Boost], Meta(max_length=MAX_RULES)] = []
    bury: Annotated[list[Selector], Meta(max_length=MAX_RULES)] = []
    category_caps: Annotated[dict[ShortText, _Position], Meta(max_length=MAX_CAPS)] = {}
    pin: Annotated[list[Pin], Meta(max_length=MAX_PINS)] = []
    expires: _AwareDatetime | None = None

    def __post_init__(self) -> None:
        if self.format_version != RULES_FORMAT:
            raise ValueError(
                f"format_version {self.format_version} is not supported (this runtime reads {RULES_FORMAT})"
            )
        positions = [p.position for p in self.pin]
        if len(set(positions)) != len(positions):
            raise ValueError("pin: two pins at the same position")


class StockEntry(_Rule):
    """One item's live state: ``in_stock``, ``price`` (null: unknown), or both."""

    in_stock: bool | msgspec.UnsetType = msgspec.UNSET
    price: _Price | msgspec.UnsetType | None = msgspec.UNSET

    def __post_init__(self) -> None:
        if self.in_stock is msgspec.UNSET and self.price is msgspec.UNSET:
            raise ValueError("a stock entry needs in_stock, price or both")


#: item id -> its live state (a local ``update_stock`` call takes the same mapping)
StockItems = Annotated[dict[ItemId, StockEntry], Meta(max_length=MAX_STOCK_ITEMS)]


class StockFeed(_Rule):
    """``stock.json``'s signed part: every live change since catalog ``catalog_version`` was
    published (cumulative: a device that missed a feed loses nothing)."""

    format_version: int
    version: NonNegativeInt
    catalog_version: NonNegativeInt
    items: StockItems
    created_at: _AwareDatetime | None = None

    def __post_init__(self) -> None:
        if self.format_version != STOCK_FORMAT:
            raise ValueError(
                f"format_version {self.format_version} is not supported (this runtime reads {STOCK_FORMAT})"
            )


def decode_rules(obj: Any, *, where: str, fix: str = "fix the rules document") -> Rules:
    """A rules document (decoded JSON: a dict) as :class:`Rules`.

    Raises:
        RulesError: a field that breaks its type or constraint, or an unknown field (named).
    """
    return convert(obj, Rules, where=where, error=RulesError, fix=fix)


def decode_stock_items(obj: Any, *, where: str) -> dict[str, StockEntry]:
    """A local stock update (``{item_id: {"in_stock": bool, "price": float}}``) as entries.

    Raises:
        StockError: not such a mapping, over ``MAX_STOCK_ITEMS`` entries, or a bad entry (named).
    """
    return convert(obj, StockItems, where=where, error=StockError, fix="each entry is {in_stock: bool, price: number}")


def decode_stock_feed(obj: Any, *, where: str) -> StockFeed:
    """The signed part of ``stock.json`` as :class:`StockFeed` (StockError when it is not one)."""
    return convert(obj, StockFeed, where=where, error=StockError, fix="republish the stock feed")


def encode(doc: Rules | StockFeed) -> dict[str, Any]:
    """``doc`` as the JSON object publish signs (datetimes as ``isoformat``, unset fields left out)."""
    obj = msgspec.to_builtins(doc, builtin_types=(_dt.datetime,))

    def plain(v: Any) -> Any:
        if isinstance(v, _dt.datetime):
            return v.isoformat()
        if isinstance(v, dict):
            return {k: plain(x) for k, x in v.items() if x is not None}
        if isinstance(v, list):
            return [plain(x) for x in v]
        return v

    out = plain(obj)
    if isinstance(doc, StockFeed):  # a null price means "unknown": keep it
        out["items"] = {k: msgspec.to_builtins(e) for k, e in doc.items.items()}
    return out
