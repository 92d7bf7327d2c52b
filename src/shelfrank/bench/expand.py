"""A bundle's catalog expanded to any size, for ``shelfrank bench BUNDLE`` and scripts/bench_batch.py:
rows perturbed and re-quantised, a full-size neighbour table."""

from __future__ import annotations

import numpy as np

from shelfrank.device.catalog_files import CatalogData
from shelfrank.device.kernel import quantize_rows

DEFAULT_NEIGHBORS = 50  # what the export writes per item (the bundle's M wins when it has a table)


def expand_catalog(
    base: CatalogData, n: int, *, seed: int = 0, noise: float = 0.05, neighbors: int | None = None
) -> CatalogData:
    """``n`` items: the base catalog repeated, each copy's rows perturbed and re-quantised, with a
    full-size neighbour table (see :func:`expand_neighbors`)."""
    rng = np.random.default_rng(seed)
    m = len(base.items)
    src = np.arange(n) % m
    vecs = base.rows[src].astype(np.float32) * base.scales[src, None]
    copy = src != np.arange(n)
    vecs[copy] += rng.standard_normal((int(copy.sum()), vecs.shape[1])).astype(np.float32) * noise
    vecs /= np.maximum(np.linalg.norm(vecs, axis=1, keepdims=True), 1e-12)
    rows, scales = quantize_rows(np.ascontiguousarray(vecs))
    items = []
    for j, i in enumerate(src.tolist()):
        it = dict(base.items[i])
        if j >= m:
            it["item_id"] = f"{it['item_id']}~{j // m}"
        items.append(it)
    return CatalogData(items, rows, scales, expand_neighbors(base, n, rng=rng, m=neighbors))


def expand_neighbors(
    base: CatalogData, n: int, *, rng: np.random.Generator, m: int | None = None
) -> tuple[np.ndarray, np.ndarray]:
    """The neighbour table of the expanded catalog (item j is copy j // N0 of base item j % N0).

    With a base table: each copy keeps its base item's neighbour pattern, mapped into its own copy
    (neighbour b of base item i becomes b + c·N0 in copy c, or b itself where that row is past
    ``n``), weights and -1 padding as they are; M is the base table's. Without one (a bundle
    exported before the hybrid ranker): ``m`` (default 50) distinct random neighbours per item
    over the whole expanded catalog, never the item itself, with a decaying weight profile
    (w_r = s / (1 + r), s log-normal per item). Uniform random ids make the largest candidate
    union (the history items' lists overlap only by chance): a pessimistic case for the hybrid's
    latency.
    """
    n0 = len(base.items)
    if base.neighbors is not None:
        bid, bw = (np.asarray(a) for a in base.neighbors)
        m = bid.shape[1]
    else:
        m = DEFAULT_NEIGHBORS if m is None else int(m)
        k = max(0, min(m, n - 1))
        gap = max(1, (n - 1) // max(k, 1))
        decay = 1.0 / (1.0 + np.arange(k))
    ids = np.full((n, m), -1, np.int32)
    w = np.zeros((n, m), np.float16)
    for lo in range(0, n, _BLOCK):  # in blocks: no (n, M) int64 temporaries at 1M items
        j = np.arange(lo, min(n, lo + _BLOCK))
        if base.neighbors is not None:
            b = bid[j % n0].astype(np.int64)
            shifted = b + ((j // n0) * n0)[:, None]
            ids[j] = np.where((b >= 0) & (shifted < n), shifted, b)
            w[j] = bw[j % n0]
        elif k:
            # distinct offsets 1..n-1 from each item: a cumulative sum of positive gaps below n
            offsets = np.cumsum(rng.integers(1, gap + 1, (len(j), k)), axis=1)
            offsets = rng.permuted(offsets, axis=1)  # the strongest neighbour is anywhere in the catalog
            ids[j, :k] = (j[:, None] + offsets) % n
            w[j, :k] = rng.lognormal(0.0, 0.5, (len(j), 1)) * decay
    return ids, w


_BLOCK = 65536
