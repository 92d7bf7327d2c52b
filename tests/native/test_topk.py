"""The native top-k kernel through its Python API, on every ISA path this machine has.

References are float64 numpy for fp32 rows, and an exact re-implementation of the int8 scheme
for int8 rows (so int8 scores are compared bit for bit, as every ISA must agree).
"""

from __future__ import annotations

import os
import subprocess
import sys
import threading
import warnings

import numpy as np
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

import shelfrank.device as sd
from shelfrank.errors import InputError, ShelfrankError, UnsupportedIsaError

ISAS = sd.capabilities()
DIMS = [1, 3, 7, 97, 384, 768]


@pytest.fixture(params=ISAS)
def isa(request):
    sd.force_isa(request.param)
    yield request.param
    sd.force_isa(None)


def unit_rows(rng, n, d):
    x = rng.standard_normal((n, d)).astype(np.float32)
    x /= np.maximum(np.linalg.norm(x, axis=1, keepdims=True), 1e-12)
    return x


def quantize_ref(x: np.ndarray) -> tuple[np.ndarray, np.float32]:
    """The kernel's query quantisation: scale = max|x|/127, round half away from zero."""
    x = x.astype(np.float32)
    amax = np.float32(np.max(np.abs(x))) if x.size else np.float32(0)
    if not amax > 0:
        return np.zeros(x.shape, np.int8), np.float32(0)
    scale = np.float32(amax / np.float32(127))
    v = x / scale
    v = np.sign(v) * np.floor(np.abs(v) + np.float32(0.5))
    return np.clip(v, -127, 127).astype(np.int8), scale


def order(scores: np.ndarray, k: int, mask=None) -> np.ndarray:
    """Row ids best first: score descending, then row ascending; NaN and masked rows excluded."""
    ids = np.arange(len(scores))
    keep = ~np.isnan(scores)
    if mask is not None:
        keep &= mask
    ids = ids[keep]
    ids = ids[np.lexsort((ids, -scores[ids].astype(np.float64)))]
    return ids[:k]


def int8_reference(q, rows8, scales, k, mask=None):
    q8, qs = quantize_ref(q)
    dots = rows8.astype(np.int64) @ q8.astype(np.int64)
    scores = dots.astype(np.float32) * (scales * qs)
    ids = order(scores, k, mask)
    out_ids = np.full(k, -1, np.int64)
    out_sc = np.full(k, -np.inf, np.float32)
    out_ids[: len(ids)] = ids
    out_sc[: len(ids)] = scores[ids]
    return out_ids, out_sc


def check_f32(q, rows, ids, scores, k, mask=None, tol=1e-4):
    ref = rows.astype(np.float64) @ q.astype(np.float64)
    eligible = np.ones(len(rows), bool) if mask is None else mask
    m = min(k, int(eligible.sum()))
    assert (ids[m:] == -1).all() and np.isneginf(scores[m:]).all()
    got = ids[:m]
    assert len(set(got.tolist())) == m and eligible[got].all()
    np.testing.assert_allclose(scores[:m], ref[got], atol=tol)
    assert (np.diff(scores[:m]) <= 0).all()
    if m and m < eligible.sum():
        rest = np.setdiff1d(np.flatnonzero(eligible), got)
        assert ref[rest].max() <= ref[got].min() + tol


@pytest.mark.parametrize("d", DIMS)
@pytest.mark.parametrize("n,k", [(1, 1), (5, 10), (37, 10), (203, 7), (1000, 1000), (1031, 50)])
def test_int8_matches_exact_reference(isa, d, n, k):
    rng = np.random.default_rng(d * 1000 + n)
    rows = unit_rows(rng, n, d)
    rows8, scales = sd.quantize_rows(rows)
    q = unit_rows(rng, 1, d)[0]
    ids, sc = sd.topk(q, rows8, k, scales=scales)
    rid, rsc = int8_reference(q, rows8, scales, k)
    np.testing.assert_array_equal(ids, rid)
    np.testing.assert_array_equal(sc.view(np.uint32), rsc.view(np.uint32))


