"""Property-based tests over the catalog index and delta decoders (issue 13): whatever the bytes,
the only outcomes are success or a ``ShelfrankError``, never another exception or a hang.

Inputs are random bytes, random JSON, and (most) valid documents with a few random mutations —
a value replaced by any JSON value, a key dropped, an unknown key added — signed with a real key,
so they get past the signature to the typed decoders. The delta cases go on through the arrays'
checks and ``apply_delta`` onto a tiny catalog. 4,000 inputs.
"""

from __future__ import annotations

import copy
import io
import json
import tempfile
from pathlib import Path

import numpy as np
import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from shelfrank.device import bundle as bfmt
from shelfrank.device import delta as ddelta
from shelfrank.device import formats
from shelfrank.device import sync as dsync
from shelfrank.device.catalog_files import CatalogData
from shelfrank.errors import ShelfrankError

pytestmark = pytest.mark.fuzz

DIM = 4
H = "ab" * 32


def _settings(n: int):
    return settings(max_examples=n, deadline=None, database=None, suppress_health_check=[HealthCheck.too_slow])


_leaf = st.one_of(
    st.none(),
    st.booleans(),
    st.integers(min_value=-(2**70), max_value=2**70),
    st.floats(allow_nan=False, allow_infinity=False),
    st.sampled_from(["", "../x", "/abs", "-rf", "a\x00b", H, "2999-01-01T00:00:00", "2999-01-01T00:00:00+00:00"]),
    st.text(max_size=12),
)
json_values = st.recursive(
    _leaf,
    lambda kids: st.lists(kids, max_size=4) | st.dictionaries(st.text(max_size=6), kids, max_size=4),
    max_leaves=12,
)


def _paths(obj, prefix=()):
    yield prefix
    if isinstance(obj, dict):
        for k, v in obj.items():
            yield from _paths(v, (*prefix, k))
    elif isinstance(obj, list):
        for i, v in enumerate(obj):
            yield from _paths(v, (*prefix, i))


def _mutate(data, obj):
    """``obj`` with 0-3 random mutations (replace a value, drop a key or item, add an unknown key)."""
    obj = copy.deepcopy(obj)
    for _ in range(data.draw(st.integers(0, 3))):
        path = data.draw(st.sampled_from(list(_paths(obj))))
        if not path:
            continue
        parent = obj
        for p in path[:-1]:
            parent = parent[p]
        op = data.draw(st.sampled_from(["replace", "replace", "drop", "add"]))
        if op == "replace":
            parent[path[-1]] = data.draw(json_values)
        elif op == "drop":
            del parent[path[-1]]
        elif isinstance(parent, dict):
            parent[data.draw(st.text(min_size=1, max_size=6))] = data.draw(json_values)
    return obj


def _file(path: str) -> dict:
    return {"path": path, "sha256": H, "size": 10}


SIGNED = {
    "format_version": 1,
    "version": 3,
    "created_at": "2026-01-01T00:00:00+00:00",
    "expires": "2999-01-01T00:00:00+00:00",
    "model_sha256": H,
    "dim": DIM,
    "count": 5,
    "snapshot": {"version": 3, "files": [_file(f"snapshots/3/{n}") for n in ("items.sqlite", "emb.i8.npy")]},
    "deltas": [
        {"from": a, "to": a + 1, "files": [_file(f"deltas/{a}-{a + 1}/{n}") for n in formats.DELTA_FILES]}
        for a in (1, 2)
    ],
}


@pytest.fixture(scope="module")
def key():
    from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PrivateKey

    return Ed25519PrivateKey.generate()


def _outcome(fn, *args, **kw):
    try:
        return fn(*args, **kw)
    except ShelfrankError:
        return None


@_settings(1000)
@given(st.binary(max_size=600))
def test_index_envelope_random_bytes(data):
    _outcome(formats.decode_index_envelope, data, where="index.json")


@_settings(600)
@given(json_values)
def test_index_and_delta_random_json(value):
    raw = json.dumps(value).encode()
    _outcome(formats.decode_index_envelope, raw, where="index.json")
    _outcome(formats.decode_delta_changes, raw, where="changes.json")
    if isinstance(value, dict):
        _outcome(formats.decode_index_signed, value, where="index.json")


@_settings(1200)
@given(st.data())
def test_signed_index_mutations(key, data):
    """A real signature over a mutated index: verify_index, then the same steps sync takes."""
    signed = _mutate(data, SIGNED)
    sig = key.sign(bfmt.canonical_json(signed)).hex()
    raw = bfmt.canonical_json({"signed": signed, "signature": sig, "key_id": "k"})
    index = _outcome(dsync.verify_index, raw, key.public_key(), "index.json")
    if index is not None:
        assert index.version == signed["version"]
        dsync._delta_chain(index, 1)  # ends (to > from, unique starts)
        _outcome(index.snapshot.by_name)


