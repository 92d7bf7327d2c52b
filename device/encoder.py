"""The text encoder on the device: ``tokenizers`` + an ONNX model run by onnxruntime.

The ONNX graph takes ``input_ids`` and ``attention_mask`` (int64, batch × tokens) and returns
``embedding`` (float32, batch × d), already mean-pooled and L2-normalised, so export and device
share one definition of "the item vector". Export embeds the catalog through this same class.

:func:`open_text_encoder` picks which of the bundle's encoders a board runs: the fp16 one under
the board's GPU providers (Jetson) when the bundle has it and onnxruntime can run it there, else
the int8 one on the CPU, with a logged warning that says why.
"""

from __future__ import annotations

import logging
import os
from collections.abc import Sequence
from pathlib import Path
from typing import TYPE_CHECKING, Any

import numpy as np

from shelfrank.errors import BundleError, InputError

if TYPE_CHECKING:
    from shelfrank.device.formats import Manifest

logger = logging.getLogger(__name__)

#: characters read per token of ``max_len`` before tokenizing. Real text averages 4-6 characters
#: per WordPiece token, so every token the model would see survives the cut; a text is cut earlier
#: than the tokenizer's own truncation only if its first max_len tokens average over 16 characters
#: (runs of spaces, very long words). Without the cut, an 800 KB query was tokenized whole (+235 MB,
#: 2.4 s on a Pi) only to be truncated afterwards.
CHARS_PER_TOKEN = 16


def cut_text(text: str, max_len: int) -> str:
    """``text`` cut to ``max_len * CHARS_PER_TOKEN`` characters, dropping a word cut in two."""
    limit = max_len * CHARS_PER_TOKEN
    if len(text) <= limit:
        return text
    cut = text[:limit]
    head, _, _ = cut.rpartition(" ")
    return head if len(head) > limit - 64 else cut


def provider_names(providers: Sequence[Any]) -> list[str]:
    """Provider names of an onnxruntime providers list whose entries are names or (name, options)."""
    return [p[0] if isinstance(p, tuple) else p for p in providers]


