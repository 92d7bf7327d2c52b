"""The service's request bodies: what ``shelfrank serve`` reads, decoded in one call.

What ``shelfrank serve`` reads (device/service/endpoints.py) and what /openapi.json publishes
(:func:`~shelfrank.device.formats.response.service_schemas`): one set of types for both, so the
description and the server cannot disagree. A body is decoded by :func:`decode_request`; unknown
fields are refused.
"""

from __future__ import annotations

import re
import types
import typing
from typing import Annotated, Any, TypeVar

import msgspec
from msgspec import Meta

from shelfrank.device.text import ACTIONS
from shelfrank.errors import RequestBodyError

#: the most items one request may ask for
MAX_K = 1000
#: the most shoppers one recommend_many request may name
MAX_BATCH_USERS = 256
#: the most texts one search_many request may carry
MAX_BATCH_TEXTS = 64
#: the longest id (shopper or item) a request may carry
MAX_ID_CHARS = 1024

RequestUserId = Annotated[
    str,
    Meta(
        min_length=1,
        max_length=MAX_ID_CHARS,
        pattern=r"\S",
        description="The shopper's id (any string with a non-space character).",
        examples=["u42"],
    ),
]
RequestItemId = Annotated[
    str,
    Meta(
        min_length=1, max_length=MAX_ID_CHARS, description="An item id of the catalog served.", examples=["SKU-00123"]
    ),
]
#: a count of items. A JSON Schema "integer" is any number with no fraction (3.0 too), so the
#: contract is a number that is a multiple of 1, made an int on decoding (see _Body.__post_init__)
ItemCount = Annotated[float, Meta(ge=1, le=MAX_K, multiple_of=1, description="How many items to return.")]
StringOrList = Annotated[str | list[str], Meta(description="A string or a list of strings.")]
Action = typing.Literal[ACTIONS]  # type: ignore[valid-type]  # view, click, cart, purchase
_UNSET = msgspec.UNSET


class _Body(msgspec.Struct, forbid_unknown_fields=True, kw_only=True):
    """A request body: unknown fields are refused (a typo is a mistake, never silently ignored)."""

    def __post_init__(self) -> None:
        k = getattr(self, "k", None)
        if isinstance(k, float):
            self.k = int(k)  # type: ignore[attr-defined]


class Where(_Body):
    """Filters (all optional, combined with AND). An item with an unknown price never passes a price
    filter; ids in allow_ids/deny_ids that are not in the catalog are ignored."""

    category: Annotated[StringOrList, Meta(description="Only these categories.")] | msgspec.UnsetType = _UNSET
    brand: Annotated[StringOrList, Meta(description="Only these brands.")] | msgspec.UnsetType = _UNSET
    min_price: Annotated[float, Meta(description="Price at least this.")] | msgspec.UnsetType = _UNSET
    max_price: Annotated[float, Meta(description="Price at most this.")] | msgspec.UnsetType = _UNSET
    in_stock: Annotated[bool, Meta(description="Only items in (true) or out of (false) stock.")] | msgspec.UnsetType = (
        _UNSET
    )
    allow_ids: Annotated[list[str], Meta(description="Only these item ids.")] | msgspec.UnsetType = _UNSET
    deny_ids: Annotated[list[str], Meta(description="Never these item ids.")] | msgspec.UnsetType = _UNSET

    def as_filter(self) -> dict[str, Any] | None:
        """The ``where`` mapping :meth:`Catalog.mask` takes (the fields given), None when empty."""
        out = {f: v for f in self.__struct_fields__ if (v := getattr(self, f)) is not _UNSET}
        return out or None


class RecordRequest(_Body):
    user_id: RequestUserId
    item_id: RequestItemId
    action: Action
    ts: Annotated[float, Meta(description="Event time, Unix seconds (default: now).")] | msgspec.UnsetType = _UNSET


#: how ``recommend`` ranks (device/ranker.py): the fused score, or the user tower alone
Ranker = typing.Literal["hybrid", "tower"]


class _Listing(_Body):
    """What every request for a list of items takes: how many, and which ones may appear."""

    k: ItemCount = 10
    where: Where | msgspec.UnsetType = _UNSET


