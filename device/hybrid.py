"""The recommender's hybrid step and its reasons: the fused ranking of the tower's candidates with
the co-occurrence neighbours of a shopper's recent items (device/ranker.py has the scores), and why
each result is there. Called by :class:`~shelfrank.device.recommender.Recommender` per shopper."""

from __future__ import annotations

import numpy as np

from shelfrank.device.catalog import Catalog, Reason
from shelfrank.device.ranker import RankerParams, cooc_scores, fuse, order, pop_feature, step_weights

__all__ = ["hybrid", "reasons", "topk"]

#: an action as the verb of a reason's text ("because you viewed …")
VERB = dict(enumerate(("viewed", "clicked", "added to your cart", "bought")))


def topk(
    cat: Catalog, query: np.ndarray, k: int, *, mask: np.ndarray | None, threads: int
) -> tuple[np.ndarray, np.ndarray]:
    """The tower's scan: ``cat.topk`` (the planner's exact or two-pass scan); a name of its own so a
    bench can time the stage."""
    return cat.topk(query, k, mask=mask, threads=threads)


def reasons(
    cat: Catalog,
    rows: np.ndarray,
    steps: list[tuple[int, int]],
    hist: tuple[np.ndarray, np.ndarray] | None,
    max_events: int,
) -> list[Reason]:
    """Why each of ``rows`` is recommended from the shopper's collapsed ``steps``.

    With ``hist`` (the hybrid's recent rows and step weights, newest first): a row that some
    recent item's neighbour list holds is ``co-occurrence``, naming the (at most 3) recent items
    that gave it the most co-occurrence weight, best first. Any other row is ``history``,
    naming the recent item (the tower's window) whose vector is closest to it; itself, when it
    is a recent item (a repeat). A few small products over k rows: no catalog-sized work.
    """
    if len(rows) == 0:
        return []
    latest: dict[int, int] = {}  # each item's newest action, newest item first
    for r, a in reversed(steps):
        latest.setdefault(r, a)
    drivers: dict[int, list[int]] = {}  # result index -> its co-occurrence drivers
    if hist is not None and cat.neighbor_ids is not None and len(hist[0]):
        h_rows, h_w = hist
        w = cat.neighbor_weights[h_rows].astype(np.float32) * h_w[:, None]
        hit = cat.neighbor_ids[h_rows][None, :, :] == rows[:, None, None]  # (k, H, M)
        per_item = (hit * w[None]).sum(axis=2)  # (k, H): a row is at most once in a list
        uniq = h_rows
        if len(set(h_rows.tolist())) < len(h_rows):  # one item at several steps: its weights add up
            uniq, inv = np.unique(h_rows, return_inverse=True)
            per_item = per_item @ (inv[:, None] == np.arange(len(uniq))[None, :]).astype(np.float32)
        has = np.flatnonzero((per_item > 0).any(axis=1))
        if len(has):
            sub = per_item[has]
            # most weight first, ties to the lower row: the keys' last is the primary one
            best = np.lexsort((np.broadcast_to(uniq, sub.shape), -sub), axis=-1)[:, :3]
            for i, b, v in zip(has.tolist(), best, sub, strict=True):
                drivers[i] = [int(uniq[j]) for j in b.tolist() if v[j] > 0]
    rest = [i for i in range(len(rows)) if i not in drivers]
    closest: dict[int, int] = {}  # result index -> the recent item closest to it
    if rest:
        window = dict.fromkeys(r for r, _ in reversed(steps[-max_events:]))
        recent = np.fromiter(window, np.int64, len(window))  # the tower's window, newest first
        v = cat.vectors(np.concatenate([rows[rest], recent]))
        near = (v[: len(rest)] @ v[len(rest) :].T).argmax(axis=1)  # ties go to the newest
        for i, j in zip(rest, near.tolist(), strict=True):
            row = int(rows[i])
            closest[i] = row if row in window else int(recent[j])  # a repeat names itself
    ids = cat.item_ids
    out = []
    for i, row in enumerate(rows.tolist()):
        d = drivers.get(i)
        if d:
            text = f"often chosen with “{cat.title(d[0])}”, which you {VERB[latest[d[0]]]}"
            out.append(Reason("co-occurrence", tuple(ids[r] for r in d), text))
            continue
        src = closest[i]
        if src == row:
            text = f"you {VERB[latest[row]]} it recently"
        else:
            text = f"because you {VERB[latest[src]]} “{cat.title(src)}”"
        out.append(Reason("history", (ids[src],), text))
    return out


