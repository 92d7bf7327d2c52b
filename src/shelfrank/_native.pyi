"""The compiled kernel binding (native/bindings/module.cpp), as the type checker sees it.

Checked against the compiled module by tests/native/test_stub.py (names, parameters, their kinds
and defaults). The typed, error-translating face is shelfrank.device.kernel; call that instead.
All array arguments are checked by the binding, never converted: rows float32 or int8 (any row
stride, each row contiguous), scales/mean/query float32, mask bool, codes uint8; a bad one raises
ValueError with the fix.
"""

import numpy as np
import numpy.typing as npt

def topk(
    query: npt.NDArray[np.float32],
    rows: npt.NDArray[np.float32] | npt.NDArray[np.int8],
    k: int,
    *,
    scales: npt.NDArray[np.float32] | None = None,
    mask: npt.NDArray[np.bool_] | None = None,
    threads: int = 1,
) -> tuple[npt.NDArray[np.int64], npt.NDArray[np.float32]]:
    """Top-k rows by dot product with the query: (ids, scores) of shape (k,) or (B, k)."""

def topk_two_pass(
    query: npt.NDArray[np.float32],
    rows: npt.NDArray[np.float32] | npt.NDArray[np.int8],
    k: int,
    *,
    codes: npt.NDArray[np.uint8],
    mean: npt.NDArray[np.float32],
    r: int,
    scales: npt.NDArray[np.float32] | None = None,
    mask: npt.NDArray[np.bool_] | None = None,
    threads: int = 1,
) -> tuple[npt.NDArray[np.int64], npt.NDArray[np.float32]]:
    """The r rows nearest the query's sign code by Hamming distance, rescored exactly as topk."""

def hamming_topk(
    query: npt.NDArray[np.float32],
    codes: npt.NDArray[np.uint8],
    r: int,
    *,
    mean: npt.NDArray[np.float32],
    mask: npt.NDArray[np.bool_] | None = None,
    threads: int = 1,
) -> tuple[npt.NDArray[np.int64], npt.NDArray[np.int32]]:
    """The first pass alone: (ids, distances) of the min(r, N) nearest codes, -1 fill."""

def binary_codes(
    rows: npt.NDArray[np.float32] | npt.NDArray[np.int8],
    *,
    scales: npt.NDArray[np.float32] | None = None,
    mean: npt.NDArray[np.float32],
    threads: int = 1,
) -> npt.NDArray[np.uint8]:
    """Sign codes of rows - mean: uint8 (N, ceil(d/8)), np.packbits(v > mean, axis=1, bitorder='little')."""

def quantize_rows(rows: npt.NDArray[np.float32]) -> tuple[npt.NDArray[np.int8], npt.NDArray[np.float32]]:
    """Per-row symmetric int8: (rows int8 (N, d), scales float32 (N,))."""

def capabilities() -> list[str]:
    """ISA paths this CPU and build can run, best last."""

def active_isa() -> str:
    """The ISA path in use."""

def hamming_isa() -> str:
    """The popcount scan the active ISA path uses."""

def force_isa(name: str | None) -> None:
    """Pin an ISA path by name; None restores the default."""

def read_bandwidth(nbytes: int, repeats: int = 5, threads: int = 1) -> float:
    """Best-of-repeats sequential read bandwidth (GB/s) of a fresh nbytes buffer."""
