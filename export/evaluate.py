"""Offline evaluation: full ranking over the whole catalog, plus the baselines every model must beat.

``evaluate`` ranks every catalog item for each held-out case ``(user, history steps, target row)``
with the user's history items masked (the device's ``exclude_seen=True``), and reports Recall@k and
NDCG@k. The target's rank follows the device's tie rule (lower row wins): the number of items that
score strictly higher plus the number that score the same and sit at a lower row.

Baselines, built from the TRAIN sequences only (``Split.train``):
- ``popularity``: interaction counts, optionally recency-weighted over the sequence position;
- ``item_knn``: item co-occurrence kNN, recency-weighted on both sides (closer pairs in a
  training sequence weigh more; newer history items weigh more), cosine-normalised.

``popularity_scores`` is the per-item ``popularity`` the bundle stores for cold start.
Needs numpy and scipy (sparse matrices), no torch.
"""

from __future__ import annotations

import logging
import math
import time
from collections.abc import Callable, Sequence
from typing import Any

import numpy as np

from shelfrank.export.data import Dataset, Split

logger = logging.getLogger(__name__)

History = Sequence[tuple[int, int]]  # (catalog row, action id) steps, oldest first
Case = tuple[int, History, int]  # (user, history, target row)
ScoreFn = Callable[[list[History]], np.ndarray]


# ---- the metric -----------------------------------------------------------------------------


def target_ranks(scores: np.ndarray, targets: np.ndarray) -> np.ndarray:
    """0-based rank of ``targets[b]`` in row b of ``scores`` (B, N), ties broken by lower row first."""
    b = np.arange(len(targets))
    t = scores[b, targets][:, None]
    higher = (scores > t).sum(1)
    tied_before = ((scores == t) & (np.arange(scores.shape[1])[None, :] < targets[:, None])).sum(1)
    return (higher + tied_before).astype(np.int64)


def evaluate(
    score_fn: ScoreFn,
    cases: Sequence[Case],
    n_items: int,
    *,
    ks: Sequence[int] = (10, 50),
    batch: int = 512,
    sample: int | None = None,
    seed: int = 0,
    exclude_seen: bool = True,
    item_vecs: np.ndarray | None = None,
) -> dict[str, Any]:
    """Full-ranking Recall@k / NDCG@k of ``score_fn`` on held-out ``cases``, and the top 10's
    ``coverage@10`` (share of the catalog in anyone's top 10) and ``diversity@10`` (1 − mean
    pairwise cosine of each top 10 under ``item_vecs``, one fixed space for every method).

    ``score_fn(histories)`` gets a list of histories (each a list of (row, action) steps, oldest
    first) and returns a (B, n_items) float array; higher is better. History items are masked to
    -inf (``exclude_seen``); a case whose target is in its own history therefore counts as a miss
    (the device would never show it) and is counted in ``target_in_history``.
    ``sample``: evaluate a fixed random subset of that many cases (``seed``), recorded in the result.
    """
    ks = tuple(sorted({int(k) for k in ks}))
    if not ks or ks[0] < 1:
        raise ValueError(f"ks must be positive integers, got {ks!r}")
    if batch < 1:
        raise ValueError(f"batch must be >= 1, got {batch}")
    n_total = len(cases)
    idx = np.arange(n_total)
    if sample is not None and sample < n_total:
        idx = np.sort(np.random.default_rng(seed).choice(n_total, size=int(sample), replace=False))
    if len(idx) == 0:
        raise ValueError("no cases to evaluate")

    ranks = np.empty(len(idx), np.int64)
    in_hist = 0
    shown = np.zeros(n_items, bool)
    div_sum = 0.0
    vn = None
    if item_vecs is not None:
        vn = np.asarray(item_vecs, np.float32)
        vn = vn / np.maximum(np.linalg.norm(vn, axis=1, keepdims=True), 1e-12)
    t0 = time.perf_counter()
    last_log = t0
    for start in range(0, len(idx), batch):
        chunk = [cases[i] for i in idx[start : start + batch]]
        hists = [list(h) for _, h, _ in chunk]
        targets = np.fromiter((int(t) for _, _, t in chunk), np.int64, len(chunk))
        if targets.min() < 0 or targets.max() >= n_items:
            raise ValueError(f"a target row is outside the catalog (0..{n_items - 1})")
        scores = np.array(score_fn(hists), dtype=np.float32, copy=True)  # we mask in place
        if scores.shape != (len(chunk), n_items):
            raise ValueError(f"score_fn returned shape {scores.shape}, expected {(len(chunk), n_items)}")
        if np.isnan(scores).any():
            raise ValueError("score_fn returned NaN scores")
        if exclude_seen:
            hb = np.fromiter((b for b, h in enumerate(hists) for _ in h), np.int64)
            hi = np.fromiter((r for h in hists for r, _ in h), np.int64)
            scores[hb, hi] = -np.inf
            in_hist += int(np.isneginf(scores[np.arange(len(chunk)), targets]).sum())
        ranks[start : start + len(chunk)] = target_ranks(scores, targets)
        top = top_rows(scores, 10)
        shown[top[top >= 0]] = True
        if vn is not None:
            div_sum += float(list_diversity(top, vn).sum())
        now = time.perf_counter()
        if now - last_log > 5.0:
            logger.info("evaluate: %d / %d cases (%.1fs)", start + len(chunk), len(idx), now - t0)
            last_log = now

    result: dict[str, Any] = {}
    for k in ks:
        hit = ranks < k
        result[f"recall@{k}"] = float(hit.mean())
        result[f"ndcg@{k}"] = float(np.where(hit, 1.0 / np.log2(ranks + 2.0), 0.0).mean())
    result["coverage@10"] = float(shown.mean())
    result["diversity@10"] = div_sum / len(idx) if vn is not None else None
    seconds = time.perf_counter() - t0
    result.update(
        cases=len(idx),
        cases_total=n_total,
        sample=None if len(idx) == n_total else {"n": len(idx), "seed": seed},
        n_items=n_items,
        mean_rank=float(ranks.mean()),
        target_in_history=in_hist,
        seconds=round(seconds, 3),
    )
    logger.info(
        "evaluate: %d cases in %.1fs: %s",
        len(idx),
        seconds,
        ", ".join(f"{m}={result[m]:.4f}" for k in ks for m in (f"recall@{k}", f"ndcg@{k}")),
    )
    return result


