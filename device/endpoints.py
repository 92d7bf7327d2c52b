"""The endpoints of ``shelfrank serve``: the operations, their typed bodies and limits, the OpenAPI
description made from the same types, and :class:`Service`, which answers one request from an
opened :class:`~shelfrank.device.Recommender`.

This room knows the recommender and the request/response contracts (:mod:`shelfrank.device.formats`);
it takes a request as (method, path, content type, body bytes) and gives (status, JSON, headers),
so it never touches a socket. The transport, :mod:`shelfrank.device.serve`, knows HTTP framing,
connections and their limits, and calls :meth:`Service.handle`.
"""

from __future__ import annotations

import json
import logging
import math
import threading
import time
from collections import Counter
from pathlib import Path
from typing import Any, Callable, NamedTuple

import msgspec

from shelfrank import __version__
from shelfrank.device import formats as fmt
from shelfrank.device.formats import MAX_K
from shelfrank.device.kernel import active_isa
from shelfrank.errors import (
    EventStoreBusyError,
    InputError,
    RequestBodyError,
    UnknownFilterValueError,
    UnknownItemError,
)

__all__ = ["MAX_BODY", "MAX_K", "SEARCH_BODY", "SMALL_BODY", "RequestError", "Service", "openapi_spec"]

# one log for the service, whichever room writes it (a 500's traceback, the access lines)
logger = logging.getLogger("shelfrank.device.serve")

MAX_BODY = 1 << 20  # bytes; the largest body any operation takes (recommend/similar: long id lists)
SMALL_BODY = 16 << 10  # record, history, forget and the GETs: two ids and an action
SEARCH_BODY = 64 << 10  # search: the encoder reads max_len x encoder.CHARS_PER_TOKEN characters anyway
SEARCH_MANY_BODY = MAX_BODY  # search_many: up to MAX_BATCH_TEXTS texts (16 KiB each on average)

# ---- the operations: paths, bodies, limits, and the OpenAPI description made from them ---------


class _Op(NamedTuple):
    name: str
    request: type | None  # the request body's struct (None: no body)
    response: type
    summary: str
    statuses: tuple[int, ...]  # the 4xx it may answer besides the common ones
    max_body: int


_OPERATIONS: dict[tuple[str, str], _Op] = {
    ("POST", "/v1/record"): _Op(
        "record",
        fmt.RecordRequest,
        fmt.RecordResponse,
        "Record one shopper event (durable before the answer); the next call reflects it.",
        (404,),
        SMALL_BODY,
    ),
    ("POST", "/v1/recommend"): _Op(
        "recommend",
        fmt.RecommendRequest,
        fmt.RecommendResponse,
        "Items for this shopper, best first; popular items when they have no history yet.",
        (404,),
        MAX_BODY,
    ),
    ("POST", "/v1/similar"): _Op(
        "similar",
        fmt.SimilarRequest,
        fmt.SimilarResponse,
        "Items closest to an item (never the item itself).",
        (404,),
        MAX_BODY,
    ),
    ("POST", "/v1/search"): _Op(
        "search",
        fmt.SearchRequest,
        fmt.SearchResponse,
        "Items matching free text, embedded on the device with the bundle's encoder.",
        (404,),
        SEARCH_BODY,
    ),
    ("POST", "/v1/recommend_many"): _Op(
        "recommend_many",
        fmt.RecommendManyRequest,
        fmt.RecommendManyResponse,
        "recommend for many shoppers (one catalog version, one batch scan): one result list per user id, "
        "in order, each equal to recommend's.",
        (404,),
        MAX_BODY,
    ),
    ("POST", "/v1/search_many"): _Op(
        "search_many",
        fmt.SearchManyRequest,
        fmt.SearchManyResponse,
        "search for many texts: one result list per text, in order, each equal to search's.",
        (404,),
        SEARCH_MANY_BODY,
    ),
    ("POST", "/v1/history"): _Op(
        "history",
        fmt.UserRequest,
        fmt.HistoryResponse,
        "The shopper's stored events, oldest first ([] for an unknown or forgotten shopper).",
        (),
        SMALL_BODY,
    ),
    ("POST", "/v1/forget"): _Op(
        "forget",
        fmt.UserRequest,
        fmt.ForgetResponse,
        "Delete every event of the shopper, leaving no trace in the database files.",
        (),
        SMALL_BODY,
    ),
    ("GET", "/v1/health"): _Op(
        "health", None, fmt.HealthResponse, "Liveness: the catalog and event store answer.", (), SMALL_BODY
    ),
    ("GET", "/v1/status"): _Op(
        "status",
        None,
        fmt.StatusResponse,
        "Bundle and catalog versions, board, kernel ISA, uptime and request counts.",
        (),
        SMALL_BODY,
    ),
}
_PATHS: dict[str, dict[str, str]] = {}
for (_method, _path), _op in _OPERATIONS.items():
    _PATHS.setdefault(_path, {})[_method] = _op.name