@pytest.mark.parametrize("d", DIMS)
@pytest.mark.parametrize("n,k", [(1, 1), (5, 10), (37, 10), (203, 7), (1000, 1000), (1031, 50)])
def test_fp32_matches_float64_reference(isa, d, n, k):
    rng = np.random.default_rng(d * 1000 + n + 1)
    rows = unit_rows(rng, n, d)
    q = unit_rows(rng, 1, d)[0]
    ids, sc = sd.topk(q, rows, k)
    check_f32(q, rows, ids, sc, k)


def test_int8_identical_on_every_isa():
    rng = np.random.default_rng(7)
    rows8, scales = sd.quantize_rows(unit_rows(rng, 4099, 384))
    qs = unit_rows(rng, 9, 384)
    results = []
    try:
        for name in ISAS:
            sd.force_isa(name)
            results.append(sd.topk(qs, rows8, 25, scales=scales))
    finally:
        sd.force_isa(None)
    for ids, sc in results[1:]:
        np.testing.assert_array_equal(ids, results[0][0])
        np.testing.assert_array_equal(sc.view(np.uint32), results[0][1].view(np.uint32))


def test_ties_go_to_lower_row(isa):
    rng = np.random.default_rng(3)
    base = unit_rows(rng, 1, 97)[0]
    rows = np.tile(base, (50, 1))  # every row identical: all scores tie
    rows[10] = -base
    q = base.copy()
    ids, _ = sd.topk(q, rows, 5)
    np.testing.assert_array_equal(ids, [0, 1, 2, 3, 4])
    rows8, scales = sd.quantize_rows(rows)
    ids, _ = sd.topk(q, rows8, 12, scales=scales)
    np.testing.assert_array_equal(ids, [0, 1, 2, 3, 4, 5, 6, 7, 8, 9, 11, 12])


def test_zero_vectors(isa):
    rng = np.random.default_rng(4)
    rows = unit_rows(rng, 20, 7)
    rows[[3, 8]] = 0.0
    rows8, scales = sd.quantize_rows(rows)
    assert scales[3] == 0 and not rows8[3].any()
    zero_q = np.zeros(7, np.float32)
    for r, s in ((rows, None), (rows8, scales)):
        ids, sc = sd.topk(zero_q, r, 4, scales=s)
        np.testing.assert_array_equal(ids, [0, 1, 2, 3])  # every score is 0: lowest rows win
        assert (sc == 0).all()
    q = rows[0]
    ids, sc = sd.topk(q, rows8, 20, scales=scales)
    assert sc[list(ids).index(3)] == 0


def test_mask_and_fill(isa):
    rng = np.random.default_rng(5)
    rows = unit_rows(rng, 300, 33)
    rows8, scales = sd.quantize_rows(rows)
    q = unit_rows(rng, 1, 33)[0]
    mask = np.zeros(300, bool)
    mask[[5, 77, 299]] = True
    for r, s in ((rows, None), (rows8, scales)):
        ids, sc = sd.topk(q, r, 10, scales=s, mask=mask)
        assert set(ids[:3].tolist()) == {5, 77, 299}
        assert (ids[3:] == -1).all() and np.isneginf(sc[3:]).all()
        ids, sc = sd.topk(q, r, 4, scales=s, mask=np.zeros(300, bool))
        assert (ids == -1).all() and np.isneginf(sc).all()
    rid, _rsc = int8_reference(q, rows8, scales, 10, mask)
    ids, sc = sd.topk(q, rows8, 10, scales=scales, mask=mask)
    np.testing.assert_array_equal(ids, rid)
    check_f32(q, rows, *sd.topk(q, rows, 10, mask=mask), 10, mask=mask)


def test_k_equals_n_returns_everything_sorted(isa):
    rng = np.random.default_rng(6)
    rows = unit_rows(rng, 65, 17)
    q = unit_rows(rng, 1, 17)[0]
    ids, sc = sd.topk(q, rows, 65)
    assert sorted(ids.tolist()) == list(range(65))
    check_f32(q, rows, ids, sc, 65)


def test_nan_rows_never_returned(isa):
    rng = np.random.default_rng(8)
    rows = unit_rows(rng, 40, 16)
    rows[[0, 2]] = np.nan
    q = rows[1]
    ids, _ = sd.topk(q, rows, 40)
    assert 0 not in ids and 2 not in ids and (ids[-2:] == -1).all()


