"""The hybrid ranker at export: the neighbour table, batched fused scores, the fit on the valid split.

The score itself is defined once, in :mod:`shelfrank.device.ranker`; this module computes it for
batches of held-out cases (dense ``(B, N)`` arrays) so that the export can fit the weights on the
valid split and report exactly what the device ranks: the fused score over the candidates (the
tower's best ``candidates`` rows ∪ the co-occurrence neighbours), everything else below them in
tower order.
"""

from __future__ import annotations

import logging
import time
from collections.abc import Callable, Sequence
from dataclasses import replace
from functools import cached_property
from typing import Any

import numpy as np

from shelfrank.device.ranker import RankerParams, fuse, mmr, pop_feature
from shelfrank.export import evaluate as ev
from shelfrank.export.data import Split

logger = logging.getLogger(__name__)

History = Sequence[tuple[int, int]]
UserFn = Callable[[list[History]], np.ndarray]  # histories -> (B, d) unit user vectors

# weights searched on the valid split (w_tower is 1: the score's scale does not change the order)
COOC_GRID = (0.0, 0.1, 0.2, 0.3, 0.5, 0.8, 1.2, 2.0, 3.0, 5.0, 8.0, 13.0)
POP_GRID = (0.0, 0.02, 0.05, 0.1, 0.2, 0.4)
DECAY_GRID = (0.5, 0.7, 0.85)
REPEAT_GRID = (0.0, 0.1, 0.3, 0.6, 1.0, 2.0, 4.0)


# ---- the neighbour table --------------------------------------------------------------------


def neighbor_table(sim: Any, m: int) -> tuple[np.ndarray, np.ndarray]:
    """Each item's ``m`` strongest neighbours: int32 ids (-1 pads) and float16 weights, (N, m).

    Weights are scaled by the table's largest (the fused score divides by the shopper's largest
    co-occurrence score, so a global scale changes nothing); an entry that rounds to 0 in float16
    is dropped, so that a listed neighbour always carries weight (as the export's dense scores see it).
    """
    sim = ev._keep_top_k(sim.tocsr(), m)
    sim.sort_indices()
    n = sim.shape[0]
    ids = np.full((n, m), -1, np.int32)
    w = np.zeros((n, m), np.float16)
    top = float(sim.data.max()) if sim.nnz else 1.0
    counts = np.diff(sim.indptr)
    row = np.repeat(np.arange(n), counts)
    order = np.lexsort((sim.indices, -sim.data, row))  # strongest first, ties to the lower id
    pos = np.arange(len(order)) - sim.indptr[row[order]]
    vals = (sim.data[order] / top).astype(np.float16)
    keep = vals > 0
    ids[row[order][keep], pos[keep]] = sim.indices[order][keep]
    w[row[order][keep], pos[keep]] = vals[keep]
    return ids, w


def table_matrix(ids: np.ndarray, w: np.ndarray) -> Any:
    """The neighbour table as a sparse (N, N) matrix (exactly the weights the device reads)."""
    import scipy.sparse as sp

    n, m = ids.shape
    ok = ids >= 0
    r = np.repeat(np.arange(n), m).reshape(n, m)[ok]
    return sp.csr_matrix((w[ok].astype(np.float32), (r, ids[ok])), shape=(n, n))


def build_table(seqs: list, n: int, m: int, **similarity: Any) -> tuple[np.ndarray, np.ndarray, Any]:
    """(ids, weights, sparse matrix) of the neighbour table built from ``seqs`` (``similarity``:
    ``item_similarity``'s keywords, e.g. the item-kNN recipe the baseline chose)."""
    t0 = time.perf_counter()
    ids, w = neighbor_table(ev.item_similarity(seqs, n, top_k=None, **similarity), m)
    logger.info("neighbour table: %d items x %d, built in %.1fs", n, m, time.perf_counter() - t0)
    return ids, w, table_matrix(ids, w)


# ---- batched features and scores ----------------------------------------------------------------


class Features:
    """Per batch of histories: tower cosines (history masked or not), co-occurrence and repeat scores.

    The repeat scores are kept sparse (``steps``: decay^age × action weight of the recent steps) and
    made dense only when read: with seen items excluded, nothing reads them.
    """

    def __init__(self, tower: np.ndarray, cooc: np.ndarray, steps: Any, seen: tuple[np.ndarray, np.ndarray]):
        self.tower, self.cooc, self.steps, self.seen = tower, cooc, steps, seen

    @cached_property
    def repeat(self) -> np.ndarray:
        """(B, N) float32 repeat scores."""
        return self.steps.toarray().astype(np.float32)


