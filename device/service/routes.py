"""The HTTP API of ``shelfrank serve``: which method and path is which operation, each one's body
limit, how a refusal maps to a status code, and the OpenAPI description made from the same tables.

It knows HTTP requests as (method, path, content type, body bytes) and answers (status, JSON,
headers), over the operations of :class:`~shelfrank.device.service.endpoints.Service`; it never sees the
recommender, and never a socket (the transport, :mod:`shelfrank.device.service.serve`, calls
:meth:`HttpApi.handle`).
"""

from __future__ import annotations

import base64
import hashlib
import json
import re
import time
from pathlib import Path
from typing import Any, NamedTuple

import msgspec

from shelfrank import __version__
from shelfrank.device import formats as fmt
from shelfrank.device.formats import MAX_K
from shelfrank.device.service.endpoints import OPERATIONS, Service, ServiceClosing, Unhealthy, logger
from shelfrank.device.service.metrics import CONTENT_TYPE as METRICS_TYPE
from shelfrank.errors import (
    EventStoreBusyError,
    InputError,
    RequestBodyError,
    UnknownFilterValueError,
    UnknownItemError,
)

__all__ = ["MAX_BODY", "MAX_K", "SEARCH_BODY", "SMALL_BODY", "HttpApi", "RequestError", "openapi_spec"]

MAX_BODY = 1 << 20  # bytes; the largest body any operation takes (recommend/similar: long id lists)
SMALL_BODY = 16 << 10  # record, history, forget and the GETs: two ids and an action
SEARCH_BODY = 64 << 10  # search: the encoder reads max_len x encoder.CHARS_PER_TOKEN characters anyway
SEARCH_MANY_BODY = MAX_BODY  # search_many: up to MAX_BATCH_TEXTS texts (16 KiB each on average)


class _Route(NamedTuple):
    name: str  # the operation (a key of endpoints.OPERATIONS)
    statuses: tuple[int, ...]  # the 4xx it may answer besides the common ones
    max_body: int


_ROUTES: dict[tuple[str, str], _Route] = {
    ("POST", "/v1/record"): _Route("record", (404,), SMALL_BODY),
    ("POST", "/v1/recommend"): _Route("recommend", (404,), MAX_BODY),
    ("POST", "/v1/similar"): _Route("similar", (404,), MAX_BODY),
    ("POST", "/v1/search"): _Route("search", (404,), SEARCH_BODY),
    ("POST", "/v1/recommend_many"): _Route("recommend_many", (404,), MAX_BODY),
    ("POST", "/v1/search_many"): _Route("search_many", (404,), SEARCH_MANY_BODY),
    ("POST", "/v1/impression"): _Route("impression", (404,), MAX_BODY),
    ("POST", "/v1/history"): _Route("history", (), SMALL_BODY),
    ("POST", "/v1/forget"): _Route("forget", (), SMALL_BODY),
    ("GET", "/v1/health"): _Route("health", (), SMALL_BODY),
    ("GET", "/v1/status"): _Route("status", (), SMALL_BODY),
}
_PATHS: dict[str, dict[str, str]] = {}
for (_method, _path), _route in _ROUTES.items():
    _PATHS.setdefault(_path, {})[_method] = _route.name
_PATHS["/openapi.json"] = {"GET": "openapi"}
_PATHS["/metrics"] = {"GET": "metrics"}
#: the kiosk page (``shelfrank serve --ui``): one HTML file shipped in the package, no build step
UI_PAGE = Path(__file__).resolve().parent / "ui" / "kiosk.html"
_UI_PATHS = {"/ui/": {"GET": "ui"}, "/ui": {"GET": "ui"}}

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


