"""``shelfrank serve``: the device runtime as a local JSON-over-HTTP service for non-Python apps.

Standard library only on top of the runtime (``http.server``, ``socketserver``, ``json``): a
thread per connection, HTTP/1.1 keep-alive, on 127.0.0.1 and/or a Unix socket. One
:class:`Service` holds the opened :class:`~shelfrank.device.Recommender` and answers requests;
:func:`start` binds the listeners and serves them from background threads.

Every operation is ``POST /v1/<verb>`` with a JSON object body (shopper ids travel in bodies,
never in URLs, so they never land in access logs), plus ``GET /v1/health``, ``GET /v1/status``
and ``GET /openapi.json``. Request bodies are checked against the same schemas the OpenAPI
description publishes (:data:`SCHEMAS`), so the description and the server cannot disagree.
Client mistakes get a 4xx with ``{"error": type, "message": ..., "field": ...}``; only a bug in
the service itself answers 500 (and logs its traceback).

A catalog sync normally runs as a separate process (``shelfrank sync`` from a timer). Before a
request the service calls :meth:`Recommender.refresh` at most once per ``refresh_interval``
seconds, so a newly installed catalog is served within about a second, swapped in atomically.
"""

from __future__ import annotations

import http.server
import json
import logging
import math
import os
import re
import socket
import socketserver
import stat
import threading
import time
from collections import Counter
from dataclasses import fields
from pathlib import Path
from typing import Any, Callable

from shelfrank import __version__
from shelfrank.device.catalog import Item
from shelfrank.device.events import Event
from shelfrank.device.kernel import active_isa
from shelfrank.device.text import ACTIONS
from shelfrank.errors import InputError, UnknownItemError

logger = logging.getLogger(__name__)
access_logger = logging.getLogger(__name__ + ".access")

DEFAULT_HOST = "127.0.0.1"
DEFAULT_PORT = 8377
MAX_BODY = 1 << 20  # bytes; a request body above this is refused (413)
DRAIN_LIMIT = 16 << 20  # an oversized body up to this is read and dropped (the connection stays usable)
MAX_K = 1000
IDLE_TIMEOUT = 30.0  # seconds a keep-alive connection may stay silent before it is closed
UNIX_SOCKET_MODE = 0o660

# ---- schemas: the OpenAPI description and the request checks share them -------------------------

_USER_ID = {
    "type": "string",
    "minLength": 1,
    "pattern": r"\S",
    "description": "The shopper's id (any string with a non-space character).",
    "example": "u42",
}
_ITEM_ID = {
    "type": "string",
    "minLength": 1,
    "description": "An item id of the catalog served.",
    "example": "SKU-00123",
}
_K = {"type": "integer", "minimum": 1, "maximum": MAX_K, "default": 10, "description": "How many items to return."}
_STRINGS = {
    "anyOf": [{"type": "string"}, {"type": "array", "items": {"type": "string"}}],
    "x-describe": "a string or a list of strings",
}
_WHERE = {
    "type": "object",
    "additionalProperties": False,
    "description": "Filters (all optional, combined with AND). An item with an unknown price never "
    "passes a price filter; ids in allow_ids/deny_ids that are not in the catalog are ignored.",
    "properties": {
        "category": {**_STRINGS, "description": "Only these categories."},
        "brand": {**_STRINGS, "description": "Only these brands."},
        "min_price": {"type": "number", "description": "Price at least this."},
        "max_price": {"type": "number", "description": "Price at most this."},
        "in_stock": {"type": "boolean", "description": "Only items in (true) or out of (false) stock."},
        "allow_ids": {"type": "array", "items": {"type": "string"}, "description": "Only these item ids."},
        "deny_ids": {"type": "array", "items": {"type": "string"}, "description": "Never these item ids."},
    },
}


def _body(properties: dict[str, Any], required: list[str]) -> dict[str, Any]:
    return {"type": "object", "additionalProperties": False, "required": required, "properties": properties}


SCHEMAS: dict[str, dict[str, Any]] = {
    "RecordRequest": _body(
        {
            "user_id": _USER_ID,
            "item_id": _ITEM_ID,
            "action": {"type": "string", "enum": list(ACTIONS)},
            "ts": {"type": "number", "description": "Event time, Unix seconds (default: now)."},
        },
        ["user_id", "item_id", "action"],
    ),
    "RecommendRequest": _body(
        {
            "user_id": _USER_ID,
            "k": _K,
            "exclude_seen": {
                "type": "boolean",
                "default": True,
                "description": "Leave out items in the shopper's history.",
            },
            "where": _WHERE,
        },
        ["user_id"],
    ),
    "SimilarRequest": _body({"item_id": _ITEM_ID, "k": _K, "where": _WHERE}, ["item_id"]),
    "SearchRequest": _body(
        {
            "text": {"type": "string", "minLength": 1, "pattern": r"\S", "example": "wireless headphones"},
            "k": _K,
            "where": _WHERE,
        },
        ["text"],
    ),
    "UserRequest": _body({"user_id": _USER_ID}, ["user_id"]),
}

