"""Training loops of the export stage: encoder fine-tuning, student distillation, user tower.

Every loop runs under 🤗 accelerate, so ``accelerate launch`` spreads it over GPUs or processes
without code changes; here it runs as one CPU process. Progress goes to ``logging`` and to tqdm
bars on stderr.
"""

from __future__ import annotations

import logging
import math
import time
from collections.abc import Callable, Sequence
from dataclasses import dataclass

import numpy as np
import torch
import torch.nn.functional as F
from torch import nn

from shelfrank.device.history import tower_inputs
from shelfrank.export.models import MeanPoolEncoder, SequenceTower

logger = logging.getLogger(__name__)

Steps = list[tuple[int, int]]


def _bar(total: int, desc: str):
    from tqdm.auto import tqdm

    return tqdm(total=total, desc=desc, unit="step", leave=False, mininterval=2.0)


class Tokens:
    """Tokenise with the same ``tokenizers`` setup the device uses (pad to longest, truncate)."""

    def __init__(self, tokenizer_json: str, max_len: int) -> None:
        from tokenizers import Tokenizer

        self.tok = Tokenizer.from_file(str(tokenizer_json))
        self.tok.enable_truncation(max_length=max_len)
        pad = self.tok.token_to_id("[PAD]")
        self.tok.enable_padding(pad_id=0 if pad is None else pad, pad_token="[PAD]")

    def __call__(self, texts: Sequence[str]) -> tuple[torch.Tensor, torch.Tensor]:
        enc = self.tok.encode_batch(list(texts))
        ids = torch.tensor([e.ids for e in enc], dtype=torch.long)
        mask = torch.tensor([e.attention_mask for e in enc], dtype=torch.long)
        return ids, mask


@torch.inference_mode()
def embed(
    encoder: MeanPoolEncoder, tokens: Tokens, texts: Sequence[str], *, batch: int = 128, desc: str = "embed"
) -> np.ndarray:
    """float32 (N, d) embeddings, batched by length so padding stays small."""
    encoder.eval()
    order = np.argsort([len(t) for t in texts], kind="stable")
    out = None
    bar = _bar(math.ceil(len(texts) / batch), desc)
    for s in range(0, len(texts), batch):
        idx = order[s : s + batch]
        e = encoder(*tokens([texts[i] for i in idx])).float().numpy()
        if out is None:
            out = np.empty((len(texts), e.shape[1]), np.float32)
        out[idx] = e
        bar.update()
    bar.close()
    return out if out is not None else np.zeros((0, 0), np.float32)


def _schedule(opt: torch.optim.Optimizer, steps: int, warmup: float = 0.06):
    w = max(1, int(steps * warmup))
    return torch.optim.lr_scheduler.LambdaLR(
        opt, lambda s: min(1.0, (s + 1) / w) * max(0.0, (steps - s) / max(1, steps - w)) if s >= w else (s + 1) / w
    )


def _pair_loss(a: torch.Tensor, b: torch.Tensor, b_ids: torch.Tensor, temperature: float) -> torch.Tensor:
    """Symmetric in-batch InfoNCE; duplicates of the same target in a batch are not negatives."""
    logits = a @ b.T / temperature
    same = (b_ids[:, None] == b_ids[None, :]) & ~torch.eye(len(b_ids), dtype=torch.bool)
    logits = logits.masked_fill(same, float("-inf"))
    target = torch.arange(len(a))
    return 0.5 * (F.cross_entropy(logits, target) + F.cross_entropy(logits.T, target))


def transition_pairs(train: Sequence[Steps], *, window: int = 1) -> np.ndarray:
    """(item, later item) rows from training sequences, pairs up to ``window`` steps apart."""
    out = []
    for seq in train:
        items = [i for i, _ in seq]
        for w in range(1, window + 1):
            out.extend(zip(items[:-w], items[w:], strict=True))
    pairs = np.asarray(out, np.int64).reshape(-1, 2)
    return pairs[pairs[:, 0] != pairs[:, 1]]


