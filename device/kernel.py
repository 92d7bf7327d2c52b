"""Typed Python face of the native cosine top-k kernel (``shelfrank._native``).

The binding is strict: rows must already be float32, or int8 with float32 scales, each row
contiguous (any row stride: a row slice or a view of leading columns is scanned in place), so the
catalog is never copied on the hot path. Only the query (a few hundred floats) and the catalog
mean (d floats) are converted here, on purpose.

Two-pass search: ``binary_codes`` makes one sign code per row (bit j = row_j > mean_j, 48 bytes at
d = 384); ``topk_two_pass`` scans the codes by popcount, keeps the ``r`` rows nearest the query's
code and rescores only those rows exactly as ``topk`` scores them. ``hamming_topk`` is the first
pass alone (for benchmarks and recall studies).
"""

from __future__ import annotations

import numpy as np

from shelfrank import _native
from shelfrank.errors import InputError, UnsupportedIsaError

__all__ = [
    "active_isa",
    "binary_codes",
    "capabilities",
    "force_isa",
    "hamming_isa",
    "hamming_topk",
    "quantize_rows",
    "read_bandwidth",
    "topk",
    "topk_two_pass",
]


def _query(query: np.ndarray) -> np.ndarray:
    if isinstance(query, np.ndarray) and query.dtype != np.float32 and query.dtype.kind in "fiu":
        query = query.astype(np.float32)
    return np.ascontiguousarray(query)


def _mean(mean: np.ndarray) -> np.ndarray:
    if isinstance(mean, np.ndarray) and mean.dtype != np.float32 and mean.dtype.kind in "fiu":
        mean = mean.astype(np.float32)
    return np.ascontiguousarray(mean)


def topk(
    query: np.ndarray,
    rows: np.ndarray,
    k: int,
    *,
    scales: np.ndarray | None = None,
    mask: np.ndarray | None = None,
    threads: int = 1,
) -> tuple[np.ndarray, np.ndarray]:
    """Exact top-k rows by dot product with the query (cosine when both are L2-normalised).

    Args:
        query: (d,) or (B, d) float vector(s); converted to contiguous float32.
        rows: (N, d) float32, or int8 with ``scales`` (score_i = scale_i · dot(q, x_i);
            the query is quantised to int8 internally); each row contiguous, any positive row
            stride (a view with strided rows is gathered block by block, never copied whole).
        k: results per query (>= 1); fewer than k eligible rows are filled with id -1, score -inf.
        scales: (N,) float32 per-row scales, required for int8 rows.
        mask: (N,) bool, True where a row may be returned.
        threads: split the scan over this many threads; the result equals threads=1.

    Returns:
        (ids int64, scores float32), shape (k,) for a single query or (B, k) for a batch, best
        first; ties go to the lower row id.

    Raises:
        InputError: (a ValueError) naming the bad argument and the fix.
    """
    try:
        return _native.topk(_query(query), rows, int(k), scales=scales, mask=mask, threads=int(threads))
    except ValueError as e:
        raise InputError(str(e)) from e


def binary_codes(
    rows: np.ndarray, *, scales: np.ndarray | None = None, mean: np.ndarray, threads: int = 1
) -> np.ndarray:
    """Sign codes of ``rows - mean``: one bit per dimension, the first-pass catalog of ``topk_two_pass``.

    Args:
        rows: (N, d) float32, or int8 with ``scales`` (value = float32(x) * scale_i).
        scales: (N,) float32 per-row scales, required for int8 rows.
        mean: (d,) finite catalog mean (``rows`` dequantised, averaged); converted to float32.
        threads: split the rows over this many threads; the codes do not depend on it.

    Returns:
        uint8 (N, ceil(d/8)): bit t of byte b is 1 where value[8b + t] > mean[8b + t], i.e.
        ``np.packbits(values > mean, axis=1, bitorder="little")``; pad bits 0. The same bits on
        every ISA and machine.

    Raises:
        InputError: bad rows/scales, a mean of the wrong dimension or with NaN/inf, non-finite rows.
    """
    try:
        return _native.binary_codes(rows, scales=scales, mean=_mean(mean), threads=int(threads))
    except ValueError as e:
        raise InputError(str(e)) from e


