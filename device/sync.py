"""Catalog sync on the device: verify a publisher's signed index, fetch, verify, swap atomically.

TUF-style, simplified: the index must verify against the pinned publisher key, must not be older
than what the device serves (rollback) nor expired (freeze), and must be for the bundle's own
encoder. Its wire format (index, delta) is defined once, in ``device/formats.py``, for ``publish``
and for this reader. Files download with resume (HTTP Range) into ``state/downloads/`` and are
checked against their sha256 before use.

Every read is bounded (a hostile or broken server cannot hold or grow the device): the index by a
fixed cap (it has no signed size), each file by its signed size (a larger ``Content-Length`` is
refused before reading, and reading stops past the signed size), each download by a total deadline
(``SyncLimits``: the index about a minute, a file from its size and a minimum rate), and redirects
are followed only to the same origin. Memory stays within the index cap or one 64 KiB block per
file download.

The new version is built in a temporary folder beside the live ones and opened with the device's
own ``Catalog`` before anything points at it: content a decoder cannot see (a bad value in a signed
snapshot's SQLite) fails there, and the catalog that was serving keeps serving. It is then renamed
into ``state/catalog/<version>`` and made current by replacing one symlink, so a kill -9 at any
point leaves the old or the new catalog, never a mix. The previous version is kept for rollback.
"""

from __future__ import annotations

import contextlib
import datetime as _dt
import hashlib
import json
import logging
import os
import shutil
import socket
import threading
import time
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import msgspec
import numpy as np

from shelfrank.device import bundle as bfmt
from shelfrank.device import formats
from shelfrank.device.boards import BoardConfig, check_catalog_size
from shelfrank.device.catalog_files import FILES, NEIGHBOR_FILES, CatalogData, read_catalog_dir, write_catalog_dir
from shelfrank.device.formats import DeltaChanges, DeltaRef, FileRef, IndexSigned, ItemRecord
from shelfrank.errors import InputError, SyncError

logger = logging.getLogger(__name__)

INDEX = formats.INDEX_NAME
INDEX_FORMAT = formats.INDEX_FORMAT
META = "meta.json"
KEEP_VERSIONS = 2
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


# ---- index ------------------------------------------------------------------------------------


def verify_index(data: bytes | bytearray, public_key, where: str) -> IndexSigned:
    """The signed part of an index after checking its signature against ``public_key``.

    Raises:
        SignatureError: the signature does not verify.
        SyncError: not an index (too large, too deep, malformed), or a signed field that is invalid.
    """
    from cryptography.exceptions import InvalidSignature

    signed, sig = formats.decode_index_envelope(data, where=where)
    try:
        public_key.verify(sig, bfmt.canonical_json(signed))
    except InvalidSignature as e:
        raise bfmt.SignatureError(f"{where}: the index signature does not verify against the pinned key") from e
    return formats.decode_index_signed(signed, where=where)


@dataclass
class SyncResult:
    source: str
    from_version: int
    to_version: int
    method: str  # "delta", "snapshot" or "up to date"
    downloaded_bytes: int = 0


# ---- the catalog store in the state folder ------------------------------------------------------


