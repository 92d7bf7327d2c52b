"""The result schema of ``shelfrank bench kernel``: one typed record, its rows, its targets.

:class:`KernelRecord`'s fields are the JSON report's keys (``cells``, ``recall_random``,
``recall_real``, ``roofline_gbps``, ``targets``, ``two_pass``, … — tools and tests read them);
:meth:`KernelRecord.tables` gives the flat rows the Markdown and CSV printers print
(:mod:`shelfrank.bench.record`).
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any, ClassVar

from shelfrank.bench.record import Record, Table, col

TARGET_N = 1_000_000

# (name, label, bytes per element of the matrix it scans)
METHODS = (
    ("numpy_fp32", "numpy fp32 (gemv + argpartition)", 4),
    ("faiss_flat_ip", "faiss IndexFlatIP", 4),
    ("faiss_sq8", "faiss IndexScalarQuantizer QT_8bit", 1),
    ("ours_fp32", "shelfrank topk fp32", 4),
    ("ours_int8", "shelfrank topk int8", 1),
)
LABELS = {m: label for m, label, _ in METHODS}
ELEM_BYTES = {m: b for m, _, b in METHODS}


@dataclass(kw_only=True)
class KernelCell:
    """One (N, threads, method) cell: batch-1 top-10 times and what they mean against the roofline."""

    n: int = col("N", ",")
    method: str = col("method", align="l")
    median_ms: float = col("median ms", ".3f")
    threads: int = col("threads")
    p90_ms: float = col("p90 ms", ".3f")
    min_ms: float = col("min ms", ".3f")
    vs_numpy: float | None = col("vs numpy ×", ".2f", default=None)
    vs_1_thread: float | None = col("vs 1 thread ×", ".2f", default=None)
    gbps: float = col("GB/s", ".2f")
    matrix_bytes: int = col("matrix bytes", ",")
    roofline_ms: float = col("roofline ms", ".3f")
    roofline_pct: float = col("% roofline (same threads)", ".0f")
    roofline_1t_pct: float = col("% 1-thread roofline", ".0f")
    recall_vs_numpy: float = col("recall@10 vs numpy", ".3f")
    times_ms: list[float] = col("times ms (timed repetitions)", ".2f")  # noqa: RUF009 (col is a field())


@dataclass(kw_only=True)
class RecallRow:
    data: str = col("data", align="l")
    n: int = col("N", ",")
    queries: int = col("queries")
    method: str = col("method", align="l")
    recall: float = col("recall@10", ".4f")
    recall_tie_aware: float = col("recall@10 (ties count)", ".4f")


@dataclass(kw_only=True)
class RescoreRow:
    data: str = col("data", align="l")
    n: int = col("N", ",")
    pool: int = col("k'")
    int8_top10_ms: float = col("int8 top-10 ms", ".3f")
    int8_topk_ms: float = col("int8 top-k' ms", ".3f")
    rescore_only_ms: float = col("rescore k' ms", ".3f")
    two_stage_ms: float = col("top-k' + rescore ms", ".3f")
    extra_ms: float = col("extra vs top-10 ms", "+.3f")
    extra_pct: float = col("extra %", "+.0f")


@dataclass(kw_only=True)
class Target:
    target: str = col("target", align="l")
    n: int = col("N", ",")
    value: float | None = col("measured", ".4g")
    goal: float = col("goal ≥", "g")
    unit: str = col("unit", align="l")
    met: bool | None = col("met")
    verdict: str = col("verdict", align="l", default="")


@dataclass(kw_only=True)
class TwoPassResult:
    """The two-pass scan at one size, at the planner's R: the JSON's one ``two_pass`` object per size."""

    n: int = col("N", ",")
    r: int = col("R")
    recall_at_10_vs_exact_int8: float = col("recall@10 vs exact int8", ".4f")
    ms_p50: float = col("two-pass p50 ms", ".3f")
    exact_int8_ms_p50: float = col("exact int8 p50 ms", ".3f")
    speedup: float = col("speed-up ×", ".2f")
    first_pass_ms_p50: float | None = col("first pass alone p50 ms", ".3f", default=None)
    code_bytes: int = col("code bytes", ",")
    first_pass_gbps: float | None = col("first pass GB/s", ".2f", default=None)
    first_pass_roofline_pct: float | None = col("first pass % roofline", ".0f", default=None)
    queries: int = col("queries")
    data: str = col("data", align="l")


@dataclass(kw_only=True)
class TwoPassSweepRow:
    n: int = col("N", ",")
    r: int = col("R")
    recall_at_10_vs_exact_int8: float = col("recall@10 vs exact int8", ".4f")
    ms_p50: float = col("two-pass p50 ms", ".3f")
    exact_int8_ms_p50: float = col("exact int8 p50 ms (same sweep)", ".3f")
    speedup: float = col("speed-up vs exact int8 ×", ".2f")


@dataclass(kw_only=True)
class BoardEstimate:
    """Bytes read per pass over a board's published bandwidth: a floor, not a measurement."""

    board: str = col("board", align="l")
    gbps: float = col("bandwidth GB/s", "g")
    n: int = col("N", ",")
    r: int | None = col("R", default=None)
    scan: str = col("scan", align="l")
    first_pass_bytes: int = col("first pass bytes", ",")
    rescore_bytes: int = col("rescore bytes", ",")
    first_pass_ms: float = col("first pass ms", ".2f")
    rescore_ms: float = col("rescore ms", ".3f")
    total_ms: float = col("total ms", ".2f")