@dataclass
class EncoderTrainConfig:
    steps: int
    batch: int = 64
    lr: float = 3e-5
    max_len: int = 32
    temperature: float = 0.05
    distill_weight: float = 1.0  # student only: weight of the embedding MSE to the teacher
    time_budget_s: float | None = None  # checked after every step: stop early (the LR schedule stays)
    seed: int = 0


def train_encoder(
    encoder: MeanPoolEncoder,
    tokens: Tokens,
    texts: Sequence[str],
    pairs: np.ndarray,
    cfg: EncoderTrainConfig,
    *,
    teacher_emb: np.ndarray | None = None,
    desc: str = "fine-tune",
    checkpoint: Callable[[int], None] | None = None,
    start_step: int = 0,
) -> list[float]:
    """Contrastive fine-tuning on (item, next item) text pairs, with in-batch negatives.

    With ``teacher_emb`` (the fine-tuned teacher's embedding of every text) the loss adds an
    embedding-level distillation term: this is how the student is trained.
    """
    from accelerate import Accelerator

    acc = Accelerator(cpu=not torch.cuda.is_available())
    opt = torch.optim.AdamW(encoder.parameters(), lr=cfg.lr, weight_decay=0.01)
    sched = _schedule(opt, cfg.steps)
    for _ in range(start_step):
        sched.step()
    encoder, opt = acc.prepare(encoder, opt)
    rng = np.random.default_rng(cfg.seed + 1000 * acc.process_index)
    t_emb = torch.from_numpy(teacher_emb) if teacher_emb is not None else None
    losses: list[float] = []
    encoder.train()
    bar = _bar(cfg.steps - start_step, desc)
    t0 = time.monotonic()
    for step in range(start_step, cfg.steps):
        batch = pairs[rng.integers(len(pairs), size=cfg.batch)]
        a_ids, b_ids = batch[:, 0], batch[:, 1]
        a = encoder(*tokens([texts[i] for i in a_ids]))
        b = encoder(*tokens([texts[i] for i in b_ids]))
        loss = _pair_loss(a, b, torch.from_numpy(b_ids), cfg.temperature)
        if t_emb is not None:
            ta, tb = t_emb[torch.from_numpy(a_ids)], t_emb[torch.from_numpy(b_ids)]
            loss = loss + cfg.distill_weight * 100.0 * (F.mse_loss(a, ta) + F.mse_loss(b, tb))
        opt.zero_grad(set_to_none=True)
        acc.backward(loss)
        torch.nn.utils.clip_grad_norm_(encoder.parameters(), 1.0)
        opt.step()
        sched.step()
        losses.append(float(loss.detach()))
        bar.update()
        if (step + 1) % 50 == 0:
            logger.info("%s step %d/%d loss %.4f", desc, step + 1, cfg.steps, np.mean(losses[-50:]))
            if checkpoint is not None:
                checkpoint(step + 1)
        if cfg.time_budget_s is not None and time.monotonic() - t0 > cfg.time_budget_s and step + 1 < cfg.steps:
            logger.info("%s: time budget (%.0f s) reached at step %d/%d", desc, cfg.time_budget_s, step + 1, cfg.steps)
            break
    bar.close()
    encoder.eval()
    return losses


# ---- the sequence user tower ----------------------------------------------------------------


def tower_case_index(train: Sequence[Steps]) -> tuple[np.ndarray, np.ndarray]:
    """Every (prefix, next item) case of the training sequences as (sequence, position) int64 rows.

    The case's history is ``train[seq][:pos]`` (its newest ``max_events`` steps), its target
    ``train[seq][pos]``. Histories are cut per batch, so memory stays two int64 per case however
    long the shop's log is.
    """
    lens = np.fromiter((len(seq) for seq in train), np.int64, count=len(train))
    seq = np.repeat(np.arange(len(train), dtype=np.int64), np.maximum(lens - 1, 0))
    starts = np.cumsum(np.maximum(lens - 1, 0)) - np.maximum(lens - 1, 0)
    pos = np.arange(len(seq), dtype=np.int64) - np.repeat(starts, np.maximum(lens - 1, 0)) + 1
    return seq, pos