_ERROR_TYPES = {
    400: "invalid_json",
    404: "not_found",
    405: "method_not_allowed",
    408: "request_timeout",
    411: "length_required",
    413: "payload_too_large",
    414: "uri_too_long",
    415: "unsupported_media_type",
    422: "validation_error",
    431: "headers_too_large",
    500: "internal_error",
    503: "unavailable",
}
_ERROR_TYPE_NAMES = sorted({*_ERROR_TYPES.values(), "bad_request", "unknown_item", "invalid_input"})


def _nullable(schema: dict[str, Any]) -> dict[str, Any]:
    return {**schema, "nullable": True}


_ITEM = {
    "type": "object",
    "required": ["item_id", "score", "title", "category", "brand", "price", "in_stock"],
    "properties": {
        "item_id": {"type": "string"},
        "score": {"type": "number", "description": "Cosine similarity; for a shopper without history, popularity."},
        "title": {"type": "string"},
        "category": _nullable({"type": "string"}),
        "brand": _nullable({"type": "string"}),
        "price": _nullable({"type": "number"}),
        "in_stock": {"type": "boolean"},
    },
}
_ITEMS = {"type": "array", "items": {"$ref": "#/components/schemas/Item"}}
_EVENT = {
    "type": "object",
    "required": ["item_id", "action", "ts"],
    "properties": {
        "item_id": {"type": "string"},
        "action": {"type": "string", "enum": list(ACTIONS)},
        "ts": {"type": "number"},
    },
}
_RESPONSES: dict[str, dict[str, Any]] = {
    "Item": _ITEM,
    "Event": _EVENT,
    "Error": {
        "type": "object",
        "required": ["error", "message"],
        "properties": {
            "error": {"type": "string", "enum": _ERROR_TYPE_NAMES},
            "message": {"type": "string", "description": "What is wrong, naming the field."},
            "field": {"type": "string", "description": "The offending field, e.g. where.min_price (when one is)."},
        },
    },
    "RecordResponse": {
        "type": "object",
        "required": ["user_id", "item_id", "action", "ts"],
        "properties": {
            "user_id": {"type": "string"},
            "item_id": {"type": "string"},
            "action": {"type": "string", "enum": list(ACTIONS)},
            "ts": {"type": "number"},
        },
    },
    "RecommendResponse": {
        "type": "object",
        "required": ["user_id", "catalog_version", "items"],
        "properties": {"user_id": {"type": "string"}, "catalog_version": {"type": "integer"}, "items": _ITEMS},
    },
    "SimilarResponse": {
        "type": "object",
        "required": ["item_id", "catalog_version", "items"],
        "properties": {"item_id": {"type": "string"}, "catalog_version": {"type": "integer"}, "items": _ITEMS},
    },
    "SearchResponse": {
        "type": "object",
        "required": ["catalog_version", "items"],
        "properties": {"catalog_version": {"type": "integer"}, "items": _ITEMS},
    },
    "HistoryResponse": {
        "type": "object",
        "required": ["user_id", "events"],
        "properties": {
            "user_id": {"type": "string"},
            "events": {"type": "array", "items": {"$ref": "#/components/schemas/Event"}},
        },
    },
    "ForgetResponse": {
        "type": "object",
        "required": ["user_id", "forgotten"],
        "properties": {"user_id": {"type": "string"}, "forgotten": {"type": "boolean", "enum": [True]}},
    },
    "HealthResponse": {
        "type": "object",
        "required": ["status", "catalog_version", "catalog_items"],
        "properties": {
            "status": {"type": "string", "enum": ["ok"]},
            "catalog_version": {"type": "integer"},
            "catalog_items": {"type": "integer", "minimum": 1},
        },
    },
    "StatusResponse": {
        "type": "object",
        "required": [
            "service",
            "version",
            "bundle",
            "catalog",
            "board",
            "threads",
            "isa",
            "started_at",
            "uptime_s",
            "requests",
        ],
        "properties": {
            "service": {"type": "string", "enum": ["shelfrank"]},
            "version": {"type": "string", "description": "shelfrank package version"},
            "bundle": {
                "type": "object",
                "required": ["path", "format_version", "created_at", "model_sha256", "publisher_key_id"],
                "properties": {
                    "path": {"type": "string"},
                    "format_version": {"type": "integer"},
                    "created_at": {"type": "string"},
                    "model_sha256": {"type": "string"},
                    "publisher_key_id": {"type": "string"},
                },
            },
            "catalog": {
                "type": "object",
                "required": ["version", "items", "bundle_version", "source"],
                "properties": {
                    "version": {"type": "integer"},
                    "items": {"type": "integer"},
                    "bundle_version": {"type": "integer", "description": "the bundle's own catalog version"},
                    "source": {"type": "string", "enum": ["bundle", "synced"]},
                },
            },
            "board": _nullable({"type": "string"}),
            "threads": {"type": "integer"},
            "isa": {"type": "string", "description": "the top-k kernel path in use"},
            "started_at": {"type": "string", "format": "date-time"},
            "uptime_s": {"type": "number"},
            "requests": {
                "type": "object",
                "required": ["total", "by_operation", "by_status"],
                "properties": {
                    "total": {"type": "integer"},
                    "by_operation": {"type": "object", "additionalProperties": {"type": "integer"}},
                    "by_status": {"type": "object", "additionalProperties": {"type": "integer"}},
                },
            },
        },
    },
}

