"""``shelfrank serve``: the device runtime as a local JSON-over-HTTP service for non-Python apps.

The transport: the standard library's ``http.server``, a thread per connection (at most
``max_connections``; beyond that a 503), HTTP/1.1 keep-alive, on 127.0.0.1 and/or a Unix socket.
It knows HTTP framing and connections, never the recommender: it hands each request's method,
path, content type and body to one :class:`~shelfrank.device.service.routes.HttpApi`, which maps it onto
an operation of :class:`~shelfrank.device.service.endpoints.Service` (the endpoints over the opened
:class:`~shelfrank.device.Recommender`); :func:`start` binds the listeners and serves them from
background threads.

Every operation is ``POST /v1/<verb>`` with a JSON object body (shopper ids travel in bodies,
never in URLs, so they never land in access logs), plus ``GET /v1/health``, ``GET /v1/status``,
``GET /metrics`` (Prometheus text), ``GET /ui/`` (the kiosk page, with ``ui=True``) and
``GET /openapi.json``. Request and response bodies are the typed structs of
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
import logging
import os
import re
import socket
import socketserver
import stat
import threading
import time
from pathlib import Path
from typing import Any

from shelfrank import __version__
from shelfrank.device.service.routes import (  # the limits and the description re-exported: serve is the entry point
    MAX_BODY,
    MAX_K,
    SEARCH_BODY,
    SMALL_BODY,
    HttpApi,
    RequestError,
    error_body,
    openapi_spec,
    show,
)
from shelfrank.errors import InputError

__all__ = ["MAX_BODY", "MAX_K", "SEARCH_BODY", "SMALL_BODY", "HttpApi", "Servers", "openapi_spec", "start"]

logger = logging.getLogger(__name__)
access_logger = logging.getLogger(__name__ + ".access")

DEFAULT_HOST = "127.0.0.1"
DEFAULT_PORT = 8377
DRAIN_LIMIT = 16 << 20  # an oversized body up to this is read and dropped (the connection stays usable)
IDLE_TIMEOUT = 30.0  # seconds a keep-alive connection may stay silent before it is closed
REQUEST_DEADLINE = 10.0  # seconds from a request's first byte to its last: a slow drip cannot hold a thread
MAX_CONNECTIONS = 64  # open connections served at once; one more is answered 503 and closed
UNIX_SOCKET_MODE = 0o660

# ---- HTTP framing ----------------------------------------------------------------------------


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
    raise RequestError(400, "bad_request", f"invalid Content-Length {show(', '.join(values))}")


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
        except TimeoutError:
            if self.deadline is not None and time.monotonic() >= self.deadline:
                raise _RequestDeadline("the request deadline passed") from None
            raise


class _Handler(http.server.BaseHTTPRequestHandler):
    protocol_version = "HTTP/1.1"
    server_version = f"shelfrank/{__version__}"
    sys_version = ""
    server: Any  # _TCPServer or _UnixServer: .api, .idle_timeout, .request_deadline, connection tracking

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
        except (TimeoutError, ConnectionError):
            self.close_connection = True  # an idle or vanished client: nothing to answer
        finally:
            self._reader.deadline = None

    def _timed_out(self) -> None:
        """408, then close: the client was too slow to send one whole request."""
        self.server.api.count_rejected(408)
        self.close_connection = True
        limit = self.server.request_deadline
        err = RequestError(408, "request_timeout", f"the request did not arrive in full within {limit:g} s")
        try:
            self.connection.settimeout(1.0)  # a client this slow may not read either
            self._write(408, error_body(err), {"Connection": "close"})
        except OSError:
            pass

    def _dispatch(self) -> None:
        api: HttpApi = self.server.api
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
        limit = api.body_limit(self.command, path)
        if length > limit:
            message = f"the request body is {length} bytes; the limit for {self.command} {path} is {limit}"
            if not self._skipped_100 and length <= max(DRAIN_LIMIT, limit) and self._drain(length):
                # read and dropped: the client sees the answer, not a reset, and may go on
                api.count_rejected(413)
                self._write(413, error_body(RequestError(413, "payload_too_large", message)), {})
            else:
                self._reject(413, "payload_too_large", message)
            return
        body = self.rfile.read(length) if length else b""
        if len(body) < length:  # the client went away mid-body
            self.close_connection = True
            return
        self._reader.deadline = None
        self.connection.settimeout(self.server.idle_timeout)  # for writing the answer
        status, payload, headers = api.handle(self.command, path, self.headers.get("Content-Type"), body)
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
        if length < 0 or length > self.server.api.body_limit(self.command, self.path.split("?", 1)[0]):
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
        self.server.api.count_rejected(status)
        self.close_connection = True
        self._write(status, error_body(RequestError(status, kind, message)), {"Connection": "close"})
        _linger(self.connection)

    def _write(self, status: int, body: bytes, headers: dict[str, str]) -> None:
        lines = [f"HTTP/1.1 {status} {_reason(status)}", f"Server: {self.server_version}"]
        if body or status != 204:  # JSON unless the API named the type (/metrics, /ui/)
            media = headers.get("Content-Type", "application/json")
            lines += [f"Content-Type: {media}", f"Content-Length: {len(body)}"]
        lines += [f"{k}: {v}" for k, v in headers.items() if k != "Content-Type"]
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
        self.server.api.count_rejected(code)
        self.close_connection = True
        kind = "bad_request" if code == 400 else _ERROR_TYPES.get(code, "bad_request")
        self._write(code, error_body(RequestError(code, kind, text)), {"Connection": "close"})
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

    api: HttpApi
    daemon_threads = True
    request_queue_size = 128

    def _init_tracking(
        self, api: HttpApi, *, max_connections: int, idle_timeout: float, request_deadline: float
    ) -> None:
        if max_connections < 1 or idle_timeout <= 0 or request_deadline <= 0:
            raise InputError("max_connections must be >= 1 and the timeouts > 0 seconds")
        self.api = api
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
            self.api.count_rejected(503)
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
    body = error_body(err)
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
    def __init__(self, address: tuple[str, int], api: HttpApi, **limits: Any) -> None:
        self._init_tracking(api, **limits)
        family = socket.AF_INET6 if ":" in address[0] else socket.AF_INET
        self.address_family = family
        super().__init__(address, _TCPHandler)

    def server_bind(self) -> None:
        # HTTPServer.server_bind would resolve our own name with getfqdn (DNS, slow or hanging offline)
        socketserver.TCPServer.server_bind(self)
        self.server_name, self.server_port = self.server_address[:2]


class _UnixServer(_Tracking, socketserver.ThreadingMixIn, socketserver.UnixStreamServer):
    def __init__(self, path: str, api: HttpApi, **limits: Any) -> None:
        self._init_tracking(api, **limits)
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

    def __init__(self, api: HttpApi, servers: list) -> None:
        self.api, self._servers = api, servers
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
        self.api.close(timeout)
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
    api: Any,
    *,
    host: str = DEFAULT_HOST,
    port: int | None = DEFAULT_PORT,
    unix: str | Path | None = None,
    max_connections: int = MAX_CONNECTIONS,
    idle_timeout: float = IDLE_TIMEOUT,
    request_deadline: float = REQUEST_DEADLINE,
    ui: bool = False,
) -> Servers:
    """Bind the listeners and serve from background threads.

    Args:
        api: the :class:`HttpApi` to answer with, or the endpoints (a
            :class:`~shelfrank.device.service.endpoints.Service`), answered through ``HttpApi(api)``.
        host, port: the TCP listener (port 0: any free port; ``port=None``: no TCP listener).
        unix: also (or, with ``port=None``, only) listen on this Unix socket path (mode 0660).
        max_connections: connections served at once, per listener; one more is answered 503 and closed.
        idle_timeout: seconds a connection may stay silent between requests (or in one read).
        request_deadline: seconds from a request's first byte until all of it has arrived (else 408).
        ui: also serve the kiosk page at ``/ui/`` (when ``api`` is the endpoints; an ``HttpApi``
            made with ``ui=True`` serves it already).

    Raises:
        InputError: nothing to listen on, a bad --unix path, the address is in use, or a bad limit.
    """
    if port is None and unix is None:
        raise InputError("nothing to listen on: give a TCP port or a Unix socket path")
    if not isinstance(api, HttpApi):
        api = HttpApi(api, ui=ui)
    limits = dict(max_connections=max_connections, idle_timeout=idle_timeout, request_deadline=request_deadline)
    servers: list = []
    try:
        if port is not None:
            try:
                servers.append(_TCPServer((host, int(port)), api, **limits))
            except OSError as e:
                raise InputError(f"cannot listen on {host}:{port}: {e.strerror or e}") from e
        if unix is not None:
            path = Path(unix)
            _claim_unix_path(path)
            try:
                servers.append(_UnixServer(str(path), api, **limits))
            except OSError as e:
                raise InputError(f"cannot listen on unix socket {path}: {e.strerror or e}") from e
    except BaseException:
        for s in servers:
            s.server_close()
        raise
    running = Servers(api, servers)
    logger.info("shelfrank serve: listening on %s", ", ".join(running.urls))
    return running