class CatalogStore:
    """``state/catalog/<version>/`` folders plus a ``current`` symlink."""

    def __init__(self, state: Path) -> None:
        self.root = state / "catalog"
        self.downloads = state / "downloads"

    def current(self) -> tuple[int, Path, dict] | None:
        link = self.root / "current"
        try:
            target = self.root / os.readlink(link)
            meta = json.loads((target / META).read_text())
            return int(meta["version"]), target, meta
        except (OSError, ValueError, KeyError, TypeError):
            return None

    def install(self, version: int, data: CatalogData, meta: dict, *, check: Callable[[Path], Any]) -> Path:
        """Write ``data`` as version ``version``, open it with ``check``, then make it current.

        Raises:
            SyncError: ``check`` failed on the candidate; nothing points at it and it is removed.
        """
        self.root.mkdir(parents=True, exist_ok=True)
        for leftover in self.root.glob(".build-*"):  # from an interrupted sync
            shutil.rmtree(leftover, ignore_errors=True)
        build = self.root / f".build-{version}-{os.getpid()}"
        write_catalog_dir(build, data)
        (build / META).write_text(json.dumps({**meta, "version": version}))
        try:
            check(build)
        except Exception as e:  # whatever the loader trips on, it must not become current
            shutil.rmtree(build, ignore_errors=True)
            raise SyncError(
                f"catalog version {version} from {meta.get('source')} does not load ({type(e).__name__}: {e}); "
                "refused, the previous catalog keeps serving"
            ) from e
        final = self.root / str(version)
        if final.exists():
            shutil.rmtree(final)
        os.rename(build, final)
        tmp_link = self.root / f".current-{os.getpid()}"
        if tmp_link.is_symlink():
            tmp_link.unlink()
        os.symlink(str(version), tmp_link)
        os.replace(tmp_link, self.root / "current")
        fd = os.open(self.root, os.O_RDONLY)
        try:
            os.fsync(fd)
        finally:
            os.close(fd)
        versions = sorted((int(p.name) for p in self.root.iterdir() if p.name.isdigit()), reverse=True)
        for old in versions[KEEP_VERSIONS:]:
            shutil.rmtree(self.root / str(old), ignore_errors=True)
        return final


def _fetch(src, entry: FileRef, downloads: Path) -> tuple[Path, int]:
    """Download one index entry into the download cache (resuming), verified by size and sha256."""
    downloads.mkdir(parents=True, exist_ok=True)
    final = downloads / entry.sha256  # 64 hex digits (formats.Sha256Hex): never a path
    if final.exists():
        return final, 0
    part = downloads / (entry.sha256 + ".part")
    if part.exists() and part.stat().st_size > entry.size:
        part.unlink()
    before = part.stat().st_size if part.exists() else 0
    if before < entry.size or entry.size == 0:
        src.download(entry.path, part, size=entry.size)
    size = part.stat().st_size if part.exists() else 0
    if size != entry.size:
        raise SyncError(f"{src}/{entry.path}: got {size} of {entry.size} bytes (truncated); the next sync resumes it")
    h = hashlib.sha256()
    with open(part, "rb") as f:
        while block := f.read(_BLOCK):  # one block resident, whatever the file's size
            h.update(block)
    if h.hexdigest() != entry.sha256:
        part.unlink()
        raise SyncError(f"{src}/{entry.path}: sha256 mismatch (corrupt or tampered download)")
    os.replace(part, final)
    return final, size - before


def _load_npy(path: Path, dtype: type, shape: tuple[int, ...], where: str) -> np.ndarray:
    """The array in a .npy file, refused unless its header says exactly ``dtype`` and ``shape``."""
    fmt = np.lib.format
    try:
        with open(path, "rb") as f:
            version = fmt.read_magic(f)
            if version == (1, 0):
                got_shape, fortran, got_dtype = fmt.read_array_header_1_0(f)
            elif version == (2, 0):
                got_shape, fortran, got_dtype = fmt.read_array_header_2_0(f)
            else:
                raise ValueError(f"unsupported .npy version {version}")
            if got_dtype != np.dtype(dtype) or got_shape != shape or fortran:
                raise ValueError(
                    f"expected {np.dtype(dtype)} {shape} (C order), got {got_dtype} {got_shape}"
                    f"{' (Fortran order)' if fortran else ''}"
                )
            count = int(np.prod(shape))
            arr = np.fromfile(f, dtype, count)
            if arr.size != count or f.read(1):
                raise ValueError(f"the data is not {count} values of {np.dtype(dtype)}")
    except Exception as e:  # numpy's header parser raises ValueError, SyntaxError, tokenize.TokenError …
        raise SyncError(f"{where}: unusable array: {e}; republish the catalog") from e
    return arr.reshape(shape)