def test_batch_equals_single_queries(isa):
    rng = np.random.default_rng(9)
    rows = unit_rows(rng, 2000, 97)
    rows8, scales = sd.quantize_rows(rows)
    qs = unit_rows(rng, 70, 97)  # more than one GIL-free slice of 64 queries
    bi, bs = sd.topk(qs, rows8, 10, scales=scales)
    fi, _fs = sd.topk(qs, rows, 10)
    assert bi.shape == (70, 10) and fi.shape == (70, 10)
    for j in (0, 33, 64, 69):
        si, ss = sd.topk(qs[j], rows8, 10, scales=scales)
        np.testing.assert_array_equal(bi[j], si)
        np.testing.assert_array_equal(bs[j], ss)
        np.testing.assert_array_equal(fi[j], sd.topk(qs[j], rows, 10)[0])


def test_threads_equal_one_thread(isa):
    rng = np.random.default_rng(10)
    rows = unit_rows(rng, 40_000, 64)
    rows[20_000:20_010] = rows[5]  # ties across the thread boundary
    rows8, scales = sd.quantize_rows(rows)
    qs = np.vstack([rows[5], unit_rows(rng, 3, 64)])
    mask = rng.random(40_000) < 0.5
    mask[5] = mask[20_003] = True
    for r, s in ((rows8, scales), (rows, None)):
        one = sd.topk(qs, r, 20, scales=s, mask=mask, threads=1)
        for t in (2, 3, 8):
            many = sd.topk(qs, r, 20, scales=s, mask=mask, threads=t)
            np.testing.assert_array_equal(many[0], one[0])
            np.testing.assert_array_equal(many[1], one[1])


@settings(max_examples=60, deadline=None)
@given(
    n=st.integers(1, 300),
    d=st.integers(1, 130),
    k=st.integers(1, 40),
    seed=st.integers(0, 2**32 - 1),
    masked=st.booleans(),
    quantized_values=st.booleans(),
)
def test_property_int8_exact_every_isa(n, d, k, seed, masked, quantized_values):
    rng = np.random.default_rng(seed)
    if quantized_values:  # few distinct values: many exact ties
        rows = rng.integers(-2, 3, size=(n, d)).astype(np.float32)
    else:
        rows = rng.standard_normal((n, d)).astype(np.float32)
    rows8, scales = sd.quantize_rows(rows)
    q = rng.standard_normal(d).astype(np.float32)
    mask = rng.random(n) < 0.6 if masked else None
    rid, rsc = int8_reference(q, rows8, scales, k, mask)
    try:
        for name in ISAS:
            sd.force_isa(name)
            ids, sc = sd.topk(q, rows8, k, scales=scales, mask=mask)
            np.testing.assert_array_equal(ids, rid)
            np.testing.assert_array_equal(sc.view(np.uint32), rsc.view(np.uint32))
    finally:
        sd.force_isa(None)


@settings(max_examples=40, deadline=None)
@given(n=st.integers(1, 200), d=st.integers(1, 100), k=st.integers(1, 30), seed=st.integers(0, 2**32 - 1))
def test_property_fp32_every_isa(n, d, k, seed):
    rng = np.random.default_rng(seed)
    rows = unit_rows(rng, n, d)
    q = unit_rows(rng, 1, d)[0]
    try:
        for name in ISAS:
            sd.force_isa(name)
            check_f32(q, rows, *sd.topk(q, rows, k), k)
    finally:
        sd.force_isa(None)


def test_quantize_rows_roundtrip():
    rng = np.random.default_rng(11)
    rows = rng.standard_normal((100, 97)).astype(np.float32)
    rows[4] = 0
    r8, s = sd.quantize_rows(rows)
    assert r8.dtype == np.int8 and s.dtype == np.float32 and r8.shape == rows.shape and s.shape == (100,)
    assert np.abs(r8.astype(np.int32)).max() <= 127
    np.testing.assert_allclose(s, np.abs(rows).max(axis=1) / 127, rtol=1e-6)
    err = np.abs(r8 * s[:, None] - rows)
    assert (err <= s[:, None] * 0.5 + 1e-7).all()
    assert s[4] == 0 and not r8[4].any()