@dataclass(kw_only=True)
class KernelRecord(Record):
    """Everything ``shelfrank bench kernel`` measured in one run (the JSON report, field by field)."""

    system: dict[str, Any]
    platform: str
    config: dict[str, Any]
    environment: dict[str, Any]
    loadavg_start: list[float] | None
    roofline_gbps: dict[str, float]
    cells: list[KernelCell]
    recall_random: list[dict[str, Any]]
    rescore_cost_random: dict[str, Any]
    recall_real: dict[str, Any]
    two_pass: list[TwoPassResult]
    two_pass_r_sweep: list[TwoPassSweepRow]
    two_pass_info: dict[str, Any]
    board_estimates: list[BoardEstimate]
    targets: list[Target]
    elapsed_s: float
    loadavg_end: list[float] | None
    title: ClassVar[str] = "shelfrank bench kernel"

    def facts(self) -> list[tuple[str, str]]:
        s, cfg, env, roof = self.system, self.config, self.environment, self.roofline_gbps
        blas = env.get("numpy_blas", {})
        pools = [p for p in env.get("threadpools", []) if "numpy" in str(p.get("filepath"))]
        core = f", core {pools[0].get('architecture')}, {pools[0].get('threading_layer')}" if pools else ""
        return [
            ("shelfrank", f"{s['shelfrank']} (commit {s['commit']})"),
            ("cpu", f"{s['cpu']} ({s['machine']}, {s['cores']} logical cores)"),
            ("kernel ISA", f"{s['active_isa']} (capabilities: {', '.join(s['capabilities'])})"),
            ("python / numpy / onnxruntime", f"{s['python']} / {s['numpy']} / {s.get('onnxruntime')}"),
            ("platform", self.platform),
            ("numpy BLAS", f"{blas.get('name')} {blas.get('version')}{core}"),
            ("faiss", env.get("faiss") or "not installed (faiss rows skipped)"),
            (
                "threadpoolctl",
                env.get("threadpoolctl")
                or "not installed: numpy's BLAS threads NOT pinned (pip install threadpoolctl)",
            ),
            ("env", ", ".join(f"{k}={v}" if v is not None else f"{k} unset" for k, v in env["env"].items())),
            (
                "workload",
                f"batch 1, top-{cfg['k']}, d={cfg['d']}, random unit rows and queries (seed {cfg['seed']}); "
                f"sizes {', '.join(f'{n:,}' for n in cfg['sizes'])}; threads {', '.join(map(str, cfg['threads']))}",
            ),
            (
                "load average",
                f"start {self.loadavg_start}, end {self.loadavg_end} "
                "(1/5/15 min; other processes compete for the cores when these exceed ~0.3)",
            ),
            (
                "repetitions",
                f"{cfg['warmup']} warm-up + {cfg['repeats']} timed per cell, methods interleaved "
                "(order rotated); median and p90",
            ),
            (
                "roofline",
                f"best of 5 sequential reads of {cfg['probe_bytes'] / 2**30:.0f} GiB: "
                + ", ".join(f"{t} thread{'s' if t != '1' else ''} {v:.2f} GB/s" for t, v in roof.items()),
            ),
            ("total run time", f"{self.elapsed_s:.0f} s"),
        ]

    def tables(self) -> list[Table]:
        roof = self.roofline_gbps
        multi = [t for t in self.config["threads"] if t != 1]
        scaling = ", ".join(f"{t} threads {roof[str(t)] / roof['1']:.2f}x" for t in multi if str(t) in roof)
        real = self.recall_real
        tp = self.two_pass_info
        return [
            Table(
                "cells",
                f"Top-{self.config['k']} scan by catalog size, threads and method",
                self.cells,
                "Methods: " + "; ".join(f"`{m}` {label}" for m, label, _ in METHODS) + ". GB/s = matrix bytes "
                "(N·d·4 fp32, N·d int8; the int8 kernel also reads N·4 bytes of scales) ÷ median time. Below ~L3 "
                "size the data is cache-resident, so '% roofline' above 100% is expected there and means nothing."
                + (
                    f" Probe scaling over 1 thread (the ceiling for a memory-bound scan): {scaling}." if scaling else ""
                ),
                KernelCell,
            ),
            Table(
                "recall",
                f"int8 recall@{self.config['k']} against exact fp32",
                self._recall_rows(),
                (
                    f"Real embeddings: {real['source']}; d={real['d']}; the query item is excluded from both lists. "
                    "'ties count': a returned row also counts when its exact score equals the 10th exact score "
                    "(duplicate titles give identical vectors)."
                )
                if real.get("available")
                else f"Real embeddings not available: {real.get('reason')}.",
                RecallRow,
            ),
            Table(
                "rescore_cost",
                "Exact rescore of an int8 candidate pool: cost (1 thread, batch 1)",
                self._rescore_rows(),
                row_type=RescoreRow,
            ),
            Table(
                "two_pass",
                "Two-pass scan (1-bit sign codes, popcount, top R rescored in int8) against the exact int8 scan",
                self.two_pass,
                tp.get("note", ""),
                TwoPassResult,
            ),
            Table(
                "two_pass_r_sweep", "Two-pass: R against recall and time", self.two_pass_r_sweep, "", TwoPassSweepRow
            ),
            Table(
                "board_estimates",
                "Board estimates: bytes read per pass over the board's published bandwidth (not measured)",
                self.board_estimates,
                tp.get("boards_note", ""),
                BoardEstimate,
            ),
            Table(
                "targets",
                f"Targets (N = {max(self.config['sizes']):,}"
                + ("" if max(self.config["sizes"]) == TARGET_N else f"; the targets are stated for N = {TARGET_N:,}")
                + ")",
                self.targets,
                row_type=Target,
            ),
        ]

    def _recall_rows(self) -> list[RecallRow]:
        out = []
        runs = [("random unit vectors", r) for r in self.recall_random]
        if self.recall_real.get("available"):
            runs.append((f"{self.recall_real.get('model') or 'given'} item titles", self.recall_real))
        for data, r in runs:
            out.append(RecallRow(data=data, n=r["n"], queries=r["queries"], method="int8 top-10", **r["int8"]))
            for pool, v in r["rescore"].items():
                out.append(
                    RecallRow(data=data, n=r["n"], queries=r["queries"], method=f"int8 top-{pool} → fp32 rescore", **v)
                )
        return out

    def _rescore_rows(self) -> list[RescoreRow]:
        costs = [("random", self.rescore_cost_random)]
        if self.recall_real.get("available"):
            costs.append(("real", self.recall_real["rescore_cost"]))
        return [
            RescoreRow(data=name, n=rc["n"], pool=int(pool), int8_top10_ms=rc["int8_top10_ms"], **v)
            for name, rc in costs
            for pool, v in rc["pools"].items()
        ]


