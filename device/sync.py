"""Catalog sync on the device: verify a publisher's signed index, fetch, verify, swap atomically.

TUF-style, simplified: the index must verify against the pinned publisher key, must not be older
than what the device serves (rollback) nor expired (freeze), and must be for the bundle's own
encoder. Files download with resume (HTTP Range) into ``state/downloads/`` and are checked
against their sha256 before use. The new version is built in a temporary folder beside the live
ones, renamed into ``state/catalog/<version>`` and made current by replacing one symlink, so a
kill -9 at any point leaves the old or the new catalog, never a mix. The previous version is kept
for rollback.
"""

from __future__ import annotations

import datetime as _dt
import hashlib
import json
import logging
import os
import shutil
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np

from shelfrank.device import bundle as bfmt
from shelfrank.device.catalog_files import FILES, CatalogData, read_catalog_dir, write_catalog_dir
from shelfrank.errors import InputError, SyncError

logger = logging.getLogger(__name__)

INDEX = "index.json"
INDEX_FORMAT = 1
META = "meta.json"
KEEP_VERSIONS = 2


# ---- sources ----------------------------------------------------------------------------------


class DirSource:
    def __init__(self, root: str | Path) -> None:
        self.root = Path(root)

    def __str__(self) -> str:
        return str(self.root)

    def read(self, rel: str) -> bytes:
        try:
            return (self.root / rel).read_bytes()
        except OSError as e:
            raise SyncError(f"{self.root / rel}: cannot read: {e}") from e

    def download(self, rel: str, dest: Path) -> None:
        try:
            shutil.copyfile(self.root / rel, dest)
        except OSError as e:
            raise SyncError(f"{self.root / rel}: cannot copy: {e}") from e


class HttpSource:
    """Plain HTTP(S) GETs; ``download`` resumes a partial file with a Range request."""

    def __init__(self, base: str, *, timeout: float = 30.0) -> None:
        self.base = base if base.endswith("/") else base + "/"
        self.timeout = timeout

    def __str__(self) -> str:
        return self.base

    def _open(self, rel: str, start: int = 0):
        # imported here, not with the module: urllib.request loads ssl (~5 MB resident), which a
        # device that never syncs over HTTP should not carry
        import urllib.error
        import urllib.request

        req = urllib.request.Request(self.base + rel)
        if start:
            req.add_header("Range", f"bytes={start}-")
        try:
            return urllib.request.urlopen(req, timeout=self.timeout)
        except urllib.error.HTTPError as e:
            raise SyncError(f"{self.base + rel}: HTTP {e.code} {e.reason}") from e
        except (urllib.error.URLError, OSError) as e:
            raise SyncError(f"{self.base + rel}: cannot connect: {e}") from e

    def read(self, rel: str) -> bytes:
        with self._open(rel) as r:
            try:
                return r.read()
            except OSError as e:
                raise SyncError(f"{self.base + rel}: connection dropped: {e}") from e

    def download(self, rel: str, dest: Path) -> None:
        have = dest.stat().st_size if dest.exists() else 0
        with self._open(rel, have) as r:
            mode = "ab" if have and r.status == 206 else "wb"  # 200 to a Range request: start over
            try:
                with open(dest, mode) as f:
                    while block := r.read(1 << 16):
                        f.write(block)
            except OSError as e:
                raise SyncError(f"{self.base + rel}: connection dropped after {dest.stat().st_size} bytes: {e}") from e


def source_for(url_or_dir: str | Path):
    s = str(url_or_dir)
    if s.startswith(("http://", "https://")):
        return HttpSource(s)
    if s.startswith("file://"):
        s = s[len("file://") :]
    return DirSource(s)


# ---- index ------------------------------------------------------------------------------------