def _step_matrix(hs: list[History], n: int, params: RankerParams) -> Any:
    """(B, N) sparse: decay^age × action weight of each history's ``recent`` newest steps."""
    import scipy.sparse as sp

    hs = [list(h)[-params.recent :] for h in hs]
    lens = np.fromiter((len(h) for h in hs), np.int64, len(hs))
    total = int(lens.sum())
    r = np.repeat(np.arange(len(hs)), lens)
    c = np.fromiter((row for h in hs for row, _ in h), np.int64, total)
    a = np.fromiter((act for h in hs for _, act in h), np.int64, total)
    age = np.cumsum(lens)[r] - 1 - np.arange(total)
    w = np.power(params.decay, age) * np.asarray(params.action_weights, np.float64)[a]
    return sp.csr_matrix((w, (r, c)), shape=(len(hs), n), dtype=np.float32)


def features(hs: list[History], users: np.ndarray, rows: np.ndarray, table: Any, params: RankerParams) -> Features:
    n = rows.shape[0]
    tower = (users @ rows.T).astype(np.float32)
    q = _step_matrix(hs, n, params)
    cooc = (q @ table).toarray() if table is not None else np.zeros_like(tower)
    hb = np.fromiter((b for b, h in enumerate(hs) for _ in h), np.int64)
    hi = np.fromiter((r for h in hs for r, _ in h), np.int64)
    return Features(tower, cooc.astype(np.float32), q, (hb, hi))


def candidates(f: Features, params: RankerParams, exclude_seen: bool):
    """(tower, cooc, repeat, candidate mask), each (B, N): the device's candidates for each history."""
    tower, cooc = f.tower.copy(), f.cooc.copy()
    rep = np.zeros_like(tower) if exclude_seen else f.repeat
    if exclude_seen:  # seen items are never candidates (evaluate masks them anyway)
        tower[f.seen] = -np.inf
        cooc[f.seen] = 0.0
    k = min(params.candidates, tower.shape[1])
    thr = -np.partition(-tower, k - 1, axis=1)[:, k - 1 : k]
    return tower, cooc, rep, (tower >= thr) | (cooc > 0) | (rep > 0)


def hybrid_scores(f: Features, pop: np.ndarray, params: RankerParams, *, exclude_seen: bool = True) -> np.ndarray:
    """(B, N) scores ranking exactly as the device's hybrid: fused over the candidates, the rest below."""
    tower, cooc, rep, cand = candidates(f, params, exclude_seen)
    fused = fuse(params, np.where(np.isfinite(tower), tower, 0), cooc, cooc.max(1, keepdims=True), pop, rep)
    low = np.where(cand, fused, np.inf).min(1, keepdims=True)
    low = np.where(np.isfinite(low), low, 0)
    # below every candidate, in tower order (tower ≤ 1 → ≤ low − 1)
    out = np.where(cand, fused, f.tower + low - 2.0)
    if exclude_seen:
        out[f.seen] = -np.inf
    return out.astype(np.float32)


def precompute(cases: list, user_fn: UserFn, batch: int = 512) -> np.ndarray:
    """User vectors for ``cases`` (computed once, reused by every weight tried)."""
    out = [user_fn([list(h) for _, h, _ in cases[s : s + batch]]) for s in range(0, len(cases), batch)]
    return np.concatenate(out).astype(np.float32) if out else np.zeros((0, 0), np.float32)


def score_fn(users: np.ndarray, cases: list, rows: np.ndarray, table: Any, pop: np.ndarray, params, **kw):
    """An ``evaluate`` score function over ``cases`` in order (their user vectors precomputed)."""
    it = {"at": 0}

    def score(hs: list[History]) -> np.ndarray:
        s = it["at"]
        it["at"] += len(hs)
        f = features(hs, users[s : s + len(hs)], rows, table, params)
        return hybrid_scores(f, pop, params, **kw)

    return score


def tower_fn(users: np.ndarray, rows: np.ndarray):
    it = {"at": 0}

    def score(hs: list[History]) -> np.ndarray:
        s = it["at"]
        it["at"] += len(hs)
        return users[s : s + len(hs)] @ rows.T

    return score


# ---- fitting --------------------------------------------------------------------------------