# (method, path) -> (operation id, request schema name or None, response schema, summary, extra statuses)
_OPERATIONS: dict[tuple[str, str], tuple[str, str | None, str, str, tuple[int, ...]]] = {
    ("POST", "/v1/record"): (
        "record",
        "RecordRequest",
        "RecordResponse",
        "Record one shopper event (durable before the answer); the next call reflects it.",
        (404,),
    ),
    ("POST", "/v1/recommend"): (
        "recommend",
        "RecommendRequest",
        "RecommendResponse",
        "Items for this shopper, best first; popular items when they have no history yet.",
        (),
    ),
    ("POST", "/v1/similar"): (
        "similar",
        "SimilarRequest",
        "SimilarResponse",
        "Items closest to an item (never the item itself).",
        (404,),
    ),
    ("POST", "/v1/search"): (
        "search",
        "SearchRequest",
        "SearchResponse",
        "Items matching free text, embedded on the device with the bundle's encoder.",
        (),
    ),
    ("POST", "/v1/history"): (
        "history",
        "UserRequest",
        "HistoryResponse",
        "The shopper's stored events, oldest first ([] for an unknown or forgotten shopper).",
        (),
    ),
    ("POST", "/v1/forget"): (
        "forget",
        "UserRequest",
        "ForgetResponse",
        "Delete every event of the shopper, leaving no trace in the database files.",
        (),
    ),
    ("GET", "/v1/health"): ("health", None, "HealthResponse", "Liveness: the catalog and event store answer.", ()),
    ("GET", "/v1/status"): (
        "status",
        None,
        "StatusResponse",
        "Bundle and catalog versions, board, kernel ISA, uptime and request counts.",
        (),
    ),
}
_PATHS: dict[str, dict[str, str]] = {}
for (_method, _path), (_op, *_rest) in _OPERATIONS.items():
    _PATHS.setdefault(_path, {})[_method] = _op
_PATHS["/openapi.json"] = {"GET": "openapi"}

_STATUS_TEXT = {
    200: "OK",
    400: "Malformed request: invalid JSON, a body that is not UTF-8, or broken HTTP framing.",
    404: "Unknown item id (error = unknown_item).",
    411: "No Content-Length (chunked bodies are not accepted).",
    413: f"Body over the size limit (default {MAX_BODY} bytes).",
    415: "Content-Type is not application/json (charset utf-8).",
    422: "A field is missing, unknown, of the wrong type or out of range.",
    500: "A bug in the service (the traceback is logged); never caused by client input.",
    503: "The service is shutting down, or (health) unhealthy.",
}


def _error_response(text: str) -> dict[str, Any]:
    return {"description": text, "content": {"application/json": {"schema": {"$ref": "#/components/schemas/Error"}}}}


def openapi_spec() -> dict[str, Any]:
    """The OpenAPI 3.0 description of the service (served at ``GET /openapi.json``)."""
    paths: dict[str, Any] = {}
    for (method, path), (op, request, response, summary, extra) in _OPERATIONS.items():
        responses: dict[str, Any] = {
            "200": {
                "description": "OK",
                "content": {"application/json": {"schema": {"$ref": f"#/components/schemas/{response}"}}},
            }
        }
        codes = (400, *extra, 411, 413, *((415, 422) if request else ()), 503)
        for code in (*codes, 500):
            responses[str(code)] = _error_response(_STATUS_TEXT[code])
        entry: dict[str, Any] = {"operationId": op, "summary": summary, "responses": responses}
        if request is not None:
            entry["requestBody"] = {
                "required": True,
                "content": {"application/json": {"schema": {"$ref": f"#/components/schemas/{request}"}}},
            }
        paths.setdefault(path, {})[method.lower()] = entry
    paths["/openapi.json"] = {
        "get": {
            "operationId": "openapi",
            "summary": "This description.",
            "responses": {"200": {"description": "OpenAPI 3.0 document", "content": {"application/json": {}}}},
        }
    }
    schemas = {name: {k: v for k, v in s.items() if not k.startswith("x-")} for name, s in SCHEMAS.items()}
    return {
        "openapi": "3.0.3",
        "info": {
            "title": "shelfrank device service",
            "version": __version__,
            "description": "On-device recommendations over local HTTP (127.0.0.1 or a Unix socket). "
            "Errors are JSON: {error, message, field?}.",
        },
        "paths": paths,
        "components": {"schemas": {**_strip_x(schemas), **_RESPONSES}},
    }