def openapi_spec(*, ui: bool = False) -> dict[str, Any]:
    """The OpenAPI 3.1 description of the service (served at ``GET /openapi.json``).

    The schemas are generated from the request and response structs the service decodes and
    encodes (:func:`shelfrank.device.formats.service_schemas`). ``ui``: the kiosk page is served.
    """
    paths: dict[str, Any] = {}
    for (method, path), route in _ROUTES.items():
        op = OPERATIONS[route.name]
        responses: dict[str, Any] = {
            "200": {
                "description": "OK",
                "content": {"application/json": {"schema": {"$ref": f"#/components/schemas/{op.response.__name__}"}}},
            }
        }
        codes = (400, *route.statuses, 408, 411, 413, *((415, 422) if op.request else ()), 503)
        for code in (*codes, 500):
            text = _STATUS_TEXT[code] + (f" This one takes at most {route.max_body} bytes." if code == 413 else "")
            responses[str(code)] = _error_response(text)
        entry: dict[str, Any] = {"operationId": route.name, "summary": op.summary, "responses": responses}
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
    paths["/metrics"] = {
        "get": {
            "operationId": "metrics",
            "summary": "Request counts, latency histograms, catalog version, sync age and click-through per "
            "surface, in the Prometheus text format 0.0.4 (no shopper or item ids).",
            "responses": {
                "200": {
                    "description": "Prometheus exposition text",
                    "content": {"text/plain": {"schema": {"type": "string"}}},
                }
            },
        }
    }
    if ui:
        paths["/ui/"] = {
            "get": {
                "operationId": "ui",
                "summary": "The kiosk page (shelfrank serve --ui): search, recommendations, similar items.",
                "responses": {"200": {"description": "HTML page", "content": {"text/html": {}}}},
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


# ---- requests onto operations ---------------------------------------------------------------


class HttpApi:
    """HTTP requests answered by the operations of one :class:`~.endpoints.Service`; thread-safe.

    Args:
        service: the endpoints (the caller closes its recommender).
        max_body: the largest request body accepted, in bytes; each operation has its own
            smaller-or-equal limit too (record/history/forget 16 KiB, search 64 KiB).
    """

    def __init__(self, service: Service, *, max_body: int = MAX_BODY, ui: bool = False) -> None:
        self.service, self.max_body = service, int(max_body)
        self._spec = json.dumps(openapi_spec(ui=ui), separators=(",", ":")).encode()
        self._paths = {**_PATHS, **(_UI_PATHS if ui else {})}
        self._page, self._page_headers = _kiosk_page() if ui else (b"", {})

    def allowed(self, path: str) -> list[str] | None:
        """The methods a path answers (None for an unknown path)."""
        methods = self._paths.get(path)
        if methods is None:
            return None
        return [*methods, *(["HEAD"] if "GET" in methods else []), "OPTIONS"]

    def body_limit(self, method: str, path: str) -> int:
        """The largest body a request to ``method path`` may carry, in bytes."""
        route = _ROUTES.get(("GET" if method == "HEAD" else method, path))
        return min(route.max_body, self.max_body) if route is not None else min(SMALL_BODY, self.max_body)

    def handle(self, method: str, path: str, content_type: str | None, body: bytes) -> tuple[int, bytes, dict]:
        """One request → (status, body, extra headers). Never raises for client input.

        The body is JSON, but for ``/metrics`` and ``/ui/``, whose ``Content-Type`` is in the headers.
        """
        name, started = "unknown", time.perf_counter()
        try:
            methods = self._paths.get(path)
            if methods is None:
                raise RequestError(404, "not_found", f"no such path {show(path)}; see GET /openapi.json")
            allow = ", ".join(self.allowed(path) or ())
            if method == "OPTIONS":
                return self._count("options", 204, b"", {"Allow": allow}, started)
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
                return self._count(name, 200, self._spec, {}, started)
            if name == "metrics":
                return self._count(name, 200, self.service.exposition(), {"Content-Type": METRICS_TYPE}, started)
            if name == "ui":
                if path == "/ui":  # relative to /ui/ only: the page's own address
                    return self._count(name, 308, b"", {"Location": "/ui/"}, started)
                return self._count(name, 200, self._page, self._page_headers, started)
            op = OPERATIONS[name]
            args = None
            if op.request is not None:
                _check_content_type(content_type)
                args = fmt.decode_request(body, op.request)
            payload = self.service.call(name, args)
            return self._count(name, 200, _ENCODER.encode(payload), {}, started)
        except RequestError as e:
            headers = {**e.headers, **({"Connection": "close"} if e.close else {})}
            return self._count(name, e.status, error_body(e), headers, started)
        except ServiceClosing as e:
            err = RequestError(503, "unavailable", str(e), close=True)
            return self._count(name, 503, error_body(err), {"Connection": "close"}, started)
        except Unhealthy as e:
            return self._count(name, 503, error_body(RequestError(503, "unavailable", str(e))), {}, started)
        except RequestBodyError as e:
            status, kind = (400, "invalid_json") if e.malformed else (422, "validation_error")
            return self._count(name, status, error_body(RequestError(status, kind, str(e), field=e.field)), {}, started)
        except UnknownFilterValueError as e:  # like an unknown item id: the catalog has no such entry
            err = RequestError(404, "unknown_filter_value", str(e), field=e.field)
            return self._count(name, 404, error_body(err), {}, started)
        except UnknownItemError as e:
            err = RequestError(404, "unknown_item", f"item_id: {e}", field="item_id")
            return self._count(name, 404, error_body(err), {}, started)
        except InputError as e:  # a rule the contract cannot state, checked by the runtime
            return self._count(name, 422, error_body(RequestError(422, "invalid_input", str(e))), {}, started)
        except EventStoreBusyError as e:  # the rows are gone; the files are cleaned once the reader ends
            err = RequestError(503, "unavailable", str(e), headers={"Retry-After": "1"})
            return self._count(name, 503, error_body(err), err.headers, started)
        except Exception:
            logger.exception("%s %s failed (a bug in the service, not the request)", method, path)
            err = RequestError(500, "internal_error", "internal error (the service logged the traceback)")
            return self._count(name, 500, error_body(err), {}, started)

    def _count(self, name: str, status: int, body: bytes, headers: dict, started: float) -> tuple[int, bytes, dict]:
        self.service.count(name, status, time.perf_counter() - started)
        return status, body, headers

    def count_rejected(self, status: int) -> None:
        """Count a request refused before it reached :meth:`handle` (framing errors, the connection cap)."""
        self.service.count("unknown", status)

    def close(self, timeout: float = 10.0) -> bool:
        """Refuse new requests (503) and wait for the running ones; True when they all finished."""
        return self.service.close(timeout)


def _kiosk_page() -> tuple[bytes, dict[str, str]]:
    """The kiosk page and its headers: a Content-Security-Policy that lets only its own inline
    script (by hash) and style run, and only this service be fetched (no CDN could load)."""
    try:
        page = UI_PAGE.read_bytes()
    except OSError as e:
        raise InputError(f"the kiosk page {UI_PAGE} is missing ({e.strerror}); reinstall shelfrank") from e
    scripts = re.findall(rb"<script>(.*?)</script>", page, re.S)
    hashes = " ".join(f"'sha256-{base64.b64encode(hashlib.sha256(s).digest()).decode()}'" for s in scripts)
    csp = (
        f"default-src 'none'; script-src {hashes}; style-src 'unsafe-inline'; connect-src 'self'; "
        "img-src 'self' data:; base-uri 'none'; form-action 'none'; frame-ancestors 'none'"
    )
    headers = {"Content-Type": "text/html; charset=utf-8", "Content-Security-Policy": csp, "Cache-Control": "no-cache"}
    return page, headers
