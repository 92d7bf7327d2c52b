"""The service's response bodies, and the JSON Schema of every body for /openapi.json."""

from __future__ import annotations

import typing
from typing import Annotated, Any

import msgspec
from msgspec import Meta

from shelfrank.device.formats.request import REQUEST_BODIES, Action

_UNSET = msgspec.UNSET


class _Out(msgspec.Struct):
    """A response body."""


#: why an item is in an answer (``Item.reason``): the shopper's recent items (the user tower, or an
#: item seen before), the co-occurrence neighbours of their recent items (the hybrid ranker), the
#: bundle's popularity (a shopper without history), a text query, closeness to one item (similar), or
#: the shop's merchandising rules (pinned: device/rules.py)
REASONS = ("history", "co-occurrence", "popular", "search", "similar", "pinned")
#: what ``Item.score`` measures: cosine similarity to the query (user vector, item or text), a
#: fused score (the hybrid ranker, hybrid search), BM25 relative to the best match (lexical
#: search), or the bundle's popularity (cold start)
SCORE_KINDS = ("cosine", "fused", "lexical", "popularity")


class Item(_Out):
    """One item of an answer: what a shop's app shows, and why it is there (named Item and Event for
    OpenAPI tools, which infer resources, and links between operations, from schema names)."""

    item_id: str
    score: Annotated[
        float,
        Meta(
            description="Higher is better within one answer; score_kind says what it measures (never compare "
            "scores of different kinds)."
        ),
    ]
    title: str
    category: str | None
    brand: str | None
    price: float | None
    in_stock: bool
    score_kind: Annotated[
        typing.Literal[SCORE_KINDS],  # type: ignore[valid-type]
        Meta(
            description="cosine: similarity to the query (similar, search, recommend with the tower); fused: the "
            "hybrid ranker's score; popularity: the bundle's popularity (a shopper without history)."
        ),
    ]
    reason: Annotated[
        typing.Literal[REASONS],  # type: ignore[valid-type]
        Meta(
            description="history: close to the shopper's recent item in reason_items; co-occurrence: often "
            "chosen with the recent items in reason_items (best first); popular: a shopper without history; "
            "search: matches the text; similar: close to the item in reason_items; pinned: placed by the shop's "
            "merchandising rules."
        ),
    ]
    reason_items: Annotated[list[str], Meta(description="The item ids that drove the reason (may be empty).")]
    reason_text: Annotated[str, Meta(min_length=1, description="The reason in English, e.g. “because you viewed …”.")]


class Event(_Out):
    """One stored shopper event."""

    item_id: str
    action: Action
    ts: float


#: the ``error`` member of every refusal
ERROR_KINDS = (
    "bad_request",
    "internal_error",
    "invalid_input",
    "invalid_json",
    "length_required",
    "method_not_allowed",
    "not_found",
    "payload_too_large",
    "request_timeout",
    "unavailable",
    "unknown_item",
    "unknown_filter_value",
    "unsupported_media_type",
    "uri_too_long",
    "validation_error",
    "headers_too_large",
)


class ErrorBody(_Out):
    error: typing.Literal[ERROR_KINDS]  # type: ignore[valid-type]
    message: Annotated[str, Meta(description="What is wrong, naming the field.")]
    field: Annotated[str, Meta(description="The offending field, e.g. where.min_price (when one is).")] | (
        msgspec.UnsetType
    ) = _UNSET


class RecordResponse(_Out):
    user_id: str
    item_id: str
    action: Action
    ts: float


class ImpressionResponse(_Out):
    user_id: str
    surface: Annotated[str, Meta(description="The surface the items count for (other once 31 are counted).")]
    items: Annotated[int, Meta(ge=1, description="How many items were recorded as shown.")]
    ts: float


class RecommendResponse(_Out):
    user_id: str
    catalog_version: int
    items: list[Item]


class SimilarResponse(_Out):
    item_id: str
    catalog_version: int
    items: list[Item]


class SearchResponse(_Out):
    catalog_version: int
    items: list[Item]


class UserItems(_Out):
    user_id: str
    items: list[Item]


class RecommendManyResponse(_Out):
    catalog_version: Annotated[int, Meta(description="One catalog version for every shopper of the batch.")]
    results: Annotated[list[UserItems], Meta(description="One entry per user id, in the request's order.")]


class TextItems(_Out):
    text: str
    items: list[Item]


class SearchManyResponse(_Out):
    catalog_version: int
    results: Annotated[list[TextItems], Meta(description="One entry per text, in the request's order.")]


class HistoryResponse(_Out):
    user_id: str
    events: list[Event]


class ForgetResponse(_Out):
    user_id: str
    forgotten: typing.Literal[True]


class HealthResponse(_Out):
    status: typing.Literal["ok"]
    catalog_version: int
    catalog_items: Annotated[int, Meta(ge=1)]


class BundleStatus(_Out):
    path: str
    format_version: int
    created_at: str
    model_sha256: str
    publisher_key_id: str


class CatalogStatus(_Out):
    version: int
    items: int
    bundle_version: Annotated[int, Meta(description="the bundle's own catalog version")]
    source: typing.Literal["bundle", "synced"]


class RequestCounts(_Out):
    total: int
    by_operation: dict[str, int]
    by_status: dict[str, int]


class StatusResponse(_Out):
    service: typing.Literal["shelfrank"]
    version: Annotated[str, Meta(description="shelfrank package version")]
    bundle: BundleStatus
    catalog: CatalogStatus
    board: str | None
    threads: int
    isa: Annotated[str, Meta(description="the top-k kernel path in use")]
    started_at: Annotated[str, Meta(description="UTC, ISO 8601 (date-time)")]
    uptime_s: float
    requests: Annotated[RequestCounts, Meta(description="requests answered before this one")]


RESPONSE_BODIES: tuple[type[_Out], ...] = (
    ErrorBody,
    RecordResponse,
    RecommendResponse,
    SimilarResponse,
    SearchResponse,
    RecommendManyResponse,
    SearchManyResponse,
    HistoryResponse,
    ForgetResponse,
    HealthResponse,
    StatusResponse,
    ImpressionResponse,
)


def service_schemas(ref_template: str = "#/components/schemas/{name}") -> dict[str, Any]:
    """JSON Schema (2020-12, as OpenAPI 3.1 takes it) of every request and response body, by type name."""
    _, components = msgspec.json.schema_components((*REQUEST_BODIES, *RESPONSE_BODIES), ref_template=ref_template)
    return components
