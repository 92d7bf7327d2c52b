"""``shelfrank serve``: the device runtime as a local JSON-over-HTTP service for non-Python apps.

The standard library's ``http.server`` on top of the runtime, plus msgspec for the bodies: a
thread per connection (at most ``max_connections``; beyond that a 503), HTTP/1.1 keep-alive, on
127.0.0.1 and/or a Unix socket. One :class:`Service` holds the opened
:class:`~shelfrank.device.Recommender` and answers requests; :func:`start` binds the listeners
and serves them from background threads.

Every operation is ``POST /v1/<verb>`` with a JSON object body (shopper ids travel in bodies,
never in URLs, so they never land in access logs), plus ``GET /v1/health``, ``GET /v1/status``
and ``GET /openapi.json``. Request and response bodies are the typed structs of
:mod:`shelfrank.device.formats`; a request body is decoded and checked in one call, and the
OpenAPI description is generated from the same types, so the description and the server cannot
disagree. Client mistakes get a 4xx with ``{"error": type, "message": ..., "field": ...}``; only
a bug in the service itself answers 500 (and logs its traceback).

Bounds (a hostile or broken client on the same machine): a body size per operation (413), a
whole-request deadline from the first byte to the last (408), an idle timeout between
keep-alive requests, and a cap on open connections (503).

A catalog sync normally runs as a separate process (``shelfrank sync`` from a timer). Before a
request the service calls :meth:`Recommender.refresh` at most once per ``refresh_interval``
seconds, so a newly installed catalog is served within about a second, swapped in atomically.
"""

from __future__ import annotations

import http.server
import io
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
from pathlib import Path
from typing import Any, Callable, NamedTuple

import msgspec

from shelfrank import __version__
from shelfrank.device import formats as fmt
from shelfrank.device.formats import MAX_K
from shelfrank.device.kernel import active_isa
from shelfrank.errors import EventStoreBusyError, InputError, RequestBodyError, UnknownItemError

__all__ = ["MAX_BODY", "MAX_K", "Servers", "Service", "openapi_spec", "start"]

logger = logging.getLogger(__name__)
access_logger = logging.getLogger(__name__ + ".access")

DEFAULT_HOST = "127.0.0.1"
DEFAULT_PORT = 8377
MAX_BODY = 1 << 20  # bytes; the largest body any operation takes (recommend/similar: long id lists)
SMALL_BODY = 16 << 10  # record, history, forget: two ids and an action
SEARCH_BODY = 64 << 10  # search: the text is cut to what the encoder reads anyway (encoder.MAX_TEXT_CHARS)
DRAIN_LIMIT = 16 << 20  # an oversized body up to this is read and dropped (the connection stays usable)
IDLE_TIMEOUT = 30.0  # seconds a keep-alive connection may stay silent before it is closed
REQUEST_DEADLINE = 10.0  # seconds from a request's first byte to its last: a slow drip cannot hold a thread
MAX_CONNECTIONS = 64  # open connections served at once; one more is answered 503 and closed
UNIX_SOCKET_MODE = 0o660

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
        (),
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
        (),
        SEARCH_BODY,
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
    404: "Unknown item id (error = unknown_item).",
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


def _show(value: Any) -> str:
    text = json.dumps(value) if not isinstance(value, str) else repr(value)
    return text if len(text) <= 60 else text[:57] + "..."


_ENCODER = msgspec.json.Encoder()


def _error_body(e: RequestError) -> bytes:
    field = msgspec.UNSET if e.field is None else e.field
    return _ENCODER.encode(fmt.ErrorBody(error=e.kind, message=e.message, field=field))


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


_DIGITS = re.compile(r"[0-9]{1,18}")  # ASCII only: "²".isdigit() is True, and int("²") raises


def content_length(values: list[str]) -> int:
    """The body length from a request's ``Content-Length`` header(s) (0 when there is none).

    Raises:
        RequestError: 400 for anything but one run of ASCII digits (repeated headers must agree);
            413 for more than 18 digits (no body is that large; int() refuses over 4,300 digits).
    """
    if not values:
        return 0
    text = {v.strip(" \t") for v in values}
    if len(text) == 1:
        (digits,) = text
        if _DIGITS.fullmatch(digits):
            return int(digits)
        if digits.isascii() and digits.isdigit():
            raise RequestError(413, "payload_too_large", f"a Content-Length of {len(digits)} digits is too large")
    raise RequestError(400, "bad_request", f"invalid Content-Length {_show(', '.join(values))}")