def topk_two_pass(
    query: np.ndarray,
    rows: np.ndarray,
    k: int,
    *,
    codes: np.ndarray,
    mean: np.ndarray,
    r: int,
    scales: np.ndarray | None = None,
    mask: np.ndarray | None = None,
    threads: int = 1,
) -> tuple[np.ndarray, np.ndarray]:
    """Two-pass top-k: a popcount scan of the sign codes, then the exact rescore of ``r`` candidates.

    The first pass codes the query as ``query > mean`` and keeps the ``r`` eligible rows with the
    smallest Hamming distance (ties to the lower row; masked rows never enter). The second pass
    scores exactly those rows as ``topk`` does (int8: the same bits as ``topk(query, rows, k,
    scales=scales)`` restricted to the candidates) and returns their top k. Only the candidates'
    rows are read, so a memory-mapped catalog pages in only those.

    Args:
        query, rows, k, scales, mask, threads: as ``topk``.
        codes: ``binary_codes(rows, scales=scales, mean=mean)``: uint8 (N, ceil(d/8)).
        mean: the (d,) mean the codes were made with.
        r: first-pass candidates, >= k; r > N is clamped to N (then the result equals ``topk``).

    Returns:
        (ids int64, scores float32) of shape (k,) or (B, k), best first, -1/-inf fill.

    Raises:
        InputError: codes whose shape or dtype disagrees with the rows, a bad mean, r < k or
            r absurdly large (> N and > 2^24), and everything ``topk`` rejects.
    """
    try:
        return _native.topk_two_pass(
            _query(query),
            rows,
            int(k),
            codes=codes,
            mean=_mean(mean),
            r=int(r),
            scales=scales,
            mask=mask,
            threads=int(threads),
        )
    except ValueError as e:
        raise InputError(str(e)) from e


def hamming_topk(
    query: np.ndarray,
    codes: np.ndarray,
    r: int,
    *,
    mean: np.ndarray,
    mask: np.ndarray | None = None,
    threads: int = 1,
) -> tuple[np.ndarray, np.ndarray]:
    """The first pass of ``topk_two_pass`` alone: the rows whose codes are nearest the query's.

    Returns:
        (ids int64, distances int32) of shape (min(r, N),) or (B, min(r, N)): Hamming distance
        ascending, ties to the lower row; -1/-1 fill when fewer rows are eligible.

    Raises:
        InputError: as ``topk_two_pass`` (codes, mean, r, mask).
    """
    try:
        return _native.hamming_topk(_query(query), codes, int(r), mean=_mean(mean), mask=mask, threads=int(threads))
    except ValueError as e:
        raise InputError(str(e)) from e


def quantize_rows(rows_f32: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """Quantise rows to int8 with one symmetric scale per row (scale = max|x| / 127).

    Returns:
        (rows int8 (N, d), scales float32 (N,)); rows ≈ rows_i8 * scales[:, None].

    Raises:
        InputError: rows are not a 2-D C-contiguous float32 array, or contain NaN/inf.
    """
    try:
        return _native.quantize_rows(rows_f32)
    except ValueError as e:
        raise InputError(str(e)) from e


def capabilities() -> list[str]:
    """ISA paths this CPU and build can run, best last (always starts with ``scalar``)."""
    return list(_native.capabilities())


def active_isa() -> str:
    """The ISA path in use: ``SHELFRANK_FORCE_ISA`` when set, else the best of ``capabilities()``.

    Raises:
        UnsupportedIsaError: ``SHELFRANK_FORCE_ISA`` names a path this machine cannot run.
    """
    try:
        return _native.active_isa()
    except ValueError as e:
        raise UnsupportedIsaError(str(e)) from e


def force_isa(name: str | None) -> None:
    """Pin the kernel to one ISA path for this process (tests, benchmarks); None restores the default.

    Raises:
        UnsupportedIsaError: the name is unknown or unavailable; the message lists ``capabilities()``.
    """
    try:
        _native.force_isa(name)
    except ValueError as e:
        raise UnsupportedIsaError(str(e)) from e


def hamming_isa() -> str:
    """The popcount scan of the active ISA path: ``scalar``, ``avx2-popcnt``, ``avx512-vpopcntdq``, ``neon-cnt``.

    Raises:
        UnsupportedIsaError: ``SHELFRANK_FORCE_ISA`` names a path this machine cannot run.
    """
    try:
        return _native.hamming_isa()
    except ValueError as e:
        raise UnsupportedIsaError(str(e)) from e


def read_bandwidth(nbytes: int, *, repeats: int = 5, threads: int = 1) -> float:
    """Best-of-``repeats`` sequential read bandwidth in GB/s over a fresh ``nbytes`` buffer."""
    return float(_native.read_bandwidth(int(nbytes), int(repeats), int(threads)))
