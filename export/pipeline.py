"""``shelfrank export``: shop data → fine-tuned teacher → distilled int8 student → signed bundle.

The export is :data:`STAGES`, a list of :class:`~shelfrank.export.stages.Stage` (name, inputs,
outputs, function) that :func:`run_export` runs in order (export/stages.py); the stages that train
keep their result in ``<out>.work/`` so ``--resume`` continues after an interruption:

 1. prepare: the split (leave-one-out or time), item texts, the teacher;
 2. fine-tune teacher on (item → next item) pairs (``teacher.pt``);
 3. zero-shot teacher: the text design, untrained (``zs_items.npy``);
 4. baselines: popularity, the tuned item-kNN, the hybrid rows' neighbour tables;
 5. tower on teacher rows;
 6. distil student from the teacher (layers {0,3,5}; ``student.pt``);
 7. onnx + int8: ONNX export, int8 quantisation, parity gate (and the fp16 encoder's);
 8. tower on student rows: the shipped user tower on the int8 catalog rows, the hybrid ranker;
 9. latency; 10. bundle: the quality report, the search report, the signed bundle.

The bundle is assembled in a temporary folder beside ``out`` and renamed into place only when it
is complete and signed, so an interrupted export never leaves a half-written bundle.
"""

from __future__ import annotations

import copy
import json
import logging
import shutil
import tempfile
import time
from dataclasses import asdict, dataclass, field, replace
from pathlib import Path
from typing import Any

import numpy as np

from shelfrank.device import bundle as bfmt
from shelfrank.device.text import ACTIONS, history_text, item_text
from shelfrank.export.bundle_writer import replace_dir, write_bundle
from shelfrank.export.data import Dataset, Split, leave_one_out
from shelfrank.export.presets import PRESETS, Preset
from shelfrank.export.report import add_rows, baseline_warnings, render_quality
from shelfrank.export.search_eval import evaluate_rows
from shelfrank.export.stages import Stage, WorkFolder, run_stages

__all__ = ["PRESETS", "STAGES", "ExportResult", "Preset", "render_quality", "run_export"]

logger = logging.getLogger(__name__)


@dataclass
class ExportResult:
    out: Path
    manifest: dict[str, Any]
    quality: dict[str, Any]
    seconds: float
    stages: dict[str, float] = field(default_factory=dict)


@dataclass
class Run:
    """What every stage may read besides its inputs: the data, the options, the work folder, and
    the report (``quality``, filled in by the stages in order; ``times``: each finished stage)."""

    ds: Dataset
    p: Preset
    out: Path
    work: WorkFolder
    signing_key: Any
    teacher: str | Path | None
    split: Split | None
    parity_thresholds: tuple[float, float]
    fp16: bool
    quality: dict[str, Any] = field(default_factory=dict)
    times: dict[str, float] = field(default_factory=dict)

    @property
    def models(self) -> dict[str, Any]:
        return self.quality["models"]


def _torch_imports():
    try:
        import torch  # noqa: F401
        import transformers  # noqa: F401
    except ImportError as e:
        raise ImportError("the export stage needs torch and transformers: pip install 'shelfrank[export]'") from e


def _texts(ds: Dataset) -> list[str]:
    return [item_text(ds.catalog.record(i)) for i in range(len(ds.catalog))]


def _sample(cases: list, n: int | None, seed: int) -> list:
    if n is None or len(cases) <= n:
        return cases
    rng = np.random.default_rng(seed)
    return [cases[i] for i in sorted(rng.choice(len(cases), n, replace=False))]


def _history_texts(ds: Dataset, histories: list, max_events: int) -> list[str]:
    return [history_text([(ACTIONS[a], ds.catalog.titles[i]) for i, a in h[-max_events:][::-1]]) for h in histories]


