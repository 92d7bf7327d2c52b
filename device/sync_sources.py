"""Where a sync reads from: a publish folder (``DirSource``) or HTTP(S) (``HttpSource``), every read
bounded in size and time (``SyncLimits``). See device/sync.py for the protocol.

Every read is bounded (a hostile or broken server cannot hold or grow the device): the index by a
fixed cap (it has no signed size), each file by its signed size (a larger ``Content-Length`` is
refused before reading, and reading stops past the signed size), each download by a total deadline
(``SyncLimits``: the index about a minute, a file from its size and a minimum rate), and redirects
are followed only to the same origin. Memory stays within the index cap or one 64 KiB block per
file download.
"""

from __future__ import annotations

import contextlib
import socket
import threading
import time
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from shelfrank.errors import SyncError

__all__ = ["DirSource", "HttpSource", "SyncLimits", "source_for"]

_BLOCK = 1 << 16


@dataclass(frozen=True)
class SyncLimits:
    """Time bounds of one sync's downloads (sizes are bounded by the index cap and signed sizes).

    Attributes:
        index_deadline_s: the whole ``index.json`` download, connect to last byte.
        file_min_rate: bytes/s a file download may not fall below on average.
        file_min_deadline_s: a file's deadline is this plus its size at ``file_min_rate``.
        read_timeout_s: connect, or one read, with nothing arriving.
        max_redirects: same-origin redirects followed per download.
    """

    index_deadline_s: float = 60.0
    file_min_rate: float = 16 * 1024
    file_min_deadline_s: float = 60.0
    read_timeout_s: float = 30.0
    max_redirects: int = 5

    def file_deadline_s(self, size: int) -> float:
        return self.file_min_deadline_s + size / self.file_min_rate


# ---- sources ----------------------------------------------------------------------------------


class DirSource:
    """A publish folder on a disk or a USB stick (``file://`` or a plain path)."""

    def __init__(self, root: str | Path, *, limits: SyncLimits | None = None) -> None:
        self.root = Path(root)

    def __str__(self) -> str:
        return str(self.root)

    def read(self, rel: str, *, limit: int, deadline_s: float) -> bytes:
        try:
            with open(self.root / rel, "rb") as f:
                data = f.read(limit + 1)
        except OSError as e:
            raise SyncError(f"{self.root / rel}: cannot read: {e}") from e
        if len(data) > limit:
            raise SyncError(f"{self.root / rel}: larger than {limit} bytes; not a shelfrank catalog index")
        return data

    def download(self, rel: str, dest: Path, *, size: int) -> None:
        """Copy the file (from its start) into ``dest``, refusing one larger than ``size``."""
        try:
            with open(self.root / rel, "rb") as src, open(dest, "wb") as out:
                got = 0
                while block := src.read(min(_BLOCK, size - got + 1)):
                    got += len(block)
                    if got > size:
                        break
                    out.write(block)
        except OSError as e:
            raise SyncError(f"{self.root / rel}: cannot copy: {e}") from e
        if got > size:
            dest.unlink(missing_ok=True)
            raise SyncError(f"{self.root / rel}: larger than its signed size ({size} bytes); republish the catalog")


class _Deadline:
    """A download's total deadline. Armed on a connection, it shuts the socket down when time is up,
    so that a server dripping one byte per read (or per header line) cannot hold a read past it,
    whatever the per-read timeout."""

    def __init__(self, seconds: float) -> None:
        self.seconds = seconds
        self.end = time.monotonic() + seconds
        self.fired = False
        self._timer: threading.Timer | None = None

    def left(self) -> float:
        return self.end - time.monotonic()

    def arm(self, sock: socket.socket) -> None:
        def fire() -> None:
            self.fired = True
            try:
                sock.shutdown(socket.SHUT_RDWR)
            except OSError:
                pass

        self.cancel()
        self._timer = threading.Timer(max(0.0, self.left()), fire)
        self._timer.daemon = True
        self._timer.start()

    def cancel(self) -> None:
        if self._timer is not None:
            self._timer.cancel()
            self._timer = None

    def passed(self) -> bool:
        return self.fired or self.left() <= 0


