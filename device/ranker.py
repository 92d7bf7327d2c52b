"""Hybrid ranking: the tower's candidates and the co-occurrence neighbours of the shopper's recent
items, ranked together by one small fused score. One definition for the device (one shopper at a
time) and the export (batches, for fitting and the quality report).

For shopper u with recent steps h_0 (newest), h_1, … (at most ``recent``, the tower's collapsed
steps) and a candidate item j:

    tower_j  = u · v_j                                    (cosine: the user vector and row are unit-norm)
    cooc_j   = Σ_a decay^a · action_weight[act_a] · W[h_a, j]     (W: the bundle's neighbour table)
    pop_j    = log(1 + 1000 · popularity_j) / log(1001)   (the bundle's popularity, max 1)
    repeat_j = Σ_{a: h_a = j} decay^a · action_weight[act_a]      (only when seen items are allowed)

    score_j  = w_tower · tower_j + w_cooc · cooc_j / max_i cooc_i + w_pop · pop_j + w_repeat · repeat_j

The candidates are the tower's ``candidates`` best rows plus every item with cooc_j > 0 (and, with
``exclude_seen=False``, the recent items h_a of non-zero weight); anything else ranks below them in
tower order (also when k exceeds the candidates). Seen items never set max_i cooc_i; a ``where``
filter removes candidates without changing the others' scores. The weights
are fitted on the valid split at export (``shelfrank.export.fusion``) and stored in the manifest's
``ranker`` entry. Falls back gracefully: no neighbours (an item added by sync, or a catalog
without a table) gives cooc = 0; no history is the caller's popularity path.
"""

from __future__ import annotations

import math
from collections.abc import Mapping, Sequence
from dataclasses import asdict, dataclass
from typing import Any

import numpy as np

from shelfrank.errors import BundleError, InputError

KIND = "hybrid-linear"
_POP_K = 1000.0


@dataclass(frozen=True)
class RankerParams:
    """The fused score's parameters (the manifest's ``ranker`` entry, ``kind: hybrid-linear``)."""

    w_tower: float = 1.0
    w_cooc: float = 0.5
    w_pop: float = 0.1
    w_repeat: float = 0.0
    candidates: int = 200
    recent: int = 20
    decay: float = 0.7
    action_weights: tuple[float, float, float, float] = (1.0, 1.0, 1.0, 1.0)  # view, click, cart, purchase

    def __post_init__(self) -> None:
        for name in ("w_tower", "w_cooc", "w_pop", "w_repeat"):
            v = getattr(self, name)
            if isinstance(v, bool) or not isinstance(v, (int, float)) or not math.isfinite(v) or abs(v) > 1e6:
                raise BundleError(f"ranker.{name} must be a finite number (|x| ≤ 1e6), got {v!r}")
        for name, hi in (("candidates", 100_000), ("recent", 1_000)):
            v = getattr(self, name)
            if isinstance(v, bool) or not isinstance(v, int) or not 1 <= v <= hi:
                raise BundleError(f"ranker.{name} must be an integer in 1..{hi}, got {v!r}")
        if isinstance(self.decay, bool) or not isinstance(self.decay, (int, float)) or not 0 < self.decay <= 1:
            raise BundleError(f"ranker.decay must be in (0, 1], got {self.decay!r}")
        aw = self.action_weights
        if len(aw) != 4 or any(isinstance(x, bool) or not isinstance(x, (int, float)) or not 0 <= x <= 1e3 for x in aw):
            raise BundleError(f"ranker.action_weights must be 4 numbers in [0, 1000], got {aw!r}")

    @classmethod
    def from_manifest(cls, entry: Mapping[str, Any]) -> RankerParams:
        """Decode the manifest's ``ranker`` entry.

        Raises:
            BundleError: not a mapping, an unknown kind or a field out of range.
        """
        if not isinstance(entry, Mapping):
            raise BundleError(f"manifest ranker must be an object, got {type(entry).__name__}")
        if entry.get("kind") != KIND:
            raise BundleError(
                f"manifest ranker kind {entry.get('kind')!r} is not supported (this runtime runs {KIND!r})"
            )
        w = entry.get("weights")
        if not isinstance(w, Mapping):
            raise BundleError("manifest ranker.weights must be an object {tower, cooc, popularity, repeat}")
        try:
            return cls(
                w_tower=w.get("tower", 1.0),
                w_cooc=w.get("cooc", 0.0),
                w_pop=w.get("popularity", 0.0),
                w_repeat=w.get("repeat", 0.0),
                candidates=entry.get("candidates", 200),
                recent=entry.get("recent", 20),
                decay=entry.get("decay", 0.7),
                action_weights=tuple(entry.get("action_weights", (1.0, 1.0, 1.0, 1.0))),
            )
        except TypeError as e:
            raise BundleError(f"manifest ranker: {e}") from e

    def to_manifest(self, **extra: Any) -> dict[str, Any]:
        d = asdict(self)
        return {
            "kind": KIND,
            "weights": {"tower": d["w_tower"], "cooc": d["w_cooc"], "popularity": d["w_pop"], "repeat": d["w_repeat"]},
            "candidates": self.candidates,
            "recent": self.recent,
            "decay": self.decay,
            "action_weights": list(self.action_weights),
            **extra,
        }