def _check_rows(rows: np.ndarray, scales: np.ndarray, ids: list[str], where: str) -> None:
    """Scales and rows within what the encoder and ``quantize_rows`` produce (formats.ROW_SCALE_MAX).

    A row's int8 components move each by at most scale/2 from a unit-norm vector, so its
    dequantised norm is at most ``1 + sqrt(d)·scale/2``; anything beyond was not made by the encoder.
    """
    finite = np.isfinite(scales)
    if not finite.all():
        bad = int(np.flatnonzero(~finite)[0])
        raise SyncError(f"{where}: NaN or inf scale for item {ids[bad]!r}; republish the catalog")
    out = (scales < 0) | (scales > formats.ROW_SCALE_MAX)
    if out.any():
        bad = int(np.flatnonzero(out)[0])
        raise SyncError(
            f"{where}: scale {float(scales[bad]):g} of item {ids[bad]!r} is outside [0, {formats.ROW_SCALE_MAX:.6g}] "
            "(rows are unit-norm, so max|x|/127 <= 1/127); not made by the encoder, republish the catalog"
        )
    step = 4096  # rows at a time: a float copy of a whole snapshot would be 4x its rows
    for start in range(0, rows.shape[0], step):
        r, s = rows[start : start + step], scales[start : start + step].astype(np.float64)
        norms = np.sqrt(np.einsum("ij,ij->i", r, r, dtype=np.int64)) * s
        bound = 1.0 + 1e-3 + np.sqrt(rows.shape[1]) * s / 2
        over = norms > bound
        if over.any():
            bad = int(np.flatnonzero(over)[0])
            raise SyncError(
                f"{where}: row of item {ids[start + bad]!r} has norm {norms[bad]:.4g} > {bound[bad]:.4g} "
                "(rows are unit-norm); not made by the encoder, republish the catalog"
            )


def apply_delta(base: CatalogData, changes: DeltaChanges, rows: np.ndarray, scales: np.ndarray) -> CatalogData:
    """Remove, then upsert (in place for known ids, appended for new ones).

    ``rows``/``scales`` are the delta's (already checked: one per upsert). Every per-row array of the
    new catalog is built by ``per_row`` from the same row map, so one added beside ``rows`` and
    ``scales`` stays aligned with the items.
    """
    removed = set(changes.remove)
    keep = np.asarray([i for i, it in enumerate(base.items) if it["item_id"] not in removed], np.int64)
    items = [dict(base.items[i]) for i in keep]
    # row j of the new catalog is base row keep[src[j]] when src[j] < len(keep), else delta row src[j] - len(keep)
    src = list(range(len(keep)))
    pos = {it["item_id"]: j for j, it in enumerate(items)}
    for k, rec in enumerate(changes.upsert):
        record = msgspec.structs.asdict(rec)
        j = pos.get(rec.item_id)
        if j is None:
            pos[rec.item_id] = len(items)
            items.append(record)
            src.append(len(keep) + k)
        else:
            items[j], src[j] = record, len(keep) + k
    take = np.asarray(src, np.int64)
    from_base = take < len(keep)

    def per_row(base_arr: np.ndarray, delta_arr: np.ndarray) -> np.ndarray:
        out = np.empty((len(take), *base_arr.shape[1:]), base_arr.dtype)
        out[from_base] = base_arr[keep[take[from_base]]]
        out[~from_base] = delta_arr[take[~from_base] - len(keep)]
        return out

    # the neighbour table follows the items, not the rows: a kept or updated item keeps its
    # neighbours (renumbered; removed ones leave the lists), an added item starts with none
    nbr = base.neighbors_for(np.concatenate([keep, np.full(len(items) - len(keep), -1, np.int64)]))
    return CatalogData(items, per_row(base.rows, rows), per_row(base.scales, scales), nbr)