class _RecommendOptions(_Listing):
    """``recommend``'s options, the same for one shopper and for a batch (``recommend_many``)."""

    exclude_seen: Annotated[bool, Meta(description="Leave out items in the shopper's history.")] = True
    diversity: Annotated[
        float,
        Meta(
            ge=0.0,
            le=1.0,
            description="Re-rank by maximal marginal relevance with this weight on diversity "
            "(0: the plain order, 1: the most diverse).",
        ),
    ] = 0.0
    ranker: Annotated[
        Ranker,
        Meta(
            description="hybrid: the user tower's candidates and the co-occurrence neighbours of the "
            "shopper's recent items, ranked by the bundle's fused score (the user tower alone for a bundle "
            "without one); tower: the user tower alone."
        ),
    ] = "hybrid"


def _batch(item: Any, most: int, what: str) -> Any:
    """A batch field: 1 to ``most`` inputs, one result list each, in the request's order."""
    description = f"The {what} (1 to {most}); one result list each, in this order."
    return Annotated[list[item], Meta(min_length=1, max_length=most, description=description)]


UserIds = _batch(RequestUserId, MAX_BATCH_USERS, "shoppers")


class RecommendRequest(_RecommendOptions, kw_only=True):
    user_id: RequestUserId


class RecommendManyRequest(_RecommendOptions, kw_only=True):
    """``recommend`` for many shoppers at once: the same options for all of them."""

    user_ids: UserIds


class SimilarRequest(_Listing, kw_only=True):
    item_id: RequestItemId


SearchText = Annotated[
    str,
    Meta(
        min_length=1,
        pattern=r"\S",
        description="Free text; only its first few hundred words are read (the encoder's max_len tokens).",
        examples=["wireless headphones"],
    ),
]


Texts = _batch(SearchText, MAX_BATCH_TEXTS, "queries")


class SearchRequest(_Listing, kw_only=True):
    text: SearchText
    #: hybrid (lexical + dense, fused), dense (the encoder alone) or lexical (the FTS index alone)
    mode: typing.Literal["hybrid", "dense", "lexical"] = "hybrid"
    #: personalised search (hybrid only, off by default): this shopper's history re-ranks the results
    user_id: RequestUserId | None = None


class SearchManyRequest(_Listing, kw_only=True):
    """``search`` for many texts at once: the same options for all of them."""

    texts: Texts


class UserRequest(_Body):
    user_id: RequestUserId


#: where items were shown (events.SURFACE_PATTERN): a short label, counted apart in /metrics
Surface = Annotated[
    str,
    Meta(
        pattern=r"^[a-z][a-z0-9_-]{0,31}$",
        description="Where the items were shown, e.g. search, recommended, similar (31 surfaces are counted apart, "
        "later ones count as other).",
        examples=["search"],
    ),
]


class ImpressionRequest(_Body):
    """Items shown to a shopper on a surface; a click on one of them soon after counts for the surface."""

    user_id: RequestUserId
    item_ids: Annotated[list[RequestItemId], Meta(min_length=1, max_length=MAX_K, description="The items shown.")]
    surface: Surface
    ts: Annotated[float, Meta(description="When they were shown, Unix seconds (default: now).")] | (
        msgspec.UnsetType
    ) = _UNSET


REQUEST_BODIES: tuple[type[_Body], ...] = (
    RecordRequest,
    RecommendRequest,
    SimilarRequest,
    SearchRequest,
    UserRequest,
    RecommendManyRequest,
    SearchManyRequest,
    ImpressionRequest,
)
_DECODERS = {t: msgspec.json.Decoder(t) for t in REQUEST_BODIES}
_BodyT = TypeVar("_BodyT", bound=_Body)
_LONE_SURROGATE = re.compile(rb"\\u[dD][89a-fA-F][0-9a-fA-F]{2}")
_MESSAGE_HELP = {
    r"Expected `str` matching regex '\\S'": "Expected a string with a non-space character",
    "Expected `float` that's a multiple of 1.0": "Expected an integer",
    "Expected `float` >= 1.0": "Expected an integer >= 1",  # k: the only float with bounds
    f"Expected `float` <= {float(MAX_K)}": f"Expected an integer <= {MAX_K}",
    "Number out of range": "Expected a finite number (this one is out of range)",
}


