"""The Jetson GPU path on a machine without a GPU: which text encoder a board gets, and why.

The bundle carries an fp16 twin of the tiny encoder (``encoders.fp16``). This onnxruntime build
has only the CPU provider, so a Jetson config must fall back to the CPU encoder and say why; a
board config whose ``gpu_providers`` names the CPU provider exercises the path that keeps the
fp16 encoder. No torch.
"""

from __future__ import annotations

import json
import logging
import shutil
import warnings
from pathlib import Path

import numpy as np
import pytest

from shelfrank.device import Recommender
from shelfrank.device import bundle as bfmt
from shelfrank.errors import BundleError
from shelfrank.testing import build_device_bundle, publisher_key, write_cpu_as_gpu_board


@pytest.fixture(scope="module")
def fp16_bundle(tmp_path_factory) -> tuple[Path, Path, Path]:
    root = tmp_path_factory.mktemp("fp16-bundle")
    bundle, pub = build_device_bundle(root, n_items=120, seed=7, fp16=True)
    return bundle, pub, publisher_key(bundle)


@pytest.fixture()
def fp16_copy(fp16_bundle, tmp_path) -> Path:
    dst = tmp_path / "bundle"
    shutil.copytree(fp16_bundle[0], dst)
    return dst


def _board(tmp_path: Path, *gpu_providers: str) -> str:
    return str(
        write_cpu_as_gpu_board(tmp_path / "board.toml", gpu_providers=gpu_providers or ("CPUExecutionProvider",))
    )


def _resign(bundle: Path, key: Path) -> None:
    """Re-sign after a test replaced the fp16 file (the publisher's own key: a valid, signed bundle)."""
    m = json.loads((bundle / bfmt.MANIFEST).read_text())
    m["encoders"]["fp16"]["sha256"] = bfmt.sha256_file(bundle / m["encoders"]["fp16"]["file"])
    bfmt.sign_bundle(bundle, {k: v for k, v in m.items() if k != "files"}, bfmt.load_private_key(key))


def _open(bundle: Path, pub: Path, tmp_path: Path, board: str | None) -> Recommender:
    return Recommender.open(bundle, public_key=pub, state_dir=tmp_path / "state", board=board)


def test_manifest_declares_the_fp16_encoder_in_format_1(fp16_bundle):
    bundle, pub, _ = fp16_bundle
    m = bfmt.verify_bundle(bundle, public_key=pub)
    assert m["format_version"] == 1  # additive: an older runtime verifies the file and runs encoder.onnx
    entry = m["encoders"]["fp16"]
    assert entry["file"] == "encoder_fp16.onnx" and m["files"][entry["file"]] == entry["sha256"]


def test_jetson_falls_back_to_the_cpu_encoder_with_the_reason(fp16_bundle, tmp_path, caplog):
    bundle, pub, _ = fp16_bundle
    rec = _open(bundle, pub, tmp_path, "jetson-orin-nano")
    try:
        assert rec.encoder_info == {
            "loaded": False,
            "gpu_providers": ["TensorrtExecutionProvider", "CUDAExecutionProvider"],
        }
        with caplog.at_level(logging.WARNING, logger="shelfrank"):
            got = rec.search("wireless controller", k=5)
        assert got
        info = rec.encoder_info
        assert (
            info["loaded"] and info["file"] == "encoder.onnx" and info["session_providers"] == ["CPUExecutionProvider"]
        )
        assert "not available in this onnxruntime build" in info["fallback_reason"]
        assert "TensorrtExecutionProvider" in caplog.text and "not available in this onnxruntime build" in caplog.text
        assert "encoder.onnx" in caplog.text  # the warning names what runs instead
    finally:
        rec.close()


