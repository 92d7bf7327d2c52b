"""The result schema of ``shelfrank bench BUNDLE``: one typed record, its rows, and the latency plot.

:class:`PipelineRecord`'s fields are the JSON report's keys (``sizes``, ``encoder``, ``bundle_open``,
``process_at_max_size``, ``board``, ``ranker``, … — tools and tests read them); ``sizes`` maps each
catalog size to its stages (``recommend``, ``search``, ``hybrid``, ``baselines``, ``naive``, ``scan``).
:meth:`PipelineRecord.tables` gives the flat rows the Markdown and CSV printers print.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any, ClassVar

from shelfrank.bench.record import Record, Table, col

HYBRID_TARGET = 1.3  # issue 11: hybrid p50 ≤ 1.3× the tower-only path at 100k items, same run

#: the stage names the bench records and the report, the plot and the tests read back
RECOMMEND_E2E = "recommend end to end"
TOWER_STAGE = "user tower (incl. history read)"
SCAN_STAGE = "int8 top-k"
SEARCH_E2E = "search end to end"
SEARCH_DENSE = "search end to end, dense only"


@dataclass(kw_only=True)
class StageRow:
    n: int = col("catalog", ",")
    group: str = col("group", align="l")
    stage: str = col("stage", align="l")
    p50_ms: float | None = col("p50 ms", ".3f")
    p95_ms: float | None = col("p95 ms", ".3f", default=None)
    p99_ms: float | None = col("p99 ms", ".3f", default=None)
    runs: int | None = col("runs", default=None)
    note: str = col("note", align="l", default="")


@dataclass(kw_only=True)
class SummaryRow:
    n: int = col("catalog", ",")
    recommend_p50_ms: float = col("recommend p50 ms", ".3f")
    rest_share: float = col("rest share", ".0%")
    speedup_vs_naive: float | None = col("× naive", ".1f", default=None)
    search_ratio: float | None = col("search hybrid / dense-only p50", ".2f", default=None)
    scan: str = col("scan that ran (planner)", align="l", default="")


@dataclass(kw_only=True)
class HybridRow:
    n: int = col("catalog", ",")
    tower_p50_ms: float = col("tower p50 ms", ".3f")
    tower_p95_ms: float = col("tower p95 ms", ".3f")
    hybrid_p50_ms: float = col("hybrid p50 ms", ".3f")
    hybrid_p95_ms: float = col("hybrid p95 ms", ".3f")
    ratio_p50: float = col("hybrid / tower p50", ".2f")
    ratio_p95: float = col("hybrid / tower p95", ".2f")
    candidates: int = col("candidates")
    m: int = col("M")
    table_mb: float = col("neighbour table MB", ".1f")
    rows_mb: float = col("int8 rows MB", ".1f")
    table_over_rows: float = col("table / rows", ".2f")


@dataclass(kw_only=True)
class HybridStageRow:
    n: int = col("catalog", ",")
    stage: str = col("stage", align="l")
    p50_ms: float = col("p50 ms", ".3f")


@dataclass(kw_only=True)
class EncoderOpRow:
    op: str = col("op type", align="l")
    provider: str = col("provider", align="l")
    nodes: int = col("nodes")
    runs: int = col("runs")
    us: int = col("kernel µs")


@dataclass(kw_only=True)
class PipelineRecord(Record):
    """Everything ``shelfrank bench BUNDLE`` measured in one run (the JSON report, field by field)."""

    system: dict[str, Any]
    bundle: str
    runs: int
    threads: int
    sizes: dict[int, dict[str, Any]]
    bundle_open: dict[str, float]
    ranker: str
    encoder: dict[str, Any]
    isa: str
    machine: str
    board: dict[str, Any] | None = None
    process_at_max_size: dict[str, float] | None = None
    title: ClassVar[str] = "shelfrank bench BUNDLE"

    def document(self) -> dict[str, Any]:
        doc = super().document()
        return {k: v for k, v in doc.items() if v is not None or k not in ("board", "process_at_max_size")}

    def facts(self) -> list[tuple[str, str]]:
        s, o = self.system, self.bundle_open
        out = [
            ("bundle", self.bundle),
            ("cpu", f"{s['cpu']} ({s['machine']}, {s['cores']} cores), kernel ISA {self.isa}"),
            ("versions", f"shelfrank {s['shelfrank']} ({s['commit']}), onnxruntime {s['onnxruntime']}"),
            ("workload", f"1 thread, batch 1, {self.runs} runs after warm-up"),
        ]
        if self.board is not None:
            b = self.board
            out.append(
                (
                    "board",
                    f"{b['name']} ({b['cpu']}, expects {b['expected_isa']}, {b['threads']} threads): "
                    f"{b['this_machine']}",
                )
            )
        out.append(
            (
                "fresh process",
                f"`import shelfrank.device` {o['import_s'] * 1e3:.0f} ms, "
                f"`Recommender.open` {o['open_s'] * 1e3:.0f} ms",
            )
        )
        if self.process_at_max_size is not None:
            p = self.process_at_max_size
            out.append(
                (
                    "peak RSS",
                    f"{p['peak_rss_mb']:.0f} MB with the {max(self.sizes):,}-item catalog after the recommends",
                )
            )
        out.append(("ranker", self.ranker))
        out.append(("hybrid target", f"hybrid p50 ≤ {HYBRID_TARGET}× the tower-only path at 100k"))
        enc = self.encoder
        prof = enc["profile"]
        shares = ", ".join(f"{p} {t['time_share']:.0%}" for p, t in prof["by_provider"].items())
        line = (
            f"`{enc['file']}` ({enc['precision']}); session providers {', '.join(prof['session_providers'])}; "
            f"kernel time over {prof['calls']} profiled calls: {shares}"
        )
        if enc.get("gpu_providers"):
            line += f". The board asks for {', '.join(enc['gpu_providers'])}: " + (
                "in use"
                if enc.get("fallback_reason") is None
                else f"**CPU fallback** — {enc['fallback_reason']}. The encoder figures are CPU figures"
            )
        out.append(("text encoder", line))
        return out

    def tables(self) -> list[Table]:
        first = next(iter(self.sizes.values()), {}).get("hybrid", {}).get("neighbors", {}).get("from", "?")
        return [
            Table(
                "stages",
                "Stages of recommend and search, and baselines of the same stages",
                self._stage_rows(),
                "'rest of recommend' is timed inside the end-to-end calls (model and scan time subtracted).",
                StageRow,
            ),
            Table(
                "summary",
                "Recommend end to end against the naive pipeline; search, hybrid against dense-only",
                self._summary_rows(),
                "",
                SummaryRow,
            ),
            Table(
                "hybrid",
                "Hybrid ranker against the tower-only path",
                self._hybrid_rows(),
                f'`recommend(k=10)` with `ranker="hybrid"` and `ranker="tower"`, interleaved call by call in the same '
                f"run (cache cleared each call). Neighbour table: {first}.",
                HybridRow,
            ),
            Table(
                "hybrid_stages",
                "Stages of the hybrid, timed inside its calls",
                [
                    HybridStageRow(n=n, stage=name, p50_ms=ms)
                    for n, e in self.sizes.items()
                    for name, ms in e["hybrid"]["stages_p50_ms"].items()
                ],
                row_type=HybridStageRow,
            ),
            Table(
                "encoder_ops",
                "Text encoder: which provider ran what",
                [
                    EncoderOpRow(op=op, provider=prov, nodes=c["nodes"], runs=c["runs"], us=c["us"])
                    for op, provs in self.encoder["profile"]["by_op"].items()
                    for prov, c in provs.items()
                ],
                row_type=EncoderOpRow,
            ),
        ]

    def _stage_rows(self) -> list[StageRow]:
        out: list[StageRow] = []
        for n, e in self.sizes.items():
            for group in ("recommend", "search"):
                out += [_stage(n, group, name, st) for name, st in e[group].items()]
            out.append(StageRow(n=n, group="recommend", stage="the rest of recommend (p50)", p50_ms=e["rest_p50_ms"]))
            out += [_stage(n, "baseline", name, st) for name, st in e.get("baselines", {}).items()]
            out.append(_stage(n, "naive", "teacher torch fp32 @128 + numpy fp32 scan", e["naive"]))
        return out

    def _summary_rows(self) -> list[SummaryRow]:
        return [
            SummaryRow(
                n=n,
                recommend_p50_ms=e["recommend"][RECOMMEND_E2E]["p50_ms"],
                rest_share=e["rest_share"],
                speedup_vs_naive=e.get("speedup_vs_naive"),
                search_ratio=e.get("search_hybrid_over_dense_p50"),
                scan=_scan_text(e.get("scan")),
            )
            for n, e in self.sizes.items()
        ]

    def _hybrid_rows(self) -> list[HybridRow]:
        out = []
        for n, e in self.sizes.items():
            h, nb = e["hybrid"], e["hybrid"]["neighbors"]
            out.append(
                HybridRow(
                    n=n,
                    tower_p50_ms=h["tower"]["p50_ms"],
                    tower_p95_ms=h["tower"]["p95_ms"],
                    hybrid_p50_ms=h["hybrid"]["p50_ms"],
                    hybrid_p95_ms=h["hybrid"]["p95_ms"],
                    ratio_p50=h["ratio_p50"],
                    ratio_p95=h["ratio_p95"],
                    candidates=h["candidates"],
                    m=nb["m"],
                    table_mb=nb["table_bytes"] / 1e6,
                    rows_mb=nb["rows_bytes"] / 1e6,
                    table_over_rows=nb["table_over_rows"],
                )
            )
        return out


def _stage(n: int, group: str, name: str, st: dict | str) -> StageRow:
    if isinstance(st, dict):
        return StageRow(
            n=n, group=group, stage=name, p50_ms=st["p50_ms"], p95_ms=st["p95_ms"], p99_ms=st["p99_ms"], runs=st["n"]
        )
    return StageRow(n=n, group=group, stage=name, p50_ms=None, note=str(st))


def _scan_text(scan: dict | None) -> str:
    if not scan:
        return "exact (no planner in this build)"
    ran = ", ".join(f"{k} {v}" for k, v in scan.get("ran", {}).items() if v) or "none"
    return f"{scan.get('scan')} (first_pass {scan.get('first_pass')}, R {scan.get('r')}; calls: {ran})"


def render(record: PipelineRecord) -> str:
    """The Markdown report (the ``md`` printer)."""
    from shelfrank.bench.record import to_markdown

    return to_markdown(record)


def recommend_parts(entry: dict[str, Any]) -> list[tuple[str, float]]:
    """``recommend`` (tower ranker) at one catalog size as the parts that add up to it, p50 ms each:
    the user tower (with its history read), the scan the planner ran, and the rest (filters, the
    result rows), the last measured inside the same calls."""
    stages = entry["recommend"]
    scan = (entry.get("scan") or {}).get("scan", "exact")
    two_pass = [k for k in stages if k.startswith("two-pass top-k")]
    scan_key = two_pass[0] if scan == "two_pass" and two_pass else SCAN_STAGE
    return [
        ("user tower (history read + ONNX)", stages[TOWER_STAGE]["p50_ms"]),
        (scan_key.replace(SCAN_STAGE, "exact int8 scan"), stages[scan_key]["p50_ms"]),
        ("the rest (filters, rows, results)", entry["rest_p50_ms"]),
    ]


def plot(record: PipelineRecord, out: str) -> str:
    """PNG of ``recommend`` per catalog size: stacked per-stage p50 bars, a whisker to the end-to-end
    p95, the speed-up over the naive pipeline above each bar; board, CPU, ISA and commit in the title.
    Returns what it did."""
    try:
        import matplotlib

        matplotlib.use("Agg")
        import matplotlib.pyplot as plt
    except ImportError:
        return "plot not written: matplotlib is not installed (pip install matplotlib)"
    sizes = sorted(record.sizes)
    fig, ax = plt.subplots(figsize=(7.5, 4.8))
    xs = list(range(len(sizes)))
    parts = [recommend_parts(record.sizes[n]) for n in sizes]
    bottoms = [0.0] * len(sizes)
    colours = ("#4c72b0", "#dd8452", "#8c8c8c")
    labels_seen: set[str] = set()
    for j in range(3):
        heights = [p[j][1] for p in parts]
        for x, h, b, p in zip(xs, heights, bottoms, parts, strict=True):
            name = p[j][0]
            kind = "scan" if j == 1 else name
            label = None if kind in labels_seen else ("scan the planner ran" if j == 1 else name)
            labels_seen.add(kind)
            ax.bar(x, h, bottom=b, color=colours[j], width=0.6, label=label)
            if j == 1:
                ax.text(x + 0.32, b + h / 2, "two-pass" if "two-pass" in name else "exact", fontsize=7, va="center")
        bottoms = [b + h for b, h in zip(bottoms, heights, strict=True)]
    e2e = [record.sizes[n]["recommend"][RECOMMEND_E2E] for n in sizes]
    p50 = [e["p50_ms"] for e in e2e]
    p95 = [e["p95_ms"] for e in e2e]
    ax.errorbar(
        xs,
        p50,
        yerr=[[0] * len(xs), [b - a for a, b in zip(p50, p95, strict=True)]],
        fmt="_",
        color="black",
        capsize=5,
        label="end to end: p50 – p95",
    )
    for x, n, top in zip(xs, sizes, p95, strict=True):
        speed = record.sizes[n].get("speedup_vs_naive")
        if speed:
            ax.annotate(
                f"{speed:,.0f}× the naive pipeline",
                (x, top),
                textcoords="offset points",
                xytext=(0, 6),
                ha="center",
                fontsize=7,
            )
    ax.set_xticks(xs, [f"{n:,}" for n in sizes])
    ax.set_xlabel("catalog items")
    ax.set_ylabel(f"recommend latency, ms (p50 parts; {record.threads} thread(s))")
    board = (record.board or {}).get("name") or "no board config"
    commit = record.system.get("commit") or "?"
    ax.set_title(
        f"shelfrank recommend (tower ranker) — board {board}\n{record.system['cpu']}, ISA {record.isa}, "
        f"commit {commit[:10]}",
        fontsize=9,
    )
    ax.margins(y=0.15)
    ax.grid(True, axis="y", alpha=0.3)
    ax.legend(fontsize=7, loc="upper left")
    fig.tight_layout()
    fig.savefig(out, dpi=120)
    plt.close(fig)
    return f"wrote {out}"