def _delta_chain(index: IndexSigned, current: int) -> list[DeltaRef]:
    """The deltas leading from ``current`` to ``index.version``, or [] when there is no such chain.

    Ends: each delta moves forward (``to > from``, formats.DeltaRef) and starts are unique.
    """
    by_from = {d.from_: d for d in index.deltas}
    chain, v = [], current
    while v < index.version and v in by_from:
        chain.append(by_from[v])
        v = by_from[v].to
    return chain if v == index.version else []


def read_delta(
    paths: dict[str, Path], *, span: tuple[int, int], dim: int, where: str
) -> tuple[DeltaChanges, np.ndarray, np.ndarray]:
    """A downloaded delta (``paths``: its DELTA_FILES) decoded and checked: what ``apply_delta`` takes.

    Raises:
        SyncError: changes.json breaks the format or is for another ``span`` (from, to); the arrays
            are not one int8 row of ``dim`` and one float32 scale per upsert; a scale or row the
            encoder cannot produce.
    """
    try:
        raw = paths["changes.json"].read_bytes()
    except OSError as e:
        raise SyncError(f"{where}: unreadable changes.json: {e}") from e
    changes = formats.decode_delta_changes(raw, where=f"{where}/changes.json")
    if (changes.from_, changes.to) != span:
        raise SyncError(
            f"{where}/changes.json: says {changes.from_}-{changes.to}, the index {span[0]}-{span[1]}; "
            "republish the catalog"
        )
    n = len(changes.upsert)
    rows = _load_npy(paths["rows.i8.npy"], np.int8, (n, dim), f"{where}/rows.i8.npy")
    scales = _load_npy(paths["scales.f32.npy"], np.float32, (n,), f"{where}/scales.f32.npy")
    _check_rows(rows, scales, [it.item_id for it in changes.upsert], where)
    return changes, rows, scales


def _apply_chain(rec, src, chain: list[DeltaRef], downloads: Path) -> tuple[CatalogData, int]:
    data, total = read_catalog_dir(rec.catalog.root), 0
    for d in chain:
        files = d.by_name()
        paths = {}
        for name in formats.DELTA_FILES:
            paths[name], got = _fetch(src, files[name], downloads)
            total += got
        delta = read_delta(paths, span=(d.from_, d.to), dim=rec.dim, where=f"{src}/delta {d.from_}-{d.to}")
        data = apply_delta(data, *delta)
    return data, total


def _fetch_snapshot(src, index: IndexSigned, store: CatalogStore) -> tuple[CatalogData, int]:
    where = f"{src}/snapshot {index.version}"
    files = index.snapshot.by_name()
    missing = [n for n in FILES.values() if n not in files]
    if missing:
        raise SyncError(f"{where}: no {', '.join(missing)} in its files; republish the catalog")
    # the neighbour table travels with a snapshot when the publisher has one (both files or none)
    names = list(FILES.values())
    if all(n in files for n in NEIGHBOR_FILES.values()):
        names += NEIGHBOR_FILES.values()
    paths, total = {}, 0
    for name in names:
        paths[name], got = _fetch(src, files[name], store.downloads)
        total += got
    snap = store.root / f".snapshot-{os.getpid()}"
    shutil.rmtree(snap, ignore_errors=True)
    snap.mkdir(parents=True)
    try:
        for name in names:
            shutil.copyfile(paths[name], snap / name)
        data = read_catalog_dir(snap)
    except Exception as e:  # sqlite3/numpy errors on a bad file
        raise SyncError(f"{where}: unreadable snapshot: {e}") from e
    finally:
        shutil.rmtree(snap, ignore_errors=True)
    # the snapshot's items decode as the same records a delta upserts
    formats.convert(data.items, list[ItemRecord], where=f"{where}/items.sqlite", error=SyncError, fix="republish")
    if data.rows.ndim != 2 or data.scales.shape != data.rows.shape[:1]:
        raise SyncError(f"{where}: rows {data.rows.shape} and scales {data.scales.shape} do not match")
    if data.rows.dtype == np.int8 and data.scales.dtype == np.float32 and len(data.items) == len(data.scales):
        _check_rows(data.rows, data.scales, [it["item_id"] for it in data.items], where)
    return data, total