def verify_index(data: bytes, public_key, where: str) -> dict[str, Any]:
    """The signed part of an index after checking its signature against ``public_key``."""
    from cryptography.exceptions import InvalidSignature

    try:
        doc = json.loads(data.decode("utf-8"))
        signed, sig = doc["signed"], bytes.fromhex(doc["signature"])
    except (UnicodeDecodeError, json.JSONDecodeError, KeyError, TypeError, ValueError) as e:
        raise SyncError(f"{where}: not a shelfrank catalog index: {e}") from e
    try:
        public_key.verify(sig, bfmt.canonical_json(signed))
    except InvalidSignature as e:
        raise bfmt.SignatureError(f"{where}: the index signature does not verify against the pinned key") from e
    if signed.get("format_version") != INDEX_FORMAT:
        raise SyncError(
            f"{where}: index format_version {signed.get('format_version')!r} is not supported "
            f"(this runtime reads {INDEX_FORMAT})"
        )
    return signed


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
        except (OSError, ValueError):
            return None
        return int(meta["version"]), target, meta

    def install(self, version: int, data: CatalogData, meta: dict) -> Path:
        self.root.mkdir(parents=True, exist_ok=True)
        for leftover in self.root.glob(".build-*"):  # from an interrupted sync
            shutil.rmtree(leftover, ignore_errors=True)
        build = self.root / f".build-{version}-{os.getpid()}"
        write_catalog_dir(build, data)
        (build / META).write_text(json.dumps({**meta, "version": version}))
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


def _fetch(src, entry: dict, downloads: Path) -> tuple[Path, int]:
    """Download one index entry into the download cache (resuming), verified by size and sha256."""
    downloads.mkdir(parents=True, exist_ok=True)
    final = downloads / entry["sha256"]
    if final.exists():
        return final, 0
    part = downloads / (entry["sha256"] + ".part")
    if part.exists() and part.stat().st_size > entry["size"]:
        part.unlink()
    before = part.stat().st_size if part.exists() else 0
    src.download(entry["path"], part)
    size = part.stat().st_size
    if size != entry["size"]:
        raise SyncError(
            f"{src}/{entry['path']}: got {size} of {entry['size']} bytes (truncated); the next sync resumes it"
        )
    h = hashlib.sha256()
    with open(part, "rb") as f:
        while block := f.read(1 << 20):
            h.update(block)
    if h.hexdigest() != entry["sha256"]:
        part.unlink()
        raise SyncError(f"{src}/{entry['path']}: sha256 mismatch (corrupt or tampered download)")
    os.replace(part, final)
    return final, size - before


def _load_npy(path: Path, where: str) -> np.ndarray:
    try:
        return np.load(path, allow_pickle=False)
    except (OSError, ValueError) as e:
        raise SyncError(f"{where}: unreadable array: {e}") from e


def apply_delta(base: CatalogData, changes: dict, rows: np.ndarray, scales: np.ndarray, where: str) -> CatalogData:
    """Remove, then upsert (in place for known ids, appended for new ones)."""
    upserts = changes.get("upsert", [])
    if rows.shape[0] != len(upserts) or scales.shape != (len(upserts),):
        raise SyncError(f"{where}: {len(upserts)} upserts but {rows.shape[0]} rows / {scales.shape} scales")
    if rows.dtype != np.int8 or scales.dtype != np.float32:
        raise SyncError(f"{where}: delta rows must be int8 and scales float32")
    if not np.isfinite(scales).all():
        raise SyncError(f"{where}: NaN or inf in the delta's scales")
    removed = set(changes.get("remove", []))
    keep = [i for i, it in enumerate(base.items) if it["item_id"] not in removed]
    items = [dict(base.items[i]) for i in keep]
    new_rows, new_scales = list(base.rows[keep]), list(base.scales[keep])
    pos = {it["item_id"]: j for j, it in enumerate(items)}
    for k, it in enumerate(upserts):
        j = pos.get(it.get("item_id"))
        if j is None:
            pos[it["item_id"]] = len(items)
            items.append(dict(it))
            new_rows.append(rows[k])
            new_scales.append(scales[k])
        else:
            items[j], new_rows[j], new_scales[j] = dict(it), rows[k], scales[k]
    dim = base.rows.shape[1]
    return CatalogData(items, np.asarray(new_rows, np.int8).reshape(-1, dim), np.asarray(new_scales, np.float32))