def top_rows(scores: np.ndarray, k: int) -> np.ndarray:
    """Each row's k best columns, best first, ties to the lower column; -1 where fewer than k are finite."""
    k = min(k, scores.shape[1])
    part = np.argpartition(-scores, k - 1, axis=1)[:, :k]
    vals = np.take_along_axis(scores, part, 1)
    o = np.lexsort((part, -vals), axis=-1)
    top = np.take_along_axis(part, o, 1)
    return np.where(np.isfinite(np.take_along_axis(scores, top, 1)), top, -1)


def list_diversity(top: np.ndarray, unit_vecs: np.ndarray) -> np.ndarray:
    """1 − mean pairwise cosine of each row's listed items (-1 entries ignored); 0 for < 2 items."""
    out = np.zeros(len(top))
    for b, row in enumerate(top):
        v = unit_vecs[row[row >= 0]]
        m = len(v)
        if m > 1:
            g = v @ v.T
            out[b] = 1.0 - (g.sum() - np.trace(g)) / (m * (m - 1))
    return out


# ---- popularity -------------------------------------------------------------------------------


def _flatten(seqs: Sequence[Sequence[tuple[int, int]]]) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """(rows, sequence id, steps from the sequence's newest step) for all steps, concatenated."""
    lens = np.fromiter((len(s) for s in seqs), np.int64, len(seqs))
    total = int(lens.sum())
    rows = np.fromiter((r for s in seqs for r, _ in s), np.int64, total)
    seq_id = np.repeat(np.arange(len(seqs)), lens)
    ends = np.cumsum(lens)
    age = ends[seq_id] - 1 - np.arange(total)  # 0 for each sequence's newest step
    return rows, seq_id, age


def _train_sequences(data: Dataset | Split | list) -> list[list[tuple[int, int]]]:
    if isinstance(data, list):
        return data
    if isinstance(data, Split):
        return data.train
    if isinstance(data, Dataset):
        return data.sequences()
    raise TypeError(f"expected a Dataset or a Split, got {type(data).__name__}")


def popularity_counts(data: Dataset | Split | list, n_items: int, *, half_life: float | None = None) -> np.ndarray:
    """Interaction count per item over the training sequences (float64, unnormalised).

    ``half_life`` (in steps): a step ``a`` steps before its shopper's newest one counts
    ``0.5 ** (a / half_life)``; None counts every step as 1. A Split uses its train sequences
    only; a Dataset uses every sequence (what the bundle is built from); a list is the sequences.
    """
    rows, _, age = _flatten(_train_sequences(data))
    if half_life is None:
        w = None
    else:
        if not half_life > 0:
            raise ValueError(f"half_life must be > 0 steps, got {half_life!r}")
        w = np.power(0.5, age / float(half_life))
    return np.bincount(rows, weights=w, minlength=n_items)[:n_items].astype(np.float64)


