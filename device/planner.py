"""Which scan answers a dense query: the exact int8 scan, or the two-pass scan (binary codes first).

Every dense top-k of the runtime (``recommend``'s tower scan, the dense part of ``search``,
``similar``) goes through :meth:`Planner.topk`. The two-pass scan reads the catalog's binary codes
(device/codes.py, an eighth of the int8 rows' bytes), keeps the ``r`` rows nearest by Hamming
distance (masks honoured there), and rescores those exactly in int8: its scores are bit for bit
those of the exact scan for the same rows, and with ``r`` ≥ the rows a mask allows it returns
exactly what the exact scan returns.

``first_pass`` (a board setting, :class:`~shelfrank.device.formats.BoardConfig`):

- ``exact``: always the exact scan;
- ``binary``: the two-pass scan whenever the catalog has codes (an older bundle without them is
  scanned exactly);
- ``auto`` (default): two-pass when the catalog has codes and at least :data:`AUTO_MIN_ITEMS` rows,
  where it pays (measured: docs/device.md); a smaller catalog silently uses the exact scan.

``r`` is a floor: a query that needs more rows (the hybrid's candidates, a shopper's seen items)
keeps ``max(r, want)`` candidates, so the first pass never starves the rescore.
"""

from __future__ import annotations

import threading
from typing import Protocol

import numpy as np

from shelfrank.device.formats.board import FIRST_PASS, FIRST_PASS_R_DEFAULT, FIRST_PASS_R_MAX
from shelfrank.device.kernel import topk as exact_topk
from shelfrank.device.kernel import topk_two_pass
from shelfrank.errors import InputError


class Catalog(Protocol):
    """What the planner reads of a catalog (``shelfrank.device.catalog.Catalog``)."""

    rows: np.ndarray
    scales: np.ndarray
    codes: np.ndarray | None
    mean: np.ndarray | None

    def __len__(self) -> int: ...


__all__ = ["AUTO_MIN_ITEMS", "DEFAULT_R", "FIRST_PASS", "MAX_R", "SCANS", "Planner", "two_pass_topk"]

#: what :attr:`Planner.counts` and :attr:`Planner.last` record per scan
SCANS = ("exact", "two_pass")
#: ``auto`` picks the two-pass scan from this many catalog rows (the measured crossover, docs/device.md)
AUTO_MIN_ITEMS = 20_000
#: candidates kept by the first pass by default (recall@10 against exact int8 in docs/device.md)
DEFAULT_R = FIRST_PASS_R_DEFAULT
#: the most candidates a board may ask the first pass to keep (formats.board.FIRST_PASS_R_MAX)
MAX_R = FIRST_PASS_R_MAX


class Planner:
    """The scan choice of one recommender (its board's ``first_pass`` and ``first_pass_r``), and a
    record of what ran: :attr:`counts` per kind, :attr:`last` the latest kind. Thread-safe."""

    def __init__(self, first_pass: str = "auto", r: int = DEFAULT_R, *, min_items: int = AUTO_MIN_ITEMS) -> None:
        """Raises: InputError: an unknown ``first_pass`` or ``r`` outside [1, MAX_R]."""
        if first_pass not in FIRST_PASS:
            raise InputError(f"first_pass must be one of {', '.join(FIRST_PASS)}, got {first_pass!r}")
        if isinstance(r, bool) or not isinstance(r, int) or not 1 <= r <= MAX_R:
            raise InputError(f"first_pass_r must be an integer in [1, {MAX_R:,}], got {r!r}")
        self.first_pass, self.r, self.min_items = first_pass, r, int(min_items)
        self.counts = dict.fromkeys(SCANS, 0)
        self.last: str | None = None
        self._lock = threading.Lock()

    def __repr__(self) -> str:
        return f"Planner(first_pass={self.first_pass!r}, r={self.r}, min_items={self.min_items})"

    def choose(self, cat: Catalog, want: int) -> str:
        """``"exact"`` or ``"two_pass"`` for a scan of ``cat`` asking for ``want`` rows."""
        return self.scan_for(len(cat), has_codes=cat.codes is not None, want=want)

    def scan_for(self, n_rows: int, *, has_codes: bool, want: int = 10) -> str:
        """``"exact"`` or ``"two_pass"`` for a catalog of ``n_rows`` (flash sizes a board's memory by it)."""
        if self.first_pass == "exact" or not has_codes:
            return "exact"
        if self.first_pass == "binary":
            return "two_pass"
        if max(self.r, want) >= n_rows // 2:  # the first pass would keep most rows: nothing to save
            return "exact"
        return "two_pass" if n_rows >= self.min_items else "exact"

    def topk(
        self, cat: Catalog, query: np.ndarray, k: int, *, mask: np.ndarray | None = None, threads: int = 1
    ) -> tuple[np.ndarray, np.ndarray]:
        """The ``k`` best rows of ``cat`` for ``query`` ((d,) or (B, d)), as ``kernel.topk`` returns them."""
        kind = self.choose(cat, k)
        with self._lock:
            self.counts[kind] += 1
            self.last = kind
        if kind == "exact":
            return exact_topk(query, cat.rows, k, scales=cat.scales, mask=mask, threads=threads)
        r = min(max(self.r, k), len(cat))
        return two_pass_topk(
            query, cat.rows, k, codes=cat.codes, mean=cat.mean, r=r, scales=cat.scales, mask=mask, threads=threads
        )

    def describe(self, cat: Catalog, k: int = 10) -> dict:
        """What a scan of ``cat`` for ``k`` rows would run, for a bench or a status page."""
        return {
            "first_pass": self.first_pass,
            "r": self.r,
            "min_items": self.min_items,
            "codes": cat.codes is not None,
            "scan": self.choose(cat, k),
        }


def two_pass_topk(
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
    """``kernel.topk_two_pass`` (the native popcount scan and exact int8 rescore).

    Raises:
        InputError: ``r`` < ``k`` or the kernel's own checks.
    """
    if isinstance(r, bool) or not isinstance(r, int) or r < k:
        raise InputError(f"two-pass scan: r = {r!r} candidates cannot give k = {k} results; pass r >= k")
    return topk_two_pass(query, rows, k, codes=codes, mean=mean, r=r, scales=scales, mask=mask, threads=threads)