def evaluate_targets(rec: KernelRecord) -> list[Target]:
    """Issue 5's and issue 16's targets at the largest size in the run (they are stated for N = 1M)."""
    cells = {(c.n, c.threads, c.method): c for c in rec.cells}
    n = max(rec.config["sizes"])
    out: list[Target] = []

    def add(name: str, value: float | None, goal: float, unit: str) -> None:
        met = None if value is None else bool(value >= goal)
        verdict = _verdict(value, goal, unit)
        out.append(Target(target=name, n=n, value=value, goal=goal, unit=unit, met=met, verdict=verdict))

    def get(t: int, m: str) -> KernelCell | None:
        return cells.get((n, t, m))

    i8, f32, npy, sq8 = get(1, "ours_int8"), get(1, "ours_fp32"), get(1, "numpy_fp32"), get(1, "faiss_sq8")
    add("int8 1 thread: % of single-core roofline", i8 and i8.roofline_pct, 80.0, "%")
    add("int8 1 thread: speed-up vs numpy fp32", i8 and i8.vs_numpy, 3.6, "x")
    add("int8 1 thread: speed-up vs faiss SQ8", i8 and sq8 and sq8.median_ms / i8.median_ms, 1.7, "x")
    add("fp32 1 thread: speed-up vs numpy fp32 (no slower)", f32 and npy and f32.vs_numpy, 1.0, "x")
    i8_2 = get(2, "ours_int8")
    add("int8 2 threads: speed-up vs 1 thread", i8_2 and i8_2.vs_1_thread, 1.6, "x")
    rr = rec.recall_real
    add("int8 recall@10, real embeddings", rr.get("int8", {}).get("recall") if rr.get("available") else None, 0.99, "")
    tp = {t.n: t for t in rec.two_pass}
    if n in tp:
        t = tp[n]
        add("two-pass 1 thread: speed-up vs exact int8", t.speedup, 5.0, "x")
        add("two-pass recall@10 vs exact int8", t.recall_at_10_vs_exact_int8, 0.99, "")
        add("two-pass first pass: % of read roofline over the code bytes", t.first_pass_roofline_pct, 80.0, "%")
    pi4 = [b for b in rec.board_estimates if b.board == "rpi4" and b.n == n and b.scan == "two-pass"]
    if pi4:  # a ceiling, not a floor: met when the estimate is at most 12 ms
        v = pi4[0].total_ms
        out.append(
            Target(
                target="Raspberry Pi 4 roofline estimate, two-pass (ms, ≤ goal)",
                n=n,
                value=v,
                goal=12.0,
                unit="ms",
                met=bool(v <= 12.0),
                verdict="met" if v <= 12.0 else f"missed by {v - 12.0:.1f} ms",
            )
        )
    return out


def _verdict(value: float | None, goal: float, unit: str) -> str:
    if value is None:
        return "not measured"
    if value >= goal:
        return "met"
    if unit == "%":
        return f"missed by {goal - value:.1f} points"
    return f"missed ({value / goal * 100:.0f}% of goal)"
