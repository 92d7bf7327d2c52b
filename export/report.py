"""The quality report: the rows the report ranks, its loud warnings, and quality.md from quality.json."""

from __future__ import annotations

from shelfrank.export.presets import PRESETS
from shelfrank.export.search_eval import render_search


def add_rows(models: dict, name: str, rows: dict, *, bundle: bool = False) -> None:
    """The report rows of one model: tower alone, hybrid (the shipped one names ``bundle``)."""
    models[f"{name} tower"] = rows["tower"]
    models[f"{name} hybrid" + (" (the bundle)" if bundle else "")] = rows["hybrid"]
    if bundle and "hybrid_repeats" in rows:
        models[f"{name} hybrid, seen items allowed + repeat term"] = rows["hybrid_repeats"]


def baseline_warnings(models: dict) -> list[str]:
    """A loud line for every metric on which the bundle ranks below a baseline."""
    bundle = next(m for name, m in models.items() if "bundle" in name)
    out = []
    for base in ("popularity", "item-kNN"):
        for metric in ("ndcg@10", "recall@10", "recall@50"):
            if bundle[metric] < models[base][metric]:
                out.append(
                    f"WARNING: the bundle ranks below {base} on {metric.upper().replace('RECALL', 'Recall')}: "
                    f"{bundle[metric]:.4f} < {models[base][metric]:.4f}"
                )
    return out


def render_quality(q: dict) -> str:
    lines = [
        f"# Quality report: {q['dataset']} ({q['split']}, preset {q['preset']})",
        "",
        f"Full ranking over {q['n_items']:,} items with the user's history masked; "
        f"{q['eval_cases']:,} of {q['eval_cases_total']:,} test users"
        + ("" if q["eval_cases"] == q["eval_cases_total"] else f" (fixed sample, seed {PRESETS['quick'].seed})")
        + ". The zero-shot text design is evaluated on its own smaller fixed sample (see cases).",
        "",
        "| model | NDCG@10 | Recall@10 | Recall@50 | coverage@10 | diversity@10 | cases |",
        "| :--- | ---: | ---: | ---: | ---: | ---: | ---: |",
    ]
    for name, m in q["models"].items():
        div = "" if m.get("diversity@10") is None else f"{m['diversity@10']:.3f}"
        lines.append(
            f"| {name} | {m['ndcg@10']:.4f} | {m['recall@10']:.4f} | {m['recall@50']:.4f} | "
            f"{m.get('coverage@10', float('nan')):.3f} | {div} | {m['cases']:,} |"
        )
    lines += [
        "",
        f"Split: {q.get('split_described', q['split'])}. coverage@10: share of the catalog in anyone's top 10; "
        "diversity@10: 1 − mean pairwise cosine of each top 10 in the fine-tuned teacher's item space. "
        "Co-occurrence and popularity are built from what is known before the scored cases "
        "(train for valid; train + the valid step for test).",
    ]
    if "item_knn" in q:
        k = q["item_knn"]
        tried = ", ".join(f"{name} {v:.4f}" for name, v in k["valid_ndcg@10"].items())
        params = ", ".join(f"{a}={b}" for a, b in k["params"].items())
        lines.append(
            f"item-kNN: the recipe with the best valid NDCG@10 ({tried}) is the baseline, and the hybrid's "
            f"neighbour table is built with it: **{k['recipe']}** ({params})."
        )
    for note in q.get("notes", []):
        lines.append(f"Note: {note}.")
    if q.get("warnings"):
        lines += ["", *(f"**{w}**" for w in q["warnings"])]
    if "ranker" in q:
        r = q["ranker"]
        w = r["weights"]
        lines += [
            "",
            f"Hybrid ranker (fitted on {r['fit']['valid_cases']:,} valid cases, grid of {r['fit']['grid_size']}): "
            f"score = {w['tower']:g} · tower cosine + {w['cooc']:g} · co-occurrence / max + {w['popularity']:g} · "
            f"log-popularity + {w['repeat']:g} · repeat; recency decay {r['decay']:g} over the last {r['recent']} "
            f"steps, candidates: the tower's {r['candidates']} ∪ the neighbours ({r['neighbors']} per item). "
            f"Valid NDCG@10 {r['fit']['valid_ndcg@10']:.4f}.",
        ]
    if q.get("repeats", {}).get("measured"):
        lines.append(
            f"Repeats: {q['repeats']['valid_targets_in_history']:.1%} of valid targets are already in the "
            "shopper's history; the row 'seen items allowed + repeat term' is `recommend(..., exclude_seen=False)`."
        )
    if q.get("diversity"):
        lines += ["", "| MMR λ | NDCG@10 | diversity@10 | cases |", "| ---: | ---: | ---: | ---: |"]
        for d in q["diversity"]:
            lines.append(f"| {d['lambda']:g} | {d['ndcg@10']:.4f} | {d['diversity@10']:.3f} | {d['cases']:,} |")
    if "parity" in q:
        par = q["parity"]
        lines += [
            "",
            f"Parity (int8 vs fp32 student, {par['texts']} held-out texts): mean cosine "
            f"{par['mean_cos']:.4f}, min {par['min_cos']:.4f}, top-10 overlap {par['top10_overlap']:.3f}.",
        ]
    if "parity_fp16" in q:
        f32, f8 = q["parity_fp16"]["vs_fp32"], q["parity_fp16"]["vs_int8"]
        lines += [
            "",
            f"fp16 encoder for GPU providers ({q['parity_fp16']['file_mb']} MB; parity measured with the CPU "
            f"provider): vs fp32 mean cosine {f32['mean_cos']:.5f}, min {f32['min_cos']:.5f}, top-10 overlap "
            f"{f32['top10_overlap']:.3f}; vs the int8 encoder (fp16 queries against the int8 catalog rows) "
            f"mean cosine {f8['mean_cos']:.4f}, min {f8['min_cos']:.4f}, top-10 overlap {f8['top10_overlap']:.3f}.",
        ]
    if "encoders" in q:
        lines += [
            "",
            "## Latency (1 thread, batch 1, this machine)",
            "",
            "| path | p50 ms | p95 ms | × teacher on history text | file MB |",
            "| :--- | ---: | ---: | ---: | ---: |",
        ]
        for name, v in q["encoders"].items():
            lines.append(
                f"| {name} | {v['p50_ms']:.2f} | {v['p95_ms']:.2f} | {v['speedup_vs_teacher_history']} | "
                f"{v.get('file_mb', '')} |"
            )
    if "search" in q:
        lines += render_search(q["search"])
    if "stages_s" in q:
        lines += ["", "Stage times (s): " + ", ".join(f"{k} {v}" for k, v in q["stages_s"].items())]
    return "\n".join(lines) + "\n"