def make_session(
    model_path: str | Path,
    *,
    threads: int = 1,
    providers: Sequence[Any] | None = None,
    profile_prefix: str | None = None,
):
    """An onnxruntime session with explicit threads; GPU providers fall back to CPU with a warning.

    ``profile_prefix`` turns on onnxruntime's profiler (``session.end_profiling()`` writes the
    JSON trace: one event per node run, with the provider that ran it).
    """
    import onnxruntime as ort

    opts = ort.SessionOptions()
    opts.intra_op_num_threads = max(1, int(threads))
    opts.inter_op_num_threads = 1
    opts.graph_optimization_level = ort.GraphOptimizationLevel.ORT_ENABLE_ALL
    if profile_prefix:
        opts.enable_profiling = True
        opts.profile_file_prefix = profile_prefix
    wanted = list(providers) if providers else ["CPUExecutionProvider"]
    available = set(ort.get_available_providers())
    usable = [p for p in wanted if provider_names([p])[0] in available]
    dropped = [p for p in wanted if p not in usable]
    if dropped:
        logger.warning(
            "execution provider(s) %s not available here (have %s); using %s",
            provider_names(dropped),
            sorted(available),
            provider_names(usable) or ["CPUExecutionProvider"],
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

        self.model_path, self.threads = Path(model_path), int(threads)
        self.providers = list(providers) if providers else ["CPUExecutionProvider"]  # as asked, with options

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
        enc = self.tokenizer.encode_batch([cut_text(t, self.max_len) if isinstance(t, str) else t for t in texts])
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


# ---- which encoder a board runs -------------------------------------------------------------

#: the bundle's accelerator encoder (manifest ``encoders.fp16``), run under a board's ``gpu_providers``
GPU_VARIANT = "fp16"


def open_text_encoder(
    bundle: Path,
    manifest: Manifest,
    *,
    threads: int = 1,
    providers: Sequence[Any] | None = None,
    gpu_providers: Sequence[Any] | None = None,
) -> tuple[TextEncoder, dict[str, Any]]:
    """The text encoder this board runs, and a record of the choice.

    With ``gpu_providers`` (a board's, e.g. TensorRT then CUDA), the bundle's fp16 encoder is
    tried under those of them this onnxruntime build has (CPU appended for the nodes they leave),
    and kept only if a GPU provider is really registered and a first run gives finite vectors.
    Otherwise — no fp16 encoder in the bundle, no such provider in this onnxruntime build,
    session creation failed, or onnxruntime fell back to the CPU on its own — the int8 encoder
    (``manifest.model``) runs on ``providers`` and a warning names the reason. The catalog rows
    are always the int8 encoder's; the export's parity gate bounds the fp16 one against them.

    Returns:
        (encoder, info) with info = {precision, file, requested_providers, session_providers,
        gpu_providers, fallback_reason (None when the board got what it asked for)}.

    Raises:
        BundleError: the int8 encoder itself cannot be loaded.
    """
    model = manifest.model
    tok = bundle / manifest.tokenizer.file
    max_len = model.max_len
    gpu = list(gpu_providers or [])
    reason = None
    if gpu:
        enc, reason = _try_gpu_encoder(bundle, manifest, tok, max_len, threads, gpu)
        if enc is not None:
            info = _encoder_info(enc, GPU_VARIANT, manifest.encoders[GPU_VARIANT].file, gpu, None)
            logger.info("text encoder: %s on %s", info["file"], info["session_providers"])
            return enc, info
    enc = TextEncoder(bundle / model.file, tok, max_len=max_len, threads=threads, providers=providers)
    precision = model.precision.split()[0] if model.precision.strip() else "int8"
    info = _encoder_info(enc, precision, model.file, gpu, reason)
    if reason is not None:
        logger.warning(
            "%s: the board's GPU providers %s are not used for the text encoder: %s. Running the %s encoder "
            "(%s) on %s instead.",
            bundle,
            provider_names(gpu),
            reason,
            precision,
            model.file,
            info["session_providers"],
        )
    return enc, info


def _encoder_info(
    enc: TextEncoder, precision: str, file: str, gpu: Sequence[Any], reason: str | None
) -> dict[str, Any]:
    return {
        "precision": precision,
        "file": file,
        "requested_providers": provider_names(enc.providers),
        "session_providers": list(enc.session.get_providers()),
        "gpu_providers": provider_names(gpu),
        "fallback_reason": reason,
    }


def _try_gpu_encoder(
    bundle: Path, manifest: Manifest, tok: Path, max_len: int, threads: int, gpu: list
) -> tuple[TextEncoder | None, str | None]:
    """(the fp16 encoder under the GPU providers, None) or (None, why not)."""
    import onnxruntime as ort

    entry = manifest.encoders.get(GPU_VARIANT)
    if entry is None:
        return None, f"the bundle has no {GPU_VARIANT} encoder (export it with 'shelfrank export --fp16')"
    available = ort.get_available_providers()
    usable = [p for p in gpu if provider_names([p])[0] in available]
    if not usable:
        return None, (
            f"provider(s) {provider_names(gpu)} not available in this onnxruntime build (it has {available}; "
            "a Jetson needs NVIDIA's onnxruntime-gpu wheel for its JetPack)"
        )
    wanted = usable + ([] if "CPUExecutionProvider" in provider_names(usable) else ["CPUExecutionProvider"])
    try:
        enc = TextEncoder(bundle / entry.file, tok, max_len=max_len, threads=threads, providers=wanted)
    except BundleError as e:
        return None, f"session creation failed: {e}"
    got = enc.session.get_providers()
    registered = [p for p in provider_names(usable) if p in got]
    if not registered:
        # onnxruntime's python layer retries on the CPU by itself when a provider fails to start
        return None, f"session creation fell back: onnxruntime registered {got}, none of {provider_names(usable)}"
    dropped = [p for p in provider_names(usable) if p not in got]
    if dropped:
        logger.warning("%s: onnxruntime did not register %s for the fp16 encoder; it runs on %s", bundle, dropped, got)
    try:
        # the first run is where TensorRT builds its engine and where fp16 overflow would show (NaN)
        enc.encode(["warm-up query"])
    except Exception as e:  # onnxruntime raises its own exception types; BundleError on NaN/inf
        return None, f"the first fp16 run failed on {got}: {e}"
    return enc, None