def sync(rec, url_or_dir: str | Path, *, now: _dt.datetime | None = None) -> SyncResult:
    """Bring ``rec``'s catalog up to the publisher's newest version (see the module docstring).

    Raises:
        SignatureError: the index is not signed by the pinned publisher key.
        SyncError: rollback, expired index, another encoder, download or hash failure, bad data.
            Whatever fails, the catalog that was serving keeps serving.
    """
    src = source_for(url_or_dir)
    signed = verify_index(src.read(INDEX), rec.public_key, f"{src}/{INDEX}")
    current = rec.catalog.version
    version = int(signed["version"])
    if version < current:
        raise SyncError(
            f"{src}/{INDEX}: version {version} is older than the catalog served ({current}): refusing a rollback"
        )
    now = now or _dt.datetime.now(_dt.timezone.utc)
    try:
        expires = _dt.datetime.fromisoformat(signed["expires"])
    except (KeyError, ValueError) as e:
        raise SyncError(f"{src}/{INDEX}: no valid 'expires'") from e
    if expires <= now:
        raise SyncError(f"{src}/{INDEX}: expired at {signed['expires']} (a stale or frozen publisher)")
    if version == current:
        return SyncResult(str(src), current, current, "up to date")
    if signed.get("model_sha256") != rec.manifest["model"]["sha256"]:
        raise SyncError(f"{src}/{INDEX}: published for another encoder than this bundle's")
    if int(signed.get("dim", -1)) != rec.dim:
        raise SyncError(f"{src}/{INDEX}: dimension {signed.get('dim')} != bundle dimension {rec.dim}")
    store = CatalogStore(rec.state_dir)
    chain, v = [], current
    by_from = {int(d["from"]): d for d in signed.get("deltas", [])}
    while v < version and v in by_from:
        chain.append(by_from[v])
        v = int(by_from[v]["to"])
    total = 0
    if v == version and chain:
        data = read_catalog_dir(rec.catalog.root)
        for d in chain:
            paths = {}
            for entry in d["files"]:
                paths[Path(entry["path"]).name], got = _fetch(src, entry, store.downloads)
                total += got
            where = f"{src}/delta {d['from']}-{d['to']}"
            try:
                changes = json.loads(paths["changes.json"].read_text())
            except (OSError, ValueError) as e:
                raise SyncError(f"{where}: unreadable changes.json: {e}") from e
            data = apply_delta(
                data, changes, _load_npy(paths["rows.i8.npy"], where), _load_npy(paths["scales.f32.npy"], where), where
            )
        method = "delta"
    else:
        paths = {}
        for entry in signed["snapshot"]["files"]:
            paths[Path(entry["path"]).name], got = _fetch(src, entry, store.downloads)
            total += got
        snap = store.root / f".snapshot-{os.getpid()}"
        shutil.rmtree(snap, ignore_errors=True)
        snap.mkdir(parents=True)
        for name in FILES.values():
            shutil.copyfile(paths[name], snap / name)
        try:
            data = read_catalog_dir(snap)
        except Exception as e:  # sqlite3/numpy errors on a bad file
            raise SyncError(f"{src}: unreadable snapshot: {e}") from e
        finally:
            shutil.rmtree(snap, ignore_errors=True)
        method = "snapshot"
    try:
        data.check(rec.dim, f"{src} version {version}")
    except InputError as e:
        raise SyncError(str(e)) from e
    path = store.install(version, data, {"model_sha256": signed["model_sha256"], "source": str(src)})
    rec._swap_catalog(path, version)
    for f in store.downloads.glob("*"):
        if not f.name.endswith(".part"):
            f.unlink(missing_ok=True)
    logger.info("synced catalog %d → %d by %s from %s (%d bytes)", current, version, method, src, total)
    return SyncResult(str(src), current, version, method, total)
