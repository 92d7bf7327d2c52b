"""Catalog sync on the device: verify a publisher's signed index, fetch, verify, swap atomically.

TUF-style, simplified: the index must verify against the pinned publisher key, must not be older
than what the device serves (rollback) nor expired (freeze), and must be for the bundle's own
encoder. Its wire format (index, delta) is defined once, in ``device/formats/index.py``, for ``publish``
and for this reader. Files download with resume (HTTP Range) into ``state/downloads/`` and are
checked against their sha256 before use. Every read is bounded in size and time
(device/sync_sources.py); a delta is decoded, checked and applied by device/delta.py.

The binary codes of the two-pass scan (device/codes.py) are not published: the device derives the
codes of added and updated items from their rows with the bundle's catalog mean, and kept items keep
theirs through the renumbering exactly as their rows do (a snapshot's are derived from its rows).

The new version is built in a temporary folder beside the live ones and opened with the device's
own ``Catalog`` before anything points at it: content a decoder cannot see (a bad value in a signed
snapshot's SQLite) fails there, and the catalog that was serving keeps serving. It is then renamed
into ``state/catalog/<version>`` and made current by replacing one symlink, so a kill -9 at any
point leaves the old or the new catalog, never a mix. The previous version is kept for rollback.

The index may also name the merchandising rules and the live stock feed (``rules``, ``stock``:
device/rules.py, device/stock.py), each with its own version, fetched like any file and checked
against the catalog about to serve; they are installed for it before it serves. A bad one raises
(``RulesError``/``StockError``, both SyncErrors) after the catalog part is done, and the previous
rules or stock keep serving.
"""

from __future__ import annotations

import datetime as _dt
import hashlib
import json
import logging
import os
import shutil
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np

from shelfrank.device import bundle as bfmt
from shelfrank.device import formats
from shelfrank.device.boards import BoardConfig, check_catalog_size
from shelfrank.device.catalog_files import FILES, NEIGHBOR_FILES, CatalogData, read_catalog_dir, write_catalog_dir
from shelfrank.device.codes import derive_codes, mean_digest
from shelfrank.device.delta import apply_delta, check_rows, read_delta
from shelfrank.device.formats import DeltaRef, FileRef, IndexSigned, ItemRecord
from shelfrank.device.sync_sources import SyncLimits, source_for
from shelfrank.errors import BundleError, InputError, SyncError

# the sources (DirSource, HttpSource, SyncLimits) live in sync_sources.py, the deltas in delta.py
__all__ = ["CatalogStore", "SyncResult", "sync", "verify_index"]

logger = logging.getLogger(__name__)

INDEX = formats.INDEX_NAME
INDEX_FORMAT = formats.INDEX_FORMAT
META = "meta.json"
KEEP_VERSIONS = 2
_BLOCK = 1 << 16


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
    rules: str = "none"  # what became of the index's rules.json: "none", "up to date", "version N"
    stock: str = "none"  # and of its stock.json (device/stock.py)


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


def _apply_chain(rec, src, chain: list[DeltaRef], downloads: Path) -> tuple[CatalogData, int]:
    data, total = read_catalog_dir(rec.catalog.root), 0
    if data.codes is not None and codes_mean(rec.catalog.root) not in (None, mean_digest(rec.catalog_mean)):
        data.codes = None  # derived with another bundle's mean: apply_delta derives them all again
    for d in chain:
        files = d.by_name()
        paths = {}
        for name in formats.DELTA_FILES:
            paths[name], got = _fetch(src, files[name], downloads)
            total += got
        delta = read_delta(paths, span=(d.from_, d.to), dim=rec.dim, where=f"{src}/delta {d.from_}-{d.to}")
        data = apply_delta(data, *delta, mean=rec.catalog_mean)
    return data, total


def synced_catalog(rec, newer_than: int):
    """The last catalog synced into ``rec``'s state folder (opened with ``rec._open_catalog``), when it
    is newer than ``newer_than`` and made for the bundle's model; None otherwise (an unusable one is
    logged and skipped)."""
    synced = CatalogStore(rec.state_dir).current()
    if synced is None:
        return None
    version, path, meta = synced
    if version <= newer_than or meta.get("model_sha256") != rec.manifest["model"]["sha256"]:
        return None
    # codes derived with another bundle's mean (a re-export since that sync) are not used
    same_mean = meta.get("codes_mean") in (None, mean_digest(rec.catalog_mean))
    try:
        return rec._open_catalog(path, version, codes=same_mean)
    except BundleError as e:
        logger.warning("synced catalog %s unusable (%s); keeps serving version %d", path, e, newer_than)
        return None


