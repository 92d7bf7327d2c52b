"""Typed Python face of the native cosine top-k kernel (``shelfrank._native``).

The binding is strict: rows must already be C-contiguous float32, or int8 with float32 scales, so
the catalog is never copied on the hot path. Only the query (a few hundred floats) is converted
here, on purpose.
"""

from __future__ import annotations

import numpy as np

from shelfrank import _native
from shelfrank.errors import InputError, UnsupportedIsaError

__all__ = ["active_isa", "capabilities", "force_isa", "quantize_rows", "read_bandwidth", "topk"]


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
        rows: (N, d) C-contiguous float32, or int8 with ``scales`` (score_i = scale_i · dot(q, x_i);
            the query is quantised to int8 internally).
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
    if isinstance(query, np.ndarray) and query.dtype != np.float32 and query.dtype.kind in "fiu":
        query = query.astype(np.float32)
    query = np.ascontiguousarray(query)
    try:
        return _native.topk(query, rows, int(k), scales=scales, mask=mask, threads=int(threads))
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


def read_bandwidth(nbytes: int, *, repeats: int = 5, threads: int = 1) -> float:
    """Best-of-``repeats`` sequential read bandwidth in GB/s over a fresh ``nbytes`` buffer."""
    return float(_native.read_bandwidth(int(nbytes), int(repeats), int(threads)))