# ---- the service --------------------------------------------------------------------------------


def _items(items: list) -> list[fmt.Item]:
    out = []
    for it in items:
        if not math.isfinite(it.score):  # msgspec would write null; a NaN score is a bug in the runtime
            raise RuntimeError(f"item {it.item_id!r} has a non-finite score {it.score}")
        out.append(fmt.Item(it.item_id, it.score, it.title, it.category, it.brand, it.price, it.in_stock))
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
            return self._count(name, e.status, _error_body(e), headers)
        except RequestBodyError as e:
            status, kind = (400, "invalid_json") if e.malformed else (422, "validation_error")
            return self._count(name, status, _error_body(RequestError(status, kind, str(e), field=e.field)), {})
        except UnknownItemError as e:
            err = RequestError(404, "unknown_item", f"item_id: {e}", field="item_id")
            return self._count(name, 404, _error_body(err), {})
        except InputError as e:  # a rule the contract cannot state, checked by the runtime
            return self._count(name, 422, _error_body(RequestError(422, "invalid_input", str(e))), {})
        except EventStoreBusyError as e:  # the rows are gone; the files are cleaned once the reader ends
            err = RequestError(503, "unavailable", str(e), headers={"Retry-After": "1"})
            return self._count(name, 503, _error_body(err), err.headers)
        except Exception:
            logger.exception("%s %s failed (a bug in the service, not the request)", method, path)
            err = RequestError(500, "internal_error", "internal error (the service logged the traceback)")
            return self._count(name, 500, _error_body(err), {})

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
        items = self.rec.recommend(a.user_id, a.k, exclude_seen=a.exclude_seen, where=_where(a.where))
        return fmt.RecommendResponse(a.user_id, version, _items(items))

    def _similar(self, a: fmt.SimilarRequest) -> fmt.SimilarResponse:
        version = self.rec.catalog.version
        items = self.rec.similar(a.item_id, a.k, where=_where(a.where))
        return fmt.SimilarResponse(a.item_id, version, _items(items))

    def _search(self, a: fmt.SearchRequest) -> fmt.SearchResponse:
        version = self.rec.catalog.version
        return fmt.SearchResponse(version, _items(self.rec.search(a.text, a.k, where=_where(a.where))))

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


# ---- HTTP on top: one thread per connection, keep-alive ------------------------------------------------


class _RequestDeadline(TimeoutError):
    """The request did not arrive in full within the whole-request deadline."""


class _SocketReader(io.RawIOBase):
    """The connection's receive side, every read bounded by the idle timeout and, once a request
    has begun, by the whole-request deadline (a socket timeout alone is per read: a client
    dripping one byte every few seconds would never trip it)."""

    def __init__(self, sock: socket.socket, idle_timeout: float) -> None:
        self._sock, self.idle_timeout = sock, idle_timeout
        self.deadline: float | None = None  # time.monotonic() by which the request must be in

    def readable(self) -> bool:
        return True

    def readinto(self, buffer: Any) -> int:
        timeout = self.idle_timeout
        if self.deadline is not None:
            left = self.deadline - time.monotonic()
            if left <= 0:
                raise _RequestDeadline("the request deadline passed")
            timeout = min(timeout, left)
        self._sock.settimeout(timeout)
        try:
            return self._sock.recv_into(buffer)
        except (socket.timeout, TimeoutError):
            if self.deadline is not None and time.monotonic() >= self.deadline:
                raise _RequestDeadline("the request deadline passed") from None
            raise


