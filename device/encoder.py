"""The text encoder on the device: ``tokenizers`` + an ONNX model run by onnxruntime.

The ONNX graph takes ``input_ids`` and ``attention_mask`` (int64, batch × tokens) and returns
``embedding`` (float32, batch × d), already mean-pooled and L2-normalised, so export and device
share one definition of "the item vector". Export embeds the catalog through this same class.
"""

from __future__ import annotations

import logging
import os
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import numpy as np

from shelfrank.errors import BundleError, InputError

logger = logging.getLogger(__name__)


def make_session(
    model_path: str | Path,
    *,
    threads: int = 1,
    providers: Sequence[Any] | None = None,
):
    """An onnxruntime session with explicit threads; GPU providers fall back to CPU with a warning."""
    import onnxruntime as ort

    opts = ort.SessionOptions()
    opts.intra_op_num_threads = max(1, int(threads))
    opts.inter_op_num_threads = 1
    opts.graph_optimization_level = ort.GraphOptimizationLevel.ORT_ENABLE_ALL
    wanted = list(providers) if providers else ["CPUExecutionProvider"]
    available = set(ort.get_available_providers())
    usable = [p for p in wanted if (p[0] if isinstance(p, tuple) else p) in available]
    dropped = [p for p in wanted if p not in usable]
    if dropped:
        logger.warning(
            "execution provider(s) %s not available here (have %s); using %s",
            [p[0] if isinstance(p, tuple) else p for p in dropped],
            sorted(available),
            [p[0] if isinstance(p, tuple) else p for p in usable] or ["CPUExecutionProvider"],
        )
    if not usable:
        usable = ["CPUExecutionProvider"]
    try:
        return ort.InferenceSession(os.fspath(model_path), sess_options=opts, providers=usable)
    except Exception as e:  # onnxruntime raises its own exception types
        raise BundleError(f"{model_path}: onnxruntime cannot load this model: {e}") from e


class TextEncoder:
    """Tokenise and embed text with an ONNX sentence encoder.

    Args:
        model_path: ONNX file with inputs input_ids/attention_mask and output ``embedding``.
        tokenizer_path: a ``tokenizers`` JSON file. Padding and truncation are set here
            explicitly (pad to the longest text in the batch, truncate at ``max_len``): the
            packaged MiniLM tokenizer.json would otherwise pad every input to 128.
        max_len: maximum tokens per text, including [CLS] and [SEP].
    """

    def __init__(
        self,
        model_path: str | Path,
        tokenizer_path: str | Path,
        *,
        max_len: int,
        threads: int = 1,
        providers: Sequence[Any] | None = None,
    ) -> None:
        from tokenizers import Tokenizer

        try:
            self.tokenizer = Tokenizer.from_file(os.fspath(tokenizer_path))
        except Exception as e:  # tokenizers raises a bare Exception on a bad file
            raise BundleError(f"{tokenizer_path}: not a valid tokenizers JSON file: {e}") from e
        pad_id = self.tokenizer.token_to_id("[PAD]")
        self.tokenizer.enable_truncation(max_length=int(max_len))
        self.tokenizer.enable_padding(pad_id=0 if pad_id is None else pad_id, pad_token="[PAD]")
        self.max_len = int(max_len)
        self.session = make_session(model_path, threads=threads, providers=providers)
        self._inputs = [i.name for i in self.session.get_inputs()]
        missing = {"input_ids", "attention_mask"} - set(self._inputs)
        if missing:
            raise BundleError(f"{model_path}: encoder lacks input(s) {sorted(missing)}; has {self._inputs}")
        out = self.session.get_outputs()[0]
        self.dim = int(out.shape[-1]) if isinstance(out.shape[-1], int) else None

    def tokenize(self, texts: Sequence[str]) -> dict[str, np.ndarray]:
        """Token arrays for the ONNX graph (int64, batch × longest)."""
        if isinstance(texts, str):
            raise InputError("texts must be a list of strings, not one string")
        enc = self.tokenizer.encode_batch(list(texts))
        feeds = {
            "input_ids": np.asarray([e.ids for e in enc], dtype=np.int64),
            "attention_mask": np.asarray([e.attention_mask for e in enc], dtype=np.int64),
        }
        if "token_type_ids" in self._inputs:
            feeds["token_type_ids"] = np.zeros_like(feeds["input_ids"])
        return feeds

    def run(self, feeds: dict[str, np.ndarray]) -> np.ndarray:
        """Embeddings (float32, batch × d) for tokenised input; refuses NaN/inf output."""
        (emb,) = self.session.run(["embedding"], feeds)
        emb = np.ascontiguousarray(emb, dtype=np.float32)
        if not np.isfinite(emb).all():
            raise BundleError("the encoder produced NaN/inf embeddings; the model file is broken")
        return emb

    def encode(self, texts: Sequence[str], *, batch_size: int = 64) -> np.ndarray:
        """Embed texts in batches (sorted by length to keep padding small); float32 (N, d)."""
        texts = list(texts)
        if not texts:
            return np.zeros((0, self.dim or 0), np.float32)
        order = np.argsort([len(t) for t in texts], kind="stable")
        out: np.ndarray | None = None
        for start in range(0, len(texts), batch_size):
            idx = order[start : start + batch_size]
            emb = self.run(self.tokenize([texts[i] for i in idx]))
            if out is None:
                out = np.empty((len(texts), emb.shape[1]), np.float32)
            out[idx] = emb
        assert out is not None
        return out
