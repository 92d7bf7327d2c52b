"""Two-pass search (sign codes, popcount first pass, exact rescore) on every ISA path this machine has.

References: np.packbits for the codes, np.unpackbits for Hamming distances, (distance, row) order for
the first pass, and the exact int8 scheme (re-implemented here) for the rescore, compared bit for bit.
Also run under qemu as Cortex-A72 (neon) and Cortex-A76 (neon_dot) by scripts/arm_runtime.sh.
"""

from __future__ import annotations

import numpy as np
import pytest

from shelfrank.device import kernel as kn
from shelfrank.errors import InputError

ISAS = kn.capabilities()
DIMS = [1, 3, 7, 97, 384]


@pytest.fixture(params=ISAS)
def isa(request):
    kn.force_isa(request.param)
    yield request.param
    kn.force_isa(None)


def real_like(rng, n, d, dup_every=0):
    """Unit rows sharing a common direction (as real embeddings do), with exact duplicates for ties."""
    common = rng.standard_normal(d).astype(np.float32)
    x = (rng.standard_normal((n, d)) + 2.0 * common).astype(np.float32)
    if dup_every:
        x[dup_every - 1 :: dup_every] = x[0 : len(x[dup_every - 1 :: dup_every])]
    x /= np.maximum(np.linalg.norm(x, axis=1, keepdims=True), 1e-12)
    return x


def quantize_ref(x):
    """The kernel's query quantisation: scale = max|x|/127, round half away from zero."""
    x = x.astype(np.float32)
    amax = np.float32(np.max(np.abs(x)))
    if not amax > 0:
        return np.zeros(x.shape, np.int8), np.float32(0)
    scale = np.float32(amax / np.float32(127))
    v = x / scale
    v = np.sign(v) * np.floor(np.abs(v) + np.float32(0.5))
    return np.clip(v, -127, 127).astype(np.int8), scale


def codes_ref(values, mean):
    return np.packbits(values > mean, axis=1, bitorder="little")


def first_pass_ref(q, codes, mean, r, mask=None):
    """Row ids of the r nearest codes, (distance asc, row asc), masked rows excluded; and their distances."""
    qc = np.packbits(q > mean, bitorder="little")
    dist = np.unpackbits(codes ^ qc, axis=1).sum(axis=1).astype(np.int64)
    ids = np.arange(len(codes)) if mask is None else np.flatnonzero(mask)
    ids = ids[np.lexsort((ids, dist[ids]))][:r]
    return ids, dist[ids]


def int8_two_pass_ref(q, rows8, scales, codes, mean, k, r, mask=None):
    cand, _ = first_pass_ref(q, codes, mean, r, mask)
    q8, qs = quantize_ref(q)
    scores = (rows8[cand].astype(np.int64) @ q8.astype(np.int64)).astype(np.float32) * (scales[cand] * qs)
    keep = ~np.isnan(scores)
    cand, scores = cand[keep], scores[keep]
    o = np.lexsort((cand, -scores.astype(np.float64)))[:k]
    ids = np.full(k, -1, np.int64)
    sc = np.full(k, -np.inf, np.float32)
    ids[: len(o)] = cand[o]
    sc[: len(o)] = scores[o]
    return ids, sc


def catalog(rng, n, d, dup_every=0):
    x = real_like(rng, n, d, dup_every)
    rows8, scales = kn.quantize_rows(x)
    mean = (rows8.astype(np.float32) * scales[:, None]).mean(axis=0).astype(np.float32)
    return x, rows8, scales, mean, kn.binary_codes(rows8, scales=scales, mean=mean)


def same_bits(a, b):
    np.testing.assert_array_equal(a[0], b[0])
    np.testing.assert_array_equal(
        np.asarray(a[1], np.float32).view(np.uint32), np.asarray(b[1], np.float32).view(np.uint32)
    )