class _Handler(http.server.BaseHTTPRequestHandler):
    protocol_version = "HTTP/1.1"
    server_version = f"shelfrank/{__version__}"
    sys_version = ""
    server: Any  # _TCPServer or _UnixServer: .service, .idle_timeout, .request_deadline, connection tracking

    def setup(self) -> None:
        self.timeout = self.server.idle_timeout
        super().setup()
        self.rfile.close()  # the plain makefile() reader: replaced by one that keeps the deadline
        self._reader = _SocketReader(self.connection, self.server.idle_timeout)
        self.rfile = io.BufferedReader(self._reader, 1 << 16)
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
        self.command, self.request_version, self._skipped_100 = "", "HTTP/1.1", False
        try:
            self._reader.deadline = None  # between requests: the idle timeout only
            if not self.rfile.peek(1):
                self.close_connection = True
                return
            self._reader.deadline = time.monotonic() + self.server.request_deadline
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
        except _RequestDeadline:
            self._timed_out()
        except (socket.timeout, TimeoutError, ConnectionError):
            self.close_connection = True  # an idle or vanished client: nothing to answer
        finally:
            self._reader.deadline = None

    def _timed_out(self) -> None:
        """408, then close: the client was too slow to send one whole request."""
        self.server.service.count_rejected(408)
        self.close_connection = True
        limit = self.server.request_deadline
        err = RequestError(408, "request_timeout", f"the request did not arrive in full within {limit:g} s")
        try:
            self.connection.settimeout(1.0)  # a client this slow may not read either
            self._write(408, _error_body(err), {"Connection": "close"})
        except OSError:
            pass

    def _dispatch(self) -> None:
        service: Service = self.server.service
        started = time.perf_counter()
        if self.headers.get("Transfer-Encoding") is not None:
            self._reject(411, "length_required", "chunked request bodies are not accepted; send Content-Length")
            return
        path = self.path.split("?", 1)[0]
        try:
            length = content_length(self.headers.get_all("Content-Length") or [])
        except RequestError as e:
            self._reject(e.status, e.kind, e.message)
            return
        limit = service.body_limit(self.command, path)
        if length > limit:
            message = f"the request body is {length} bytes; the limit for {self.command} {path} is {limit}"
            if not self._skipped_100 and length <= max(DRAIN_LIMIT, limit) and self._drain(length):
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
        self._reader.deadline = None
        self.connection.settimeout(self.server.idle_timeout)  # for writing the answer
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
        # "Expect: 100-continue" with a body we would refuse: answer at once, without inviting it
        try:
            length = content_length(self.headers.get_all("Content-Length") or [])
        except RequestError:
            length = -1
        if length < 0 or length > self.server.service.body_limit(self.command, self.path.split("?", 1)[0]):
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
        _linger(self.connection)

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
        _linger(self.connection)

    def log_message(self, format: str, *args: Any) -> None:
        logger.debug("%s " + format, self.address_string(), *args)


_ERROR_TYPES = {404: "not_found", 408: "request_timeout", 413: "payload_too_large", 414: "uri_too_long"}
_ERROR_TYPES[431] = "headers_too_large"


def _linger(conn: socket.socket, seconds: float = 2.0) -> None:
    # Closing with unread request bytes makes the kernel send a reset, which can destroy the
    # answer before the client reads it: stop writing, then drop what still arrives (≤ 2 s).
    try:
        conn.shutdown(socket.SHUT_WR)
        conn.settimeout(0.5)
        deadline = time.monotonic() + seconds
        while time.monotonic() < deadline and conn.recv(1 << 16):
            pass
    except OSError:
        pass


def _reason(status: int) -> str:
    try:
        return http.HTTPStatus(status).phrase
    except ValueError:
        return "Error"


class _Tracking:
    """Connection bookkeeping shared by both listeners: the cap, and close() ending keep-alive connections."""

    service: Service
    daemon_threads = True
    request_queue_size = 128

    def _init_tracking(
        self, service: Service, *, max_connections: int, idle_timeout: float, request_deadline: float
    ) -> None:
        if max_connections < 1 or idle_timeout <= 0 or request_deadline <= 0:
            raise InputError("max_connections must be >= 1 and the timeouts > 0 seconds")
        self.service = service
        self.max_connections, self.idle_timeout = int(max_connections), float(idle_timeout)
        self.request_deadline = float(request_deadline)
        self._active = 0  # connections handed to a thread and not finished
        self._conns: set[socket.socket] = set()
        self._conns_lock = threading.Condition()
        self._ending = False

    def process_request(self, request: Any, client_address: Any) -> None:
        # in the accepting thread: beyond the cap, answer 503 at once instead of starting a thread
        with self._conns_lock:
            busy = self._active >= self.max_connections
            if not busy:
                self._active += 1
        if busy:
            self.service.count_rejected(503)
            _refuse(request, self.max_connections)
            self.shutdown_request(request)
            return
        try:
            super().process_request(request, client_address)  # type: ignore[misc]
        except BaseException:
            self._release()
            raise

    def process_request_thread(self, request: Any, client_address: Any) -> None:
        try:
            super().process_request_thread(request, client_address)  # type: ignore[misc]
        finally:
            self._release()

    def _release(self) -> None:
        with self._conns_lock:
            self._active -= 1
            self._conns_lock.notify_all()

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