def _strip_x(obj: Any) -> Any:
    """The schemas without this module's private ``x-`` annotations."""
    if isinstance(obj, dict):
        return {k: _strip_x(v) for k, v in obj.items() if not k.startswith("x-")}
    if isinstance(obj, list):
        return [_strip_x(v) for v in obj]
    return obj


# ---- request checks (the subset of JSON Schema the schemas above use) ------------------------------


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


def _show(value: Any) -> str:
    text = json.dumps(value) if not isinstance(value, str) else repr(value)
    return text if len(text) <= 60 else text[:57] + "..."


def _invalid(field: str, must: str, value: Any) -> RequestError:
    name = field or "request body"
    return RequestError(422, "validation_error", f"{name} must be {must}, got {_show(value)}", field=field or None)


def check(schema: dict[str, Any], value: Any, field: str = "") -> Any:
    """``value`` checked against ``schema`` (integral floats become ints); raises :class:`RequestError` (422)."""
    if "anyOf" in schema:
        for alt in schema["anyOf"]:
            try:
                return check(alt, value, field)
            except RequestError:
                pass
        raise _invalid(field, schema.get("x-describe", "one of the allowed forms"), value)
    kind = schema.get("type")
    if kind == "object":
        if not isinstance(value, dict):
            raise _invalid(field, "a JSON object", value)
        props = schema.get("properties", {})
        if schema.get("additionalProperties") is False:
            for key in value:
                if key not in props:
                    name = f"{field}.{key}" if field else key
                    raise RequestError(
                        422,
                        "validation_error",
                        f"{name} is not a known field; allowed{' in ' + field if field else ''}: {', '.join(props)}",
                        field=name,
                    )
        for key in schema.get("required", ()):
            if key not in value:
                name = f"{field}.{key}" if field else key
                raise RequestError(422, "validation_error", f"{name} is required", field=name)
        return {key: check(props[key], v, f"{field}.{key}" if field else key) for key, v in value.items()}
    if kind == "array":
        if not isinstance(value, list):
            raise _invalid(field, "an array", value)
        return [check(schema.get("items", {}), v, f"{field}[{i}]") for i, v in enumerate(value)]
    if kind == "string":
        if not isinstance(value, str):
            raise _invalid(field, "a string", value)
        try:
            value.encode("utf-8")
        except UnicodeEncodeError:
            raise _invalid(field, "valid Unicode (it holds a lone surrogate)", value) from None
        if len(value) < schema.get("minLength", 0):
            raise _invalid(field, f"at least {schema['minLength']} character(s) long", value)
        if "pattern" in schema and not re.search(schema["pattern"], value):
            raise _invalid(field, "a string with a non-space character", value)
        if "enum" in schema and value not in schema["enum"]:
            raise _invalid(field, f"one of {', '.join(schema['enum'])}", value)
        return value
    if kind in ("integer", "number"):
        if isinstance(value, bool) or not isinstance(value, (int, float)):
            raise _invalid(field, "an integer" if kind == "integer" else "a number", value)
        if isinstance(value, float) and not math.isfinite(value):
            raise _invalid(field, "a finite number", value)
        if kind == "integer":
            if isinstance(value, float) and not value.is_integer():
                raise _invalid(field, "an integer", value)
            value = int(value)
        else:
            try:
                value = float(value)  # JSON allows integers far beyond any float
            except OverflowError:
                raise _invalid(field, "a finite number", value) from None
        lo, hi = schema.get("minimum"), schema.get("maximum")
        if (lo is not None and value < lo) or (hi is not None and value > hi):
            raise _invalid(field, f"between {lo} and {hi}" if hi is not None else f"at least {lo}", value)
        return value
    if kind == "boolean":
        if not isinstance(value, bool):
            raise _invalid(field, "true or false", value)
        return value
    return value


def _reject_constant(name: str) -> Any:
    raise ValueError(f"{name} is not valid JSON")


def parse_json(body: bytes) -> Any:
    """The JSON document in a UTF-8 body; raises :class:`RequestError` (400) naming the problem."""
    try:
        text = body.decode("utf-8")
    except UnicodeDecodeError as e:
        raise RequestError(400, "invalid_json", f"the request body is not UTF-8 ({e.reason} at byte {e.start})") from e
    if not text.strip():
        raise RequestError(400, "invalid_json", "the request body is empty; send a JSON object")
    try:
        return json.loads(text, parse_constant=_reject_constant)
    except RecursionError:
        raise RequestError(400, "invalid_json", "the request body is nested too deeply") from None
    except ValueError as e:  # JSONDecodeError, NaN/Infinity, an integer with too many digits
        raise RequestError(400, "invalid_json", f"the request body is not valid JSON: {e}") from e