@pytest.mark.parametrize("d", DIMS)
def test_binary_codes_match_packbits(d):
    rng = np.random.default_rng(d)
    x = real_like(rng, 301, d)
    mean = x.mean(axis=0).astype(np.float32)
    codes = kn.binary_codes(x, mean=mean)
    assert codes.dtype == np.uint8 and codes.shape == (301, (d + 7) // 8)
    np.testing.assert_array_equal(codes, codes_ref(x, mean))
    rows8, scales = kn.quantize_rows(x)
    np.testing.assert_array_equal(
        kn.binary_codes(rows8, scales=scales, mean=mean, threads=3),
        codes_ref(rows8.astype(np.float32) * scales[:, None], mean),
    )
    # a value equal to the mean is not above it: bit 0
    np.testing.assert_array_equal(kn.binary_codes(x[:5], mean=x[0]), codes_ref(x[:5], x[0]))
    assert not kn.binary_codes(x[:1], mean=x[0]).any()


def test_binary_codes_threads_do_not_change_bits():
    rng = np.random.default_rng(5)
    x = real_like(rng, 40_000, 97)
    mean = x.mean(axis=0).astype(np.float32)
    np.testing.assert_array_equal(kn.binary_codes(x, mean=mean, threads=4), kn.binary_codes(x, mean=mean))


@pytest.mark.parametrize("d", [*DIMS, 768, 1031])  # rows of more than one 64-byte chunk, and a ragged one
@pytest.mark.parametrize("n,r", [(1, 1), (5, 10), (203, 7), (1031, 100), (5000, 64)])
def test_hamming_topk_matches_reference(isa, d, n, r):
    rng = np.random.default_rng(d * 7 + n)
    _, _, _, mean, codes = catalog(rng, n, d, dup_every=5)
    q = real_like(rng, 1, d)[0]
    mask = rng.random(n) < 0.7
    for m in (None, mask):
        ids, dist = kn.hamming_topk(q, codes, r, mean=mean, mask=m)
        rid, rdist = first_pass_ref(q, codes, mean, r, m)
        assert ids.shape == dist.shape == (min(r, n),) and dist.dtype == np.int32
        got = ids >= 0
        np.testing.assert_array_equal(ids[got], rid)
        np.testing.assert_array_equal(dist[got], rdist)
        assert (ids[~got] == -1).all() and (dist[~got] == -1).all()


@pytest.mark.parametrize("d", DIMS)
@pytest.mark.parametrize("n,k,r", [(1, 1, 1), (5, 10, 10), (37, 10, 20), (1031, 10, 100), (6000, 25, 300)])
def test_int8_two_pass_matches_exact_reference(isa, d, n, k, r):
    rng = np.random.default_rng(d * 1000 + n)
    _, rows8, scales, mean, codes = catalog(rng, n, d, dup_every=4)
    q = real_like(rng, 1, d)[0]
    mask = rng.random(n) < 0.8
    for m in (None, mask):
        got = kn.topk_two_pass(q, rows8, k, codes=codes, mean=mean, r=r, scales=scales, mask=m)
        same_bits(got, int8_two_pass_ref(q, rows8, scales, codes, mean, k, r, m))
        # the same bits as the exact kernel restricted to the candidates
        cand = np.zeros(n, bool)
        cand[first_pass_ref(q, codes, mean, r, m)[0]] = True
        same_bits(got, kn.topk(q, rows8, k, scales=scales, mask=cand))


@pytest.mark.parametrize("d", [3, 97, 384])
def test_fp32_two_pass_equals_topk_on_the_candidates(isa, d):
    rng = np.random.default_rng(d)
    x = real_like(rng, 2000, d, dup_every=6)
    mean = x.mean(axis=0).astype(np.float32)
    codes = kn.binary_codes(x, mean=mean)
    qs = real_like(rng, 3, d)
    got = kn.topk_two_pass(qs, x, 10, codes=codes, mean=mean, r=150)
    assert got[0].shape == got[1].shape == (3, 10)
    for i, q in enumerate(qs):
        cand = np.zeros(len(x), bool)
        cand[first_pass_ref(q, codes, mean, 150)[0]] = True
        same_bits((got[0][i], got[1][i]), kn.topk(q, x, 10, mask=cand))


def test_r_at_least_n_equals_exact_topk(isa):
    rng = np.random.default_rng(11)
    x, rows8, scales, mean, codes = catalog(rng, 777, 97, dup_every=3)
    qs = real_like(rng, 4, 97)
    for r in (777, 5000):
        same_bits(
            kn.topk_two_pass(qs, rows8, 30, codes=codes, mean=mean, r=r, scales=scales),
            kn.topk(qs, rows8, 30, scales=scales),
        )
        same_bits(kn.topk_two_pass(qs, x, 30, codes=kn.binary_codes(x, mean=mean), mean=mean, r=r), kn.topk(qs, x, 30))


def test_fewer_rows_than_k_and_all_masked(isa):
    rng = np.random.default_rng(3)
    _, rows8, scales, mean, codes = catalog(rng, 4, 7)
    q = real_like(rng, 1, 7)[0]
    ids, sc = kn.topk_two_pass(q, rows8, 10, codes=codes, mean=mean, r=10, scales=scales)
    assert sorted(ids[:4].tolist()) == [0, 1, 2, 3] and (ids[4:] == -1).all() and np.isneginf(sc[4:]).all()
    same_bits((ids, sc), kn.topk(q, rows8, 10, scales=scales))
    none = np.zeros(4, bool)
    ids, sc = kn.topk_two_pass(q, rows8, 3, codes=codes, mean=mean, r=3, scales=scales, mask=none)
    assert (ids == -1).all() and np.isneginf(sc).all()
    ids, dist = kn.hamming_topk(q, codes, 3, mean=mean, mask=none)
    assert (ids == -1).all() and (dist == -1).all()


def test_ties_go_to_the_lower_row_across_cuts_and_threads(isa):
    # 40,000 rows with only 4 distinct codes: the selector cuts its list many times, always at a
    # tie, and two threads each see a part; the kept rows must be the lowest ids of each distance.
    rng = np.random.default_rng(9)
    base = real_like(rng, 4, 384)
    x = np.ascontiguousarray(base[rng.integers(0, 4, 40_000)])
    mean = x.mean(axis=0).astype(np.float32)
    codes = kn.binary_codes(x, mean=mean)
    q = base[2]
    rid, rdist = first_pass_ref(q, codes, mean, 500)
    for threads in (1, 2, 3):
        ids, dist = kn.hamming_topk(q, codes, 500, mean=mean, threads=threads)
        np.testing.assert_array_equal(ids, rid)
        np.testing.assert_array_equal(dist, rdist)
        same_bits(
            kn.topk_two_pass(q, x, 10, codes=codes, mean=mean, r=500, threads=threads),
            kn.topk_two_pass(q, x, 10, codes=codes, mean=mean, r=500),
        )


def test_batch_and_threads_give_the_single_query_bits(isa):
    rng = np.random.default_rng(21)
    _, rows8, scales, mean, codes = catalog(rng, 30_000, 384, dup_every=7)
    qs = real_like(rng, 5, 384)
    mask = rng.random(30_000) < 0.9
    batch = kn.topk_two_pass(qs, rows8, 10, codes=codes, mean=mean, r=200, scales=scales, mask=mask, threads=3)
    for i, q in enumerate(qs):
        one = kn.topk_two_pass(q, rows8, 10, codes=codes, mean=mean, r=200, scales=scales, mask=mask)
        same_bits((batch[0][i], batch[1][i]), one)
        same_bits(one, int8_two_pass_ref(q, rows8, scales, codes, mean, 10, 200, mask))


def test_identical_on_every_isa():
    rng = np.random.default_rng(17)
    _, rows8, scales, mean, codes = catalog(rng, 9001, 384, dup_every=5)
    qs = real_like(rng, 6, 384)
    results = []
    try:
        for name in ISAS:
            kn.force_isa(name)
            results.append(
                (
                    kn.topk_two_pass(qs, rows8, 10, codes=codes, mean=mean, r=200, scales=scales),
                    kn.hamming_topk(qs, codes, 200, mean=mean),
                )
            )
    finally:
        kn.force_isa(None)
    for tp, hm in results[1:]:
        same_bits(tp, results[0][0])
        np.testing.assert_array_equal(hm[0], results[0][1][0])
        np.testing.assert_array_equal(hm[1], results[0][1][1])


def test_bad_input_is_refused_with_a_fix():
    rng = np.random.default_rng(1)
    _, rows8, scales, mean, codes = catalog(rng, 50, 97)
    q = real_like(rng, 1, 97)[0]

    def two_pass(**kw):
        args = {"codes": codes, "mean": mean, "r": 20, "scales": scales, **kw}
        return kn.topk_two_pass(q, rows8, args.pop("k", 5), **args)

    cases = [
        ({"codes": codes[:, :-1]}, r"codes must have shape \(50, 13\) .*d=97\), got \(50, 12\); rebuild"),
        ({"codes": codes[:-1]}, r"codes must have shape \(50, 13\)"),
        ({"codes": codes.view(np.int8)}, r"codes must be uint8 \(50, 13\), got int8; make them with binary_codes"),
        ({"codes": np.asfortranarray(codes)}, r"codes must be C-contiguous"),
        ({"mean": mean[:-1]}, r"mean must have shape \(97,\) \(one value per dimension\), got \(96,\)"),
        ({"mean": np.full(97, np.nan, np.float32)}, r"mean contains NaN or inf \(element 0\)"),
        ({"r": 4}, r"r \(4 first-pass candidates\) must be >= k \(5\)"),
        ({"r": (1 << 24) + 1}, r"r=16777217 is larger than the catalog \(50 rows\) and than 16777216; pass r <= N"),
        ({"scales": None}, r"int8 rows need their per-row scales"),
    ]
    for kw, msg in cases:
        with pytest.raises(InputError, match=msg):
            two_pass(**kw)
    assert two_pass(r=1000)[0].shape == (5,)  # r > N (but not absurd) is clamped, not refused
    with pytest.raises(InputError, match="r must be >= 1"):
        kn.hamming_topk(q, codes, 0, mean=mean)
    with pytest.raises(InputError, match=r"codes must have shape \(50, 12\) .*d=89\), got \(50, 13\)"):
        kn.hamming_topk(q[:-8], codes, 5, mean=mean[:-8])
    with pytest.raises(InputError, match=r"mean must have shape \(97,\)"):
        kn.binary_codes(rows8, scales=scales, mean=mean[:3])
    with pytest.raises(InputError, match=r"row 2 contains NaN or inf"):
        bad = real_like(rng, 4, 97)
        bad[2, 5] = np.inf
        kn.binary_codes(bad, mean=mean)


def test_strided_rows_give_the_packed_bits(isa):
    rng = np.random.default_rng(8)
    wide = real_like(rng, 4000, 300)
    wide8, wscales = kn.quantize_rows(wide)
    rows8, scales = wide8[::2, :97], np.ascontiguousarray(wscales[::2])  # a row stride of 600 bytes
    packed = np.ascontiguousarray(rows8)
    mean = (packed.astype(np.float32) * scales[:, None]).mean(axis=0).astype(np.float32)
    codes = kn.binary_codes(rows8, scales=scales, mean=mean)
    np.testing.assert_array_equal(codes, kn.binary_codes(packed, scales=scales, mean=mean))
    np.testing.assert_array_equal(kn.binary_codes(wide[::2, :97], mean=mean), codes_ref(wide[::2, :97], mean))
    qs = real_like(rng, 3, 97)
    same_bits(
        kn.topk_two_pass(qs, rows8, 10, codes=codes, mean=mean, r=100, scales=scales),
        kn.topk_two_pass(qs, packed, 10, codes=codes, mean=mean, r=100, scales=scales),
    )
