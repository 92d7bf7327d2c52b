"""``shelfrank export``: shop data → fine-tuned teacher → distilled int8 student → signed bundle.

Stages (each checkpointed in ``<out>.work/`` so ``--resume`` continues after an interruption):
 1. split (leave-one-out) and item texts;         5. ONNX export, int8 quantisation, parity gate;
 2. zero-shot teacher (the text design);            6. catalog embedded with the int8 encoder;
 3. teacher fine-tuned on (item → next item);       7. sequence user tower on the final catalog rows;
 4. student distilled from it (layers {0,3,5});     8. quality report, latency, signed bundle.
The bundle is assembled in a temporary folder beside ``out`` and renamed into place only when it
is complete and signed, so an interrupted export never leaves a half-written bundle.
"""

from __future__ import annotations

import copy
import hashlib
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
from shelfrank.device.text import history_text, item_text
from shelfrank.errors import ExportValidationError
from shelfrank.export.bundle_writer import replace_dir, write_bundle
from shelfrank.export.data import Dataset, Split, leave_one_out
from shelfrank.export.search_eval import evaluate_rows, render_search
from shelfrank.timing import time_calls

logger = logging.getLogger(__name__)


@dataclass(frozen=True)
class Preset:
    name: str
    max_len: int = 32  # item/search text tokens (titles are short; measured at this length too)
    history_max_len: int = 128  # the text design's history input
    teacher_steps: int = 80
    student_steps: int = 80
    batch: int = 48
    lr: float = 5e-5
    student_layers: tuple[int, ...] = (0, 3, 5)
    tower_epochs: int = 3
    student_tower_epochs: int = 1
    tower_batch: int = 256
    tower_lr: float = 2e-3
    tower_time_s: float | None = 240.0  # the teacher-row tower; checked after every batch
    student_tower_time_s: float | None = 120.0  # the student-row tower (continues from the teacher's)
    tower_max_cases: int | None = 150_000  # training cases per tower epoch (sampled afresh each epoch)
    max_events: int = 20
    neighbors: int = 50  # co-occurrence neighbours per item in the bundle (M; 300 B/item ≤ int8 rows at d=384)
    fit_sample: int | None = 3000  # valid cases the fusion weights are fitted on (None: all)
    zero_shot_max_items: int | None = 10_000  # the text design's row embeds the whole catalog: skipped above
    diversity_sample: int = 1000  # test cases the MMR re-ranking is measured on
    eval_sample: int | None = 2000  # test users evaluated (None: all)
    zero_shot_sample: int = 200  # the text design is slow: a fixed sample
    latency_runs: int = 30
    parity_texts: int = 400
    seed: int = 0


PRESETS = {
    # bounded by the data (tower budgets checked after every batch, case caps per epoch); the 500k
    # events / 20k items bound is not measured yet (docs/export.md)
    "quick": Preset("quick"),
    # sized for ≤ 2 hours on a 2-core CPU with the Amazon Video Games data (290k training pairs):
    # measured here, teacher ≈ 2.8 s/step at 64 pairs, a tower epoch over 290k cases ≈ 6 min
    "full": Preset(
        "full",
        # the 2026-11-28 run: the towers were still improving when cut, and 400 teacher steps ranked
        # better than 1,000: time moves from the teacher to the towers
        teacher_steps=400,
        student_steps=250,
        batch=64,
        tower_epochs=5,
        student_tower_epochs=3,
        tower_time_s=1800.0,
        student_tower_time_s=1000.0,
        tower_max_cases=None,
        fit_sample=10_000,
        zero_shot_max_items=None,
        diversity_sample=2000,
        eval_sample=None,
        zero_shot_sample=5000,
        latency_runs=100,
        parity_texts=1000,
    ),
}


@dataclass
class ExportResult:
    out: Path
    manifest: dict[str, Any]
    quality: dict[str, Any]
    seconds: float
    stages: dict[str, float] = field(default_factory=dict)


def _torch_imports():
    try:
        import torch  # noqa: F401
        import transformers  # noqa: F401
    except ImportError as e:
        raise ImportError("the export stage needs torch and transformers: pip install 'shelfrank[export]'") from e


