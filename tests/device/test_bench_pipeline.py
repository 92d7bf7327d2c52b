"""``shelfrank bench BUNDLE`` on the tiny bundle: the report's structure, not its timings."""

from __future__ import annotations

import json

import numpy as np

from shelfrank.bench.expand import expand_catalog
from shelfrank.cli import main
from shelfrank.device import active_isa
from shelfrank.device.catalog_files import CatalogData


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
    h = e["hybrid"]  # the tiny bundle has no ranker entry: default parameters, random neighbours
    assert h["hybrid"]["p50_ms"] > 0 and h["tower"]["p50_ms"] > 0 and h["hybrid"]["n"] == h["tower"]["n"] == 3
    assert h["ratio_p50"] == h["hybrid"]["p50_ms"] / h["tower"]["p50_ms"] and h["candidates"] > 10
    assert {"fuse + sort", "neighbour gather + unique + sums (cooc_scores)"} <= set(h["stages_p50_ms"])
    assert all(ms >= 0 for ms in h["stages_p50_ms"].values())
    nb = h["neighbors"]
    assert nb["m"] == 50 and nb["table_bytes"] == 1500 * 50 * 6 and nb["rows_bytes"] == 1500 * 16
    assert "the bundle has no ranker entry" in rep["ranker"]
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
    assert "recommend end to end" in md and "rpi5" in md and "Hybrid ranker against the tower-only path" in md
    assert "Text encoder: which provider ran what" in md and "| Gather | CPUExecutionProvider |" in md
    assert (tmp_path / "b.png").read_bytes()[:4] == b"\x89PNG"
    # the plot's stacked parts: the tower, the scan the planner ran (exact at 1,500 rows), the rest
    from shelfrank.bench.pipeline_record import recommend_parts

    parts = recommend_parts(e)
    assert e["scan"]["scan"] == "exact" and [name for name, _ in parts][1] == "exact int8 scan"
    assert [ms for _, ms in parts] == [
        e["recommend"]["user tower (incl. history read)"]["p50_ms"],
        e["recommend"]["int8 top-k"]["p50_ms"],
        e["rest_p50_ms"],
    ]
    capsys.readouterr()


def _base(n: int, m: int | None, dim: int = 4) -> CatalogData:
    rng = np.random.default_rng(1)
    items = [{"item_id": f"i{j}", "title": f"t{j}"} for j in range(n)]
    rows = rng.integers(-127, 128, (n, dim)).astype(np.int8)
    nbr = None
    if m is not None:
        ids = np.stack([rng.permutation(n)[:m] for _ in range(n)]).astype(np.int32)
        ids[:, -1] = -1  # padding stays padding
        nbr = (ids, np.where(ids >= 0, 0.5, 0).astype(np.float16))
    return CatalogData(items, rows, np.full(n, 1 / 127, np.float32), nbr)


def test_expand_catalog_random_neighbours():
    """No table in the bundle: 50 distinct neighbours per item, never itself, decaying weights."""
    data = expand_catalog(_base(7, None), 1000)
    data.check(4, "expanded")
    ids, w = data.neighbors
    assert ids.shape == w.shape == (1000, 50) and ids.dtype == np.int32 and w.dtype == np.float16
    srt = np.sort(ids, axis=1)
    assert (srt[:, 1:] != srt[:, :-1]).all() and (ids != np.arange(1000)[:, None]).all()
    assert (np.diff(w.astype(np.float32), axis=1) < 0).all()
    # fewer items than M: every other item once, the rest padded
    ids, w = expand_catalog(_base(7, None), 5).neighbors
    assert (np.sort(ids[:, :4], axis=1) == [[j for j in range(5) if j != i] for i in range(5)]).all()
    assert (ids[:, 4:] == -1).all() and (w[:, 4:] == 0).all()


def test_expand_catalog_maps_the_bundle_table_into_each_copy():
    base = _base(10, 6)
    data = expand_catalog(base, 25)
    data.check(4, "expanded")
    ids, w = data.neighbors
    bid, bw = base.neighbors
    assert ids.shape == (25, 6) and (w == bw[np.arange(25) % 10]).all()
    for j in range(25):
        c, b = divmod(j, 10)
        want = [x if x < 0 or x + 10 * c >= 25 else x + 10 * c for x in bid[b].tolist()]
        assert ids[j].tolist() == want