def _case_histories(train: Sequence[Steps], seq: np.ndarray, pos: np.ndarray, max_events: int) -> list[Steps]:
    return [train[s][max(0, t - max_events) : t] for s, t in zip(seq.tolist(), pos.tolist(), strict=True)]


def tower_cases(train: Sequence[Steps], max_events: int) -> tuple[list[Steps], np.ndarray]:
    """Every (prefix, next item) of the training sequences."""
    seq, pos = tower_case_index(train)
    targets = np.asarray([train[s][t][0] for s, t in zip(seq.tolist(), pos.tolist(), strict=True)], np.int64)
    return _case_histories(train, seq, pos, max_events), targets


@dataclass
class TowerConfig:
    epochs: int = 4
    batch: int = 256
    lr: float = 2e-3
    hidden: int = 128
    layers: int = 2
    heads: int = 2
    max_events: int = 20
    dropout: float = 0.2
    id_residual: bool = True
    residual_decay: float = 0.0
    time_budget_s: float | None = None  # checked after every batch; the best epoch so far is kept
    max_cases: int | None = None  # training cases per epoch; above it each epoch samples this many
    seed: int = 0


class TowerModel(nn.Module):
    """The tower plus (optionally) a learned per-item residual added to the catalog rows."""

    def __init__(self, rows: np.ndarray, cfg: TowerConfig) -> None:
        super().__init__()
        self.base = nn.Parameter(torch.from_numpy(np.ascontiguousarray(rows, np.float32)), requires_grad=False)
        n, d = rows.shape
        self.residual = nn.Parameter(torch.zeros(n, d)) if cfg.id_residual else None
        self.tower = SequenceTower(
            d,
            hidden=cfg.hidden,
            layers=cfg.layers,
            heads=cfg.heads,
            max_events=cfg.max_events,
            dropout=cfg.dropout,
        )
        self.log_scale = nn.Parameter(torch.tensor(math.log(20.0)))

    def item_vectors(self) -> torch.Tensor:
        v = self.base if self.residual is None else self.base + self.residual
        return F.normalize(v, dim=-1)

    def forward(self, rows: torch.Tensor, acts: torch.Tensor, mask: torch.Tensor, v: torch.Tensor) -> torch.Tensor:
        return self.tower(v[rows], acts, mask)


def tower_scores(
    model: TowerModel, histories: Sequence[Steps], *, v: torch.Tensor | None = None, max_events: int
) -> np.ndarray:
    """Scores (B, N) of every catalog item for each history (cosine of the user vector)."""
    with torch.inference_mode():
        model.eval()
        v = model.item_vectors() if v is None else v
        rows, acts, mask = (torch.from_numpy(a) for a in tower_inputs(histories, max_events))
        u = model(rows, acts, mask, v)
        return (u @ v.T).numpy()