def test_read_only_memmapped_rows_are_used_in_place(tmp_path, isa):
    rng = np.random.default_rng(12)
    rows8, scales = sd.quantize_rows(unit_rows(rng, 500, 384))
    np.save(tmp_path / "emb.npy", rows8)
    mm = np.load(tmp_path / "emb.npy", mmap_mode="r")
    assert not mm.flags.writeable
    q = unit_rows(rng, 1, 384)[0]
    np.testing.assert_array_equal(sd.topk(q, mm, 10, scales=scales)[0], sd.topk(q, rows8, 10, scales=scales)[0])


def test_gil_released_during_scan():
    rng = np.random.default_rng(13)
    rows = unit_rows(rng, 300_000, 128)
    q = rows[0]
    ticks = 0
    stop = threading.Event()

    def spin():
        nonlocal ticks
        while not stop.is_set():
            ticks += 1

    t = threading.Thread(target=spin)
    t.start()
    try:
        during = []
        for _ in range(5):
            before = ticks
            sd.topk(q, rows, 10)
            during.append(ticks - before)
    finally:
        stop.set()
        t.join()
    # with the GIL held for the whole scan the spinning thread could not count at all
    assert max(during) > 0


BAD_INPUTS = [
    ("rows must be float32 or int8", lambda q, r, r8, s: sd.topk(q, r.astype(np.float64), 3)),
    ("rows must be float32 or int8", lambda q, r, r8, s: sd.topk(q, r.astype(np.int16), 3)),
    ("contiguous in the last axis", lambda q, r, r8, s: sd.topk(q, np.asfortranarray(r), 3)),
    ("contiguous in the last axis", lambda q, r, r8, s: sd.topk(q, r[:, ::2], 3)),
    ("rows must be 2-D", lambda q, r, r8, s: sd.topk(q, r[0], 3)),
    ("dimension mismatch", lambda q, r, r8, s: sd.topk(q[:5], r, 3)),
    ("NaN or inf", lambda q, r, r8, s: sd.topk(np.where(np.arange(16) == 3, np.nan, q), r, 3)),
    ("NaN or inf", lambda q, r, r8, s: sd.topk(np.full(16, np.inf, np.float32), r, 3)),
    ("k must be >= 1", lambda q, r, r8, s: sd.topk(q, r, 0)),
    ("threads must be >= 1", lambda q, r, r8, s: sd.topk(q, r, 3, threads=0)),
    ("mask must have shape", lambda q, r, r8, s: sd.topk(q, r, 3, mask=np.ones(9, bool))),
    ("mask must be a bool", lambda q, r, r8, s: sd.topk(q, r, 3, mask=np.ones(10, np.uint8))),
    ("need their per-row scales", lambda q, r, r8, s: sd.topk(q, r8, 3)),
    ("scales must have shape", lambda q, r, r8, s: sd.topk(q, r8, 3, scales=s[:4])),
    ("scales must be float32", lambda q, r, r8, s: sd.topk(q, r8, 3, scales=s.astype(np.float64))),
    ("scales apply to int8 rows only", lambda q, r, r8, s: sd.topk(q, r, 3, scales=s)),
    ("query must be 1-D", lambda q, r, r8, s: sd.topk(q.reshape(1, 1, 16), r, 3)),
    ("rows must be a numpy array", lambda q, r, r8, s: sd.topk(q, r.tolist(), 3)),
    ("contains NaN or inf", lambda q, r, r8, s: sd.quantize_rows(np.where(r > 0.3, np.nan, r))),
    ("rows must be float32", lambda q, r, r8, s: sd.quantize_rows(r.astype(np.float64))),
]


@pytest.mark.parametrize("needle,call", BAD_INPUTS, ids=[f"{i}-{b[0][:20]}" for i, b in enumerate(BAD_INPUTS)])
def test_bad_input_names_the_problem(needle, call):
    rng = np.random.default_rng(14)
    rows = unit_rows(rng, 10, 16)
    rows8, scales = sd.quantize_rows(rows)
    with pytest.raises(InputError, match=needle) as ei:
        call(rows[0].copy(), rows, rows8, scales)
    assert isinstance(ei.value, ValueError) and isinstance(ei.value, ShelfrankError)