class HttpSource:
    """Plain HTTP(S) GETs, each bounded in size and time; ``download`` resumes a partial file with Range."""

    def __init__(self, base: str, *, limits: SyncLimits | None = None) -> None:
        from urllib.parse import urlsplit

        self.base = base if base.endswith("/") else base + "/"
        self.limits = limits or SyncLimits()
        self.origin = _origin(urlsplit(self.base))

    def __str__(self) -> str:
        return self.base

    @contextlib.contextmanager
    def _get(self, rel: str, start: int, deadline: _Deadline) -> Iterator[Any]:
        """The response (200 or 206) to a GET for ``rel`` from byte ``start``, after same-origin
        redirects; its connection is closed on leaving."""
        # imported here, not with the module: http.client loads ssl (~5 MB resident), which a device
        # that never syncs over HTTP should not carry
        import http.client
        from urllib.parse import quote, urljoin, urlsplit

        url = self.base + quote(rel)
        for _ in range(self.limits.max_redirects + 1):
            parts = urlsplit(url)
            if _origin(parts) != self.origin:
                raise SyncError(
                    f"{self.base + rel}: redirected to {url}, another origin than {self.base}: refused "
                    "(serve the catalog and its redirects from one origin)"
                )
            cls = http.client.HTTPSConnection if parts.scheme == "https" else http.client.HTTPConnection
            timeout = max(0.001, min(self.limits.read_timeout_s, deadline.left()))
            conn, r = cls(parts.hostname or "", parts.port, timeout=timeout), None
            try:
                try:
                    conn.connect()
                    deadline.arm(conn.sock)
                    conn.request(
                        "GET",
                        (parts.path or "/") + (f"?{parts.query}" if parts.query else ""),
                        headers={"Range": f"bytes={start}-"} if start else {},
                    )
                    r = conn.getresponse()
                except (OSError, http.client.HTTPException) as e:
                    if deadline.passed():
                        raise self._late(rel, deadline) from e
                    raise SyncError(f"{url}: cannot connect: {e}") from e
                if r.status in (301, 302, 303, 307, 308) and r.getheader("Location"):
                    url = urljoin(url, r.getheader("Location", ""))
                    continue
                if r.status not in (200, 206):
                    raise SyncError(f"{url}: HTTP {r.status} {r.reason}")
                yield r
                return
            finally:
                if r is not None:  # with `Connection: close` the response owns the socket
                    r.close()
                conn.close()
        raise SyncError(f"{self.base + rel}: more than {self.limits.max_redirects} redirects")

    def _late(self, rel: str, deadline: _Deadline) -> SyncError:
        return SyncError(
            f"{self.base + rel}: not downloaded within its {deadline.seconds:.3g} s deadline (too slow a link or "
            "server; SyncLimits sets the deadlines); the next sync resumes it"
        )

    def _body(
        self, rel: str, r, write: Callable[[bytes], Any], *, limit: int, too_big: str, deadline: _Deadline
    ) -> int:
        """Stream the body into ``write``, refusing more than ``limit`` bytes (``too_big`` says what that
        means); returns the byte count."""
        import http.client

        length = r.getheader("Content-Length")
        if length is not None:
            if not (length.isascii() and length.isdigit()):
                raise SyncError(f"{self.base + rel}: Content-Length {length!r} is not a number")
            if int(length) > limit:
                raise SyncError(f"{self.base + rel}: Content-Length {length}: {too_big}; refused before reading")
        got = 0
        try:
            # read1: whatever has arrived (up to the block), so the deadline is checked between drips
            while block := r.read1(min(_BLOCK, limit - got + 1)):
                got += len(block)
                if got > limit:
                    raise SyncError(f"{self.base + rel}: {too_big}; stopped reading")
                write(block)
                if deadline.passed():
                    raise self._late(rel, deadline)
        except (OSError, http.client.HTTPException) as e:
            if deadline.passed():
                raise self._late(rel, deadline) from e
            raise SyncError(f"{self.base + rel}: connection dropped after {got} bytes: {e}") from e
        if deadline.passed():  # the watchdog's shutdown reads as an early end of the body
            raise self._late(rel, deadline)
        return got

    def read(self, rel: str, *, limit: int, deadline_s: float) -> bytearray:
        deadline = _Deadline(deadline_s)
        buf = bytearray()
        too_big = f"larger than {limit} bytes; not a shelfrank catalog index"
        try:
            with self._get(rel, 0, deadline) as r:
                self._body(rel, r, buf.extend, limit=limit, too_big=too_big, deadline=deadline)
        finally:
            deadline.cancel()
        return buf  # not bytes(buf): that would be a second copy of up to the cap

    def download(self, rel: str, dest: Path, *, size: int) -> None:
        """Append the rest of the file to ``dest`` (resuming with Range), at most ``size`` bytes in all."""
        have = dest.stat().st_size if dest.exists() else 0
        deadline = _Deadline(self.limits.file_deadline_s(size - have))
        try:
            with self._get(rel, have, deadline) as r:
                if have and r.status == 206:
                    first = (r.getheader("Content-Range") or "").removeprefix("bytes ").split("-")[0]
                    if first != str(have):
                        raise SyncError(f"{self.base + rel}: asked for bytes from {have}, got {first or '?'}")
                else:  # 200 to a Range request: start over
                    have = 0
                try:
                    with open(dest, "ab" if have else "wb") as f:
                        too_big = f"more than its signed size of {size} bytes"
                        self._body(rel, r, f.write, limit=size - have, too_big=too_big, deadline=deadline)
                except OSError as e:
                    raise SyncError(f"{dest}: cannot write: {e}") from e
        finally:
            deadline.cancel()


def _origin(parts) -> tuple[str, str, int]:
    scheme = (parts.scheme or "").lower()
    try:
        port = parts.port
    except ValueError:  # a non-numeric port in a Location header
        port = -1
    return scheme, (parts.hostname or "").lower(), port or {"http": 80, "https": 443}.get(scheme, 0)


def source_for(url_or_dir: str | Path, *, limits: SyncLimits | None = None):
    s = str(url_or_dir)
    if s.startswith(("http://", "https://")):
        return HttpSource(s, limits=limits)
    if s.startswith("file://"):
        s = s[len("file://") :]
    return DirSource(s, limits=limits)