class _Stages:
    """Times each stage and keeps its outputs in the work folder for --resume.

    ``fingerprint.json`` in the work folder records what its checkpoints were trained from
    (:meth:`fingerprint_of`: the dataset's content, the preset, the teacher, the split) and which
    checkpoints were completed under that fingerprint. A fresh run starts a new record (older
    files stop counting at once); ``--resume`` on a folder whose fingerprint differs is refused
    with an ExportValidationError naming what changed, rather than retraining silently: the user
    asked to reuse hours of training, and either reusing the wrong checkpoint or quietly redoing
    it would surprise them. A checkpoint counts only once its stage is done (or
    :func:`_checkpointed` saved it), so an interruption mid-write never leaves one that resumes.
    """

    FILE = "fingerprint.json"

    def __init__(self, work: Path, resume: bool, fingerprint: dict[str, Any] | None = None) -> None:
        self.work, self.resume, self.times = work, resume, {}
        self.fingerprint = dict(fingerprint or {})
        self._done: set[str] = set()  # checkpoints complete under this fingerprint
        self._pending: set[str] = set()  # claimed by have(), counted at the stage's done()
        work.mkdir(parents=True, exist_ok=True)
        if resume:
            self._check_resume()
        self._save()

    @staticmethod
    def fingerprint_of(ds: Dataset, preset: Preset, teacher: str | Path | None, split: Split | None) -> dict[str, Any]:
        """What the checkpoints depend on, one readable entry per part (hashes are sha256; the
        preset's fields as they are, so a refusal can name the field that changed)."""
        h = hashlib.sha256()
        cat, ev = ds.catalog, ds.events
        for col in (cat.item_ids, cat.titles, cat.category, cat.brand, ds.users):
            h.update("\x1f".join("\x00" if v is None else v for v in col).encode() + b"\x1e")
        for arr in (cat.price, cat.in_stock, ev.user, ev.item, ev.action, ev.ts):
            h.update(b"-" if arr is None else np.ascontiguousarray(arr).tobytes())
            h.update(b"\x1e")
        if teacher is None:
            from shelfrank.export.models import packaged_teacher_path

            t_path, t_name = packaged_teacher_path(), "packaged all-MiniLM-L6-v2"
        else:
            t_path = Path(teacher)
            t_name = str(t_path.resolve())
        th = hashlib.sha256()
        # the files that decide the weights and the tokens (not READMEs or other formats beside them)
        for f in sorted(t_path.glob("*")):
            if f.is_file() and (f.name in ("config.json", "tokenizer.json") or f.suffix in (".safetensors", ".bin")):
                th.update(f.name.encode() + b"\x00" + bfmt.sha256_file(f).encode())
        kind = "leave-one-out" if split is None else split.kind
        if split is not None and split.cut:
            kind += " " + json.dumps(split.cut, sort_keys=True)
        return {
            "dataset": f"{ds.name}: {len(cat)} items, {len(ev)} events, sha256 {h.hexdigest()[:16]}",
            "preset": json.loads(json.dumps(asdict(preset))),  # as stored: tuples become lists
            "teacher": f"{t_name}, sha256 {th.hexdigest()[:16]}",
            "split": kind,
        }

    def _check_resume(self) -> None:
        path = self.work / self.FILE
        if not path.exists():
            # a folder from before fingerprints (or from a crash before the first write): its
            # checkpoints have no known origin
            if any(f.name != "export.log" for f in self.work.iterdir()):
                raise ExportValidationError(
                    f"{self.work}: --resume found checkpoints without a {self.FILE} (an older shelfrank "
                    "wrote them), so nothing says they match this data; run without --resume to retrain"
                )
            return
        try:
            stored = json.loads(path.read_text(encoding="utf-8"))
            old, done = dict(stored["fingerprint"]), set(stored["checkpoints"])
        except (OSError, ValueError, KeyError, TypeError) as e:
            raise ExportValidationError(f"{path}: unreadable ({e}); run without --resume to retrain") from e
        changed = [k for k in sorted(set(old) | set(self.fingerprint)) if old.get(k) != self.fingerprint.get(k)]
        if changed:
            what = "; ".join(_changed(k, old.get(k), self.fingerprint.get(k)) for k in changed)
            raise ExportValidationError(
                f"{self.work}: --resume refused, its checkpoints came from other input ({what}); "
                "run without --resume to retrain them, or write to another --out"
            )
        self._done = done
        logger.info("resume: %d checkpoint(s) match this input (%s)", len(done), ", ".join(sorted(done)) or "none")

    def _save(self) -> None:
        rec = {"fingerprint": self.fingerprint, "checkpoints": sorted(self._done)}
        tmp = self.work / (self.FILE + ".tmp")
        tmp.write_text(json.dumps(rec, indent=1) + "\n", encoding="utf-8")
        tmp.replace(self.work / self.FILE)

    def have(self, *names: str) -> bool:
        """True on --resume when every named checkpoint was completed under this fingerprint.

        Otherwise the caller is about to (re)write them: older copies are removed first, and the
        names count once the stage is done.
        """
        if self.resume and all(n in self._done and (self.work / n).exists() for n in names):
            return True
        for n in names:
            (self.work / n).unlink(missing_ok=True)
        if self._done & set(names):
            self._done -= set(names)
            self._save()
        self._pending.update(names)
        return False

    def completed(self, *names: str) -> None:
        """Count these checkpoints as written under this fingerprint."""
        self._pending -= set(names)
        self._done.update(names)
        self._save()

    def start(self, name: str) -> float:
        logger.info("== %s", name)
        return time.monotonic()

    def done(self, name: str, t0: float) -> None:
        if self._pending:
            self.completed(*[n for n in self._pending if (self.work / n).exists()])
            self._pending.clear()
        self.times[name] = round(time.monotonic() - t0, 1)
        logger.info("== %s done in %.1f s", name, self.times[name])


