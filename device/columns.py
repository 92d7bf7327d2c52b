"""Compact per-item columns of a catalog: strings in one UTF-8 blob, and an id → row index.

At 1M items a Python ``str`` per id (~60 bytes) and an id → row ``dict`` (~40 bytes an entry more)
were ~100 MB resident. Here an id costs its UTF-8 bytes plus 4 (its end offset) in
:class:`Strings`, and 12 in :class:`IdIndex` (a sorted int64 hash and an int32 row): a lookup is
one binary search and one compare of the stored bytes (hash collisions are walked, so the answer is
exact). The hashes are Python's own ``hash(str)``: salted per process, which is fine for an index
that lives only in this process (docs/device.md, "Memory").
"""

from __future__ import annotations

import bisect
from array import array
from collections.abc import Iterable, Iterator, Mapping, Sequence
from pathlib import Path
from typing import overload

import numpy as np

__all__ = ["IdIndex", "Strings", "load_strings", "release_pages", "release_strings", "write_strings"]


class Strings(Sequence[str]):
    """N strings stored as one UTF-8 blob and their end offsets: in memory (a ``bytearray`` and an
    ``array('q')``) or memory-mapped from a catalog's ``*.u8.npy`` / ``*.ends.npy`` files
    (:func:`load_strings`), where only the pages of the strings read come into memory."""

    __slots__ = ("_blob", "_ends", "_keep")

    def __init__(self, blob, ends) -> None:
        self._keep = (blob, ends)  # the owners of the buffers (a mapping stays open while it is viewed)
        self._blob = memoryview(blob).cast("B")
        self._ends = memoryview(ends).cast("B").cast("q")  # indexing gives Python ints

    @classmethod
    def build(cls, values: Iterable[str]) -> Strings:
        blob, ends = bytearray(), array("q")
        for v in values:
            blob += v.encode()
            ends.append(len(blob))
        return cls(blob, ends)

    def __len__(self) -> int:
        return len(self._ends)

    @overload
    def __getitem__(self, i: int) -> str: ...
    @overload
    def __getitem__(self, i: slice) -> list[str]: ...
    def __getitem__(self, i):
        if isinstance(i, slice):
            return [self[j] for j in range(*i.indices(len(self)))]
        ends = self._ends
        if i < 0:
            i += len(ends)
        end = ends[i]  # IndexError past the end, as a list
        return str(self._blob[ends[i - 1] if i else 0 : end], "utf-8")

    def raw(self, i: int) -> bytes:
        """The UTF-8 bytes of string ``i`` (no decode)."""
        ends = self._ends
        return self._blob[ends[i - 1] if i else 0 : ends[i]].tobytes()

    def __iter__(self) -> Iterator[str]:
        blob, start = self._blob, 0
        for end in self._ends:
            yield str(blob[start:end], "utf-8")
            start = end

    def __eq__(self, other: object) -> bool:
        if isinstance(other, (Strings, list, tuple)):
            return len(self) == len(other) and all(a == b for a, b in zip(self, other, strict=True))
        return NotImplemented

    __hash__ = None  # type: ignore[assignment]  # mutable-looking sequence: like list

    def __repr__(self) -> str:
        head = ", ".join(repr(s) for s in self[:3])
        return f"Strings([{head}{', …' if len(self) > 3 else ''}], n={len(self)})"

    def nbytes(self) -> int:
        return self._blob.nbytes + self._ends.nbytes


def release_pages(mapped: object, path: Path) -> None:
    """Keep only the pages a query will read of a memory-mapped file: the pages an open-time check
    touched are unmapped (``MADV_DONTNEED``: the file is read-only, nothing is lost), later faults
    bring no readahead (``MADV_RANDOM``), and the file's cached pages are dropped
    (``POSIX_FADV_DONTNEED``: the kernel maps the cached neighbours of a faulting page, whole large
    folios, into the process). Advice only: where the platform lacks it, nothing happens."""
    import logging
    import mmap
    import os

    mm = getattr(mapped, "_mmap", None)
    try:
        if mm is not None and hasattr(mm, "madvise"):
            for advice in ("MADV_DONTNEED", "MADV_RANDOM"):
                if hasattr(mmap, advice):
                    mm.madvise(getattr(mmap, advice))
        if hasattr(os, "posix_fadvise"):
            fd = os.open(path, os.O_RDONLY)
            try:
                os.posix_fadvise(fd, 0, 0, os.POSIX_FADV_DONTNEED)
            finally:
                os.close(fd)
    except OSError as e:
        logging.getLogger(__name__).debug("%s: madvise/fadvise failed: %s", path, e)


def write_strings(blob_path: Path, ends_path: Path, values: Iterable[str]) -> None:
    """``values`` as a uint8 .npy of their UTF-8 bytes and an int64 .npy of their end offsets."""
    blob, ends = bytearray(), array("q")
    for v in values:
        blob += v.encode()
        ends.append(len(blob))
    np.save(blob_path, np.frombuffer(blob, np.uint8))
    np.save(ends_path, np.frombuffer(ends, np.int64))