def popularity_scores(
    ds_or_split: Dataset | Split | list, n_items: int, *, half_life: float | None = None
) -> np.ndarray:
    """The bundle's per-item ``popularity`` (cold start): recency-weighted count, max 1, float32."""
    c = popularity_counts(ds_or_split, n_items, half_life=half_life)
    m = c.max() if len(c) else 0.0
    return (c / m if m > 0 else c).astype(np.float32)


def popularity(split: Split, n_items: int, *, for_test: bool = True, half_life: float | None = None) -> ScoreFn:
    """Score function: the same (normalised) popularity for every shopper, counted over what is known
    before the scored cases (:func:`known_sequences`)."""
    pop = popularity_scores(known_sequences(split, for_test=for_test), n_items, half_life=half_life)

    def score(histories: list[History]) -> np.ndarray:
        return np.broadcast_to(pop, (len(histories), n_items))

    score.popularity = pop  # type: ignore[attr-defined]
    return score


# ---- item co-occurrence kNN ---------------------------------------------------------------------


def item_similarity(
    train: Sequence[Sequence[tuple[int, int]]],
    n_items: int,
    *,
    window: int = 50,
    pair_decay: float = 1.0,
    length_weight: bool = True,
    alpha: float = 0.9,
    top_k: int | None = 200,
) -> Any:
    """Sparse (n_items, n_items) item-item similarity from co-occurrence within ``window`` steps.

    A pair ``d`` steps apart (1 <= d <= window) in one training sequence of length L adds
    ``pair_decay ** (d - 1)`` (× ``1 / log(1 + L)`` with ``length_weight``: a long history says
    less about each of its pairs) to c_ij and c_ji. sim_ij = c_ij / (n_i ** alpha * n_j ** (1 - alpha))
    with n_i the item's count in the training sequences (alpha = 0.5 is cosine). ``top_k`` keeps
    each item's strongest neighbours (row-wise); None keeps all. The diagonal is zero. The default
    (the whole sequence up to 50 steps apart, length-weighted, alpha 0.9) is the strongest of the
    variants measured on the Amazon data (docs/export.md).
    """
    import scipy.sparse as sp

    if window < 1:
        raise ValueError(f"window must be >= 1, got {window}")
    rows, seq_id, _ = _flatten(train)
    if length_weight:
        lens = np.fromiter((len(s) for s in train), np.float64, len(train))
        step_w = 1.0 / np.log1p(np.maximum(lens, 1.0))[seq_id]
    else:
        step_w = np.ones(len(rows))
    src, dst, wts = [], [], []
    for d in range(1, window + 1):
        if len(rows) <= d:
            break
        same = (seq_id[:-d] == seq_id[d:]) & (rows[:-d] != rows[d:])
        if not same.any():
            if not (seq_id[:-d] == seq_id[d:]).any():
                break  # no sequence is longer than d
            continue
        a, b = rows[:-d][same], rows[d:][same]
        w = step_w[:-d][same] * pair_decay ** (d - 1)
        src += [a, b]
        dst += [b, a]
        wts += [w, w]
    if not src:
        return sp.csr_matrix((n_items, n_items), dtype=np.float32)
    c = sp.coo_matrix(
        (np.concatenate(wts), (np.concatenate(src), np.concatenate(dst))), shape=(n_items, n_items)
    ).tocsr()
    c.sum_duplicates()
    n = np.bincount(rows, minlength=n_items).astype(np.float64)
    n[n == 0] = 1.0
    left = sp.diags(n**-alpha)
    right = sp.diags(n ** -(1.0 - alpha))
    sim = (left @ c @ right).tocsr().astype(np.float32)
    if top_k is not None:
        sim = _keep_top_k(sim, top_k)
    sim.eliminate_zeros()
    return sim


def _keep_top_k(m: Any, k: int) -> Any:
    """Keep each row's k largest entries (ties: lower column wins) of a CSR matrix."""
    import scipy.sparse as sp

    m = m.tocsr()
    m.sort_indices()
    counts = np.diff(m.indptr)
    if counts.max(initial=0) <= k:
        return m
    row = np.repeat(np.arange(m.shape[0]), counts)
    # order within each row by value descending, then column ascending
    order = np.lexsort((m.indices, -m.data, row))
    pos = np.arange(len(order)) - m.indptr[row[order]]
    keep = order[pos < k]
    keep.sort()
    out = sp.csr_matrix((m.data[keep], (row[keep], m.indices[keep])), shape=m.shape)
    return out