# ---- the service --------------------------------------------------------------------------------


_JSON = json.JSONEncoder(separators=(",", ":"), allow_nan=False)  # NaN would be a bug: 500, not bad JSON
_ITEM_FIELDS = tuple(f.name for f in fields(Item))
_EVENT_FIELDS = tuple(f.name for f in fields(Event))


def _items(items: list[Item]) -> list[dict[str, Any]]:
    # explicit dicts: dataclasses.asdict deep-copies every field and cost more than the query itself
    return [{f: getattr(it, f) for f in _ITEM_FIELDS} for it in items]


class Service:
    """Answers the HTTP API from one opened Recommender; thread-safe.

    Args:
        rec: the opened recommender (the caller closes it).
        board: the board name, reported by ``status``.
        max_body: the largest request body accepted, in bytes.
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
        self._handlers: dict[str, Callable[[dict[str, Any]], dict[str, Any]]] = {
            "record": self._record,
            "recommend": self._recommend,
            "similar": self._similar,
            "search": self._search,
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

    def handle(self, method: str, path: str, content_type: str | None, body: bytes) -> tuple[int, bytes, dict]:
        """One request → (status, JSON body, extra headers). Never raises for client input."""
        op = "unknown"
        try:
            methods = _PATHS.get(path)
            if methods is None:
                raise RequestError(404, "not_found", f"no such path {_show(path)}; see GET /openapi.json")
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
            op = methods[verb]
            if op == "openapi":
                return self._count(op, 200, self._spec, {})
            request = _OPERATIONS[(verb, path)][1]
            args: dict[str, Any] = {}
            if request is not None:
                _check_content_type(content_type)
                args = check(SCHEMAS[request], parse_json(body))
            if not self._enter():
                raise RequestError(503, "unavailable", "the service is shutting down", close=True)
            try:
                self._maybe_refresh()
                payload = self._handlers[op](args)
            finally:
                self._leave()
            out = _JSON.encode(payload).encode()
            return self._count(op, 200, out, {})
        except RequestError as e:
            headers = {**e.headers, **({"Connection": "close"} if e.close else {})}
            return self._count(op, e.status, _error_body(e), headers)
        except UnknownItemError as e:
            err = RequestError(404, "unknown_item", f"item_id: {e}", field="item_id")
            return self._count(op, 404, _error_body(err), {})
        except InputError as e:  # a rule the schema cannot state, checked by the runtime
            return self._count(op, 422, _error_body(RequestError(422, "invalid_input", str(e))), {})
        except Exception:
            logger.exception("%s %s failed (a bug in the service, not the request)", method, path)
            err = RequestError(500, "internal_error", "internal error (the service logged the traceback)")
            return self._count(op, 500, _error_body(err), {})

    # -- bookkeeping --

    def _count(self, op: str, status: int, body: bytes, headers: dict) -> tuple[int, bytes, dict]:
        with self._lock:
            self._by_op[op] += 1
            self._by_status[status] += 1
        return status, body, headers

    def count_rejected(self, status: int) -> None:
        """Count a request refused before it reached :meth:`handle` (framing errors)."""
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

    # -- operations --

    def _record(self, a: dict[str, Any]) -> dict[str, Any]:
        ts = float(a["ts"]) if "ts" in a else time.time()
        self.rec.record(a["user_id"], a["item_id"], a["action"], ts)
        return {"user_id": a["user_id"], "item_id": a["item_id"], "action": a["action"], "ts": ts}

    def _recommend(self, a: dict[str, Any]) -> dict[str, Any]:
        version = self.rec.catalog.version
        items = self.rec.recommend(
            a["user_id"], a.get("k", 10), exclude_seen=a.get("exclude_seen", True), where=a.get("where")
        )
        return {"user_id": a["user_id"], "catalog_version": version, "items": _items(items)}

    def _similar(self, a: dict[str, Any]) -> dict[str, Any]:
        version = self.rec.catalog.version
        items = self.rec.similar(a["item_id"], a.get("k", 10), where=a.get("where"))
        return {"item_id": a["item_id"], "catalog_version": version, "items": _items(items)}

    def _search(self, a: dict[str, Any]) -> dict[str, Any]:
        version = self.rec.catalog.version
        return {
            "catalog_version": version,
            "items": _items(self.rec.search(a["text"], a.get("k", 10), where=a.get("where"))),
        }

    def _history(self, a: dict[str, Any]) -> dict[str, Any]:
        events = self.rec.history(a["user_id"])
        return {"user_id": a["user_id"], "events": [{f: getattr(e, f) for f in _EVENT_FIELDS} for e in events]}

    def _forget(self, a: dict[str, Any]) -> dict[str, Any]:
        self.rec.forget(a["user_id"])
        return {"user_id": a["user_id"], "forgotten": True}

    def _health(self, _: dict[str, Any]) -> dict[str, Any]:
        cat = self.rec.catalog
        try:
            self.rec.history("health-check")  # one SQLite read: the event store answers
            ok = len(cat) > 0
        except Exception as e:
            logger.exception("health check failed")
            raise RequestError(503, "unavailable", f"unhealthy: {e}") from e
        if not ok:
            raise RequestError(503, "unavailable", f"unhealthy: catalog version {cat.version} is empty")
        return {"status": "ok", "catalog_version": cat.version, "catalog_items": len(cat)}

    def _status(self, _: dict[str, Any]) -> dict[str, Any]:
        rec, cat = self.rec, self.rec.catalog
        m = rec.manifest
        bundle_version = int(m["catalog"]["version"])
        with self._lock:
            by_op, by_status = dict(self._by_op), {str(k): v for k, v in sorted(self._by_status.items())}
        return {
            "service": "shelfrank",
            "version": __version__,
            "bundle": {
                "path": str(rec.bundle),
                "format_version": int(m["format_version"]),
                "created_at": str(m.get("created_at", "")),
                "model_sha256": m["model"]["sha256"],
                "publisher_key_id": str(m.get("publisher_key_id", "")),
            },
            "catalog": {
                "version": cat.version,
                "items": len(cat),
                "bundle_version": bundle_version,
                "source": "bundle" if Path(cat.root) == Path(rec.bundle) / "catalog" else "synced",
            },
            "board": self.board,
            "threads": int(rec.threads),
            "isa": active_isa(),
            "started_at": time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime(self.started)),
            "uptime_s": round(time.monotonic() - self._started_mono, 3),
            # requests answered before this one
            "requests": {"total": sum(by_op.values()), "by_operation": by_op, "by_status": by_status},
        }


def _check_content_type(value: str | None) -> None:
    if value is None:
        raise RequestError(415, "unsupported_media_type", "Content-Type is missing; send application/json")
    media, *params = (p.strip() for p in value.split(";"))
    if media.lower() != "application/json":
        raise RequestError(415, "unsupported_media_type", f"Content-Type {_show(value)} is not application/json")
    for p in params:
        name, _, val = p.partition("=")
        if name.strip().lower() == "charset" and val.strip().strip('"').lower() not in ("utf-8", "utf8"):
            raise RequestError(415, "unsupported_media_type", f"charset {_show(val)} is not supported; send utf-8")


def _error_body(e: RequestError) -> bytes:
    doc = {"error": e.kind, "message": e.message}
    if e.field is not None:
        doc["field"] = e.field
    return json.dumps(doc, separators=(",", ":")).encode()


# ---- HTTP on top: one thread per connection, keep-alive ------------------------------------------------


class _Handler(http.server.BaseHTTPRequestHandler):
    protocol_version = "HTTP/1.1"
    server_version = f"shelfrank/{__version__}"
    sys_version = ""
    timeout = IDLE_TIMEOUT
    server: Any  # _TCPServer or _UnixServer, both with .service and connection tracking

    def setup(self) -> None:
        super().setup()
        self.server.track(self.connection, True)

    def finish(self) -> None:
        try:
            super().finish()
        finally:
            self.server.track(self.connection, False)

    def address_string(self) -> str:
        return self.client_address[0] if isinstance(self.client_address, tuple) else "unix"

    def handle_one_request(self) -> None:
        # http.server's own loop, but every method reaches _dispatch (no 501 for an unknown one)
        try:
            self.raw_requestline = self.rfile.readline(65537)
            if len(self.raw_requestline) > 65536:
                self.requestline, self.request_version, self.command = "", "", ""
                self.send_error(414, "the request line is longer than 65536 bytes")
                return
            if not self.raw_requestline:
                self.close_connection = True
                return
            if not self.parse_request():  # it answered already (send_error below)
                return
            self._dispatch()
        except (socket.timeout, TimeoutError, ConnectionError):
            self.close_connection = True  # an idle or vanished client: nothing to answer

    def _dispatch(self) -> None:
        service: Service = self.server.service
        started = time.perf_counter()
        if self.headers.get("Transfer-Encoding") is not None:
            self._reject(411, "length_required", "chunked request bodies are not accepted; send Content-Length")
            return
        lengths = self.headers.get_all("Content-Length") or []
        if len(set(lengths)) > 1 or (lengths and not lengths[0].strip().isdigit()):
            self._reject(400, "bad_request", f"invalid Content-Length {_show(', '.join(lengths))}")
            return
        digits = lengths[0].strip() if lengths else "0"
        length = int(digits) if len(digits) <= 18 else 1 << 62  # int() refuses over 4300 digits
        if length > service.max_body:
            message = f"the request body is {length} bytes; the limit is {service.max_body}"
            if not self._skipped_100 and length <= max(DRAIN_LIMIT, service.max_body) and self._drain(length):
                # read and dropped: the client sees the answer, not a reset, and may go on
                service.count_rejected(413)
                self._write(413, _error_body(RequestError(413, "payload_too_large", message)), {})
            else:
                self._reject(413, "payload_too_large", message)
            return
        body = self.rfile.read(length) if length else b""
        if len(body) < length:  # the client went away mid-body
            self.close_connection = True
            return
        path = self.path.split("?", 1)[0]
        status, payload, headers = service.handle(self.command, path, self.headers.get("Content-Type"), body)
        if headers.get("Connection") == "close":
            self.close_connection = True
        self._write(status, payload, headers)
        if access_logger.isEnabledFor(logging.INFO):
            access_logger.info(
                "%s %s %s %d %.2fms",
                self.address_string(),
                self.command,
                path,
                status,
                (time.perf_counter() - started) * 1e3,
            )

    _skipped_100 = False

    def handle_expect_100(self) -> bool:
        # "Expect: 100-continue" with a body we would refuse: answer 413 at once, without inviting it
        length = (self.headers.get("Content-Length") or "").strip()
        if length.isdigit() and (len(length) > 18 or int(length) > self.server.service.max_body):
            self._skipped_100 = True
            return True
        return super().handle_expect_100()

    def _drain(self, length: int) -> bool:
        """Read and drop ``length`` body bytes; False when the client stopped sending."""
        while length > 0:
            block = self.rfile.read(min(length, 1 << 16))
            if not block:
                self.close_connection = True
                return False
            length -= len(block)
        return True

    def _reject(self, status: int, kind: str, message: str) -> None:
        """Refuse before the body was read: answer, then close without resetting the answer away."""
        self.server.service.count_rejected(status)
        self.close_connection = True
        self._write(status, _error_body(RequestError(status, kind, message)), {"Connection": "close"})
        self._linger()

    def _linger(self) -> None:
        # Closing with unread request bytes makes the kernel send a reset, which can destroy the
        # answer before the client reads it: stop writing, then drop what still arrives (≤ 2 s).
        try:
            self.connection.shutdown(socket.SHUT_WR)
            self.connection.settimeout(0.5)
            deadline = time.monotonic() + 2.0
            while time.monotonic() < deadline and self.connection.recv(1 << 16):
                pass
        except OSError:
            pass

    def _write(self, status: int, body: bytes, headers: dict[str, str]) -> None:
        lines = [f"HTTP/1.1 {status} {_reason(status)}", f"Server: {self.server_version}"]
        if body or status != 204:
            lines += ["Content-Type: application/json", f"Content-Length: {len(body)}"]
        lines += [f"{k}: {v}" for k, v in headers.items()]
        if self.close_connection and "Connection" not in headers:
            lines.append("Connection: close")
        elif not self.close_connection and self.request_version == "HTTP/1.0":
            lines.append("Connection: keep-alive")  # a 1.0 client asked for it (ab -k)
        head = ("\r\n".join(lines) + "\r\n\r\n").encode("latin-1")
        # one write: header and body in the same segment (no Nagle / delayed-ACK stall on keep-alive)
        self.wfile.write(head if self.command == "HEAD" else head + body)

    def send_error(self, code: int, message: str | None = None, explain: str | None = None) -> None:
        # http.server's own refusals (malformed request line or headers) as JSON, then close
        text = message or explain or _reason(code)
        if code >= 500:  # 505 for an HTTP/2 request line: still the client's input, so a 4xx
            code, text = 400, f"{text}; speak HTTP/1.1"
        self.server.service.count_rejected(code)
        self.close_connection = True
        kind = "bad_request" if code == 400 else _ERROR_TYPES.get(code, "bad_request")
        self._write(code, _error_body(RequestError(code, kind, text)), {"Connection": "close"})
        self._linger()

    def log_message(self, format: str, *args: Any) -> None:
        logger.debug("%s " + format, self.address_string(), *args)


def _reason(status: int) -> str:
    try:
        return http.HTTPStatus(status).phrase
    except ValueError:
        return "Error"


class _Tracking:
    """Connection bookkeeping shared by both listeners, so that close() can end keep-alive connections."""

    service: Service
    daemon_threads = True
    request_queue_size = 128

    def _init_tracking(self, service: Service) -> None:
        self.service = service
        self._conns: set[socket.socket] = set()
        self._conns_lock = threading.Condition()
        self._ending = False

    def track(self, conn: socket.socket, alive: bool) -> None:
        with self._conns_lock:
            if alive:
                self._conns.add(conn)
                if self._ending:  # accepted just before close(): end it too
                    _shut(conn)
            else:
                self._conns.discard(conn)
            self._conns_lock.notify_all()

    def end_connections(self, timeout: float) -> None:
        with self._conns_lock:
            self._ending = True
            for conn in list(self._conns):
                _shut(conn)
            self._conns_lock.wait_for(lambda: not self._conns, timeout)

    def handle_error(self, request: Any, client_address: Any) -> None:
        logger.exception("unhandled error on a connection from %s", client_address or "unix")


def _shut(conn: socket.socket) -> None:
    try:
        conn.shutdown(socket.SHUT_RDWR)  # the handler's blocking read returns; it closes
    except OSError:
        pass


class _TCPHandler(_Handler):
    disable_nagle_algorithm = True


class _TCPServer(_Tracking, http.server.ThreadingHTTPServer):
    def __init__(self, address: tuple[str, int], service: Service) -> None:
        self._init_tracking(service)
        family = socket.AF_INET6 if ":" in address[0] else socket.AF_INET
        self.address_family = family
        super().__init__(address, _TCPHandler)

    def server_bind(self) -> None:
        # HTTPServer.server_bind would resolve our own name with getfqdn (DNS, slow or hanging offline)
        socketserver.TCPServer.server_bind(self)
        self.server_name, self.server_port = self.server_address[:2]


class _UnixServer(_Tracking, socketserver.ThreadingMixIn, socketserver.UnixStreamServer):
    def __init__(self, path: str, service: Service) -> None:
        self._init_tracking(service)
        super().__init__(path, _Handler)

    def server_bind(self) -> None:
        super().server_bind()
        os.chmod(self.server_address, UNIX_SOCKET_MODE)  # before listen(): nobody connects earlier


def _claim_unix_path(path: Path) -> None:
    """Remove a stale socket file left by a dead server; refuse a live one or any other file."""
    try:
        st = os.lstat(path)
    except FileNotFoundError:
        return
    if not stat.S_ISSOCK(st.st_mode):
        raise InputError(f"{path} exists and is not a socket; choose another --unix path")
    probe = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
    try:
        probe.connect(str(path))
    except OSError:
        path.unlink()  # nobody listens: stale
        return
    finally:
        probe.close()
    raise InputError(f"{path}: another server is listening there")


class Servers:
    """The running listeners (from :func:`start`); ``close()`` stops them."""

    def __init__(self, service: Service, servers: list) -> None:
        self.service, self._servers = service, servers
        self._threads = [
            threading.Thread(target=s.serve_forever, kwargs={"poll_interval": 0.2}, name=f"serve-{i}", daemon=True)
            for i, s in enumerate(servers)
        ]
        for t in self._threads:
            t.start()

    @property
    def tcp_address(self) -> tuple[str, int] | None:
        for s in self._servers:
            if isinstance(s, _TCPServer):
                return s.server_address[0], s.server_address[1]
        return None

    @property
    def unix_path(self) -> str | None:
        for s in self._servers:
            if isinstance(s, _UnixServer):
                return s.server_address
        return None

    @property
    def urls(self) -> list[str]:
        out = []
        if self.tcp_address:
            host, port = self.tcp_address
            out.append(f"http://{f'[{host}]' if ':' in host else host}:{port}")
        if self.unix_path:
            out.append(f"unix:{self.unix_path}")
        return out

    def close(self, timeout: float = 10.0) -> None:
        """Stop accepting, let running requests finish (up to ``timeout``), end idle connections."""
        stoppers = [threading.Thread(target=s.shutdown) for s in self._servers]  # each waits for a poll
        for t in stoppers:
            t.start()
        for t in stoppers:
            t.join()
        self.service.close(timeout)
        for s in self._servers:
            s.end_connections(timeout)
            s.server_close()
            if isinstance(s, _UnixServer):
                Path(s.server_address).unlink(missing_ok=True)
        for t in self._threads:
            t.join(timeout)

    def __enter__(self) -> Servers:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()


def start(
    service: Service,
    *,
    host: str = DEFAULT_HOST,
    port: int | None = DEFAULT_PORT,
    unix: str | Path | None = None,
) -> Servers:
    """Bind the listeners and serve from background threads.

    Args:
        host, port: the TCP listener (port 0: any free port; ``port=None``: no TCP listener).
        unix: also (or, with ``port=None``, only) listen on this Unix socket path (mode 0660).

    Raises:
        InputError: nothing to listen on, a bad --unix path, or the address is in use.
    """
    if port is None and unix is None:
        raise InputError("nothing to listen on: give a TCP port or a Unix socket path")
    servers: list = []
    try:
        if port is not None:
            try:
                servers.append(_TCPServer((host, int(port)), service))
            except OSError as e:
                raise InputError(f"cannot listen on {host}:{port}: {e.strerror or e}") from e
        if unix is not None:
            path = Path(unix)
            _claim_unix_path(path)
            try:
                servers.append(_UnixServer(str(path), service))
            except OSError as e:
                raise InputError(f"cannot listen on unix socket {path}: {e.strerror or e}") from e
    except BaseException:
        for s in servers:
            s.server_close()
        raise
    running = Servers(service, servers)
    logger.info("shelfrank serve: listening on %s", ", ".join(running.urls))
    return running