_PATHS["/openapi.json"] = {"GET": "openapi"}

_STATUS_TEXT = {
    200: "OK",
    400: "Malformed request: invalid JSON, a body that is not UTF-8, or broken HTTP framing.",
    404: "Unknown item id (error = unknown_item), or a where filter names a category or brand the catalog "
    "lacks (error = unknown_filter_value, field = where.category or where.brand).",
    408: "The request did not arrive in full within the request deadline.",
    411: "No Content-Length (chunked bodies are not accepted).",
    413: "Body over this operation's size limit.",
    415: "Content-Type is not application/json (charset utf-8).",
    422: "A field is missing, unknown, of the wrong type or out of range.",
    500: "A bug in the service (the traceback is logged); never caused by client input.",
    503: "The service is shutting down, at its connection limit, or (health) unhealthy.",
}


def _error_response(text: str) -> dict[str, Any]:
    return {
        "description": text,
        "content": {"application/json": {"schema": {"$ref": "#/components/schemas/ErrorBody"}}},
    }


def openapi_spec() -> dict[str, Any]:
    """The OpenAPI 3.1 description of the service (served at ``GET /openapi.json``).

    The schemas are generated from the request and response structs the service decodes and
    encodes (:func:`shelfrank.device.formats.service_schemas`).
    """
    paths: dict[str, Any] = {}
    for (method, path), op in _OPERATIONS.items():
        responses: dict[str, Any] = {
            "200": {
                "description": "OK",
                "content": {"application/json": {"schema": {"$ref": f"#/components/schemas/{op.response.__name__}"}}},
            }
        }
        codes = (400, *op.statuses, 408, 411, 413, *((415, 422) if op.request else ()), 503)
        for code in (*codes, 500):
            text = _STATUS_TEXT[code] + (f" This one takes at most {op.max_body} bytes." if code == 413 else "")
            responses[str(code)] = _error_response(text)
        entry: dict[str, Any] = {"operationId": op.name, "summary": op.summary, "responses": responses}
        if op.request is not None:
            entry["requestBody"] = {
                "required": True,
                "content": {"application/json": {"schema": {"$ref": f"#/components/schemas/{op.request.__name__}"}}},
            }
        paths.setdefault(path, {})[method.lower()] = entry
    paths["/openapi.json"] = {
        "get": {
            "operationId": "openapi",
            "summary": "This description.",
            "responses": {"200": {"description": "OpenAPI 3.1 document", "content": {"application/json": {}}}},
        }
    }
    return {
        "openapi": "3.1.0",
        "info": {
            "title": "shelfrank device service",
            "version": __version__,
            "description": "On-device recommendations over local HTTP (127.0.0.1 or a Unix socket). "
            "Errors are JSON: {error, message, field?}.",
        },
        "paths": paths,
        "components": {"schemas": fmt.service_schemas()},
    }


# ---- refusals -----------------------------------------------------------------------------------


class RequestError(Exception):
    """A request the service refuses: HTTP status, error type, message (naming the field)."""

    def __init__(
        self,
        status: int,
        kind: str,
        message: str,
        *,
        field: str | None = None,
        headers: dict[str, str] | None = None,
        close: bool = False,
    ) -> None:
        super().__init__(message)
        self.status, self.kind, self.message, self.field = status, kind, message, field
        self.headers, self.close = headers or {}, close


