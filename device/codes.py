"""Binary codes of a catalog: per item the sign bits of (dequantised int8 row − catalog mean).

The two-pass scan (device/planner.py) reads these first — ``ceil(d/8)`` bytes per item, 48 at
d = 384, an eighth of the int8 rows — and rescores only its best candidates exactly. The catalog
mean is subtracted before the sign because the embeddings share a strong common direction: without
it most bits are the same for every item. Bit ``j`` of item ``i`` is ``scales[i]·rows[i, j] −
mean[j] > 0``, packed little-endian within each byte (``np.packbits(..., bitorder="little")``), the
layout of the native kernel (``shelfrank.device.kernel.binary_codes``).

Export writes ``catalog/codes.u8.npy`` and the mean (``catalog.mean`` in the manifest); sync
derives the codes of added and updated items on the device from their rows with the bundle's mean.
"""

from __future__ import annotations

from pathlib import Path

import numpy as np

from shelfrank.device.kernel import binary_codes
from shelfrank.errors import BundleError, InputError

__all__ = [
    "CODES_FILE",
    "catalog_mean",
    "check_codes",
    "check_mean",
    "code_bytes",
    "derive_codes",
    "mean_digest",
]

#: the codes' file in a catalog folder (beside ``emb.i8.npy``)
CODES_FILE = "codes.u8.npy"
_BLOCK = 8192  # rows per block: no catalog-sized float temporary


def code_bytes(dim: int) -> int:
    """Bytes per item code: ``ceil(dim / 8)``."""
    return (int(dim) + 7) // 8


def catalog_mean(rows: np.ndarray, scales: np.ndarray) -> np.ndarray:
    """The mean (float32, (d,)) of the dequantised rows ``rows[i]·scales[i]``, summed in float64 by blocks."""
    n, d = rows.shape
    total = np.zeros(d, np.float64)
    for s in range(0, n, _BLOCK):
        total += scales[s : s + _BLOCK].astype(np.float64) @ rows[s : s + _BLOCK].astype(np.float64)
    return (total / max(n, 1)).astype(np.float32)


def derive_codes(rows: np.ndarray, scales: np.ndarray, mean: np.ndarray, *, threads: int = 1) -> np.ndarray:
    """The codes (uint8 (N, ceil(d/8))) of int8 ``rows`` with per-row ``scales``, centred by ``mean``.

    The native kernel (``kernel.binary_codes``; the time at 1M × 384 is in docs/device.md).

    Raises:
        InputError: mismatched shapes or dtypes.
    """
    rows = np.ascontiguousarray(rows)
    scales = np.ascontiguousarray(scales, np.float32)
    mean = np.ascontiguousarray(mean, np.float32)
    if rows.dtype != np.int8 or rows.ndim != 2 or scales.shape != rows.shape[:1] or mean.shape != rows.shape[1:]:
        raise InputError(
            f"codes: rows must be int8 (N, d) with float32 scales (N,) and a float32 mean (d,); got rows "
            f"{rows.dtype} {rows.shape}, scales {scales.shape}, mean {mean.shape}"
        )
    return binary_codes(rows, scales=scales, mean=mean, threads=threads)


def mean_digest(mean: np.ndarray | None) -> str | None:
    """A short digest of a mean's float32 bytes: which mean a synced catalog's codes were derived with."""
    if mean is None:
        return None
    import hashlib

    return hashlib.sha256(np.ascontiguousarray(mean, np.float32).tobytes()).hexdigest()[:32]


def check_mean(mean: np.ndarray, dim: int, where: str) -> None:
    """Refuse a mean that is not ``dim`` finite floats.

    Raises:
        BundleError: naming ``where`` and the fix.
    """
    if mean.shape != (dim,) or not np.isfinite(mean).all():
        raise BundleError(
            f"{where}: catalog.mean must be {dim} finite numbers (the catalog's dimension), got shape "
            f"{mean.shape}; re-export the bundle"
        )


def check_codes(codes: np.ndarray, n: int, dim: int, path: Path | str) -> None:
    """Refuse codes that are not uint8 ``(n, ceil(dim/8))``.

    Raises:
        BundleError: naming the file and the fix.
    """
    want = (n, code_bytes(dim))
    if codes.dtype != np.uint8 or codes.shape != want:
        raise BundleError(
            f"{path}: expected uint8 binary codes of shape {want} (one per row, ceil({dim}/8) bytes), got "
            f"{codes.dtype} {codes.shape}; re-export the bundle or republish the catalog"
        )
