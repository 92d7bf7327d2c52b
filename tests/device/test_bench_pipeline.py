"""``shelfrank bench BUNDLE`` on the tiny bundle: the report's structure, not its timings."""

from __future__ import annotations

import json

from shelfrank.cli import main
from shelfrank.device import active_isa


def test_bench_bundle_report(bundle_and_key, tmp_path, capsys):
    bundle, pub = bundle_and_key
    out = tmp_path / "b.json"
    args = [
        "bench",
        str(bundle),
        "--sizes",
        "400,1500",
        "--repeats",
        "3",
        "--board",
        "rpi5",
        "--json",
        str(out),
        "--md",
        str(tmp_path / "b.md"),
        "--plot",
        str(tmp_path / "b.png"),
    ]
    if pub:
        args += ["--public-key", str(pub)]
    assert main(args) == 0
    rep = json.loads(out.read_text())
    assert set(rep["sizes"]) == {"400", "1500"}
    e = rep["sizes"]["1500"]
    for stage in (
        "history read",
        "user tower (incl. history read)",
        "int8 top-k",
        "int8 top-k, 2 threads",
        "recommend end to end",
    ):
        assert e["recommend"][stage]["p50_ms"] > 0
    enc = rep["encoder"]
    assert e["search"][f"encode ({enc['precision']} ONNX)"]["p50_ms"] > 0
    # rpi5 has no GPU providers: the bundle's encoder on the CPU, and the profile says every node ran there
    assert enc["file"] == "encoder.onnx" and enc["fallback_reason"] is None
    assert set(enc["profile"]["by_provider"]) == {"CPUExecutionProvider"}
    assert {"Gather", "ReduceSum", "Div"} <= set(enc["profile"]["by_op"])
    assert e["naive"].startswith("not available")
    assert e["baselines"]["numpy fp32 scan (matmul + argpartition)"]["p50_ms"] > 0
    assert e["baselines"]["encode (fp32 ONNX student, baselines)"].startswith("not available")
    assert 0 < rep["bundle_open"]["import_s"] < 30 and rep["process_at_max_size"]["peak_rss_mb"] > 10
    # rpi5 expects neon_dot: only a dotprod ARM core (e.g. emulated Cortex-A76) matches it
    expected = "matches" if active_isa() == "neon_dot" else "NOT this board"
    assert expected in rep["board"]["this_machine"]
    md = (tmp_path / "b.md").read_text()
    assert "recommend end to end" in md and "rpi5" in md
    assert "Text encoder: which provider ran what" in md and "| Gather | CPUExecutionProvider |" in md
    assert (tmp_path / "b.png").read_bytes()[:4] == b"\x89PNG"
    capsys.readouterr()