def show(value: Any) -> str:
    """A client's value quoted for a message, at most 60 characters."""
    text = json.dumps(value) if not isinstance(value, str) else repr(value)
    return text if len(text) <= 60 else text[:57] + "..."


_ENCODER = msgspec.json.Encoder()


def error_body(e: RequestError) -> bytes:
    """The JSON body of a refusal: ``{"error", "message", "field"?}`` (:class:`formats.ErrorBody`)."""
    field = msgspec.UNSET if e.field is None else e.field
    return _ENCODER.encode(fmt.ErrorBody(error=e.kind, message=e.message, field=field))


def _check_content_type(value: str | None) -> None:
    if value is None:
        raise RequestError(415, "unsupported_media_type", "Content-Type is missing; send application/json")
    media, *params = (p.strip() for p in value.split(";"))
    if media.lower() != "application/json":
        raise RequestError(415, "unsupported_media_type", f"Content-Type {show(value)} is not application/json")
    for p in params:
        name, _, val = p.partition("=")
        if name.strip().lower() == "charset" and val.strip().strip('"').lower() not in ("utf-8", "utf8"):
            raise RequestError(415, "unsupported_media_type", f"charset {show(val)} is not supported; send utf-8")


# ---- the service --------------------------------------------------------------------------------


def _items(items: list) -> list[fmt.Item]:
    out = []
    for it in items:
        if not math.isfinite(it.score):  # msgspec would write null; a NaN score is a bug in the runtime
            raise RuntimeError(f"item {it.item_id!r} has a non-finite score {it.score}")
        out.append(
            fmt.Item(
                it.item_id,
                it.score,
                it.title,
                it.category,
                it.brand,
                it.price,
                it.in_stock,
                it.score_kind,
                it.reason,
                list(it.reason_items),
                it.reason_text,
            )
        )
    return out


