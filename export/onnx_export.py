"""ONNX export, dynamic int8 quantisation, the fp16 encoder for GPU providers (gated, with its manifest
entry), and the parity gates."""

from __future__ import annotations

import logging
import warnings
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import numpy as np
import torch

from shelfrank.device.encoder import TextEncoder
from shelfrank.device.history import TOWER_INPUTS
from shelfrank.errors import ParityError
from shelfrank.export.models import MeanPoolEncoder, SequenceTower

logger = logging.getLogger(__name__)

OPSET = 17


def _export(
    module: torch.nn.Module, args: tuple, path: Path, names: list[str], output: str, dynamic: dict[str, dict[int, str]]
) -> None:
    module.eval()
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")  # the TorchScript exporter is chatty about tracing
        torch.onnx.export(
            module,
            args,
            str(path),
            input_names=names,
            output_names=[output],
            dynamic_axes=dynamic,
            opset_version=OPSET,
            dynamo=False,
            do_constant_folding=True,
        )


def export_encoder(encoder: MeanPoolEncoder, path: str | Path) -> Path:
    """fp32 ONNX: (input_ids, attention_mask) int64 → embedding float32 (mean-pooled, normalised)."""
    path = Path(path)
    ids = torch.ones(2, 8, dtype=torch.long)
    mask = torch.ones(2, 8, dtype=torch.long)
    dyn = {
        "input_ids": {0: "batch", 1: "tokens"},
        "attention_mask": {0: "batch", 1: "tokens"},
        "embedding": {0: "batch"},
    }
    _export(encoder, (ids, mask), path, ["input_ids", "attention_mask"], "embedding", dyn)
    return path


def export_tower(tower: SequenceTower, path: str | Path) -> Path:
    """fp32 ONNX of the user tower: item_vecs (B, L, d), actions (B, L) int64, mask (B, L) → user."""
    path = Path(path)
    L, d = tower.max_events, tower.dim
    args = (torch.zeros(1, L, d), torch.zeros(1, L, dtype=torch.long), torch.ones(1, L))
    dyn = {name: {0: "batch"} for name in (*TOWER_INPUTS, "user")}
    _export(tower, args, path, list(TOWER_INPUTS), "user", dyn)
    return path


def quantize_int8(fp32_path: str | Path, int8_path: str | Path) -> Path:
    """Dynamic int8: per-channel QInt8 weights, reduce_range off (per-tensor lost fidelity on MiniLM)."""
    from onnxruntime.quantization import QuantType, quantize_dynamic

    quantize_dynamic(
        str(fp32_path),
        str(int8_path),
        per_channel=True,
        reduce_range=False,
        weight_type=QuantType.QInt8,
        op_types_to_quantize=["MatMul", "Gather"],
    )
    return Path(int8_path)


def convert_fp16(fp32_path: str | Path, fp16_path: str | Path) -> Path:
    """The fp32 encoder's graph in float16 for GPU providers (CUDA, TensorRT), inputs/outputs unchanged.

    onnxruntime's converter (``onnxruntime.transformers.float16``, shipped with onnxruntime: no
    extra dependency) with ``keep_io_types``: int64 token inputs, a float32 ``embedding`` output
    (one Cast at the end), so the device feeds and reads it exactly like the int8 encoder. Its
    default block list keeps ops without float16 kernels in float32.
    """
    import onnx
    from onnxruntime.transformers.float16 import convert_float_to_float16

    model = convert_float_to_float16(onnx.load(str(fp32_path)), keep_io_types=True)
    onnx.save(model, str(fp16_path))
    return Path(fp16_path)


def parity(
    fp32: TextEncoder, int8: TextEncoder, texts: Sequence[str], catalog_fp32: np.ndarray, *, k: int = 10
) -> dict[str, float]:
    """Mean/min cosine of int8 vs fp32 embeddings of held-out texts, and the overlap of their
    top-k neighbours in the (fp32) catalog."""
    from shelfrank.device.kernel import topk

    a = fp32.encode(texts)
    b = int8.encode(texts)
    cos = (a * b).sum(1) / np.maximum(np.linalg.norm(a, axis=1) * np.linalg.norm(b, axis=1), 1e-12)
    ia, _ = topk(a, catalog_fp32, k)
    ib, _ = topk(b, catalog_fp32, k)
    overlap = np.mean([len(set(x) & set(y)) / k for x, y in zip(ia.tolist(), ib.tolist(), strict=True)])
    return {
        "mean_cos": float(cos.mean()),
        "min_cos": float(cos.min()),
        f"top{k}_overlap": float(overlap),
        "texts": len(texts),
    }


def parity_gate(
    figures: dict[str, float], *, min_cos: float = 0.99, min_overlap: float = 0.9, what: str = "int8 encoder"
) -> None:
    """Raise ParityError (with the figures) unless mean cos ≥ min_cos and top-10 overlap ≥ min_overlap."""
    ok = figures["mean_cos"] >= min_cos and figures["top10_overlap"] >= min_overlap
    if not ok:
        raise ParityError(
            f"{what} fails the parity gate: mean cosine {figures['mean_cos']:.4f} (need ≥ {min_cos}), "
            f"top-10 overlap {figures['top10_overlap']:.3f} (need ≥ {min_overlap}) on {figures['texts']} "
            "held-out texts; no bundle written"
        )


def fp16_encoder(
    work: Path,
    tok_path: Path,
    max_len: int,
    held: list[str],
    enc32,
    enc8,
    s32_rows: np.ndarray,
    s8_rows: np.ndarray,
    thresholds: tuple[float, float],
) -> dict[str, Any]:
    """``work/encoder_fp16.onnx`` from the fp32 student, gated against fp32 and against the int8 encoder.

    Measured with onnxruntime's CPU provider, which runs the float16 graph correctly but inserts
    float32 Casts around the nodes it has no float16 kernel for (MatMul, Add, Softmax's parts…): the
    figures bound the float16 weights and the float16 nodes it does run, not a GPU's float16
    arithmetic.
    """
    path = convert_fp16(work / "student_fp32.onnx", work / "encoder_fp16.onnx")
    enc16 = TextEncoder(path, tok_path, max_len=max_len)
    figures = {
        "vs_fp32": parity(enc32, enc16, held, s32_rows),
        # the device mixes fp16 search queries with the int8 encoder's catalog rows
        "vs_int8": parity(enc8, enc16, held, s8_rows),
        "provider": "CPUExecutionProvider",
        "file_mb": round(path.stat().st_size / 1e6, 2),
    }
    for name, what in (("vs_fp32", "the fp32 student"), ("vs_int8", "the int8 encoder (whose rows the catalog holds)")):
        f = figures[name]
        logger.info(
            "parity fp16 vs %s: mean cos %.5f, min %.5f, top-10 overlap %.3f",
            name[3:],
            f["mean_cos"],
            f["min_cos"],
            f["top10_overlap"],
        )
        parity_gate(f, min_cos=thresholds[0], min_overlap=thresholds[1], what=f"fp16 encoder (against {what})")
    return figures


def fp16_manifest(figures: dict[str, Any]) -> dict[str, Any]:
    keep = ("mean_cos", "min_cos", "top10_overlap", "texts")
    return {
        "precision": "fp16",
        "io": "int64 input_ids/attention_mask → float32 embedding (as the int8 encoder)",
        "source": "the fp32 student, onnxruntime.transformers.float16 (keep_io_types)",
        "for": "gpu_providers of a board config (CUDA, TensorRT); the catalog rows stay the int8 encoder's",
        "parity": {k: {m: figures[k][m] for m in keep} for k in ("vs_fp32", "vs_int8")},
    }
