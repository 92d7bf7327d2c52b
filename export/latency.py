"""The report's latency table: 1 thread, batch 1, the teacher in torch against the device's encoders and tower."""

from __future__ import annotations

from collections.abc import Sequence
from pathlib import Path
from typing import Any

import numpy as np

from shelfrank.device.history import Step
from shelfrank.timing import time_calls


def encoder_latency(
    work: Path,
    tok_path: Path,
    teacher_enc,
    hist_tokens,
    *,
    hists: Sequence[Sequence[Step]],
    htexts: list[str],
    texts: list[str],
    rows: np.ndarray,
    rows8: np.ndarray,
    scales: np.ndarray,
    max_len: int,
    max_events: int,
    runs: int,
) -> dict[str, Any]:
    """p50/p95 of each path (``hists``/``htexts``: test histories and their history texts; ``texts``:
    the catalog's item texts; ``rows``: the bundle's dequantised rows, ``rows8``/``scales`` its int8)."""
    import torch

    from shelfrank.device.encoder import TextEncoder
    from shelfrank.device.kernel import topk
    from shelfrank.export.tower import onnx_tower
    from shelfrank.export.train import Tokens

    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    try:
        item_texts = texts[:50]
        # a fixed 128-token input (the packaged tokenizer's length): real tokens of the catalog text
        fixed = Tokens(str(tok_path), 128)([" ".join(texts[:200])])
        if fixed[0].shape[1] != 128:
            fixed = tuple(t.repeat(1, 128 // t.shape[1] + 1)[:, :128] for t in fixed)
        feeds128 = {"input_ids": fixed[0].numpy(), "attention_mask": fixed[1].numpy()}
        out: dict[str, Any] = {}
        cycle = iter(range(10**9))

        def teacher_hist():
            j = next(cycle) % len(htexts)
            with torch.inference_mode():
                teacher_enc(*hist_tokens([htexts[j]]))

        def teacher_fixed():
            with torch.inference_mode():
                teacher_enc(*fixed)

        out["teacher torch fp32, history text (real, ≤128 tokens)"] = time_calls(teacher_hist, runs)
        out["teacher torch fp32, 128 tokens"] = time_calls(teacher_fixed, runs)
        for name, f in (
            ("student int8 ONNX", "encoder.onnx"),
            ("student fp32 ONNX", "student_fp32.onnx"),
            ("teacher fp32 ONNX", "teacher_fp32.onnx"),
        ):
            enc = TextEncoder(work / f, tok_path, max_len=128)
            short = TextEncoder(work / f, tok_path, max_len=max_len)
            k = iter(range(10**9))
            out[f"{name}, 128 tokens"] = time_calls(lambda e=enc: e.run(feeds128), runs)
            out[f"{name}, item/search text (≤{max_len} tokens)"] = time_calls(
                lambda e=short, k=k: e.encode([item_texts[next(k) % len(item_texts)]]), runs
            )
            out[f"{name}, 128 tokens"]["file_mb"] = round((work / f).stat().st_size / 1e6, 2)
        # the device's recommend path: its tower feed, the ONNX tower, the int8 top-k
        users = onnx_tower(work / "user_tower.onnx", rows, max_events, threads=1)
        k2 = iter(range(10**9))

        def recommend():
            u = users([hists[next(k2) % len(hists)]])
            topk(u[0], rows8, 10, scales=scales)

        path = "recommend path: user tower ONNX + int8 top-k"
        out[path] = time_calls(recommend, runs)
        out[path]["file_mb"] = round((work / "user_tower.onnx").stat().st_size / 1e6, 3)
        base = out["teacher torch fp32, history text (real, ≤128 tokens)"]["p50_ms"]
        for v in out.values():
            v["speedup_vs_teacher_history"] = round(base / v["p50_ms"], 1)
        return out
    finally:
        torch.set_num_threads(threads)