def item_knn(
    split: Split,
    n_items: int,
    *,
    for_test: bool = True,
    window: int = 50,
    pair_decay: float = 1.0,
    length_weight: bool = True,
    alpha: float = 0.9,
    top_k: int | None = 200,
    history_decay: float = 0.7,
    max_history: int = 20,
    pop_fallback: float = 1e-6,
) -> ScoreFn:
    """Score function: recency-weighted item co-occurrence kNN.

    Built from what is known before the cases it scores: ``for_test`` uses each shopper's steps
    before the test target (train + the valid step, :func:`known_sequences`), else the train
    sequences (for the valid split). score(u, j) = sum over the last ``max_history`` history
    items h (newest a = 0 steps back) of ``history_decay ** a * sim(h, j)``, plus ``pop_fallback``
    x normalised popularity so that items with no co-occurrence are ordered by popularity rather
    than by row.
    """
    t0 = time.perf_counter()
    seqs = known_sequences(split, for_test=for_test)
    sim = item_similarity(
        seqs, n_items, window=window, pair_decay=pair_decay, length_weight=length_weight, alpha=alpha, top_k=top_k
    )
    pop = popularity_scores(seqs, n_items) * np.float32(pop_fallback)
    logger.info(
        "item_knn: similarity %d x %d, %d entries, built in %.1fs",
        n_items,
        n_items,
        sim.nnz,
        time.perf_counter() - t0,
    )

    def score(histories: list[History]) -> np.ndarray:
        import scipy.sparse as sp

        hs = [list(h)[-max_history:] for h in histories]
        lens = np.fromiter((len(h) for h in hs), np.int64, len(hs))
        total = int(lens.sum())
        r = np.repeat(np.arange(len(hs)), lens)
        c = np.fromiter((row for h in hs for row, _ in h), np.int64, total)
        age = np.cumsum(lens)[r] - 1 - np.arange(total)
        w = np.power(history_decay, age)
        q = sp.csr_matrix((w, (r, c)), shape=(len(hs), n_items), dtype=np.float32)
        out = (q @ sim).toarray()
        out += pop[None, :]
        return out

    score.similarity = sim  # type: ignore[attr-defined]
    return score


# The item-kNN recipes the baseline chooses from on the valid split: shops differ (session-shaped
# browsing logs favour close pairs; purchase histories favour the whole sequence), and a baseline
# tuned to one shop would be weak on another. Each maps to item_knn's keywords; the similarity part
# (SIMILARITY_KEYS) is what the hybrid ranker's neighbour table is built with.
KNN_RECIPES: dict[str, dict[str, Any]] = {
    "adjacent pairs": {"window": 10, "pair_decay": 0.85, "length_weight": False, "max_history": 50},
    "whole sequence": {"window": 50, "pair_decay": 1.0, "length_weight": True, "max_history": 20},
}
SIMILARITY_KEYS = ("window", "pair_decay", "length_weight", "alpha")


def tuned_item_knn(
    split: Split, n_items: int, *, valid_sample: int | None = 5000, seed: int = 0
) -> tuple[ScoreFn, dict[str, Any]]:
    """The item-kNN baseline: each of :data:`KNN_RECIPES` scored on (a sample of) the valid split
    from the train sequences, the best rebuilt for the test split. Returns the test score function
    and ``{"recipe", "params", "valid_ndcg@10"}``."""
    valid = split.valid
    if valid_sample is not None and len(valid) > valid_sample:
        pick = np.sort(np.random.default_rng(seed + 9).choice(len(valid), valid_sample, replace=False))
        valid = [valid[i] for i in pick]
    scores = {}
    for name, kw in KNN_RECIPES.items():
        scores[name] = evaluate(item_knn(split, n_items, for_test=False, **kw), valid, n_items)["ndcg@10"]
    best = max(scores, key=lambda k: scores[k])
    logger.info("item-kNN recipes on %d valid cases: %s; using %r", len(valid), scores, best)
    chosen = {"recipe": best, "params": dict(KNN_RECIPES[best]), "valid_ndcg@10": scores}
    return item_knn(split, n_items, for_test=True, **KNN_RECIPES[best]), chosen


def known_sequences(split: Split, *, for_test: bool) -> list[list[tuple[int, int]]]:
    """The sequences a model may learn from when scoring the test (``for_test``) or valid cases."""
    if for_test and split.before_test is not None:
        return split.before_test
    return split.train


def random_scores(n_items: int, *, seed: int = 0) -> ScoreFn:
    """Score function: uniform random scores (the floor every baseline must beat)."""
    rng = np.random.default_rng(seed)

    def score(histories: list[History]) -> np.ndarray:
        return rng.random((len(histories), n_items), dtype=np.float32)

    return score


def expected_random(n_items: int, k: int) -> float:
    """Recall@k of a random ranking over ``n_items`` (ignores masking)."""
    return min(1.0, k / n_items) if n_items else math.nan


__all__ = [
    "evaluate",
    "expected_random",
    "item_knn",
    "item_similarity",
    "known_sequences",
    "popularity",
    "popularity_counts",
    "popularity_scores",
    "random_scores",
    "target_ranks",
    "tuned_item_knn",
]
