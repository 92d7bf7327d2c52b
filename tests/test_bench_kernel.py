"""``shelfrank bench kernel`` runs end to end on a tiny catalog and writes a well-formed report.

A smoke test of the benchmark's plumbing, not of its figures. It passes its own small "real"
embeddings file, so it needs neither torch nor the data copy; faiss is used when installed.
"""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pytest

from shelfrank.bench import kernel as bench_kernel
from shelfrank.cli import build_parser


def test_bench_kernel_writes_report(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    rng = np.random.default_rng(0)
    emb = rng.standard_normal((300, 384)).astype(np.float32)
    emb /= np.linalg.norm(emb, axis=1, keepdims=True)
    npy = tmp_path / "emb.npy"
    np.save(npy, emb)
    out_json, out_md = tmp_path / "bench.json", tmp_path / "bench.md"
    args = build_parser().parse_args(
        [
            "bench",
            "kernel",
            "--sizes",
            "2000",
            "--threads",
            "1",
            "--repeats",
            "2",
            "--json",
            str(out_json),
            "--md",
            str(out_md),
            "--real-embeddings",
            str(npy),
        ]
    )

    assert bench_kernel.main(args) == 0

    report = json.loads(out_json.read_text())
    assert {
        "system",
        "config",
        "environment",
        "roofline_gbps",
        "cells",
        "recall_random",
        "recall_real",
        "rescore_cost_random",
        "targets",
    } <= set(report)
    assert report["config"]["sizes"] == [2000] and report["config"]["threads"] == [1]
    assert report["roofline_gbps"]["1"] > 0
    methods = {c["method"] for c in report["cells"]}
    assert {"numpy_fp32", "ours_fp32", "ours_int8"} <= methods
    for c in report["cells"]:
        assert c["n"] == 2000 and c["threads"] == 1
        assert len(c["times_ms"]) == 2 and c["median_ms"] > 0 and c["gbps"] > 0
        assert 0.0 <= c["recall_vs_numpy"] <= 1.0
    exact = {c["method"]: c["recall_vs_numpy"] for c in report["cells"]}
    assert exact["ours_fp32"] >= 0.9  # same exact search; only float rounding order differs
    (rand,) = report["recall_random"]
    assert 0.0 < rand["int8"]["recall"] <= 1.0
    assert rand["int8"]["recall"] <= rand["int8"]["recall_tie_aware"] + 1e-9
    real = report["recall_real"]
    assert real["available"] and real["n"] == 300 and real["queries"] == 300
    assert 0.0 < real["int8"]["recall"] <= 1.0
    assert set(real["rescore"]) == {"20", "50"}
    assert {t["target"] for t in report["targets"]}

    md = out_md.read_text()
    assert md.startswith("# shelfrank bench kernel")
    assert "| N | method | median ms |" in md and "recall@10" in md
    assert md in capsys.readouterr().out
