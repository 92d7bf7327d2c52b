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
    res = run_export(
        tiny_shop, out, key=key, preset=Preset(**TINY), teacher=tiny_bert, parity_thresholds=(0.9, 0.5), fp16=True
    )
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
        "encoder_fp16.onnx",
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
    names = list(q["models"])
    # the naming contract tools read: one bundle row, the baselines by name, every row's metrics
    assert [n for n in names if "bundle" in n] == ["student int8 hybrid (the bundle)"]
    assert [n for n in names if "popularity" in n] == ["popularity"]
    assert [n for n in names if "item-kNN" in n] == ["item-kNN"]
    for name in (
        "zero-shot teacher (text design)",
        *(f"{model} {kind}" for model in ("teacher fp32", "student fp32", "student int8") for kind in ("tower",)),
        "teacher fp32 hybrid",
        "student fp32 hybrid",
    ):
        assert name in names, name
    for name, row in q["models"].items():
        for metric in ("ndcg@10", "recall@10", "recall@50", "coverage@10"):
            assert 0.0 <= row[metric] <= 1.0, (name, metric)
        assert row["diversity@10"] is not None and -1.0 <= row["diversity@10"] <= 2.0, name
    assert isinstance(q["warnings"], list)
    # the hybrid ranker: its fitted weights in the report and the manifest, its table in the catalog
    r = m["ranker"]
    assert r["kind"] == "hybrid-linear" and set(r["weights"]) == {"tower", "cooc", "popularity", "repeat"}
    assert q["ranker"]["weights"] == r["weights"]
    assert "Hybrid ranker (fitted on" in (out / "quality.md").read_text()
    ids = np.load(out / "catalog/nbr.i32.npy")
    w = np.load(out / "catalog/nbr.f16.npy")
    assert ids.shape == w.shape and ids.shape[0] == len(tiny_shop.catalog) and ids.dtype == np.int32
    assert m["files"]["catalog/nbr.i32.npy"] and ((ids >= 0) == (w > 0)).all()
    assert [d["lambda"] for d in q["diversity"]] == [0.0, 0.2, 0.5]
    assert (Path(str(out) + ".baselines") / "encoder_fp32.onnx").is_file()
    assert not Path(str(out) + ".work").joinpath("nothing").exists()


def test_fp16_encoder_is_written_gated_and_declared(exported, tiny_shop, tmp_path):
    """--fp16: the student as a float16 graph (float32 I/O), parity-gated, in the manifest, and the
    bundle opens on a board whose GPU providers can run it (the CPU provider stands in here)."""
    import onnx

    from shelfrank.device import Recommender
    from shelfrank.device.encoder import TextEncoder
    from shelfrank.device.text import item_text
    from shelfrank.testing import write_cpu_as_gpu_board

    out = exported.out
    m = bfmt.verify_bundle(out)
    entry = m["encoders"]["fp16"]
    assert entry["file"] == "encoder_fp16.onnx" and m["files"]["encoder_fp16.onnx"] == entry["sha256"]
    graph = onnx.load(str(out / "encoder_fp16.onnx")).graph
    assert [i.type.tensor_type.elem_type for i in graph.input] == [onnx.TensorProto.INT64] * 2
    assert graph.output[0].type.tensor_type.elem_type == onnx.TensorProto.FLOAT
    assert any(t.data_type == onnx.TensorProto.FLOAT16 for t in graph.initializer)
    q = json.loads((out / "quality.json").read_text())["parity_fp16"]
    assert q["vs_fp32"]["mean_cos"] >= 0.99 and q["vs_fp32"]["top10_overlap"] >= 0.9
    assert q["vs_int8"]["mean_cos"] >= 0.9 and entry["parity"]["vs_int8"] == {
        k: q["vs_int8"][k] for k in ("mean_cos", "min_cos", "top10_overlap", "texts")
    }
    assert "fp16 encoder for GPU providers" in (out / "quality.md").read_text()
    texts = [item_text(tiny_shop.catalog.record(i)) for i in range(8)]
    e16 = TextEncoder(out / "encoder_fp16.onnx", out / "tokenizer.json", max_len=m["model"]["max_len"]).encode(texts)
    e8 = TextEncoder(out / "encoder.onnx", out / "tokenizer.json", max_len=m["model"]["max_len"]).encode(texts)
    assert e16.dtype == np.float32 and float(np.min((e16 * e8).sum(1))) > 0.9
    board = write_cpu_as_gpu_board(tmp_path / "board.toml")
    rec = Recommender.open(out, board=str(board), state_dir=tmp_path / "state")
    try:
        assert rec.search(tiny_shop.catalog.titles[0], k=5)
        assert rec.encoder_info["file"] == "encoder_fp16.onnx" and rec.encoder_info["fallback_reason"] is None
    finally:
        rec.close()


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
        "encoder_fp16.onnx",
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


def test_fp16_parity_gate_names_the_fp16_encoder():
    from shelfrank.export.onnx_export import parity_gate

    figures = {"mean_cos": 0.95, "min_cos": 0.9, "top10_overlap": 0.97, "texts": 10}
    with pytest.raises(ParityError, match=r"^fp16 encoder \(against the fp32 student\) fails the parity gate"):
        parity_gate(figures, what="fp16 encoder (against the fp32 student)")
    parity_gate(figures, min_cos=0.9, what="fp16 encoder")  # passes: nothing raised


def test_report_warns_loudly_when_a_baseline_wins():
    """A shop where item-kNN out-ranks the bundle: a warning line per metric, in quality.json and quality.md."""
    from shelfrank.export.report import baseline_warnings, render_quality

    row = {"recall@10": 0.2, "recall@50": 0.4, "coverage@10": 0.5, "diversity@10": 0.3, "cases": 10}
    models = {
        "popularity": {**row, "ndcg@10": 0.01, "recall@10": 0.02, "recall@50": 0.05},
        "item-kNN": {**row, "ndcg@10": 0.12, "recall@10": 0.25},
        "student int8 hybrid (the bundle)": {**row, "ndcg@10": 0.10},
    }
    warnings = baseline_warnings(models)
    assert warnings == [
        "WARNING: the bundle ranks below item-kNN on NDCG@10: 0.1000 < 0.1200",
        "WARNING: the bundle ranks below item-kNN on Recall@10: 0.2000 < 0.2500",
    ]
    md = render_quality(
        {
            "dataset": "x",
            "split": "leave-one-out",
            "preset": "quick",
            "n_items": 5,
            "eval_cases": 10,
            "eval_cases_total": 10,
            "models": models,
            "warnings": warnings,
        }
    )
    assert "**WARNING: the bundle ranks below item-kNN on NDCG@10" in md
    models["item-kNN"]["ndcg@10"] = 0.05
    models["item-kNN"]["recall@10"] = 0.1
    assert baseline_warnings(models) == []