def sync(
    rec,
    url_or_dir: str | Path,
    *,
    now: _dt.datetime | None = None,
    limits: SyncLimits | None = None,
    board: BoardConfig | None = None,
) -> SyncResult:
    """Bring ``rec``'s catalog up to the publisher's newest version (see the module docstring).

    Args:
        rec: the Recommender whose catalog is brought up to date.
        url_or_dir: ``http(s)://`` base URL, ``file://`` URL or folder holding ``index.json``.
        now: the time the index's ``expires`` is compared with (timezone-aware; default: now).
        limits: download deadlines (default ``SyncLimits()``).
        board: the board's limits: a catalog above its ``max_catalog_items`` is refused before
            anything is downloaded (by the index's count) and again before it is installed.

    Raises:
        SignatureError: the index is not signed by the pinned publisher key.
        SyncError: rollback, expired index, another encoder, a malformed index or delta, a
            download over its size or deadline, a hash failure, or content the catalog loader
            refuses. Whatever fails, the catalog that was serving keeps serving.
        InputError: ``now`` is naive.
        BoardLimitError: the catalog is above the board's ``max_catalog_items``.
    """
    if now is not None and now.utcoffset() is None:
        raise InputError("now must be timezone-aware (e.g. datetime.now(timezone.utc))")
    limits = limits or SyncLimits()
    rec.refresh()  # a version another process installed is not rebuilt over the live folder
    src = source_for(url_or_dir, limits=limits)
    where = f"{src}/{INDEX}"
    index = verify_index(
        src.read(INDEX, limit=formats.INDEX_MAX_BYTES, deadline_s=limits.index_deadline_s), rec.public_key, where
    )
    current = rec.catalog.version
    version = index.version
    if version < current:
        raise SyncError(f"{where}: version {version} is older than the catalog served ({current}): refusing a rollback")
    now = now or _dt.datetime.now(_dt.timezone.utc)
    if index.expires <= now:
        raise SyncError(f"{where}: expired at {index.expires.isoformat()} (a stale or frozen publisher)")
    if version == current:
        return SyncResult(str(src), current, current, "up to date")
    if index.model_sha256 != rec.manifest["model"]["sha256"]:
        raise SyncError(f"{where}: published for another encoder than this bundle's")
    if index.dim != rec.dim:
        raise SyncError(f"{where}: dimension {index.dim} != bundle dimension {rec.dim}")
    if board is not None and index.count is not None:
        check_catalog_size(board, index.count, f"{where} (version {version})")
    store = CatalogStore(rec.state_dir)
    chain = _delta_chain(index, current)
    if chain:
        data, total = _apply_chain(rec, src, chain, store.downloads)
        method = "delta"
    else:
        data, total = _fetch_snapshot(src, index, store)
        method = "snapshot"
    label = f"{src} version {version}"
    try:
        data.check(rec.dim, label)
    except InputError as e:
        raise SyncError(str(e)) from e
    if index.count is not None and len(data.items) != index.count:
        raise SyncError(f"{label}: {len(data.items)} items, the index says {index.count}; republish the catalog")
    if board is not None:
        check_catalog_size(board, len(data.items), label)

    from shelfrank.device.catalog import Catalog

    def check(path: Path) -> None:
        Catalog(path, version=version, dim=rec.dim)  # the device's own loader, on the candidate

    path = store.install(version, data, {"model_sha256": index.model_sha256, "source": str(src)}, check=check)
    rec._swap_catalog(path, version)
    for f in store.downloads.glob("*"):
        if not f.name.endswith(".part"):
            f.unlink(missing_ok=True)
    logger.info("synced catalog %d → %d by %s from %s (%d bytes)", current, version, method, src, total)
    return SyncResult(str(src), current, version, method, total)
