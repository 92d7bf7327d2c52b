"""The export as a list of stages, and its work folder (checkpoints, ``--resume``), written once.

A :class:`Stage` is a name, the values it reads (``inputs``), the values it makes (``outputs``), the
function that makes them, and the work-folder files it may reuse on ``--resume`` (``checkpoints``).
:func:`run_stages` runs a list of them in order: it checks that every input is made by an earlier
stage before anything runs, times each stage, lets a stage reuse only the checkpoints it declares,
and drops every value once no later stage reads it (a stage's big arrays do not outlive their use).

The work folder (:class:`WorkFolder`) keeps the checkpoints. ``fingerprint.json`` in it records
what its checkpoints were trained from (:meth:`WorkFolder.fingerprint_of`: the dataset's content,
the preset, the teacher, the split) and which checkpoints were completed under that fingerprint.
A fresh run starts a new record (older files stop counting at once); ``--resume`` on a folder whose
fingerprint differs is refused with an ExportValidationError naming what changed, rather than
retraining silently: the user asked to reuse hours of training, and either reusing the wrong
checkpoint or quietly redoing it would surprise them. A checkpoint is written whole (to a
temporary name, then renamed) and counts only after that, so an interruption mid-write never
leaves one that resumes.
"""

from __future__ import annotations

import hashlib
import json
import logging
import time
from collections.abc import Callable, Sequence
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Any, TypeVar

import numpy as np

from shelfrank.device import bundle as bfmt
from shelfrank.errors import ExportValidationError
from shelfrank.export.data import Dataset, Split

logger = logging.getLogger(__name__)

T = TypeVar("T")


@dataclass(frozen=True)
class Stage:
    """One step of the export: ``run(ctx, **inputs)`` returns a dict with exactly ``outputs``.

    ``inputs`` and ``outputs`` name values passed between stages (a stage may output a name it
    also reads: the value it changed, e.g. the fine-tuned teacher). ``checkpoints``: the files in
    the work folder it may reuse on ``--resume`` (through :meth:`WorkFolder.checkpoint`).
    """

    name: str
    inputs: tuple[str, ...]
    outputs: tuple[str, ...]
    run: Callable[..., dict[str, Any]]
    checkpoints: tuple[str, ...] = ()


def check_stages(stages: Sequence[Stage], given: Sequence[str] = ()) -> None:
    """Every input made by an earlier stage (or ``given``), every checkpoint declared once.

    Raises:
        ValueError: the list cannot run in this order (a programming error, found before training).
    """
    have, files = set(given), set()
    for s in stages:
        if missing := [k for k in s.inputs if k not in have]:
            raise ValueError(f"stage {s.name!r} reads {missing}, which no earlier stage makes")
        if twice := files & set(s.checkpoints):
            raise ValueError(f"stage {s.name!r} declares checkpoint(s) {sorted(twice)} another stage declares")
        have.update(s.outputs)
        files.update(s.checkpoints)


def run_stages(
    stages: Sequence[Stage], ctx: Any, work: WorkFolder, *, keep: Sequence[str] = (), times: dict[str, float]
) -> dict[str, Any]:
    """Run ``stages`` in order over ``ctx``; returns the values named in ``keep``.

    Each stage's seconds go into ``times`` under its name as it finishes (the report reads the
    same dict, so it holds the stages finished when it is written).
    """
    check_stages(stages)
    last_use = {k: i for i, s in enumerate(stages) for k in s.inputs}
    state: dict[str, Any] = {}
    for i, s in enumerate(stages):
        logger.info("== %s", s.name)
        t0 = time.monotonic()
        outside, work.allowed = work.allowed, frozenset(s.checkpoints)
        try:
            out = s.run(ctx, **{k: state[k] for k in s.inputs})
        finally:
            work.allowed = outside
        if set(out) != set(s.outputs):
            raise ValueError(f"stage {s.name!r} returned {sorted(out)}, not its outputs {sorted(s.outputs)}")
        state.update(out)
        for k in [k for k in state if last_use.get(k, -1) <= i and k not in keep]:
            del state[k]  # nothing later reads it
        times[s.name] = round(time.monotonic() - t0, 1)
        logger.info("== %s done in %.1f s", s.name, times[s.name])
    return {k: state[k] for k in keep}


class WorkFolder:
    """``<out>.work/``: the export's checkpoints under one fingerprint (see the module docstring)."""

    FILE = "fingerprint.json"

    def __init__(self, work: Path, resume: bool, fingerprint: dict[str, Any] | None = None) -> None:
        self.work, self.resume = work, resume
        self.fingerprint = dict(fingerprint or {})
        self.allowed: frozenset[str] | None = None  # set by run_stages: the running stage's checkpoints
        self._done: set[str] = set()  # checkpoints complete under this fingerprint
        work.mkdir(parents=True, exist_ok=True)
        if resume:
            self._check_resume()
        self._save()

    @staticmethod
    def fingerprint_of(ds: Dataset, preset: Any, teacher: str | Path | None, split: Split | None) -> dict[str, Any]:
        """What the checkpoints depend on, one readable entry per part (hashes are sha256; the
        preset's fields (a dataclass) as they are, so a refusal can name the field that changed)."""
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

        Otherwise the caller is about to (re)write them: older copies are removed first (and stop
        counting), and each counts once :meth:`completed` says so.
        """
        if self.resume and all(n in self._done and (self.work / n).exists() for n in names):
            return True
        for n in names:
            (self.work / n).unlink(missing_ok=True)
        if self._done & set(names):
            self._done -= set(names)
            self._save()
        return False

    def completed(self, *names: str) -> None:
        """Count these checkpoints as written under this fingerprint."""
        self._done.update(names)
        self._save()

    def checkpoint(
        self, name: str, make: Callable[[], T], *, save: Callable[[T, Any], None], load: Callable[[Path], T]
    ) -> T:
        """``load(path)`` of checkpoint ``name`` on --resume, else ``make()``, saved whole by
        ``save(value, binary file)`` and counted. The one way a stage reuses earlier work."""
        if self.allowed is not None and name not in self.allowed:
            raise ValueError(f"checkpoint {name!r} is not declared by the running stage ({sorted(self.allowed)})")
        path = self.work / name
        if self.have(name):
            logger.info("resume: %s reused", name)
            return load(path)
        value = make()
        tmp = self.work / (name + ".tmp")
        with open(tmp, "wb") as f:
            save(value, f)
        tmp.replace(path)  # whole or absent: an interrupted save never resumes
        self.completed(name)
        return value

    def array(self, name: str, make: Callable[[], np.ndarray]) -> np.ndarray:
        """A numpy array checkpoint (``.npy``)."""
        return self.checkpoint(name, make, save=lambda a, f: np.save(f, a), load=np.load)

    def module(self, name: str, module: Any, train: Callable[[], Any]) -> None:
        """A torch module's weights: loaded into ``module`` on --resume, else ``train()`` (which
        trains it in place) and its ``state_dict`` saved."""
        import torch

        def trained() -> dict[str, Any]:
            train()
            return module.state_dict()

        self.checkpoint(name, trained, save=torch.save, load=lambda path: module.load_state_dict(torch.load(path)))


def _changed(part: str, was: Any, now: Any) -> str:
    if isinstance(was, dict) and isinstance(now, dict):
        fields = [f for f in sorted(set(was) | set(now)) if was.get(f) != now.get(f)]
        return "; ".join(f"{part} {f} was {was.get(f)!r}, now {now.get(f)!r}" for f in fields)
    return f"{part} was {was!r}, now {now!r}"