def train_tower(
    rows: np.ndarray,
    train: Sequence[Steps],
    valid: Sequence[tuple[int, Steps, int]],
    cfg: TowerConfig,
    *,
    init: TowerModel | None = None,
    desc: str = "user tower",
) -> tuple[TowerModel, list[dict]]:
    """Train the tower (and item residuals) with a full softmax over the catalog.

    Keeps the epoch with the best validation NDCG@10 (on up to 3,000 valid cases). Bounded by
    the data as well as by epochs: with ``cfg.max_cases`` each epoch trains on that many cases
    drawn afresh (seeded) from all of them, and ``cfg.time_budget_s`` is checked after every
    batch: past it the epoch stops where it is, is validated like a whole one, and training
    ends (the log and the epoch's history entry say so).
    """
    from accelerate import Accelerator

    from shelfrank.export.evaluate import evaluate

    torch.manual_seed(cfg.seed)
    model = TowerModel(rows, cfg)
    if init is not None:
        state = {k: v for k, v in init.state_dict().items() if k != "base"}
        model.load_state_dict(state, strict=False)
    c_seq, c_pos = tower_case_index(train)
    t_targets = torch.from_numpy(
        np.asarray([train[s][t][0] for s, t in zip(c_seq.tolist(), c_pos.tolist(), strict=True)], np.int64)
    )
    n_cases = len(t_targets)
    per_epoch = n_cases if cfg.max_cases is None else min(n_cases, cfg.max_cases)
    if per_epoch < n_cases:
        logger.info(
            "%s: %s training cases; each epoch samples %s of them (%.1f%%, seed %d)",
            desc,
            f"{n_cases:,}",
            f"{per_epoch:,}",
            100 * per_epoch / n_cases,
            cfg.seed,
        )
    else:
        logger.info("%s: %s training cases per epoch", desc, f"{n_cases:,}")
    acc = Accelerator(cpu=not torch.cuda.is_available())
    params = [p for p in model.parameters() if p.requires_grad]
    opt = torch.optim.AdamW(params, lr=cfg.lr, weight_decay=0.0)
    steps_per_epoch = math.ceil(per_epoch / cfg.batch)
    sched = _schedule(opt, steps_per_epoch * cfg.epochs, warmup=0.02)
    model, opt = acc.prepare(model, opt)
    rng = np.random.default_rng(cfg.seed)
    valid = list(valid)
    if len(valid) > 3000:
        valid = [valid[i] for i in sorted(rng.choice(len(valid), 3000, replace=False))]
    n_items = rows.shape[0]
    best, best_state, history = -1.0, None, []
    t0 = time.monotonic()
    budget = cfg.time_budget_s
    for epoch in range(cfg.epochs):
        model.train()
        perm = rng.permutation(n_cases)[:per_epoch]
        bar = _bar(steps_per_epoch, f"{desc} epoch {epoch + 1}/{cfg.epochs}")
        total, batches, out_of_time = 0.0, 0, False
        for s in range(steps_per_epoch):
            idx = perm[s * cfg.batch : (s + 1) * cfg.batch]
            hists = _case_histories(train, c_seq[idx], c_pos[idx], cfg.max_events)
            h_rows, h_acts, h_mask = (torch.from_numpy(a) for a in tower_inputs(hists, cfg.max_events))
            idx = torch.from_numpy(idx)
            v = model.item_vectors()
            u = model(h_rows, h_acts, h_mask, v)
            logits = (u @ v.T) * model.log_scale.exp()
            loss = F.cross_entropy(logits, t_targets[idx])
            if model.residual is not None and cfg.residual_decay:
                loss = loss + cfg.residual_decay * model.residual.pow(2).sum(-1).mean()
            opt.zero_grad(set_to_none=True)
            acc.backward(loss)
            opt.step()
            sched.step()
            total += float(loss.detach())
            batches += 1
            bar.update()
            if budget is not None and time.monotonic() - t0 > budget:
                out_of_time = batches < steps_per_epoch or epoch + 1 < cfg.epochs
                break
        bar.close()
        if out_of_time:
            logger.info(
                "%s: time budget (%.0f s) reached in epoch %d after %d of %d batches; validating and stopping",
                desc,
                budget,
                epoch + 1,
                batches,
                steps_per_epoch,
            )
        with torch.inference_mode():
            v = model.item_vectors()
        metrics = evaluate(
            lambda hs, v=v: tower_scores(model, hs, v=v, max_events=cfg.max_events), valid, n_items, batch=256
        )
        metrics.update(
            epoch=epoch + 1,
            batches=batches,
            loss=total / max(1, batches),
            seconds=round(time.monotonic() - t0, 1),
        )
        if out_of_time:
            metrics["stopped"] = "time budget"
        history.append(metrics)
        logger.info(
            "%s epoch %d: loss %.4f valid NDCG@10 %.4f R@10 %.4f",
            desc,
            epoch + 1,
            metrics["loss"],
            metrics["ndcg@10"],
            metrics["recall@10"],
        )
        if metrics["ndcg@10"] > best:
            best = metrics["ndcg@10"]
            best_state = {k: t.detach().clone() for k, t in model.state_dict().items()}
        if out_of_time:
            break
        if budget is not None and time.monotonic() - t0 > budget and epoch + 1 < cfg.epochs:
            logger.info("%s: time budget (%.0f s) reached after epoch %d and its validation", desc, budget, epoch + 1)
            metrics["stopped"] = "time budget"
            break
    if best_state is not None:
        model.load_state_dict(best_state)
    model.eval()
    return model, history