class Service:
    """Answers the HTTP API from one opened Recommender; thread-safe.

    Args:
        rec: the opened recommender (the caller closes it).
        board: the board name, reported by ``status``.
        max_body: the largest request body accepted, in bytes; each operation has its own
            smaller-or-equal limit too (record/history/forget 16 KiB, search 64 KiB).
        refresh_interval: seconds between checks for a catalog another process synced.
    """

    def __init__(
        self, rec, *, board: str | None = None, max_body: int = MAX_BODY, refresh_interval: float = 1.0
    ) -> None:
        self.rec, self.board = rec, board
        self.max_body, self.refresh_interval = int(max_body), float(refresh_interval)
        self.started = time.time()
        self._started_mono = time.monotonic()
        self._lock = threading.Lock()
        self._idle = threading.Condition(self._lock)
        self._inflight = 0
        self.closing = False
        self._by_op: Counter[str] = Counter()
        self._by_status: Counter[int] = Counter()
        self._refresh_lock = threading.Lock()
        self._next_refresh = 0.0
        self._spec = json.dumps(openapi_spec(), separators=(",", ":")).encode()
        self._handlers: dict[str, Callable[[Any], msgspec.Struct]] = {
            "record": self._record,
            "recommend": self._recommend,
            "similar": self._similar,
            "search": self._search,
            "recommend_many": self._recommend_many,
            "search_many": self._search_many,
            "history": self._history,
            "forget": self._forget,
            "health": self._health,
            "status": self._status,
        }

    # -- the HTTP-independent entry point --

    def allowed(self, path: str) -> list[str] | None:
        """The methods a path answers (None for an unknown path)."""
        methods = _PATHS.get(path)
        if methods is None:
            return None
        return [*methods, *(["HEAD"] if "GET" in methods else []), "OPTIONS"]

    def body_limit(self, method: str, path: str) -> int:
        """The largest body a request to ``method path`` may carry, in bytes."""
        op = _OPERATIONS.get(("GET" if method == "HEAD" else method, path))
        return min(op.max_body, self.max_body) if op is not None else min(SMALL_BODY, self.max_body)

    def handle(self, method: str, path: str, content_type: str | None, body: bytes) -> tuple[int, bytes, dict]:
        """One request → (status, JSON body, extra headers). Never raises for client input."""
        name = "unknown"
        try:
            methods = _PATHS.get(path)
            if methods is None:
                raise RequestError(404, "not_found", f"no such path {show(path)}; see GET /openapi.json")
            allow = ", ".join(self.allowed(path) or ())
            if method == "OPTIONS":
                return self._count("options", 204, b"", {"Allow": allow})
            verb = "GET" if method == "HEAD" else method
            if verb not in methods:
                raise RequestError(
                    405,
                    "method_not_allowed",
                    f"{method} is not allowed on {path}; use {' or '.join(methods)}",
                    headers={"Allow": allow},
                )
            name = methods[verb]
            if name == "openapi":
                return self._count(name, 200, self._spec, {})
            op = _OPERATIONS[(verb, path)]
            args = None
            if op.request is not None:
                _check_content_type(content_type)
                args = fmt.decode_request(body, op.request)
            if not self._enter():
                raise RequestError(503, "unavailable", "the service is shutting down", close=True)
            try:
                self._maybe_refresh()
                payload = self._handlers[name](args)
            finally:
                self._leave()
            return self._count(name, 200, _ENCODER.encode(payload), {})
        except RequestError as e:
            headers = {**e.headers, **({"Connection": "close"} if e.close else {})}
            return self._count(name, e.status, error_body(e), headers)
        except RequestBodyError as e:
            status, kind = (400, "invalid_json") if e.malformed else (422, "validation_error")
            return self._count(name, status, error_body(RequestError(status, kind, str(e), field=e.field)), {})
        except UnknownFilterValueError as e:  # like an unknown item id: the catalog has no such entry
            err = RequestError(404, "unknown_filter_value", str(e), field=e.field)
            return self._count(name, 404, error_body(err), {})
        except UnknownItemError as e:
            err = RequestError(404, "unknown_item", f"item_id: {e}", field="item_id")
            return self._count(name, 404, error_body(err), {})
        except InputError as e:  # a rule the contract cannot state, checked by the runtime
            return self._count(name, 422, error_body(RequestError(422, "invalid_input", str(e))), {})
        except EventStoreBusyError as e:  # the rows are gone; the files are cleaned once the reader ends
            err = RequestError(503, "unavailable", str(e), headers={"Retry-After": "1"})
            return self._count(name, 503, error_body(err), err.headers)
        except Exception:
            logger.exception("%s %s failed (a bug in the service, not the request)", method, path)
            err = RequestError(500, "internal_error", "internal error (the service logged the traceback)")
            return self._count(name, 500, error_body(err), {})

    # -- bookkeeping --

    def _count(self, op: str, status: int, body: bytes, headers: dict) -> tuple[int, bytes, dict]:
        with self._lock:
            self._by_op[op] += 1
            self._by_status[status] += 1
        return status, body, headers

    def count_rejected(self, status: int) -> None:
        """Count a request refused before it reached :meth:`handle` (framing errors, the connection cap)."""
        self._count("unknown", status, b"", {})

    def _enter(self) -> bool:
        with self._lock:
            if self.closing:
                return False
            self._inflight += 1
            return True

    def _leave(self) -> None:
        with self._lock:
            self._inflight -= 1
            if self._inflight == 0:
                self._idle.notify_all()

    def close(self, timeout: float = 10.0) -> bool:
        """Refuse new requests (503) and wait for the running ones; True when they all finished."""
        with self._lock:
            self.closing = True
            return self._idle.wait_for(lambda: self._inflight == 0, timeout)

    def _maybe_refresh(self) -> None:
        """At most once per ``refresh_interval``: serve a catalog another process synced."""
        now = time.monotonic()
        if now < self._next_refresh or not self._refresh_lock.acquire(blocking=False):
            return
        try:
            if now >= self._next_refresh:
                self._next_refresh = now + self.refresh_interval
                self.rec.refresh()
        except Exception:  # a broken synced catalog must not take queries down with it
            logger.exception("checking for a synced catalog failed; serving version %d", self.rec.catalog.version)
        finally:
            self._refresh_lock.release()

    # -- operations: a typed request in, a typed response out --

    def _record(self, a: fmt.RecordRequest) -> fmt.RecordResponse:
        ts = time.time() if a.ts is msgspec.UNSET else a.ts
        self.rec.record(a.user_id, a.item_id, a.action, ts)
        return fmt.RecordResponse(a.user_id, a.item_id, a.action, ts)

    def _recommend(self, a: fmt.RecommendRequest) -> fmt.RecommendResponse:
        version = self.rec.catalog.version
        items = self.rec.recommend(
            a.user_id, a.k, exclude_seen=a.exclude_seen, where=_where(a.where), diversity=a.diversity, ranker=a.ranker
        )
        return fmt.RecommendResponse(a.user_id, version, _items(items))

    def _similar(self, a: fmt.SimilarRequest) -> fmt.SimilarResponse:
        version = self.rec.catalog.version
        items = self.rec.similar(a.item_id, a.k, where=_where(a.where))
        return fmt.SimilarResponse(a.item_id, version, _items(items))

    def _search(self, a: fmt.SearchRequest) -> fmt.SearchResponse:
        version = self.rec.catalog.version
        return fmt.SearchResponse(version, _items(self.rec.search(a.text, a.k, where=_where(a.where), mode=a.mode)))

    def _recommend_many(self, a: fmt.RecommendManyRequest) -> fmt.RecommendManyResponse:
        version = self.rec.catalog.version
        lists = self.rec.recommend_many(
            a.user_ids, a.k, exclude_seen=a.exclude_seen, where=_where(a.where), diversity=a.diversity, ranker=a.ranker
        )
        return fmt.RecommendManyResponse(
            version, [fmt.UserItems(u, _items(items)) for u, items in zip(a.user_ids, lists)]
        )

    def _search_many(self, a: fmt.SearchManyRequest) -> fmt.SearchManyResponse:
        version = self.rec.catalog.version
        lists = self.rec.search_many(a.texts, a.k, where=_where(a.where))
        return fmt.SearchManyResponse(version, [fmt.TextItems(t, _items(items)) for t, items in zip(a.texts, lists)])

    def _history(self, a: fmt.UserRequest) -> fmt.HistoryResponse:
        events = [fmt.Event(e.item_id, e.action, e.ts) for e in self.rec.history(a.user_id)]
        return fmt.HistoryResponse(a.user_id, events)

    def _forget(self, a: fmt.UserRequest) -> fmt.ForgetResponse:
        self.rec.forget(a.user_id)
        return fmt.ForgetResponse(a.user_id, True)

    def _health(self, _: None) -> fmt.HealthResponse:
        cat = self.rec.catalog
        try:
            self.rec.history("health-check")  # one SQLite read: the event store answers
            ok = len(cat) > 0
        except Exception as e:
            logger.exception("health check failed")
            raise RequestError(503, "unavailable", f"unhealthy: {e}") from e
        if not ok:
            raise RequestError(503, "unavailable", f"unhealthy: catalog version {cat.version} is empty")
        return fmt.HealthResponse("ok", cat.version, len(cat))

    def _status(self, _: None) -> fmt.StatusResponse:
        rec, cat, m = self.rec, self.rec.catalog, self.rec.manifest
        with self._lock:
            by_op, by_status = dict(self._by_op), {str(k): v for k, v in sorted(self._by_status.items())}
        return fmt.StatusResponse(
            service="shelfrank",
            version=__version__,
            bundle=fmt.BundleStatus(
                path=str(rec.bundle),
                format_version=m.format_version,
                created_at=m.created_at,
                model_sha256=m.model.sha256,
                publisher_key_id=m.publisher_key_id,
            ),
            catalog=fmt.CatalogStatus(
                version=cat.version,
                items=len(cat),
                bundle_version=m.catalog.version,
                source="bundle" if Path(cat.root) == Path(rec.bundle) / "catalog" else "synced",
            ),
            board=self.board,
            threads=int(rec.threads),
            isa=active_isa(),
            started_at=time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime(self.started)),
            uptime_s=round(time.monotonic() - self._started_mono, 3),
            requests=fmt.RequestCounts(sum(by_op.values()), by_op, by_status),
        )


def _where(where: fmt.Where | msgspec.UnsetType) -> dict[str, Any] | None:
    return None if where is msgspec.UNSET else where.as_filter()