def decode_request(body: bytes, type_: type[_BodyT]) -> _BodyT:
    """A request body (UTF-8 JSON) as ``type_``, checked against its constraints in one call.

    Raises:
        RequestBodyError: ``malformed`` when the body is not UTF-8 JSON; else ``field`` names the
            field that is missing, unknown, of the wrong type or out of range (None: the body itself).
    """
    try:
        return _DECODERS[type_].decode(body)
    except msgspec.ValidationError as e:
        raise _contract_error(str(e), type_) from None
    except msgspec.DecodeError as e:
        raise _malformed(body, e) from None
    except RecursionError:  # not reached with these types (no free-form field); kept typed regardless
        raise RequestBodyError("the request body is nested too deeply", malformed=True) from None


def _malformed(body: bytes, e: msgspec.DecodeError) -> RequestBodyError:
    if not body.strip():
        return RequestBodyError("the request body is empty; send a JSON object", malformed=True)
    try:
        body.decode("utf-8")
    except UnicodeDecodeError as u:
        return RequestBodyError(f"the request body is not UTF-8 ({u.reason} at byte {u.start})", malformed=True)
    hint = ""
    if at := re.search(r"\(byte (\d+)\)$", str(e)):
        hint = f" near {body[int(at.group(1)) : int(at.group(1)) + 24].decode('utf-8', 'replace')!r}"
    if _LONE_SURROGATE.search(body):
        hint += " (a \\uD800-\\uDFFF escape must be one half of a surrogate pair)"
    return RequestBodyError(f"the request body is not valid JSON: {e}{hint}", malformed=True)


def _contract_error(text: str, type_: type[_Body]) -> RequestBodyError:
    """msgspec's ValidationError as a message that starts with the field: ``where.k: Expected …``."""
    msg, sep, at = text.rpartition(" - at `")
    if not sep:
        msg, at = text, ""
    path = at.rstrip("`").removeprefix("$").removeprefix(".")
    for word in ("unknown", "missing required"):
        m = re.fullmatch(rf"Object (?:contains )?{word} field `(.*)`", msg, re.S)
        if m:
            name = f"{path}.{m.group(1)}" if path else m.group(1)
            if word == "unknown":
                allowed = ", ".join(_struct_at(type_, path).__struct_fields__)
                where = f" in {path}" if path else ""
                return RequestBodyError(f"{name} is not a known field; allowed{where}: {allowed}", field=name)
            return RequestBodyError(f"{name} is required", field=name)
    for raw, words in _MESSAGE_HELP.items():
        msg = msg.replace(raw, words)
    if msg.startswith("Invalid enum value") and (choices := _choices(type_, path)):
        msg += f"; expected one of {', '.join(map(repr, choices))}"
    if path == "k":  # an ItemCount: a float only so that 3.0 counts as an integer (JSON Schema's reading)
        msg = msg.replace("`float`", "an integer")
    return RequestBodyError(f"{path or 'request body'}: {msg}", field=path or None)


def _choices(type_: type[_Body], path: str) -> list[Any]:
    """The values a Literal field at ``path`` takes ([] when it is not one)."""
    parent, _, name = path.rpartition(".")
    field = {f.name: f.type for f in msgspec.structs.fields(_struct_at(type_, parent))}.get(name)
    return [v for t in _leaves(field) if typing.get_origin(t) is typing.Literal for v in typing.get_args(t)]


def _struct_at(type_: type[_Body], path: str) -> type[_Body]:
    """The Struct type a dotted field path (from a ValidationError) lands in; ``type_`` for ''."""
    for name in filter(None, re.sub(r"\[\d+\]", "", path).split(".")):
        field = {f.name: f.type for f in msgspec.structs.fields(type_)}.get(name)
        nested = [t for t in _leaves(field) if isinstance(t, type) and issubclass(t, _Body)]
        if not nested:
            break
        type_ = nested[0]
    return type_


def _leaves(t: Any) -> list[Any]:
    origin = typing.get_origin(t)
    if origin is Annotated:
        return _leaves(typing.get_args(t)[0])
    if origin in (typing.Union, types.UnionType):
        return [leaf for a in typing.get_args(t) for leaf in _leaves(a)]
    return [t]