def load_strings(blob_path: Path, ends_path: Path, n: int) -> Strings | None:
    """The strings :func:`write_strings` wrote, memory-mapped (None when the files are not there).

    Raises:
        BundleError: a file unreadable, of the wrong dtype or shape, or offsets that are not
            non-decreasing up to the blob's length (checked in blocks: nothing stays resident).
    """
    from shelfrank.errors import BundleError

    if not blob_path.exists() and not ends_path.exists():
        return None
    fix = "re-export the bundle or republish the catalog"
    try:
        blob = np.load(blob_path, mmap_mode="r") if blob_path.stat().st_size > 128 else np.load(blob_path)
        ends = np.load(ends_path, mmap_mode="r") if n else np.load(ends_path)
    except (OSError, ValueError) as e:
        raise BundleError(f"{blob_path.parent}: string columns unreadable ({e}); {fix}") from e
    if blob.dtype != np.uint8 or blob.ndim != 1:
        raise BundleError(f"{blob_path}: expected a uint8 (bytes,) array, got {blob.dtype} {blob.shape}; {fix}")
    if ends.dtype != np.int64 or ends.shape != (n,):
        raise BundleError(f"{ends_path}: expected int64 ({n},) end offsets, got {ends.dtype} {ends.shape}; {fix}")
    prev = 0
    for lo in range(0, n, 1 << 16):
        block = np.asarray(ends[lo : lo + (1 << 16)])
        if block[0] < prev or (np.diff(block) < 0).any():
            raise BundleError(f"{ends_path}: end offsets decrease (row {lo} onwards); {fix}")
        prev = int(block[-1])
    if prev != len(blob):
        raise BundleError(f"{ends_path}: the last offset {prev} is not the blob's length {len(blob)}; {fix}")
    return Strings(blob, ends)


def release_strings(strings: Strings, blob_path: Path, ends_path: Path) -> None:
    """:func:`release_pages` on both files of memory-mapped :class:`Strings` (after the open checks)."""
    blob, ends = strings._keep
    release_pages(blob, blob_path)
    release_pages(ends, ends_path)


class IdIndex(Mapping[str, int]):
    """item id → row over a :class:`Strings` of ids (unique), by sorted hashes; read-only."""

    __slots__ = ("_hashes", "_ids", "_rows", "_sorted")

    def __init__(self, ids: Strings, hashes: array | np.ndarray | None = None) -> None:
        """``hashes``: ``hash(id)`` of every id in row order, when the caller computed them while reading."""
        self._ids = ids
        h = np.fromiter(map(hash, ids), np.int64, len(ids)) if hashes is None else np.asarray(hashes, np.int64)
        order = np.argsort(h, kind="stable")
        self._rows = order.astype(np.int32)
        self._hashes = h[order]
        self._sorted = self._hashes.tolist() if len(h) <= 4096 else None  # bisect on a list: fast for small

    def _find(self, key: object) -> int:
        if not isinstance(key, str):
            return -1
        hv = hash(key)
        hs = self._hashes
        i = bisect.bisect_left(self._sorted, hv) if self._sorted is not None else int(np.searchsorted(hs, hv))
        if i < len(hs) and hs[i] == hv:
            want = key.encode()
            while i < len(hs) and hs[i] == hv:  # a collision: walk the equal hashes
                row = int(self._rows[i])
                if self._ids.raw(row) == want:
                    return row
                i += 1
        return -1

    def __getitem__(self, key: str) -> int:
        row = self._find(key)
        if row < 0:
            raise KeyError(key)
        return row

    def __contains__(self, key: object) -> bool:
        return self._find(key) >= 0

    def get(self, key: str, default=None):
        row = self._find(key)
        return default if row < 0 else row

    def __iter__(self) -> Iterator[str]:
        return iter(self._ids)

    def __len__(self) -> int:
        return len(self._ids)

    def rows_of(self, keys: Sequence[str]) -> np.ndarray:
        """The row of every key, -1 where it is not an id here (int64, one binary search for all)."""
        n = len(keys)
        if n == 0 or len(self._hashes) == 0:
            return np.full(n, -1, np.int64)
        hv = np.fromiter((hash(k) for k in keys), np.int64, n)
        pos = np.minimum(np.searchsorted(self._hashes, hv), len(self._hashes) - 1)
        out = np.where(self._hashes[pos] == hv, self._rows[pos].astype(np.int64), -1)
        for j in np.flatnonzero(out >= 0).tolist():  # confirm the bytes (a collision walks)
            if self._ids.raw(int(out[j])) != keys[j].encode():
                out[j] = self._find(keys[j])
        return out

    def nbytes(self) -> int:
        return self._hashes.nbytes + self._rows.nbytes