class _Candidates:
    """One batch's candidates as padded (B, C) arrays: fitting scores ~C columns, not the catalog.

    The same candidates and the same fused score as :func:`hybrid_scores`; a target outside the
    candidates ranks below ``candidates`` ≥ 10 rows, so it is a miss for NDCG@10.
    """

    def __init__(self, f: Features, targets: np.ndarray, pop: np.ndarray, params: RankerParams, exclude_seen: bool):
        tower, cooc, rep, cand = candidates(f, params, exclude_seen)
        counts = cand.sum(1)
        c = int(counts.max())
        cols = np.argsort(~cand, axis=1, kind="stable")[:, :c]  # candidate columns first, ascending
        self.valid = np.arange(c)[None, :] < counts[:, None]
        self.cols = cols
        t = np.take_along_axis(tower, cols, 1)
        self.tower = np.where(np.isfinite(t), t, 0).astype(np.float32)
        self.cooc = np.take_along_axis(cooc, cols, 1)
        self.cmax = cooc.max(1, keepdims=True)
        self.pop = pop[cols]
        self.rep = np.take_along_axis(rep, cols, 1)
        hit = (cols == targets[:, None]) & self.valid
        self.tpos = np.where(hit.any(1), hit.argmax(1), -1)
        self.targets = targets

    def ndcg(self, params: RankerParams, k: int = 10) -> np.ndarray:
        f = fuse(params, self.tower, self.cooc, self.cmax, self.pop, self.rep)
        b = np.arange(len(f))
        ft = f[b, np.maximum(self.tpos, 0)][:, None]
        before = self.valid & ((f > ft) | ((f == ft) & (self.cols < self.targets[:, None])))
        ranks = np.where(self.tpos >= 0, before.sum(1), k)
        return np.where(ranks < k, 1.0 / np.log2(ranks + 2.0), 0.0)


def fit(
    cases: list,
    users: np.ndarray,
    rows: np.ndarray,
    table: Any,
    pop: np.ndarray,
    base: RankerParams,
    *,
    exclude_seen: bool = True,
    batch: int = 512,
) -> tuple[RankerParams, dict[str, Any]]:
    """Grid-search decay, w_cooc and w_pop (w_tower = 1) for valid NDCG@10; with ``exclude_seen=False``
    then w_repeat (seen items allowed back). Returns the best parameters and a record of the search."""
    t0 = time.perf_counter()
    targets = np.fromiter((t for _, _, t in cases), np.int64, len(cases))
    hs = [list(h) for _, h, _ in cases]
    starts = range(0, len(hs), batch)

    def batches(p: RankerParams, allow_seen: bool) -> list[_Candidates]:
        return [
            _Candidates(
                features(hs[s : s + batch], users[s : s + batch], rows, table, p),
                targets[s : s + batch],
                pop,
                p,
                not allow_seen,
            )
            for s in starts
        ]

    def score(cands: list[_Candidates], p: RankerParams) -> float:
        return float(np.concatenate([c.ndcg(p) for c in cands]).mean())

    tried: dict[str, float] = {}
    best, best_v = base, -1.0
    for decay in DECAY_GRID if table is not None else (base.decay,):
        p0 = replace(base, decay=decay)
        cands = batches(p0, False)
        for wc in COOC_GRID if table is not None else (0.0,):
            for wp in POP_GRID:
                p = replace(p0, w_cooc=wc, w_pop=wp)
                v = score(cands, p)
                tried[f"decay={decay} cooc={wc} pop={wp}"] = round(v, 5)
                if v > best_v + 1e-9:
                    best, best_v = p, v
    tower_only = tried.get(f"decay={best.decay} cooc=0.0 pop=0.0", best_v)
    record: dict[str, Any] = {
        "valid_cases": len(cases),
        "valid_ndcg@10": round(best_v, 5),
        "valid_ndcg@10_tower_candidates_only": round(tower_only, 5),
        "grid_size": len(tried),
    }
    if not exclude_seen:
        cands = batches(best, True)
        rep_best, rep_v = 0.0, -1.0
        for wr in REPEAT_GRID:
            v = score(cands, replace(best, w_repeat=wr))
            if v > rep_v + 1e-9:
                rep_best, rep_v = wr, v
        best = replace(best, w_repeat=rep_best)
        record["valid_ndcg@10_with_repeats"] = round(rep_v, 5)
    record["seconds"] = round(time.perf_counter() - t0, 1)
    logger.info(
        "fusion fit on %d valid cases: decay %.2f, w_cooc %.2f, w_pop %.2f, w_repeat %.2f"
        " -> valid NDCG@10 %.4f (%.1fs)",
        len(cases),
        best.decay,
        best.w_cooc,
        best.w_pop,
        best.w_repeat,
        best_v,
        record["seconds"],
    )
    return best, record


# ---- diversity re-ranking, measured -----------------------------------------------------------


