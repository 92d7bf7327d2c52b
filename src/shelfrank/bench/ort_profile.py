"""Which onnxruntime execution provider ran each node of the text encoder, from its profiler's trace:
so a CPU fallback is never taken for GPU speed (``shelfrank bench BUNDLE``'s encoder section)."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import numpy as np


def parse_profile(path: str | Path, *, skip_first_run: bool = True) -> dict[str, Any]:
    """Which execution provider ran each node type, from an onnxruntime profile (JSON trace).

    Node events (``cat == "Node"``) carry ``args.op_name`` and ``args.provider``. Nodes are counted
    once each; ``runs`` and kernel time ``us`` add up over the profiled runs, leaving out the
    first ``model_run`` (where TensorRT builds its engine) when there are several.

    Returns:
        {"by_op": {op: {provider: {"nodes", "runs", "us"}}}, "by_provider": {provider: {"nodes",
        "us", "time_share"}}, "model_runs": n}

    Raises:
        ValueError: the file is not a profile, or it holds no node events.
    """
    try:
        events = json.loads(Path(path).read_text())
    except (OSError, ValueError) as e:
        raise ValueError(f"{path}: not a readable onnxruntime profile: {e}") from e
    if not isinstance(events, list):
        raise ValueError(f"{path}: not an onnxruntime profile (expected a JSON list of trace events)")
    runs = sorted(
        (e["ts"], e["ts"] + e["dur"]) for e in events if e.get("cat") == "Session" and e.get("name") == "model_run"
    )
    warm = runs[0] if skip_first_run and len(runs) > 1 else None
    by_op: dict[str, dict[str, dict[str, Any]]] = {}
    for e in events:
        args = e.get("args") or {}
        if e.get("cat") != "Node" or "provider" not in args or "op_name" not in args:
            continue  # session events; fence events carry no provider
        cell = by_op.setdefault(args["op_name"], {}).setdefault(args["provider"], {"nodes": set(), "runs": 0, "us": 0})
        cell["nodes"].add(e["name"])
        if warm is None or not warm[0] <= e.get("ts", -1) <= warm[1]:
            cell["runs"] += 1
            cell["us"] += int(e.get("dur", 0))
    if not by_op:
        raise ValueError(f"{path}: no node events with a provider (was the profiler on during a run?)")
    by_provider: dict[str, dict[str, Any]] = {}
    for provs in by_op.values():
        for prov, cell in provs.items():
            cell["nodes"] = len(cell["nodes"])
            tot = by_provider.setdefault(prov, {"nodes": 0, "us": 0})
            tot["nodes"] += cell["nodes"]
            tot["us"] += cell["us"]
    total_us = sum(t["us"] for t in by_provider.values())
    for t in by_provider.values():
        t["time_share"] = t["us"] / total_us if total_us else 0.0
    return {
        "by_op": {op: dict(sorted(p.items())) for op, p in sorted(by_op.items())},
        "by_provider": dict(sorted(by_provider.items(), key=lambda kv: -kv[1]["us"])),
        "model_runs": len(runs),
    }


def encoder_provider_profile(enc, feeds: dict[str, np.ndarray], *, calls: int, prefix: str) -> dict[str, Any]:
    """Run ``enc``'s model (same file, threads, providers and options) ``calls`` + 1 times under
    onnxruntime's profiler; :func:`parse_profile` of the trace, the first run left out of the times."""
    from shelfrank.device.encoder import make_session

    sess = make_session(enc.model_path, threads=enc.threads, providers=enc.providers, profile_prefix=prefix)
    for _ in range(calls + 1):
        sess.run(["embedding"], feeds)
    path = sess.end_profiling()
    try:
        report = parse_profile(path)
    finally:
        Path(path).unlink(missing_ok=True)
    return {"calls": calls, "session_providers": list(sess.get_providers()), **report}
