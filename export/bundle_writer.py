"""Assemble and sign a bundle directory (atomically: a temporary folder renamed into place)."""

from __future__ import annotations

import datetime as _dt
import os
import shutil
import tempfile
from collections.abc import Mapping
from pathlib import Path
from typing import Any

import numpy as np

from shelfrank import __version__
from shelfrank.device import bundle as bfmt
from shelfrank.device.catalog_files import CatalogData, write_catalog_dir
from shelfrank.device.codes import catalog_mean, derive_codes
from shelfrank.device.text import ACTION_IDS, ITEM_FIELDS, SEPARATOR
from shelfrank.export.data import Dataset


def write_catalog(
    root: Path,
    ds: Dataset,
    rows8: np.ndarray,
    scales: np.ndarray,
    popularity: np.ndarray,
    neighbors: tuple[np.ndarray, np.ndarray] | None = None,
) -> dict:
    """The bundle's catalog (version 1) under ``root/catalog``; returns its manifest entry.

    With the binary codes of the two-pass scan (device/codes.py): ``codes.u8.npy`` beside the rows
    and the catalog mean, their centre, in the entry (``mean``).
    """
    items = [{**ds.catalog.record(i), "popularity": float(popularity[i])} for i in range(len(ds.catalog))]
    scales = scales.astype(np.float32)
    mean = catalog_mean(rows8, scales)
    data = CatalogData(items, rows8, scales, neighbors, derive_codes(rows8, scales, mean))
    data.check(int(rows8.shape[1]), f"{ds.name} catalog")
    files = write_catalog_dir(root / "catalog", data, fsync=False)
    return {
        "version": 1,
        "count": int(rows8.shape[0]),
        "dim": int(rows8.shape[1]),
        "dtype": "int8",
        "files": {role: f"catalog/{name}" for role, name in files.items()},
        "mean": [float(x) for x in mean],
    }


def replace_dir(tmp: Path, dst: Path) -> None:
    """Move a finished folder into place; an existing one is swapped out, then removed."""
    old = None
    if dst.exists():
        old = dst.with_name(f"{dst.name}.old-{os.getpid()}")
        os.rename(dst, old)
    os.rename(tmp, dst)
    if old is not None:
        shutil.rmtree(old, ignore_errors=True)


def write_bundle(
    out: str | Path,
    ds: Dataset,
    *,
    encoder: Path,
    tokenizer: Path,
    tower: Path,
    rows8: np.ndarray,
    scales: np.ndarray,
    popularity: np.ndarray,
    key: Any,
    neighbors: tuple[np.ndarray, np.ndarray] | None = None,
    ranker: Mapping[str, Any] | None = None,
    max_len: int,
    max_events: int,
    model: Mapping[str, Any] | None = None,
    extra_files: Mapping[str, str | bytes] | None = None,
    meta: Mapping[str, Any] | None = None,
    encoders: Mapping[str, tuple[Path, Mapping[str, Any]]] | None = None,
) -> dict[str, Any]:
    """Write the bundle of DESIGN.md at ``out`` and sign it with ``key`` (an Ed25519 private key).

    ``model`` adds fields to the manifest's model entry; ``extra_files`` maps bundle-relative names
    to text/bytes written as they are (quality reports, logs); ``meta`` adds top-level fields;
    ``encoders`` = {variant: (onnx file, manifest fields)} adds alternative encoders of the same
    embedding function (``fp16`` for GPU providers) as ``encoder_<variant>.onnx``, declared in the
    manifest's ``encoders`` table. ``neighbors`` (int32 ids, float16 weights, (N, M)) is the
    hybrid ranker's co-occurrence table in the catalog folder, ``ranker`` its manifest entry
    (``RankerParams.to_manifest``); a runtime that predates them ignores both.
    """
    out = Path(out)
    out.parent.mkdir(parents=True, exist_ok=True)
    tmp = Path(tempfile.mkdtemp(prefix=out.name + ".", dir=out.parent))
    try:
        shutil.copy2(encoder, tmp / "encoder.onnx")
        shutil.copy2(tokenizer, tmp / "tokenizer.json")
        shutil.copy2(tower, tmp / "user_tower.onnx")
        variants: dict[str, Any] = {}
        for variant, (src, fields) in (encoders or {}).items():
            name = f"encoder_{variant}.onnx"
            shutil.copy2(src, tmp / name)
            variants[variant] = {**fields, "file": name, "sha256": bfmt.sha256_file(tmp / name)}
        catalog = write_catalog(tmp, ds, rows8, scales, popularity, neighbors)
        for name, content in (extra_files or {}).items():
            (tmp / name).write_bytes(content if isinstance(content, bytes) else content.encode("utf-8"))
        d = int(rows8.shape[1])
        manifest: dict[str, Any] = {
            "created_at": _dt.datetime.now(_dt.timezone.utc).isoformat(timespec="seconds"),
            "generator": f"shelfrank {__version__}",
            "dataset": ds.name,
            **(meta or {}),
            "model": {
                "file": "encoder.onnx",
                "dim": d,
                "max_len": int(max_len),
                "pooling": "mean",
                "normalized": True,
                "inputs": ["input_ids", "attention_mask"],
                "output": "embedding",
                **(model or {}),
                "sha256": bfmt.sha256_file(tmp / "encoder.onnx"),
            },
            "tokenizer": {
                "file": "tokenizer.json",
                "padding": "longest",
                "truncation": int(max_len),
                "sha256": bfmt.sha256_file(tmp / "tokenizer.json"),
            },
            "text": {"item_fields": list(ITEM_FIELDS), "separator": SEPARATOR},
            "catalog": {**catalog, "sha256": {k: bfmt.sha256_file(tmp / f) for k, f in catalog["files"].items()}},
            "user_tower": {
                "kind": "sequence",
                "file": "user_tower.onnx",
                "sha256": bfmt.sha256_file(tmp / "user_tower.onnx"),
                "max_events": int(max_events),
                "order": "newest first",
                "action_ids": dict(ACTION_IDS),
                "inputs": {
                    "names": ["item_vecs", "actions", "mask"],
                    "dtypes": ["float32", "int64", "float32"],
                    "shapes": [["batch", max_events, d], ["batch", max_events], ["batch", max_events]],
                },
                "output": {"name": "user", "dim": d, "normalized": True},
                "item_vecs": "catalog rows dequantised (int8 × scale)",
            },
        }
        if variants:
            manifest["encoders"] = variants
        if ranker is not None:
            manifest["ranker"] = dict(ranker)
        manifest = bfmt.sign_bundle(tmp, manifest, key)
        replace_dir(tmp, out)
        return manifest
    except BaseException:
        shutil.rmtree(tmp, ignore_errors=True)
        raise