def test_jetson_with_a_bundle_without_fp16_says_so(tmp_path, caplog):
    bundle, pub = build_device_bundle(tmp_path / "plain", n_items=60, seed=3)
    assert "encoders" not in bfmt.verify_bundle(bundle, public_key=pub)
    rec = _open(bundle, pub, tmp_path, "jetson-agx-orin")
    try:
        with caplog.at_level(logging.WARNING, logger="shelfrank"):
            rec.search("tent", k=3)
        assert "no fp16 encoder" in rec.encoder_info["fallback_reason"]
        assert "export it with 'shelfrank export --fp16'" in caplog.text
    finally:
        rec.close()


def test_boards_without_gpu_providers_never_try_fp16(fp16_bundle, tmp_path, caplog):
    bundle, pub, _ = fp16_bundle
    for board in (None, "rpi5"):
        rec = _open(bundle, pub, tmp_path / str(board), board)
        try:
            with caplog.at_level(logging.WARNING, logger="shelfrank"):
                rec.search("tent", k=3)
            info = rec.encoder_info
            assert info["file"] == "encoder.onnx" and info["fallback_reason"] is None and info["gpu_providers"] == []
        finally:
            rec.close()
    assert "GPU providers" not in caplog.text


def test_fp16_encoder_is_kept_when_its_provider_registers(fp16_bundle, tmp_path, caplog):
    bundle, pub, _ = fp16_bundle
    rec = _open(bundle, pub, tmp_path, _board(tmp_path))
    ref = _open(bundle, pub, tmp_path / "ref", None)
    try:
        with caplog.at_level(logging.WARNING, logger="shelfrank"):
            got = rec.search("wireless controller", k=8)
        info = rec.encoder_info
        assert info["file"] == "encoder_fp16.onnx" and info["precision"] == "fp16"
        assert info["fallback_reason"] is None and info["session_providers"] == ["CPUExecutionProvider"]
        assert "GPU providers" not in caplog.text
        # fp16 queries against the catalog's rows (made by the other encoder) rank like its own queries
        want = ref.search("wireless controller", k=8)
        assert [i.item_id for i in got[:5]] == [i.item_id for i in want[:5]]
        np.testing.assert_allclose([i.score for i in got], [i.score for i in want], atol=5e-3)
        q16, q32 = rec.encoder.encode(["nimbus trail tent"])[0], ref.encoder.encode(["nimbus trail tent"])[0]
        assert float(q16 @ q32) > 0.999
    finally:
        rec.close()
        ref.close()


def test_provider_missing_from_the_session_is_a_fallback(fp16_bundle, tmp_path, monkeypatch, caplog):
    """onnxruntime drops a provider it cannot start and runs on the CPU by itself; that is caught."""
    import onnxruntime as ort

    bundle, pub, _ = fp16_bundle
    real = ort.get_available_providers
    monkeypatch.setattr(ort, "get_available_providers", lambda: ["CUDAExecutionProvider", *real()])
    rec = _open(bundle, pub, tmp_path, _board(tmp_path, "CUDAExecutionProvider"))
    try:
        with warnings.catch_warnings(), caplog.at_level(logging.WARNING, logger="shelfrank"):
            warnings.simplefilter("ignore")  # onnxruntime's own "not in available provider names"
            rec.search("tent", k=3)
        reason = rec.encoder_info["fallback_reason"]
        assert reason.startswith("session creation fell back") and "CUDAExecutionProvider" in reason
        assert rec.encoder_info["file"] == "encoder.onnx"
    finally:
        rec.close()


def test_fp16_session_that_cannot_be_created_is_a_fallback(fp16_bundle, fp16_copy, tmp_path, caplog):
    _, pub, key = fp16_bundle
    (fp16_copy / "encoder_fp16.onnx").write_bytes(b"not an onnx model")
    _resign(fp16_copy, key)
    rec = _open(fp16_copy, pub, tmp_path, _board(tmp_path))
    try:
        with caplog.at_level(logging.WARNING, logger="shelfrank"):
            assert rec.search("tent", k=3)
        reason = rec.encoder_info["fallback_reason"]
        assert reason.startswith("session creation failed") and "encoder_fp16.onnx" in reason
        assert "session creation failed" in caplog.text
    finally:
        rec.close()


