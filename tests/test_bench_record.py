"""Every bench's record through every printer: Markdown, JSON and CSV each emit every field.

One record per bench, from a real (tiny) run for the kernel and the pipeline bench and from a
recorded wrk result for the serve bench (wrk and a server are the load test's business,
tests/serve/test_load.py); then each printer over that one record.
"""

from __future__ import annotations

import csv
import dataclasses
import io
import json
from pathlib import Path

import numpy as np
import pytest

from shelfrank.bench.kernel import run_benchmark
from shelfrank.bench.pipeline import run_bench
from shelfrank.bench.record import PRINTERS, Record, Table, col, get_fields, to_csv, to_json, to_markdown
from shelfrank.bench.serve import ServeRecord


@dataclasses.dataclass(kw_only=True)
class _Row:
    n: int = col("N", ",")
    name: str = col("name", align="l")
    ms: float | None = col("ms", ".3f", default=None)
    samples: list[float] = col("samples", ".1f")  # noqa: RUF009 (col is a field())


@dataclasses.dataclass(kw_only=True)
class _Tiny(Record):
    system: dict
    rows: list[_Row]

    def facts(self):
        return [("cpu", self.system["cpu"])]

    def tables(self):
        return [Table("rows", "Rows", self.rows, "a note", _Row), Table("empty", "Nothing", [], row_type=_Row)]


def _check_printers(rec: Record) -> None:
    """md: every fact label and every column label of every table; csv: one line per row with every
    field of its table; json: the record's document, every field of the record by name."""
    tables = rec.tables()
    assert tables
    md = to_markdown(rec)
    assert md.startswith(f"# {rec.title}\n")
    for label, _ in rec.facts():
        assert f"| **{label}** |" in md, label
    for t in tables:
        assert f"## {t.title}" in md
        cols = t.columns()
        assert cols, t.key
        if t.rows:
            assert "| " + " | ".join(c.label for c in cols) + " |" in md, t.key

    lines = list(csv.reader(io.StringIO(to_csv(rec))))
    header, body = lines[0], lines[1:]
    assert header[0] == "table"
    assert {f"system.{k}" for k in rec.system_facts()} <= set(header)
    for t in tables:
        names = [c.name for c in t.columns()]
        assert set(names) <= set(header), t.key
        mine = [dict(zip(header, line, strict=True)) for line in body if line[0] == t.key]
        assert len(mine) == len(t.rows), t.key
        for got, row in zip(mine, t.rows, strict=True):
            for name in names:
                want = getattr(row, name)
                if want is None:
                    assert got[name] == ""
                elif isinstance(want, float):
                    assert float(got[name]) == pytest.approx(want, rel=1e-12, abs=1e-12), name
                elif not isinstance(want, (list, dict)):
                    assert got[name] == str(want), name
                elif isinstance(want, list):
                    assert got[name] == ";".join(repr(x) if isinstance(x, float) else str(x) for x in want)

    doc = json.loads(to_json(rec))
    assert doc == json.loads(json.dumps(rec.document(), default=str))
    fields = {f.name for f in dataclasses.fields(rec)}
    assert set(doc) <= fields and fields - set(doc) <= {"board", "process_at_max_size", "footprint"}
    for name in doc:
        value = getattr(rec, name)
        if isinstance(value, list) and value and dataclasses.is_dataclass(value[0]):
            for obj, row in zip(doc[name], value, strict=True):
                assert set(obj) == {c.name for c in get_fields(type(row))}, name


def test_the_printers_emit_every_field_of_a_tiny_record():
    rec = _Tiny(system={"cpu": "test cpu", "cores": 2}, rows=[_Row(n=1000, name="a|b", ms=None, samples=[1.25, 2.5])])
    _check_printers(rec)
    md = to_markdown(rec)
    assert "| 1,000 | a\\|b | n/a | 1.2 2.5 |" in md  # formats, n/a, the pipe escaped, a list space-joined
    assert "(no rows in this run)" in md and "a note" in md
    (line,) = list(csv.DictReader(io.StringIO(to_csv(rec))))
    assert line == {
        "table": "rows",
        "system.cpu": "test cpu",
        "system.cores": "2",
        "n": "1000",
        "name": "a|b",
        "ms": "",
        "samples": "1.25;2.5",
    }
    assert json.loads(to_json(rec))["rows"] == [{"n": 1000, "name": "a|b", "ms": None, "samples": [1.25, 2.5]}]
    assert set(PRINTERS) == {"md", "json", "csv"}