def _parity_texts(ds: Dataset, texts: list[str], n: int, seed: int) -> list[str]:
    """Held-out texts for the parity gate: half catalog texts, half search-like fragments."""
    rng = np.random.default_rng(seed + 11)
    picked = [texts[i] for i in rng.choice(len(texts), min(n // 2, len(texts)), replace=False)]
    queries = []
    for i in rng.choice(len(texts), n - len(picked), replace=True):
        words = ds.catalog.titles[i].split()
        a = int(rng.integers(0, max(1, len(words) - 1)))
        queries.append(" ".join(words[a : a + int(rng.integers(1, 4))]).lower())
    return picked + queries


def _tower_config(p: Preset):
    from shelfrank.export.train import TowerConfig

    return TowerConfig(
        epochs=p.tower_epochs,
        batch=p.tower_batch,
        lr=p.tower_lr,
        max_events=p.max_events,
        time_budget_s=p.tower_time_s,
        max_cases=p.tower_max_cases,
        seed=p.seed,
    )


# ---- the stages, in order ---------------------------------------------------------------------


def prepare(r: Run) -> dict[str, Any]:
    """The split, the item texts, the evaluated test sample, the report's header, the teacher."""
    from shelfrank.export.models import load_teacher
    from shelfrank.export.train import Tokens, transition_pairs

    ds, p = r.ds, r.p
    split = r.split or leave_one_out(ds)
    texts = _texts(ds)
    n = len(texts)
    test = _sample(split.test, p.eval_sample, p.seed)
    logger.info(
        "%s: %d items, %d users, %d events; %d train sequences, %d test cases (%s)",
        ds.name,
        n,
        len(ds.users),
        len(ds.events),
        len(split.train),
        len(test),
        split.kind,
    )
    r.quality.update(
        {
            "dataset": ds.name,
            "split": split.kind,
            "n_items": n,
            "preset": p.name,
            "eval_cases": len(test),
            "eval_cases_total": len(split.test),
            "split_cut": getattr(split, "cut", None),
            "split_described": split.describe() if hasattr(split, "describe") else split.kind,
            "notes": [],
            "models": {},
        }
    )
    teacher_enc, tok_path = load_teacher(r.teacher)
    # the text design is measured with the teacher as it comes (a copy: the teacher is fine-tuned next)
    zs_enc = None if p.zero_shot_max_items is not None and n > p.zero_shot_max_items else copy.deepcopy(teacher_enc)
    return {
        "split": split,
        "texts": texts,
        "test": test,
        "teacher_enc": teacher_enc,
        "tok_path": tok_path,
        "tokens": Tokens(str(tok_path), p.max_len),
        "hist_tokens": Tokens(str(tok_path), p.history_max_len),
        "zs_enc": zs_enc,
        "pairs": transition_pairs(split.train),
    }


def fine_tune_teacher(r: Run, *, teacher_enc, tokens, texts, pairs) -> dict[str, Any]:
    from shelfrank.export.train import EncoderTrainConfig, embed, train_encoder

    p = r.p
    cfg = EncoderTrainConfig(steps=p.teacher_steps, batch=p.batch, lr=p.lr, max_len=p.max_len, seed=p.seed)
    r.work.module(
        "teacher.pt",
        teacher_enc,
        lambda: train_encoder(teacher_enc, tokens, texts, pairs, cfg, desc="fine-tune teacher"),
    )
    return {"teacher_enc": teacher_enc, "teacher_emb": embed(teacher_enc, tokens, texts, desc="teacher catalog")}


def zero_shot_teacher(r: Run, *, zs_enc, test, texts, tokens, hist_tokens, teacher_emb) -> dict[str, Any]:
    """The original user-tower design: the untrained teacher over the history text."""
    from shelfrank.export import evaluate as ev
    from shelfrank.export.train import embed

    p, n = r.p, len(texts)
    if zs_enc is None:
        logger.info(
            "zero-shot text design skipped: %d items > the preset's zero_shot_max_items %d", n, p.zero_shot_max_items
        )
        r.quality["notes"].append(f"zero-shot text design not evaluated ({n:,} items > {p.zero_shot_max_items:,})")
        return {"zero_shot_row": None}
    zs = _sample(test, p.zero_shot_sample, p.seed + 1)
    zs_items = r.work.array("zs_items.npy", lambda: embed(zs_enc, tokens, texts, desc="zero-shot catalog"))

    def zero_shot(hs: list) -> np.ndarray:
        users = embed(zs_enc, hist_tokens, _history_texts(r.ds, hs, p.max_events), batch=32, desc="histories")
        return users @ zs_items.T

    return {"zero_shot_row": ev.evaluate(zero_shot, zs, n, batch=128, item_vecs=teacher_emb)}


def baselines(r: Run, *, split, test, texts, teacher_emb, zero_shot_row) -> dict[str, Any]:
    """Popularity and the tuned item-kNN; the hybrid rows' shared context (neighbour tables, popularity)."""
    from shelfrank.export import evaluate as ev
    from shelfrank.export import fusion as fu

    p, n, models = r.p, len(texts), r.models
    # diversity@10 of every row in one fixed space: the fine-tuned teacher's item embeddings
    models["popularity"] = ev.evaluate(ev.popularity(split, n), test, n, item_vecs=teacher_emb)
    knn_fn, r.quality["item_knn"] = ev.tuned_item_knn(split, n, valid_sample=p.fit_sample, seed=p.seed)
    models["item-kNN"] = ev.evaluate(knn_fn, test, n, item_vecs=teacher_emb)
    similarity = {k: v for k, v in r.quality["item_knn"]["params"].items() if k in ev.SIMILARITY_KEYS}
    if zero_shot_row is not None:
        models["zero-shot teacher (text design)"] = zero_shot_row
    fctx = fu.Context(
        split,
        n,
        test,
        neighbors=p.neighbors,
        fit_sample=p.fit_sample,
        seed=p.seed,
        div_vecs=teacher_emb,
        similarity=similarity,
    )
    r.quality["repeats"] = {"valid_targets_in_history": round(fctx.repeat_share, 4), "measured": fctx.repeats}
    return {"fctx": fctx, "similarity": similarity}


def tower_on_teacher_rows(r: Run, *, teacher_emb, split, fctx) -> dict[str, Any]:
    from shelfrank.export.tower import torch_tower
    from shelfrank.export.train import train_tower

    t_model, t_hist = train_tower(teacher_emb, split.train, split.valid, _tower_config(r.p), desc="tower (teacher)")
    add_rows(r.models, "teacher fp32", fctx.rows_for("teacher", *torch_tower(t_model, r.p.max_events)))
    return {"t_model": t_model, "t_hist": t_hist}


def distil_student(r: Run, *, teacher_enc, teacher_emb, tokens, texts, pairs) -> dict[str, Any]:
    from shelfrank.export.models import make_student
    from shelfrank.export.train import EncoderTrainConfig, train_encoder

    p = r.p
    student = make_student(teacher_enc, p.student_layers)
    cfg = EncoderTrainConfig(steps=p.student_steps, batch=p.batch, lr=2 * p.lr, max_len=p.max_len, seed=p.seed + 7)
    r.work.module(
        "student.pt",
        student,
        lambda: train_encoder(student, tokens, texts, pairs, cfg, teacher_emb=teacher_emb, desc="distil student"),
    )
    return {"student": student}


def onnx_int8(r: Run, *, student, teacher_enc, tok_path, texts) -> dict[str, Any]:
    """The student (fp32, int8) and the teacher as ONNX; the int8 parity gate (and fp16's)."""
    from shelfrank.device.encoder import TextEncoder
    from shelfrank.export.onnx_export import export_encoder, fp16_encoder, parity, parity_gate, quantize_int8

    p, work = r.p, r.work.work
    export_encoder(student, work / "student_fp32.onnx")
    quantize_int8(work / "student_fp32.onnx", work / "encoder.onnx")
    export_encoder(teacher_enc, work / "teacher_fp32.onnx")
    enc32 = TextEncoder(work / "student_fp32.onnx", tok_path, max_len=p.max_len)
    enc8 = TextEncoder(work / "encoder.onnx", tok_path, max_len=p.max_len)
    s32_rows = enc32.encode(texts)
    s8_rows = enc8.encode(texts)
    held = _parity_texts(r.ds, texts, p.parity_texts, p.seed)
    par = parity(enc32, enc8, held, s32_rows)
    r.quality["parity"] = par
    logger.info(
        "parity int8 vs fp32: mean cos %.4f, min %.4f, top-10 overlap %.3f",
        par["mean_cos"],
        par["min_cos"],
        par["top10_overlap"],
    )
    parity_gate(par, min_cos=r.parity_thresholds[0], min_overlap=r.parity_thresholds[1])
    if r.fp16:
        r.quality["parity_fp16"] = fp16_encoder(
            work, tok_path, p.max_len, held, enc32, enc8, s32_rows, s8_rows, r.parity_thresholds
        )
    return {"s32_rows": s32_rows, "s8_rows": s8_rows}


def tower_on_student_rows(r: Run, *, s8_rows, s32_rows, split, t_model, fctx) -> dict[str, Any]:
    """The shipped tower, on the int8 rows the device holds; the report's student rows and the ranker."""
    import torch

    from shelfrank.device.kernel import quantize_rows
    from shelfrank.export.onnx_export import export_tower
    from shelfrank.export.tower import onnx_tower, torch_tower
    from shelfrank.export.train import TowerModel, train_tower

    p, work, models = r.p, r.work.work, r.models
    tcfg = _tower_config(p)
    # the tower and item residuals continue from the teacher's, on the rows the device will hold
    s8_model, s8_hist = train_tower(
        s8_rows,
        split.train,
        split.valid,
        replace(tcfg, epochs=p.student_tower_epochs, time_budget_s=p.student_tower_time_s),
        init=t_model,
        desc="tower (student int8)",
    )
    # the fp32 student is scored with the same tower and residuals (its rows differ from the
    # int8 ones only by quantisation noise; see the parity figures)
    s32_model = TowerModel(s32_rows, tcfg)
    s32_model.load_state_dict({k: v for k, v in s8_model.state_dict().items() if k != "base"}, strict=False)
    add_rows(models, "student fp32", fctx.rows_for("student fp32", *torch_tower(s32_model, p.max_events)))
    with torch.inference_mode():
        final = s8_model.item_vectors().numpy()
    rows8, scales = quantize_rows(np.ascontiguousarray(final, np.float32))
    export_tower(s8_model.tower, work / "user_tower.onnx")
    bundle_rows = rows8.astype(np.float32) * scales[:, None]
    # exactly what the device runs: the ONNX tower over the bundle's (int8) rows
    s8 = fctx.rows_for("student int8", onnx_tower(work / "user_tower.onnx", bundle_rows, p.max_events), bundle_rows)
    add_rows(models, "student int8", s8, bundle=True)
    ranker = s8["params"]
    r.quality["ranker"] = {**ranker.to_manifest(), "fit": s8["fit"], "neighbors": p.neighbors}
    r.quality["diversity"] = fctx.diversity(s8["users_test"], bundle_rows, ranker, sample=p.diversity_sample)
    r.quality["warnings"] = baseline_warnings(models)
    for w in r.quality["warnings"]:
        logger.warning("%s", w)
    return {
        "final": final,
        "rows8": rows8,
        "scales": scales,
        "bundle_rows": bundle_rows,
        "ranker": ranker,
        "ranker_fit": s8["fit"],
        "s8_hist": s8_hist,
    }


def latency(r: Run, *, split, texts, teacher_enc, tok_path, hist_tokens, bundle_rows, rows8, scales) -> dict[str, Any]:
    from shelfrank.export.latency import encoder_latency

    p = r.p
    hists = [h for _, h, _ in _sample(split.test, 50, p.seed + 3)]
    r.quality["encoders"] = encoder_latency(
        r.work.work,
        tok_path,
        teacher_enc,
        hist_tokens,
        hists=hists,
        htexts=_history_texts(r.ds, hists, p.max_events),
        texts=texts,
        rows=bundle_rows,
        rows8=rows8,
        scales=scales,
        max_len=p.max_len,
        max_events=p.max_events,
        runs=p.latency_runs,
    )
    return {}


def bundle(
    r: Run, *, texts, teacher_enc, tok_path, t_hist, s8_hist, final, rows8, scales, ranker, ranker_fit, similarity
) -> dict[str, Any]:
    """The search report, the signed bundle at ``out`` and the baselines beside it (``out.baselines/``)."""
    from shelfrank.export import evaluate as ev
    from shelfrank.export import fusion as fu
    from shelfrank.export.onnx_export import fp16_manifest

    ds, p, work, quality = r.ds, r.p, r.work.work, r.quality
    n = len(texts)
    quality["tower_training"] = {"teacher": t_hist, "student_int8": s8_hist}
    quality["stages_s"] = r.times  # the stages finished so far (this one is not)
    # the device ranks with everything the export knows: popularity and neighbours from all events
    seqs = ds.sequences()
    popularity = ev.popularity_scores(seqs, n)
    nbr_ids, nbr_w, _ = fu.build_table(seqs, n, p.neighbors, **similarity)
    quality["search"] = evaluate_rows(
        ds, rows8, scales, work / "encoder.onnx", tok_path, max_len=p.max_len, seed=p.seed
    )
    log = (work / "export.log").read_text() if (work / "export.log").exists() else ""
    manifest = write_bundle(
        r.out,
        ds,
        encoder=work / "encoder.onnx",
        tokenizer=tok_path,
        tower=work / "user_tower.onnx",
        rows8=rows8,
        scales=scales,
        popularity=popularity,
        neighbors=(nbr_ids, nbr_w),
        ranker=ranker.to_manifest(fitted_on=f"valid split ({ranker_fit['valid_cases']:,} cases)"),
        key=r.signing_key,
        max_len=p.max_len,
        max_events=p.max_events,
        model={
            "layers": len(p.student_layers),
            "teacher_layers": list(p.student_layers),
            "precision": "int8 dynamic (per-channel QInt8 weights, reduce_range off)",
        },
        extra_files={
            "quality.json": json.dumps(quality, indent=2, default=float) + "\n",
            "quality.md": render_quality(quality),
            "export.log": log,
        },
        encoders={"fp16": (work / "encoder_fp16.onnx", fp16_manifest(quality["parity_fp16"]))} if r.fp16 else None,
        meta={
            "search": quality["search"]["fusion"],
            "preset": asdict(p),
            "quality": {
                name: {k: m[k] for k in ("recall@10", "ndcg@10", "recall@50")} for name, m in quality["models"].items()
            },
        },
    )
    baselines = Path(str(r.out) + ".baselines")
    tmp = Path(tempfile.mkdtemp(prefix=baselines.name + ".", dir=baselines.parent))
    shutil.copy2(work / "student_fp32.onnx", tmp / "encoder_fp32.onnx")
    shutil.copy2(work / "teacher_fp32.onnx", tmp / "teacher_fp32.onnx")
    teacher_enc.bert.save_pretrained(tmp / "teacher")  # the naive pipeline of the bench runs it in torch
    shutil.copy2(tok_path, tmp / "teacher" / "tokenizer.json")
    np.save(tmp / "catalog_fp32.npy", np.ascontiguousarray(final, np.float32))
    replace_dir(tmp, baselines)
    return {"manifest": manifest}


def _stage(name: str, fn, outputs: tuple[str, ...], checkpoints: tuple[str, ...] = ()) -> Stage:
    """A stage whose inputs are its function's keyword-only parameters."""
    code = fn.__code__
    inputs = code.co_varnames[code.co_argcount : code.co_argcount + code.co_kwonlyargcount]
    return Stage(name, tuple(inputs), outputs, fn, checkpoints)


STAGES: tuple[Stage, ...] = (
    _stage(
        "prepare",
        prepare,
        ("split", "texts", "test", "teacher_enc", "tok_path", "tokens", "hist_tokens", "zs_enc", "pairs"),
    ),
    _stage("fine-tune teacher", fine_tune_teacher, ("teacher_enc", "teacher_emb"), ("teacher.pt",)),
    _stage("zero-shot teacher", zero_shot_teacher, ("zero_shot_row",), ("zs_items.npy",)),
    _stage("baselines", baselines, ("fctx", "similarity")),
    _stage("tower on teacher rows", tower_on_teacher_rows, ("t_model", "t_hist")),
    _stage("distil student", distil_student, ("student",), ("student.pt",)),
    _stage("onnx + int8", onnx_int8, ("s32_rows", "s8_rows")),
    _stage(
        "tower on student rows",
        tower_on_student_rows,
        ("final", "rows8", "scales", "bundle_rows", "ranker", "ranker_fit", "s8_hist"),
    ),
    _stage("latency", latency, ()),
    _stage("bundle", bundle, ("manifest",)),
)


def run_export(
    ds: Dataset,
    out: str | Path,
    *,
    key: str | Path,
    preset: str | Preset = "quick",
    teacher: str | Path | None = None,
    resume: bool = False,
    split: Split | None = None,
    parity_thresholds: tuple[float, float] = (0.99, 0.9),
    fp16: bool = False,
) -> ExportResult:
    """Run the whole export (:data:`STAGES`) and write a signed bundle at ``out`` (plus ``out.baselines/``).

    ``fp16`` also writes the student as a float16 encoder for GPU providers (manifest
    ``encoders.fp16``), behind its own parity gate against fp32 and against the int8 encoder
    whose rows the catalog holds.

    Raises:
        ExportValidationError: unusable data or teacher, or ``resume`` over checkpoints of other input.
        ParityError: the int8 (or fp16) encoder drifted beyond the gate; nothing is written.
    """
    _torch_imports()
    import torch

    p = PRESETS[preset] if isinstance(preset, str) else preset
    out = Path(out)
    signing_key = bfmt.load_private_key(key)  # fail before hours of training, not after
    t_start = time.monotonic()
    torch.manual_seed(p.seed)
    work = Path(str(out) + ".work")
    folder = WorkFolder(work, resume, WorkFolder.fingerprint_of(ds, p, teacher, split))
    r = Run(ds, p, out, folder, signing_key, teacher, split, parity_thresholds, fp16)
    file_log = logging.FileHandler(work / "export.log")
    file_log.setFormatter(logging.Formatter("%(asctime)s %(levelname)s %(name)s: %(message)s"))
    logging.getLogger("shelfrank").addHandler(file_log)
    try:
        res = run_stages(STAGES, r, folder, keep=("manifest",), times=r.times)
        return ExportResult(out, res["manifest"], r.quality, time.monotonic() - t_start, r.times)
    finally:
        logging.getLogger("shelfrank").removeHandler(file_log)
        file_log.close()