def hybrid(
    p: RankerParams,
    cat: Catalog,
    u: np.ndarray,
    steps: list[tuple[int, int]],
    k: int,
    mask: np.ndarray | None,
    seen: frozenset[int],
    allow_seen: bool,
    top: tuple[np.ndarray, np.ndarray] | None = None,
    *,
    threads: int = 1,
) -> tuple[np.ndarray, np.ndarray]:
    """The k best rows by the fused score (device/ranker.py) and their scores, best first: the
    candidates by the fused score, then (when they are fewer than k) the rest in tower order.
    ``top``: the tower's top-k answer for ``candidates + k + len(seen)`` rows when the caller
    already has it (:meth:`recommend_many`)."""
    # Every step below works on a few hundred to a few thousand candidates, where numpy's
    # general-purpose set routines (hash-based np.unique, np.isin's pass per seen row) and a
    # full sort cost more than the arithmetic: sorted arrays, binary searches and a sort of
    # only the best instead. The result is the same, bit for bit.
    h_rows, h_w = step_weights(steps, p)
    c_items, c_scores = cooc_scores(h_rows, h_w, cat.neighbor_ids, cat.neighbor_weights)
    seen_rows = np.sort(np.fromiter(seen, np.int64, len(seen)))
    if seen and len(c_items):  # seen items are no candidates and do not set the scale
        keep = ~_member(c_items, seen_rows)
        c_items, c_scores = c_items[keep], c_scores[keep]
    cmax = float(c_scores.max()) if len(c_scores) else 0.0
    # the tower's best `candidates` rows, then k more for the rest below the candidates
    if top is None:
        want = min(p.candidates + k + len(seen), len(cat))
        top = topk(cat, u, want, mask=mask, threads=threads)
    ids, t_scores = top
    ok = ids >= 0
    if seen:
        ok &= ~_member(ids, seen_rows)
    ids, t_scores = ids[ok].astype(np.int64), t_scores[ok]
    t_rows = ids[: p.candidates]
    if mask is not None and len(c_items):
        c_ok = mask[c_items]
        c_in, c_sc = c_items[c_ok], c_scores[c_ok]
    else:
        c_in, c_sc = c_items, c_scores
    parts = [t_rows, c_in]
    rep_rows = np.zeros(0, np.int64)
    if allow_seen and len(h_rows):  # the recent items are candidates (as in the export), repeat or not
        rep_rows = h_rows[h_w > 0]
        rep_rows = rep_rows if mask is None else rep_rows[mask[rep_rows]]
        parts.append(rep_rows)
    cand = np.concatenate(parts)
    if len(cand) == 0:
        return cand, np.zeros(0, np.float32)
    cand.sort()  # the union, ascending (as np.unique gives it)
    cand = cand[np.concatenate(([True], cand[1:] != cand[:-1]))]
    tower = cat.vectors(cand) @ u
    cooc = np.zeros(len(cand), np.float32)
    if len(c_in):
        cooc[np.searchsorted(cand, c_in)] = c_sc
    rep = 0.0
    if len(rep_rows):
        rep = np.zeros(len(cand), np.float32)
        inc = _member(h_rows, cand)
        np.add.at(rep, np.searchsorted(cand, h_rows[inc]), h_w[inc])
    fused = fuse(p, tower.astype(np.float32), cooc, cmax, pop_feature(cat.popularity[cand]), rep)
    o = _best(fused, cand, k)
    rows, scores = cand[o], fused[o]
    if len(rows) < k:  # the rest ranks below every candidate, in tower order (as hybrid_scores)
        rest = ~_member(ids, cand)
        more = k - len(rows)
        low = np.float32(fused.min() - 2.0)  # tower ≤ 1: below the lowest candidate
        rows = np.concatenate([rows, ids[rest][:more]])
        scores = np.concatenate([scores, (t_scores[rest][:more] + low).astype(np.float32)])
    return rows, scores


def _member(a: np.ndarray, sorted_b: np.ndarray) -> np.ndarray:
    """``np.isin(a, sorted_b)`` for a sorted, non-empty ``sorted_b``: one binary search per element."""
    pos = np.minimum(np.searchsorted(sorted_b, a), len(sorted_b) - 1)
    return sorted_b[pos] == a


def _best(scores: np.ndarray, rows: np.ndarray, k: int) -> np.ndarray:
    """``order(scores, rows)[:k]`` sorting only what can be among the k best: every entry scoring
    at least the k-th best score (ties included), then ordered by the same rule."""
    if k >= len(scores):
        return order(scores, rows)
    kth = np.partition(scores, len(scores) - k)[len(scores) - k]
    if not np.isfinite(kth):  # NaN sorts last in both; leave such an input to the full order
        return order(scores, rows)[:k]
    sel = np.flatnonzero(scores >= kth)
    return sel[order(scores[sel], rows[sel])][:k]
