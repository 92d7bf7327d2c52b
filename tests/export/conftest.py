"""A tiny BERT built locally (no download): small BertConfig + a WordPiece vocab of the demo shop."""

from __future__ import annotations

from pathlib import Path

import pytest

from shelfrank.export.demo_shop import make_demo_shop
from shelfrank.testing import build_wordpiece


def build_tiny_bert(path: Path, texts: list[str], *, layers: int = 3, hidden: int = 32) -> Path:
    """Write a Hugging Face BERT directory (config, safetensors weights, tokenizer.json) to ``path``."""
    import torch
    from transformers import BertConfig, BertModel

    vocab = build_wordpiece(texts, path)
    torch.manual_seed(0)
    cfg = BertConfig(
        vocab_size=len(vocab),
        hidden_size=hidden,
        num_hidden_layers=layers,
        num_attention_heads=2,
        intermediate_size=2 * hidden,
        max_position_embeddings=160,
    )
    BertModel(cfg, add_pooling_layer=False).save_pretrained(path)
    return path


@pytest.fixture(scope="session")
def tiny_shop():
    return make_demo_shop(n_items=240, n_users=160, seed=3)


@pytest.fixture(scope="session")
def tiny_bert(tmp_path_factory, tiny_shop) -> Path:
    from shelfrank.device.text import item_text

    texts = [item_text(tiny_shop.catalog.record(i)) for i in range(len(tiny_shop.catalog))]
    return build_tiny_bert(tmp_path_factory.mktemp("tiny-bert"), texts)
