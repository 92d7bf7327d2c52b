"""The whole export path on a tiny locally built BERT: train, distil, int8, parity gate, signed bundle."""

from __future__ import annotations

import json
import sqlite3
from pathlib import Path

import numpy as np
import pytest

from shelfrank.device import bundle as bfmt
from shelfrank.errors import BundleError, ExportValidationError, ParityError, SignatureError

pytestmark = pytest.mark.slow

TINY = dict(
    name="tiny",
    max_len=16,
    history_max_len=48,
    teacher_steps=6,
    student_steps=6,
    batch=8,
    student_layers=(0, 2),
    tower_epochs=1,
    tower_time_s=None,
    max_events=5,
    eval_sample=60,
    zero_shot_sample=12,
    latency_runs=2,
    parity_texts=40,
)


@pytest.fixture(scope="module")
def key(tmp_path_factory) -> Path:
    k, _ = bfmt.generate_keypair(tmp_path_factory.mktemp("keys") / "publisher.key")
    return k


@pytest.fixture(scope="module")
def exported(tmp_path_factory, tiny_shop, tiny_bert, key):
    from shelfrank.export.pipeline import Preset, run_export

    out = tmp_path_factory.mktemp("export") / "bundle"
    res = run_export(tiny_shop, out, key=key, preset=Preset(**TINY), teacher=tiny_bert, parity_thresholds=(0.9, 0.5))
    return res


def test_bundle_layout_and_manifest(exported, tiny_shop):
    out = exported.out
    for rel in (
        "manifest.json",
        "manifest.sig",
        "publisher.pub",
        "encoder.onnx",
        "tokenizer.json",
        "user_tower.onnx",
        "catalog/items.sqlite",
        "catalog/emb.i8.npy",
        "catalog/scale.f32.npy",
        "quality.json",
        "quality.md",
    ):
        assert (out / rel).is_file(), rel
    m = bfmt.verify_bundle(out)
    assert m["format_version"] == bfmt.FORMAT_VERSION
    assert m["user_tower"]["kind"] == "sequence" and m["user_tower"]["max_events"] == 5
    assert m["model"]["layers"] == 2 and m["catalog"]["count"] == len(tiny_shop.catalog)
    rows = np.load(out / "catalog/emb.i8.npy")
    scales = np.load(out / "catalog/scale.f32.npy")
    assert rows.dtype == np.int8 and rows.shape == (len(tiny_shop.catalog), m["catalog"]["dim"])
    assert scales.dtype == np.float32 and np.isfinite(scales).all()
    con = sqlite3.connect(out / "catalog/items.sqlite")
    n, pop_max = con.execute("SELECT count(*), max(popularity) FROM items").fetchone()
    con.close()
    assert n == len(tiny_shop.catalog) and pop_max == pytest.approx(1.0)
    q = json.loads((out / "quality.json").read_text())
    for name in (
        "popularity",
        "item co-occurrence kNN",
        "zero-shot teacher (text design)",
        "fine-tuned teacher fp32 + tower",
        "student fp32 + tower",
        "student int8 + tower (the bundle)",
    ):
        assert 0.0 <= q["models"][name]["ndcg@10"] <= 1.0, name
    assert (Path(str(out) + ".baselines") / "encoder_fp32.onnx").is_file()
    assert not Path(str(out) + ".work").joinpath("nothing").exists()


def test_bundle_encoder_matches_catalog_rows(exported, tiny_shop):
    """The int8 encoder in the bundle, run on the device side, reproduces the catalog's text rows."""
    from shelfrank.device.encoder import TextEncoder
    from shelfrank.device.text import item_text

    out = exported.out
    m = bfmt.verify_bundle(out)
    enc = TextEncoder(out / "encoder.onnx", out / "tokenizer.json", max_len=m["model"]["max_len"])
    emb = enc.encode([item_text(tiny_shop.catalog.record(i)) for i in range(5)])
    assert emb.shape == (5, m["catalog"]["dim"])
    np.testing.assert_allclose(np.linalg.norm(emb, axis=1), 1.0, atol=1e-4)


@pytest.mark.parametrize(
    "rel",
    [
        "encoder.onnx",
        "tokenizer.json",
        "user_tower.onnx",
        "catalog/items.sqlite",
        "catalog/emb.i8.npy",
        "catalog/scale.f32.npy",
        "quality.md",
        "manifest.json",
        "manifest.sig",
        "publisher.pub",
    ],
)
def test_any_changed_byte_is_caught(exported, tmp_path, rel):
    import shutil

    copy = tmp_path / "b"
    shutil.copytree(exported.out, copy)
    p = copy / rel
    data = bytearray(p.read_bytes())
    data[len(data) // 2] ^= 0x01
    p.write_bytes(bytes(data))
    with pytest.raises((BundleError, SignatureError)):
        bfmt.verify_bundle(copy)


def test_parity_gate_failure_writes_nothing(tmp_path, tiny_shop, tiny_bert, key):
    from shelfrank.export.pipeline import Preset, run_export

    out = tmp_path / "never"
    with pytest.raises(ParityError, match=r"mean cosine .* top-10 overlap"):
        run_export(tiny_shop, out, key=key, preset=Preset(**TINY), teacher=tiny_bert, parity_thresholds=(1.01, 1.0))
    assert not out.exists()
    # no half-written bundle or temporary folder; only the resumable checkpoints stay
    assert sorted(p.name for p in tmp_path.iterdir()) == ["never.work"]


def test_teacher_that_is_not_bert_is_refused(tmp_path):
    from shelfrank.export.models import load_teacher

    (tmp_path / "config.json").write_text(json.dumps({"model_type": "gpt2"}))
    with pytest.raises(ExportValidationError, match="model_type is 'gpt2'"):
        load_teacher(tmp_path)
    with pytest.raises(ExportValidationError, match=r"no config\.json"):
        load_teacher(tmp_path / "nowhere")