def mmr_eval(
    cases: list,
    users: np.ndarray,
    rows: np.ndarray,
    table: Any,
    pop: np.ndarray,
    params: RankerParams,
    lam: float,
    div_vecs: np.ndarray,
    *,
    k: int = 10,
    pool: int = 50,
    batch: int = 256,
) -> dict[str, float]:
    """NDCG@k and diversity@k of the hybrid re-ranked by MMR (λ) over its best ``pool`` candidates."""
    nd, div = [], []
    vn = div_vecs / np.maximum(np.linalg.norm(div_vecs, axis=1, keepdims=True), 1e-12)
    for s in range(0, len(cases), batch):
        chunk = cases[s : s + batch]
        hs = [list(h) for _, h, _ in chunk]
        sc = hybrid_scores(features(hs, users[s : s + len(chunk)], rows, table, params), pop, params)
        top = np.argpartition(-sc, pool - 1, axis=1)[:, :pool]
        for b, (_, _, t) in enumerate(chunk):
            cand = top[b][np.lexsort((top[b], -sc[b, top[b]]))]
            cand = cand[np.isfinite(sc[b, cand])]
            pick = cand[mmr(cand, sc[b, cand], rows[cand], k, lam)]
            hit = np.flatnonzero(pick == t)
            nd.append(1.0 / np.log2(hit[0] + 2.0) if len(hit) else 0.0)
            div.append(float(ev.list_diversity(pick[None], vn)[0]))
    return {"lambda": lam, f"ndcg@{k}": float(np.mean(nd)), f"diversity@{k}": float(np.mean(div)), "cases": len(cases)}


def popularity_feature(seqs: list, n: int) -> np.ndarray:
    """The popularity term as the device computes it from the bundle's ``popularity`` column."""
    return pop_feature(ev.popularity_scores(seqs, n))


# ---- one context for every model the report ranks ----------------------------------------------


class Context:
    """What every tower/hybrid row of the report shares: the cases, the neighbour tables and
    popularity built from what is known before them (train for the fit on valid; train + the
    valid step for the test), the diversity space, and whether the shop re-buys."""

    def __init__(
        self,
        split: Split,
        n: int,
        test: list,
        *,
        neighbors: int,
        fit_sample: int | None,
        seed: int,
        div_vecs: np.ndarray,
        base: RankerParams | None = None,
        similarity: dict[str, Any] | None = None,
    ) -> None:
        self.n, self.test, self.div_vecs = n, test, div_vecs
        self.base = base or RankerParams()
        valid = split.valid
        if fit_sample is not None and len(valid) > fit_sample:
            pick = np.sort(np.random.default_rng(seed + 5).choice(len(valid), fit_sample, replace=False))
            valid = [valid[i] for i in pick]
        self.valid = valid
        self.m = neighbors
        self.similarity = dict(similarity or {})
        _, _, self.fit_table = build_table(ev.known_sequences(split, for_test=False), n, neighbors, **self.similarity)
        _, _, self.test_table = build_table(ev.known_sequences(split, for_test=True), n, neighbors, **self.similarity)
        self.fit_pop = popularity_feature(ev.known_sequences(split, for_test=False), n)
        self.test_pop = popularity_feature(ev.known_sequences(split, for_test=True), n)
        in_hist = sum(1 for _, h, t in split.valid if any(r == t for r, _ in h))
        self.repeat_share = in_hist / max(1, len(split.valid))
        # a shop whose next items are often already in the history: measure the repeat term
        self.repeats = self.repeat_share >= 0.02

    def rows_for(self, name: str, user_fn: UserFn, rows: np.ndarray) -> dict[str, Any]:
        """The tower-alone and hybrid rows of one model (its user vectors and item rows)."""
        t0 = time.perf_counter()
        uv = precompute(self.valid, user_fn)
        ut = precompute(self.test, user_fn)
        out: dict[str, Any] = {}
        out["tower"] = ev.evaluate(tower_fn(ut, rows), self.test, self.n, item_vecs=self.div_vecs)
        params, record = fit(
            self.valid, uv, rows, self.fit_table, self.fit_pop, self.base, exclude_seen=not self.repeats
        )
        out["params"], out["fit"] = params, record
        out["hybrid"] = ev.evaluate(
            score_fn(ut, self.test, rows, self.test_table, self.test_pop, params),
            self.test,
            self.n,
            item_vecs=self.div_vecs,
        )
        out["hybrid"]["weights"] = params.to_manifest()
        if self.repeats:
            out["hybrid_repeats"] = ev.evaluate(
                score_fn(ut, self.test, rows, self.test_table, self.test_pop, params, exclude_seen=False),
                self.test,
                self.n,
                item_vecs=self.div_vecs,
                exclude_seen=False,
            )
        out["users_test"] = ut
        logger.info("%s: tower and hybrid evaluated in %.1fs", name, time.perf_counter() - t0)
        return out

    def diversity(self, ut: np.ndarray, rows: np.ndarray, params: RankerParams, lams=(0.0, 0.2, 0.5), sample=2000):
        """NDCG@10 and diversity@10 of the hybrid at each λ (MMR), on the first ``sample`` test cases."""
        cases = self.test[:sample]
        return [
            mmr_eval(cases, ut[: len(cases)], rows, self.test_table, self.test_pop, params, lam, self.div_vecs)
            for lam in lams
        ]