def codes_mean(root: Path) -> str | None:
    """The digest of the mean a synced catalog's codes were derived with (None: a bundle's catalog,
    or one synced before codes existed)."""
    try:
        return json.loads((root / META).read_text()).get("codes_mean")
    except (OSError, ValueError, AttributeError):
        return None


def _fetch_snapshot(src, index: IndexSigned, store: CatalogStore, mean: np.ndarray | None) -> tuple[CatalogData, int]:
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
        check_rows(data.rows, data.scales, [it["item_id"] for it in data.items], where)
        if mean is not None:  # the codes of the two-pass scan, from the rows (never published)
            data.codes = derive_codes(data.rows, data.scales, mean)
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
        RulesError, StockError: the index's rules or stock document is refused (a rollback, a bad
            field, a name the catalog lacks); the catalog part is done, the previous rules or stock
            keep serving.
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
    if version == current:  # the catalog is; the rules and the stock feed may be newer
        cat = rec.catalog
        downloads = CatalogStore(rec.state_dir).downloads
        new, notes, err = _extras(rec, src, index, downloads, cat)
        if new is not cat:
            with rec._lock:
                rec.catalog = new if rec.catalog is cat else rec.stock.apply(rec.catalog)
        _clean(downloads)
        if err is not None:
            raise err
        return SyncResult(str(src), current, current, "up to date", 0, **notes)
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
        data, total = _fetch_snapshot(src, index, store, rec.catalog_mean)
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

    def check(path: Path) -> None:  # the device's own loader, on the candidate
        Catalog(path, version=version, dim=rec.dim, mean=rec.catalog_mean)

    meta = {"model_sha256": index.model_sha256, "source": str(src)}
    if data.codes is not None:
        meta["codes_mean"] = mean_digest(rec.catalog_mean)
    path = store.install(version, data, meta, check=check)
    # the rules and stock feed that came with it are checked against it and installed for it
    # before it serves, so the first query on the new catalog already has them
    new, notes, err = _extras(rec, src, index, store.downloads, rec._open_catalog(path, version))
    with rec._lock:
        rec.catalog = new  # one reference swap: a query already running keeps its catalog
    _clean(store.downloads)
    logger.info("synced catalog %d → %d by %s from %s (%d bytes)", current, version, method, src, total)
    if err is not None:
        raise type(err)(f"catalog synced to version {version}, but: {err}") from err
    return SyncResult(str(src), current, version, method, total, **notes)


def _clean(downloads: Path) -> None:
    """Remove the verified downloads once applied (a ``.part`` stays: the next sync resumes it)."""
    for f in downloads.glob("*"):
        if not f.name.endswith(".part"):
            f.unlink(missing_ok=True)


def _extras(rec, src, index: IndexSigned, downloads: Path, cat) -> tuple[Any, dict[str, str], SyncError | None]:
    """The merchandising rules and stock feed the index names, checked against ``cat`` (the catalog
    about to serve) and installed for it: (``cat`` with the feed's stock, what became of each, the
    first error: RulesError/StockError/SyncError, after which the previous rules or stock keep serving)."""
    notes, err = {"rules": "none", "stock": "none"}, None
    refs = (("rules", index.rules, formats.RULES_MAX_BYTES), ("stock", index.stock, formats.STOCK_MAX_BYTES))
    for name, ref, cap in refs:
        if ref is None:
            continue
        where = f"{src}/{ref.path}"
        try:
            if ref.size > cap:
                raise SyncError(f"{where}: {ref.size} bytes, over the {cap} a {name} document may have; republish it")
            raw = _fetch(src, ref, downloads)[0].read_bytes()
            if name == "rules":
                doc = rec.merch.check_published(raw, cat, where)
                if doc is not None:
                    rec.merch.install_published(doc, cat.version)
                notes[name] = "up to date" if doc is None else f"version {doc.version}"
            else:
                feed = rec.stock.check_feed(raw, cat, where)
                if feed is not None:
                    cat, res = rec.stock.apply_feed(feed, cat, where)
                    notes[name] = f"version {feed.version} ({res.applied} items, {res.skipped} unknown skipped)"
                else:
                    notes[name] = "up to date"
        except SyncError as e:  # RulesError and StockError are SyncErrors too
            logger.warning("%s", e)
            notes[name], err = "refused", err or e
    return cat, notes, err