def test_fp16_encoder_giving_nan_is_refused_by_the_first_run(fp16_bundle, fp16_copy, tmp_path):
    """An fp16 graph whose output is NaN/inf (what float16 overflow gives on a GPU) never serves a query.

    The CPU provider computes MatMul/Add/ReduceSum of an fp16 graph in float32 (it inserts Casts),
    so large values do not overflow here; an embedding table of inf stands in for the overflow.
    """
    import onnx
    from onnx import numpy_helper

    _, pub, key = fp16_bundle
    path = fp16_copy / "encoder_fp16.onnx"
    model = onnx.load(str(path))
    w = next(t for t in model.graph.initializer if t.name == "W")
    w.CopyFrom(numpy_helper.from_array(np.full(numpy_helper.to_array(w).shape, np.inf, np.float16), "W"))
    onnx.save(model, str(path))
    _resign(fp16_copy, key)
    rec = _open(fp16_copy, pub, tmp_path, _board(tmp_path))
    try:
        assert rec.search("nimbus trail tent", k=3)
        reason = rec.encoder_info["fallback_reason"]
        assert reason.startswith("the first fp16 run failed") and "NaN/inf" in reason
    finally:
        rec.close()


def test_encoder_entries_are_checked_against_the_signed_files(fp16_bundle, fp16_copy):
    _, pub, key = fp16_bundle
    m = json.loads((fp16_copy / bfmt.MANIFEST).read_text())
    m.pop("files")
    m["encoders"]["fp16"]["sha256"] = "0" * 64
    bfmt.sign_bundle(fp16_copy, m, bfmt.load_private_key(key))
    with pytest.raises(BundleError, match=r"encoders\.fp16 file 'encoder_fp16\.onnx' is not in the signed"):
        Recommender.open(fp16_copy, public_key=pub)
    m["encoders"]["fp16"] = {"file": "encoder_fp16.onnx"}
    bfmt.sign_bundle(fp16_copy, m, bfmt.load_private_key(key))
    with pytest.raises(BundleError, match=r"'encoders\[\.\.\.\]': Object missing required field `sha256`"):
        bfmt.verify_bundle(fp16_copy, public_key=pub)