# ---- deltas, through to apply_delta on a tiny catalog -------------------------------------------

_rng = np.random.default_rng(0)
_base_rows = _rng.standard_normal((5, DIM)).astype(np.float32)
_base_rows /= np.linalg.norm(_base_rows, axis=1, keepdims=True)
_BASE_SCALES = (np.abs(_base_rows).max(axis=1) / 127).astype(np.float32)
_BASE_ROWS = np.round(_base_rows / _BASE_SCALES[:, None]).astype(np.int8)
_ITEMS = [
    {
        "item_id": f"I{i}",
        "title": f"t{i}",
        "category": "c",
        "brand": None,
        "price": 1.0,
        "in_stock": True,
        "popularity": 0.0,
    }
    for i in range(5)
]
CHANGES = {
    "from": 1,
    "to": 2,
    "remove": ["I0"],
    "upsert": [
        {"item_id": "I1", "title": "t1 new", "category": "c", "brand": "b", "price": 2.5, "in_stock": False},
        {"item_id": "N1", "title": "new", "category": None, "brand": None, "price": None, "in_stock": True},
    ],
}


def _npy(arr: np.ndarray) -> bytes:
    buf = io.BytesIO()
    np.save(buf, arr)
    return buf.getvalue()


def _arrays(data, n: int) -> tuple[bytes, bytes]:
    rows = _BASE_ROWS[[1, 2] * n][:n] if n else np.zeros((0, DIM), np.int8)
    scales = _BASE_SCALES[[1, 2] * n][:n] if n else np.zeros(0, np.float32)
    kind = data.draw(st.sampled_from(["valid", "scales", "rows", "shape", "bytes"]))
    if kind == "scales" and n:
        scales = scales.copy()
        scales[data.draw(st.integers(0, n - 1))] = data.draw(st.floats(width=32))  # NaN, inf, 1e38, -0.0 …
    elif kind == "rows" and n:
        rows = rows.copy()
        rows[data.draw(st.integers(0, n - 1))] = data.draw(st.integers(-128, 127))
    elif kind == "shape":
        rows = np.zeros(
            (data.draw(st.integers(0, 3)), data.draw(st.integers(0, 6))),
            data.draw(st.sampled_from([np.int8, np.float32, np.int16])),
        )
    rows_b, scales_b = _npy(np.ascontiguousarray(rows)), _npy(np.ascontiguousarray(scales))
    if kind == "bytes":  # a mangled .npy: header or data cut, bytes flipped
        b = bytearray(rows_b)
        for _ in range(data.draw(st.integers(1, 4))):
            b[data.draw(st.integers(0, len(b) - 1))] = data.draw(st.integers(0, 255))
        rows_b = bytes(b[: data.draw(st.integers(0, len(b)))])
    return rows_b, scales_b


@pytest.fixture(scope="module")
def workdir():
    with tempfile.TemporaryDirectory() as d:
        yield Path(d)


@_settings(1200)
@given(st.data())
def test_delta_mutations_apply_to_a_tiny_catalog(workdir, data):
    """Mutated changes.json and arrays: read_delta, apply_delta and the catalog check succeed or raise
    a ShelfrankError; a success is a consistent catalog."""
    changes = _mutate(data, CHANGES)
    n = len(changes["upsert"]) if isinstance(changes.get("upsert"), list) else 0
    rows_b, scales_b = _arrays(data, n)
    paths = {name: workdir / name for name in formats.DELTA_FILES}
    paths["changes.json"].write_bytes(json.dumps(changes).encode())
    paths["rows.i8.npy"].write_bytes(rows_b)
    paths["scales.f32.npy"].write_bytes(scales_b)
    delta = _outcome(ddelta.read_delta, paths, span=(1, 2), dim=DIM, where="delta 1-2")
    if delta is None:
        return
    base = CatalogData([dict(it) for it in _ITEMS], _BASE_ROWS.copy(), _BASE_SCALES.copy())
    new = ddelta.apply_delta(base, *delta)
    try:
        new.check(DIM, "fuzz")
    except ShelfrankError:
        return
    assert len(new.items) == len(new.rows) == len(new.scales)
    assert np.isfinite(new.scales).all() and (new.scales <= formats.ROW_SCALE_MAX).all()