def _changed(part: str, was: Any, now: Any) -> str:
    if isinstance(was, dict) and isinstance(now, dict):
        fields = [f for f in sorted(set(was) | set(now)) if was.get(f) != now.get(f)]
        return "; ".join(f"{part} {f} was {was.get(f)!r}, now {now.get(f)!r}" for f in fields)
    return f"{part} was {was!r}, now {now!r}"


def _texts(ds: Dataset) -> list[str]:
    return [item_text(ds.catalog.record(i)) for i in range(len(ds.catalog))]


def _sample(cases: list, n: int | None, seed: int) -> list:
    if n is None or len(cases) <= n:
        return cases
    rng = np.random.default_rng(seed)
    return [cases[i] for i in sorted(rng.choice(len(cases), n, replace=False))]


def _history_texts(ds: Dataset, histories: list, max_events: int) -> list[str]:
    from shelfrank.device.text import ACTIONS

    return [history_text([(ACTIONS[a], ds.catalog.titles[i]) for i, a in h[-max_events:][::-1]]) for h in histories]


def _checkpointed(st: _Stages, name: str, module, train) -> None:
    """Load ``module`` from the work folder's checkpoint ``name`` on --resume, else train and save it."""
    import torch

    if st.have(name):
        module.load_state_dict(torch.load(st.work / name))
    else:
        train()
        tmp = st.work / (name + ".tmp")
        torch.save(module.state_dict(), tmp)
        tmp.replace(st.work / name)  # whole or absent: an interrupted save never resumes
        st.completed(name)


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
    """Run the whole export and write a signed bundle at ``out`` (plus ``out.baselines/``).

    ``fp16`` also writes the student as a float16 encoder for GPU providers (manifest
    ``encoders.fp16``), behind its own parity gate against fp32 and against the int8 encoder
    whose rows the catalog holds.

    Raises:
        ExportValidationError: unusable data or teacher.
        ParityError: the int8 (or fp16) encoder drifted beyond the gate; nothing is written.
    """
    _torch_imports()
    import torch

    from shelfrank.device.encoder import TextEncoder
    from shelfrank.device.kernel import quantize_rows
    from shelfrank.export import evaluate as ev
    from shelfrank.export import fusion as fu
    from shelfrank.export.models import load_teacher, make_student
    from shelfrank.export.onnx_export import export_encoder, export_tower, parity, parity_gate, quantize_int8
    from shelfrank.export.train import (
        EncoderTrainConfig,
        Tokens,
        TowerConfig,
        TowerModel,
        embed,
        train_encoder,
        train_tower,
        transition_pairs,
    )

    p = PRESETS[preset] if isinstance(preset, str) else preset
    out = Path(out)
    signing_key = bfmt.load_private_key(key)  # fail before hours of training, not after
    t_start = time.monotonic()
    torch.manual_seed(p.seed)
    work = Path(str(out) + ".work")
    st = _Stages(work, resume, _Stages.fingerprint_of(ds, p, teacher, split))
    file_log = logging.FileHandler(work / "export.log")
    file_log.setFormatter(logging.Formatter("%(asctime)s %(levelname)s %(name)s: %(message)s"))
    logging.getLogger("shelfrank").addHandler(file_log)
    try:
        split = split or leave_one_out(ds)
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
        quality: dict[str, Any] = {
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
        models = quality["models"]

        teacher_enc, tok_path = load_teacher(teacher)
        tokens = Tokens(str(tok_path), p.max_len)
        hist_tokens = Tokens(str(tok_path), p.history_max_len)

        # the text design is measured with the teacher as it comes (a copy: the teacher is fine-tuned next)
        zs_enc = None if p.zero_shot_max_items is not None and n > p.zero_shot_max_items else copy.deepcopy(teacher_enc)

        pairs = transition_pairs(split.train)
        t0 = st.start("fine-tune teacher")
        _checkpointed(
            st,
            "teacher.pt",
            teacher_enc,
            lambda: train_encoder(
                teacher_enc,
                tokens,
                texts,
                pairs,
                EncoderTrainConfig(steps=p.teacher_steps, batch=p.batch, lr=p.lr, max_len=p.max_len, seed=p.seed),
                desc="fine-tune teacher",
            ),
        )
        teacher_emb = embed(teacher_enc, tokens, texts, desc="teacher catalog")
        st.done("fine-tune teacher", t0)

        t0 = st.start("zero-shot teacher")
        zero_shot_row = None
        if zs_enc is None:
            logger.info(
                "zero-shot text design skipped: %d items > the preset's zero_shot_max_items %d",
                n,
                p.zero_shot_max_items,
            )
            quality["notes"].append(f"zero-shot text design not evaluated ({n:,} items > {p.zero_shot_max_items:,})")
        else:
            zs = _sample(test, p.zero_shot_sample, p.seed + 1)
            if st.have("zs_items.npy"):
                zs_items = np.load(work / "zs_items.npy")
            else:
                zs_items = embed(zs_enc, tokens, texts, desc="zero-shot catalog")
                np.save(work / "zs_items.npy", zs_items)

            def zero_shot(hs: list) -> np.ndarray:
                users = embed(zs_enc, hist_tokens, _history_texts(ds, hs, p.max_events), batch=32, desc="histories")
                return users @ zs_items.T

            zero_shot_row = ev.evaluate(zero_shot, zs, n, batch=128, item_vecs=teacher_emb)
            zs_enc = None  # free the copy
        st.done("zero-shot teacher", t0)

        # diversity@10 of every row in one fixed space: the fine-tuned teacher's item embeddings
        div_vecs = teacher_emb
        t0 = st.start("baselines")
        models["popularity"] = ev.evaluate(ev.popularity(split, n), test, n, item_vecs=div_vecs)
        knn_fn, quality["item_knn"] = ev.tuned_item_knn(split, n, valid_sample=p.fit_sample, seed=p.seed)
        models["item-kNN"] = ev.evaluate(knn_fn, test, n, item_vecs=div_vecs)
        similarity = {k: v for k, v in quality["item_knn"]["params"].items() if k in ev.SIMILARITY_KEYS}
        if zero_shot_row is not None:
            models["zero-shot teacher (text design)"] = zero_shot_row
        fctx = fu.Context(
            split,
            n,
            test,
            neighbors=p.neighbors,
            fit_sample=p.fit_sample,
            seed=p.seed,
            div_vecs=div_vecs,
            similarity=similarity,
        )
        quality["repeats"] = {"valid_targets_in_history": round(fctx.repeat_share, 4), "measured": fctx.repeats}
        st.done("baselines", t0)

        tcfg = TowerConfig(
            epochs=p.tower_epochs,
            batch=p.tower_batch,
            lr=p.tower_lr,
            max_events=p.max_events,
            time_budget_s=p.tower_time_s,
            max_cases=p.tower_max_cases,
            seed=p.seed,
        )
        t0 = st.start("tower on teacher rows")
        t_model, t_hist = train_tower(teacher_emb, split.train, split.valid, tcfg, desc="tower (teacher)")
        _add_rows(models, "teacher fp32", fctx.rows_for("teacher", *_torch_tower(t_model, p.max_events)))
        st.done("tower on teacher rows", t0)

        t0 = st.start("distil student")
        student = make_student(teacher_enc, p.student_layers)
        _checkpointed(
            st,
            "student.pt",
            student,
            lambda: train_encoder(
                student,
                tokens,
                texts,
                pairs,
                EncoderTrainConfig(
                    steps=p.student_steps, batch=p.batch, lr=2 * p.lr, max_len=p.max_len, seed=p.seed + 7
                ),
                teacher_emb=teacher_emb,
                desc="distil student",
            ),
        )
        st.done("distil student", t0)

        t0 = st.start("onnx + int8")
        export_encoder(student, work / "student_fp32.onnx")
        quantize_int8(work / "student_fp32.onnx", work / "encoder.onnx")
        export_encoder(teacher_enc, work / "teacher_fp32.onnx")
        enc32 = TextEncoder(work / "student_fp32.onnx", tok_path, max_len=p.max_len)
        enc8 = TextEncoder(work / "encoder.onnx", tok_path, max_len=p.max_len)
        s32_rows = enc32.encode(texts)
        s8_rows = enc8.encode(texts)
        held = _parity_texts(ds, p.parity_texts, p.seed)
        par = parity(enc32, enc8, held, s32_rows)
        quality["parity"] = par
        logger.info(
            "parity int8 vs fp32: mean cos %.4f, min %.4f, top-10 overlap %.3f",
            par["mean_cos"],
            par["min_cos"],
            par["top10_overlap"],
        )
        parity_gate(par, min_cos=parity_thresholds[0], min_overlap=parity_thresholds[1])
        if fp16:
            quality["parity_fp16"] = _fp16_encoder(
                work, tok_path, p.max_len, held, enc32, enc8, s32_rows, s8_rows, parity_thresholds
            )
        st.done("onnx + int8", t0)

        t0 = st.start("tower on student rows")
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
        _add_rows(models, "student fp32", fctx.rows_for("student fp32", *_torch_tower(s32_model, p.max_events)))
        with torch.inference_mode():
            final = s8_model.item_vectors().numpy()
        rows8, scales = quantize_rows(np.ascontiguousarray(final, np.float32))
        export_tower(s8_model.tower, work / "user_tower.onnx")
        bundle_rows = rows8.astype(np.float32) * scales[:, None]
        # exactly what the device runs: the ONNX tower over the bundle's (int8) rows
        s8 = fctx.rows_for(
            "student int8", _onnx_tower(work / "user_tower.onnx", bundle_rows, p.max_events), bundle_rows
        )
        _add_rows(models, "student int8", s8, bundle=True)
        ranker = s8["params"]
        quality["ranker"] = {**ranker.to_manifest(), "fit": s8["fit"], "neighbors": p.neighbors}
        quality["diversity"] = fctx.diversity(s8["users_test"], bundle_rows, ranker, sample=p.diversity_sample)
        quality["warnings"] = _warnings(models)
        for w in quality["warnings"]:
            logger.warning("%s", w)
        st.done("tower on student rows", t0)

        t0 = st.start("latency")
        quality["encoders"] = _encoder_latency(
            ds, split, teacher_enc, tok_path, work, p, hist_tokens, tokens, bundle_rows, rows8, scales
        )
        st.done("latency", t0)
        quality["tower_training"] = {"teacher": t_hist, "student_int8": s8_hist}
        quality["stages_s"] = st.times

        t0 = st.start("bundle")
        # the device ranks with everything the export knows: popularity and neighbours from all events
        seqs = ds.sequences()
        popularity = ev.popularity_scores(seqs, n)
        nbr_ids, nbr_w, _ = fu.build_table(seqs, n, p.neighbors, **similarity)
        quality["search"] = evaluate_rows(
            ds, rows8, scales, work / "encoder.onnx", tok_path, max_len=p.max_len, seed=p.seed
        )
        log = (work / "export.log").read_text() if (work / "export.log").exists() else ""
        manifest = write_bundle(
            out,
            ds,
            encoder=work / "encoder.onnx",
            tokenizer=tok_path,
            tower=work / "user_tower.onnx",
            rows8=rows8,
            scales=scales,
            popularity=popularity,
            neighbors=(nbr_ids, nbr_w),
            ranker=ranker.to_manifest(fitted_on=f"valid split ({s8['fit']['valid_cases']:,} cases)"),
            key=signing_key,
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
            encoders={"fp16": (work / "encoder_fp16.onnx", _fp16_manifest(quality["parity_fp16"]))} if fp16 else None,
            meta={
                "search": quality["search"]["fusion"],
                "preset": asdict(p),
                "quality": {
                    name: {k: m[k] for k in ("recall@10", "ndcg@10", "recall@50")}
                    for name, m in quality["models"].items()
                },
            },
        )
        baselines = Path(str(out) + ".baselines")
        tmp = Path(tempfile.mkdtemp(prefix=baselines.name + ".", dir=baselines.parent))
        shutil.copy2(work / "student_fp32.onnx", tmp / "encoder_fp32.onnx")
        shutil.copy2(work / "teacher_fp32.onnx", tmp / "teacher_fp32.onnx")
        teacher_enc.bert.save_pretrained(tmp / "teacher")  # the naive pipeline of the bench runs it in torch
        shutil.copy2(tok_path, tmp / "teacher" / "tokenizer.json")
        np.save(tmp / "catalog_fp32.npy", np.ascontiguousarray(final, np.float32))
        replace_dir(tmp, baselines)
        st.done("bundle", t0)
        return ExportResult(out, manifest, quality, time.monotonic() - t_start, st.times)
    finally:
        logging.getLogger("shelfrank").removeHandler(file_log)
        file_log.close()


def _fp16_encoder(
    work: Path,
    tok_path: Path,
    max_len: int,
    held: list[str],
    enc32,
    enc8,
    s32_rows: np.ndarray,
    s8_rows: np.ndarray,
    thresholds: tuple[float, float],
) -> dict[str, Any]:
    """``work/encoder_fp16.onnx`` from the fp32 student, gated against fp32 and against the int8 encoder.

    Measured with onnxruntime's CPU provider, which runs the float16 graph correctly but inserts
    float32 Casts around the nodes it has no float16 kernel for (MatMul, Add, Softmax's parts…): the
    figures bound the float16 weights and the float16 nodes it does run, not a GPU's float16
    arithmetic.
    """
    from shelfrank.device.encoder import TextEncoder
    from shelfrank.export.onnx_export import convert_fp16, parity, parity_gate

    path = convert_fp16(work / "student_fp32.onnx", work / "encoder_fp16.onnx")
    enc16 = TextEncoder(path, tok_path, max_len=max_len)
    figures = {
        "vs_fp32": parity(enc32, enc16, held, s32_rows),
        # the device mixes fp16 search queries with the int8 encoder's catalog rows
        "vs_int8": parity(enc8, enc16, held, s8_rows),
        "provider": "CPUExecutionProvider",
        "file_mb": round(path.stat().st_size / 1e6, 2),
    }
    for name, what in (("vs_fp32", "the fp32 student"), ("vs_int8", "the int8 encoder (whose rows the catalog holds)")):
        f = figures[name]
        logger.info(
            "parity fp16 vs %s: mean cos %.5f, min %.5f, top-10 overlap %.3f",
            name[3:],
            f["mean_cos"],
            f["min_cos"],
            f["top10_overlap"],
        )
        parity_gate(f, min_cos=thresholds[0], min_overlap=thresholds[1], what=f"fp16 encoder (against {what})")
    return figures


def _fp16_manifest(figures: dict[str, Any]) -> dict[str, Any]:
    keep = ("mean_cos", "min_cos", "top10_overlap", "texts")
    return {
        "precision": "fp16",
        "io": "int64 input_ids/attention_mask → float32 embedding (as the int8 encoder)",
        "source": "the fp32 student, onnxruntime.transformers.float16 (keep_io_types)",
        "for": "gpu_providers of a board config (CUDA, TensorRT); the catalog rows stay the int8 encoder's",
        "parity": {k: {m: figures[k][m] for m in keep} for k in ("vs_fp32", "vs_int8")},
    }


def _parity_texts(ds: Dataset, n: int, seed: int) -> list[str]:
    """Held-out texts for the parity gate: half catalog texts, half search-like fragments."""
    rng = np.random.default_rng(seed + 11)
    texts = _texts(ds)
    picked = [texts[i] for i in rng.choice(len(texts), min(n // 2, len(texts)), replace=False)]
    queries = []
    for i in rng.choice(len(texts), n - len(picked), replace=True):
        words = ds.catalog.titles[i].split()
        a = int(rng.integers(0, max(1, len(words) - 1)))
        queries.append(" ".join(words[a : a + int(rng.integers(1, 4))]).lower())
    return picked + queries


def _torch_tower(model, max_events: int):
    """(user vectors fn, item rows) of a torch tower model (its own item vectors, residual included)."""
    import torch

    from shelfrank.export.fusion import tower_user_fn

    with torch.inference_mode():
        model.eval()
        v = model.item_vectors()

    def run(r: np.ndarray, a: np.ndarray, m: np.ndarray) -> np.ndarray:
        with torch.inference_mode():
            return model(torch.from_numpy(r), torch.from_numpy(a), torch.from_numpy(m), v).numpy()

    return tower_user_fn(run, max_events), v.numpy()


def _onnx_tower(tower_onnx: Path, rows: np.ndarray, max_events: int):
    """User vectors exactly as the device makes them: the ONNX tower over the bundle's (int8) rows."""
    from shelfrank.device.encoder import make_session
    from shelfrank.export.fusion import tower_user_fn

    sess = make_session(tower_onnx, threads=2)

    def run(r: np.ndarray, a: np.ndarray, m: np.ndarray) -> np.ndarray:
        (u,) = sess.run(["user"], {"item_vecs": rows[r], "actions": a, "mask": m})
        return u

    return tower_user_fn(run, max_events)


def _add_rows(models: dict, name: str, rows: dict, *, bundle: bool = False) -> None:
    """The report rows of one model: tower alone, hybrid (the shipped one names ``bundle``)."""
    models[f"{name} tower"] = rows["tower"]
    models[f"{name} hybrid" + (" (the bundle)" if bundle else "")] = rows["hybrid"]
    if bundle and "hybrid_repeats" in rows:
        models[f"{name} hybrid, seen items allowed + repeat term"] = rows["hybrid_repeats"]


def _warnings(models: dict) -> list[str]:
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


def _encoder_latency(ds, split, teacher_enc, tok_path, work, p, hist_tokens, tokens, rows, rows8, scales) -> dict:
    """1 thread, batch 1: teacher torch fp32 on history text vs the device's encoders and tower."""
    import torch

    from shelfrank.device.encoder import TextEncoder, make_session
    from shelfrank.device.kernel import topk
    from shelfrank.export.train import Tokens, history_arrays

    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    try:
        hists = [h for _, h, _ in _sample(split.test, 50, p.seed + 3)]
        htexts = _history_texts(ds, hists, p.max_events)
        item_texts = _texts(ds)[:50]
        # a fixed 128-token input (the packaged tokenizer's length): real tokens of the catalog text
        fixed = Tokens(str(tok_path), 128)([" ".join(_texts(ds)[:200])])
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

        out["teacher torch fp32, history text (real, ≤128 tokens)"] = time_calls(teacher_hist, p.latency_runs)
        out["teacher torch fp32, 128 tokens"] = time_calls(teacher_fixed, p.latency_runs)
        for name, f in (
            ("student int8 ONNX", "encoder.onnx"),
            ("student fp32 ONNX", "student_fp32.onnx"),
            ("teacher fp32 ONNX", "teacher_fp32.onnx"),
        ):
            enc = TextEncoder(work / f, tok_path, max_len=128)
            short = TextEncoder(work / f, tok_path, max_len=p.max_len)
            k = iter(range(10**9))
            out[f"{name}, 128 tokens"] = time_calls(lambda e=enc: e.run(feeds128), p.latency_runs)
            out[f"{name}, item/search text (≤{p.max_len} tokens)"] = time_calls(
                lambda e=short, k=k: e.encode([item_texts[next(k) % len(item_texts)]]), p.latency_runs
            )
            out[f"{name}, 128 tokens"]["file_mb"] = round((work / f).stat().st_size / 1e6, 2)
        sess = make_session(work / "user_tower.onnx", threads=1)
        r, a, m = history_arrays(hists, p.max_events)
        k2 = iter(range(10**9))

        def recommend():
            j = next(k2) % len(hists)
            (u,) = sess.run(["user"], {"item_vecs": rows[r[j : j + 1]], "actions": a[j : j + 1], "mask": m[j : j + 1]})
            topk(u[0], rows8, 10, scales=scales)

        out["recommend path: user tower ONNX + int8 top-k"] = time_calls(recommend, p.latency_runs)
        out["recommend path: user tower ONNX + int8 top-k"]["file_mb"] = round(
            (work / "user_tower.onnx").stat().st_size / 1e6, 3
        )
        base = out["teacher torch fp32, history text (real, ≤128 tokens)"]["p50_ms"]
        for v in out.values():
            v["speedup_vs_teacher_history"] = round(base / v["p50_ms"], 1)
        return out
    finally:
        torch.set_num_threads(threads)


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