def test_force_unknown_isa_lists_capabilities():
    with pytest.raises(UnsupportedIsaError, match="capabilities") as ei:
        sd.force_isa("sse9")
    for name in ISAS:
        assert name in str(ei.value)
    assert sd.active_isa() == ISAS[-1]


def _isa_in_subprocess(env_value: str) -> subprocess.CompletedProcess:
    env = dict(os.environ, SHELFRANK_FORCE_ISA=env_value)
    code = "import shelfrank.device as d; print(d.active_isa())"
    return subprocess.run([sys.executable, "-c", code], env=env, capture_output=True, text=True, timeout=60)


@pytest.mark.parametrize("name", ISAS)
def test_env_var_pins_the_path(name):
    out = _isa_in_subprocess(name)
    assert out.returncode == 0, out.stderr
    assert out.stdout.strip() == name


def test_env_var_with_unavailable_isa_is_a_clear_error():
    missing = "neon_dot" if "avx2" in ISAS else "avx512vnni"
    out = _isa_in_subprocess(missing)
    assert out.returncode != 0
    assert "SHELFRANK_FORCE_ISA" in out.stderr and "capabilities()" in out.stderr


@pytest.mark.parametrize("view", ["row-slice", "leading-columns", "reversed-rows"])
def test_any_row_stride_contiguous_in_the_last_axis(isa, view):
    # a view whose rows are contiguous is scanned in place, with the packed copy's exact bits
    rng = np.random.default_rng(33)
    wide = unit_rows(rng, 3001, 200)
    wide8, wscales = sd.quantize_rows(wide)
    if view == "row-slice":
        pick = (slice(None, None, 3), slice(None))
    else:
        pick = (slice(None), slice(0, 97))
    rows, rows8, scales = wide[pick], wide8[pick], np.ascontiguousarray(wscales[pick[0]])
    if view == "reversed-rows":  # a negative row stride is refused with the fix, not misread
        with pytest.raises(InputError, match="contiguous in the last axis with a positive row stride"):
            sd.topk(unit_rows(rng, 1, 200)[0], wide[::-1], 5)
        return
    assert not rows.flags.c_contiguous and rows.strides[1] == rows.itemsize
    qs = unit_rows(rng, 3, rows.shape[1])
    for threads in (1, 2):
        got = sd.topk(qs, rows8, 17, scales=scales, threads=threads)
        want = sd.topk(qs, np.ascontiguousarray(rows8), 17, scales=np.ascontiguousarray(scales))
        np.testing.assert_array_equal(got[0], want[0])
        np.testing.assert_array_equal(got[1].view(np.uint32), want[1].view(np.uint32))
        got = sd.topk(qs, rows, 17, threads=threads)
        want = sd.topk(qs, np.ascontiguousarray(rows), 17)
        np.testing.assert_array_equal(got[0], want[0])
        np.testing.assert_array_equal(got[1].view(np.uint32), want[1].view(np.uint32))


def test_thread_pool_serves_concurrent_callers_and_a_forked_child():
    # the persistent pool: callers racing for it (the GIL is released) and a child forked after
    # the pool started (its threads do not exist there) all get the single-thread result
    rng = np.random.default_rng(41)
    rows = unit_rows(rng, 40_000, 64)
    q = rows[7]
    want = sd.topk(q, rows, 9)
    assert (sd.topk(q, rows, 9, threads=2)[0] == want[0]).all()
    got = []
    workers = [threading.Thread(target=lambda: got.append(sd.topk(q, rows, 9, threads=3)[0])) for _ in range(6)]
    for t in workers:
        t.start()
    for t in workers:
        t.join()
    assert len(got) == 6 and all((g == want[0]).all() for g in got)
    with warnings.catch_warnings():  # Python 3.12+ warns about fork() with threads alive: that is the point
        warnings.simplefilter("ignore", DeprecationWarning)
        pid = os.fork()
    if pid == 0:  # pragma: no cover - the child reports through its exit status
        os._exit(0 if (sd.topk(q, rows, 9, threads=2)[0] == want[0]).all() else 3)
    _, status = os.waitpid(pid, 0)
    assert os.waitstatus_to_exitcode(status) == 0