def pop_feature(popularity: np.ndarray) -> np.ndarray:
    """The popularity term: log-scaled so that a few best sellers do not swamp the rest."""
    p = np.asarray(popularity, np.float32)
    return np.log1p(np.maximum(p, 0) * np.float32(_POP_K)) / np.float32(math.log1p(_POP_K))


def step_weights(steps: Sequence[tuple[int, int]], params: RankerParams) -> tuple[np.ndarray, np.ndarray]:
    """(rows, weights) of the ``recent`` newest steps (oldest-first input): decay^age × action weight."""
    recent = list(steps[-params.recent :])[::-1]
    rows = np.fromiter((r for r, _ in recent), np.int64, len(recent))
    aw = np.asarray(params.action_weights, np.float64)
    acts = np.fromiter((a for _, a in recent), np.int64, len(recent))
    w = np.power(params.decay, np.arange(len(recent), dtype=np.float64)) * aw[acts]
    return rows, w.astype(np.float32)


def cooc_scores(
    rows: np.ndarray, weights: np.ndarray, nbr_ids: np.ndarray | None, nbr_w: np.ndarray | None
) -> tuple[np.ndarray, np.ndarray]:
    """(items, scores): Σ_a weights[a] · W[rows[a], item] over the neighbour table, items ascending."""
    if nbr_ids is None or len(rows) == 0:
        return np.zeros(0, np.int64), np.zeros(0, np.float32)
    ids = nbr_ids[rows]
    w = nbr_w[rows].astype(np.float32) * weights[:, None]
    ok = ids >= 0
    items, inv = np.unique(ids[ok], return_inverse=True)
    scores = np.bincount(inv, weights=w[ok], minlength=len(items)).astype(np.float32)
    keep = scores > 0  # a zero weight (an action weighted 0) makes no candidate, as in the export
    return items[keep].astype(np.int64), scores[keep]


def fuse(
    params: RankerParams,
    tower: np.ndarray,
    cooc: np.ndarray,
    cooc_max: float | np.ndarray,
    pop: np.ndarray,
    repeat: np.ndarray | float = 0.0,
) -> np.ndarray:
    """The fused score (elementwise; ``cooc_max`` is the shopper's largest cooc score, 0 when none)."""
    cmax = np.where(np.asarray(cooc_max) > 0, cooc_max, 1.0).astype(np.float32)
    return (
        np.float32(params.w_tower) * tower
        + np.float32(params.w_cooc) * (cooc / cmax)
        + np.float32(params.w_pop) * pop
        + np.float32(params.w_repeat) * repeat
    ).astype(np.float32)


def order(scores: np.ndarray, rows: np.ndarray) -> np.ndarray:
    """Indices sorting by score descending, ties to the lower row (the kernel's rule)."""
    return np.lexsort((rows, -scores))


def mmr(rows: np.ndarray, scores: np.ndarray, vecs: np.ndarray, k: int, lam: float) -> np.ndarray:
    """Maximal marginal relevance over candidates sorted best first: indices of the k picked.

    Each pick maximises (1 − λ) · relevance − λ · (largest cosine to an item already picked), with
    relevance the score min-max scaled to [0, 1] over the candidates; λ = 0 is the plain order.
    """
    if isinstance(lam, bool) or not isinstance(lam, (int, float)) or not 0.0 <= lam <= 1.0:
        raise InputError(f"diversity must be a number in [0, 1], got {lam!r}")
    n = len(rows)
    k = min(k, n)
    if lam == 0 or n <= 1:
        return np.arange(k)
    v = vecs / np.maximum(np.linalg.norm(vecs, axis=1, keepdims=True), 1e-12)
    lo, hi = float(scores.min()), float(scores.max())
    rel = (scores - lo) / (hi - lo) if hi > lo else np.ones(n, np.float32)
    picked = [0]
    closest = v @ v[0]
    free = np.ones(n, bool)
    free[0] = False
    for _ in range(1, k):
        gain = np.where(free, (1.0 - lam) * rel - lam * closest, -np.inf)
        j = int(np.argmax(gain))  # first maximum: the better-ranked candidate wins a tie
        picked.append(j)
        free[j] = False
        closest = np.maximum(closest, v @ v[j])
    return np.asarray(picked, np.int64)


__all__ = ["KIND", "RankerParams", "cooc_scores", "fuse", "mmr", "order", "pop_feature", "step_weights"]