def _refuse(conn: socket.socket, cap: int) -> None:
    """503 on a connection over the cap, without blocking the accepting thread."""
    err = RequestError(503, "unavailable", f"the service is at its limit of {cap} open connections; retry")
    body = _error_body(err)
    head = (
        f"HTTP/1.1 503 Service Unavailable\r\nServer: shelfrank/{__version__}\r\nContent-Type: application/json\r\n"
        f"Content-Length: {len(body)}\r\nRetry-After: 1\r\nConnection: close\r\n\r\n"
    )
    try:
        conn.setblocking(False)  # a fresh socket's send buffer takes these few hundred bytes at once
        conn.send(head.encode("latin-1") + body)
        conn.shutdown(socket.SHUT_WR)
        while conn.recv(1 << 16):  # drop what already arrived, so close() does not reset the answer away
            pass
    except OSError:
        pass


def _shut(conn: socket.socket) -> None:
    try:
        conn.shutdown(socket.SHUT_RDWR)  # the handler's blocking read returns; it closes
    except OSError:
        pass


class _TCPHandler(_Handler):
    disable_nagle_algorithm = True


class _TCPServer(_Tracking, http.server.ThreadingHTTPServer):
    def __init__(self, address: tuple[str, int], service: Service, **limits: Any) -> None:
        self._init_tracking(service, **limits)
        family = socket.AF_INET6 if ":" in address[0] else socket.AF_INET
        self.address_family = family
        super().__init__(address, _TCPHandler)

    def server_bind(self) -> None:
        # HTTPServer.server_bind would resolve our own name with getfqdn (DNS, slow or hanging offline)
        socketserver.TCPServer.server_bind(self)
        self.server_name, self.server_port = self.server_address[:2]


class _UnixServer(_Tracking, socketserver.ThreadingMixIn, socketserver.UnixStreamServer):
    def __init__(self, path: str, service: Service, **limits: Any) -> None:
        self._init_tracking(service, **limits)
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
    max_connections: int = MAX_CONNECTIONS,
    idle_timeout: float = IDLE_TIMEOUT,
    request_deadline: float = REQUEST_DEADLINE,
) -> Servers:
    """Bind the listeners and serve from background threads.

    Args:
        host, port: the TCP listener (port 0: any free port; ``port=None``: no TCP listener).
        unix: also (or, with ``port=None``, only) listen on this Unix socket path (mode 0660).
        max_connections: connections served at once, per listener; one more is answered 503 and closed.
        idle_timeout: seconds a connection may stay silent between requests (or in one read).
        request_deadline: seconds from a request's first byte until all of it has arrived (else 408).

    Raises:
        InputError: nothing to listen on, a bad --unix path, the address is in use, or a bad limit.
    """
    if port is None and unix is None:
        raise InputError("nothing to listen on: give a TCP port or a Unix socket path")
    limits = dict(max_connections=max_connections, idle_timeout=idle_timeout, request_deadline=request_deadline)
    servers: list = []
    try:
        if port is not None:
            try:
                servers.append(_TCPServer((host, int(port)), service, **limits))
            except OSError as e:
                raise InputError(f"cannot listen on {host}:{port}: {e.strerror or e}") from e
        if unix is not None:
            path = Path(unix)
            _claim_unix_path(path)
            try:
                servers.append(_UnixServer(str(path), service, **limits))
            except OSError as e:
                raise InputError(f"cannot listen on unix socket {path}: {e.strerror or e}") from e
    except BaseException:
        for s in servers:
            s.server_close()
        raise
    running = Servers(service, servers)
    logger.info("shelfrank serve: listening on %s", ", ".join(running.urls))
    return running