def test_a_changed_fp16_file_is_caught_at_open(fp16_bundle, fp16_copy, tmp_path):
    _, pub, _ = fp16_bundle
    p = fp16_copy / "encoder_fp16.onnx"
    data = bytearray(p.read_bytes())
    data[len(data) // 2] ^= 0x01
    p.write_bytes(bytes(data))
    with pytest.raises(BundleError, match=r"encoder_fp16\.onnx: sha256 differs"):
        Recommender.open(fp16_copy, public_key=pub, state_dir=tmp_path / "s")


def test_info_reports_the_choice(fp16_bundle, capsys):
    from shelfrank.cli import main

    bundle, _, _ = fp16_bundle
    assert main(["info", "--json", "--bundle", str(bundle), "--board", "jetson-orin-nano"]) == 0
    choice = json.loads(capsys.readouterr().out)["text_encoder"]
    assert choice["file"] == "encoder.onnx" and "not available" in choice["fallback_reason"]


# ---- the bench's provider report --------------------------------------------------------------


def test_profile_of_the_tiny_encoder_is_all_cpu(fp16_bundle, tmp_path):
    from shelfrank.bench.ort_profile import encoder_provider_profile
    from shelfrank.device.encoder import TextEncoder

    bundle, _, _ = fp16_bundle
    for name in ("encoder.onnx", "encoder_fp16.onnx"):
        enc = TextEncoder(bundle / name, bundle / "tokenizer.json", max_len=32)
        prof = encoder_provider_profile(enc, enc.tokenize(["nimbus trail tent"]), calls=3, prefix=str(tmp_path / "p"))
        assert prof["calls"] == 3 and prof["model_runs"] == 4 and prof["session_providers"] == ["CPUExecutionProvider"]
        assert {"Gather", "ReduceSum", "Max", "Div", "ReduceL2"} <= set(prof["by_op"])
        for op, provs in prof["by_op"].items():
            assert list(provs) == ["CPUExecutionProvider"], op
            assert provs["CPUExecutionProvider"]["runs"] == 3 * provs["CPUExecutionProvider"]["nodes"], op
        assert prof["by_provider"]["CPUExecutionProvider"]["time_share"] == 1.0
        assert not list(tmp_path.glob("p*.json"))  # the trace is removed once read
    # the fp16 graph on the CPU provider: the casts it inserts show up as nodes of their own
    assert "Cast" in prof["by_op"]


def _event(cat, name, ts, dur, **args):
    return {"cat": cat, "name": name, "ts": ts, "dur": dur, "ph": "X", "args": args}


def test_parse_profile_splits_providers_and_leaves_out_the_warm_up_run(tmp_path):
    from shelfrank.bench.ort_profile import parse_profile

    events = [_event("Session", "session_initialization", 0, 50)]
    for run, t0 in enumerate((100, 1000, 2000)):
        events.append(_event("Session", "model_run", t0, 500))
        trt = 400 if run == 0 else 40  # the first run builds the engine
        events += [
            _event(
                "Node",
                "TRTKernel_graph_0_kernel_time",
                t0 + 1,
                trt,
                op_name="TRTKernel_graph_0",
                provider="TensorrtExecutionProvider",
            ),
            _event(
                "Node", "/pool/ReduceSum_kernel_time", t0 + 450, 5, op_name="ReduceSum", provider="CPUExecutionProvider"
            ),
            _event(
                "Node", "/norm/ReduceL2_kernel_time", t0 + 460, 5, op_name="ReduceL2", provider="CPUExecutionProvider"
            ),
            _event("Node", "/norm/ReduceL2_fence_before", t0 + 459, 0),
        ]
    path = tmp_path / "trace.json"
    path.write_text(json.dumps(events))
    rep = parse_profile(path)
    assert rep["model_runs"] == 3
    assert rep["by_op"]["TRTKernel_graph_0"] == {"TensorrtExecutionProvider": {"nodes": 1, "runs": 2, "us": 80}}
    assert rep["by_op"]["ReduceSum"] == {"CPUExecutionProvider": {"nodes": 1, "runs": 2, "us": 10}}
    assert list(rep["by_provider"]) == ["TensorrtExecutionProvider", "CPUExecutionProvider"]
    assert rep["by_provider"]["TensorrtExecutionProvider"]["time_share"] == pytest.approx(80 / 100)
    assert rep["by_provider"]["CPUExecutionProvider"]["nodes"] == 2
    assert (
        parse_profile(path, skip_first_run=False)["by_op"]["TRTKernel_graph_0"]["TensorrtExecutionProvider"]["us"]
        == 480
    )
    path.write_text(json.dumps([_event("Session", "model_run", 0, 5)]))
    with pytest.raises(ValueError, match="no node events with a provider"):
        parse_profile(path)
    path.write_text("{}")
    with pytest.raises(ValueError, match="not an onnxruntime profile"):
        parse_profile(path)


def test_bench_on_a_jetson_config_reports_the_cpu_fallback(fp16_bundle, tmp_path, caplog):
    from shelfrank.bench.pipeline import run_bench
    from shelfrank.bench.pipeline_record import render

    bundle, pub, _ = fp16_bundle
    with caplog.at_level(logging.WARNING, logger="shelfrank"):
        rep = run_bench(
            bundle, public_key=str(pub), sizes=[200], runs=2, baselines=None, board="jetson-orin-nano", probe_queries=2
        )
    enc = rep["encoder"]
    assert enc["file"] == "encoder.onnx" and "not available in this onnxruntime build" in enc["fallback_reason"]
    assert enc["gpu_providers"] == ["TensorrtExecutionProvider", "CUDAExecutionProvider"]
    assert set(enc["profile"]["by_provider"]) == {"CPUExecutionProvider"}
    md = render(rep)
    assert "**CPU fallback**" in md and "The encoder figures are CPU figures" in md