def test_kernel_record_through_every_printer(tmp_path: Path):
    rng = np.random.default_rng(3)
    base = rng.standard_normal((120, 384)).astype(np.float32)
    base /= np.linalg.norm(base, axis=1, keepdims=True)
    npy = tmp_path / "emb.npy"
    np.save(npy, base)
    rec = run_benchmark([400], [1], 2, quick=True, real_embeddings=str(npy), progress=lambda _m: None)
    assert all(t.rows for t in rec.tables()), [t.key for t in rec.tables() if not t.rows]
    _check_printers(rec)
    doc = rec.document()
    # exactly one two_pass object per size, with the keys tools read
    (tp,) = doc["two_pass"]
    assert {"n", "r", "recall_at_10_vs_exact_int8", "ms_p50", "exact_int8_ms_p50"} <= set(tp)
    assert tp["n"] == 400 and 10 <= tp["r"] <= 400 and 0.0 < tp["recall_at_10_vs_exact_int8"] <= 1.0
    assert tp["ms_p50"] > 0 and tp["exact_int8_ms_p50"] > 0
    assert {row["r"] for row in doc["two_pass_r_sweep"]} <= {100, 200, 500, 1000, 2000, 5000}
    boards = {(b["board"], b["scan"]) for b in doc["board_estimates"]}
    assert {(b, s) for b in ("rpi4", "rpi5", "jetson-orin-nano") for s in ("exact int8", "two-pass")} <= boards
    pi4 = next(b for b in doc["board_estimates"] if b["board"] == "rpi4" and b["scan"] == "exact int8")
    assert pi4["total_ms"] == pytest.approx(400 * 388 / 5.5e9 * 1e3)


def test_pipeline_record_through_every_printer(bundle_and_key, tmp_path: Path):
    bundle, pub = bundle_and_key
    rec = run_bench(
        bundle,
        public_key=str(pub) if pub else None,
        sizes=[300],
        runs=2,
        baselines=None,
        probe_queries=2,
        progress=lambda _m: None,
    )
    _check_printers(rec)
    assert "board" not in rec.document()  # no --board: the key is absent, as before
    (summary,) = next(t for t in rec.tables() if t.key == "summary").rows
    assert summary.n == 300 and summary.scan  # which scan the planner ran is reported


def test_serve_record_through_every_printer():
    run = {
        "requests": 100,
        "duration_us": 1_000_000,
        "bytes": 1,
        "connect": 0,
        "read": 0,
        "write": 0,
        "status": 0,
        "timeout": 0,
        "p50_us": 500,
        "p90_us": 900,
        "p99_us": 1500,
        "max_us": 3000,
        "mean_us": 600.0,
        "connections": 1,
        "threads": 1,
        "rps": 100.0,
        "socket_errors": 0,
        "non_2xx": 0,
    }
    mem = {"VmRSS": 50.0, "VmHWM": 60.0}
    rec = ServeRecord(
        bundle="b",
        items=300,
        dim=16,
        system="test machine",
        seconds=1.0,
        load={"runs": [run], "server_answers": {"200": 100}, "server_rss_mib": mem, "isa": "scalar"},
        isa="scalar",
        footprint={
            "import_device_ms": {"best": 90.0, "median": 95.0},
            "import_serve_ms": {"best": 100.0, "median": 110.0},
            "import_cli_serve_ms": {"best": 120.0, "median": 130.0},
            "library": {"import_ms": 90.0, "open_ms": 40.0, **mem},
            "serve": {"idle": mem, **mem},
        },
    )
    _check_printers(rec)
    assert rec.document()["load"]["runs"][0]["p99_us"] == 1500  # the wrk keys stay as wrk names them
