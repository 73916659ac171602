"""Plain PyTorch training and evaluation, no Flower: tokenise once, batch by similar length, pad
to the longest in each batch, AdamW with warm-up and a schedule that spans the whole federation."""

from __future__ import annotations

import math
from dataclasses import dataclass

import numpy as np
import torch
from tqdm.auto import tqdm

from common.config import TrainConfig
from common.metrics import classification_metrics, regression_metrics


@dataclass
class Encoded:
    """A tokenised split: token id lists (unpadded) and targets."""

    ids: list[list[int]]
    labels: np.ndarray

    def __len__(self) -> int:
        return len(self.ids)


def encode(tokenizer, texts: list[str], labels, *, max_length: int) -> Encoded:
    """Tokenise once (the site keeps the result across rounds)."""
    if len(texts) == 0:
        return Encoded(ids=[], labels=np.asarray(labels))
    ids = tokenizer(list(texts), truncation=True, max_length=max_length)["input_ids"]
    return Encoded(ids=ids, labels=np.asarray(labels))


def batches(data: Encoded, *, batch_size: int, shuffle: bool, rng: np.random.Generator | None,
            pad_id: int = 0, chunk: int = 50):
    """Yield (input_ids, attention_mask, labels, index) with similar-length rows per batch.

    Rows are shuffled, then sorted by length within chunks of `chunk` batches, so padding waste
    is small while batches stay random; the batch order is shuffled again.
    """
    n = len(data)
    order = rng.permutation(n) if shuffle else np.arange(n)
    lengths = np.fromiter((len(x) for x in data.ids), dtype=np.int64, count=n)
    groups = []
    for start in range(0, n, batch_size * chunk):
        block = order[start:start + batch_size * chunk]
        block = block[np.argsort(lengths[block], kind="stable")]
        groups += [block[i:i + batch_size] for i in range(0, len(block), batch_size)]
    if shuffle:
        groups = [groups[i] for i in rng.permutation(len(groups))]
    for idx in groups:
        yield (*collate(data, idx, pad_id=pad_id), idx)


def collate(data: Encoded, idx: np.ndarray, *, pad_id: int = 0):
    """(input_ids, attention_mask, labels) for rows `idx`, padded to the longest of them."""
    label_dtype = torch.float32 if data.labels.dtype.kind == "f" else torch.long
    width = max(len(data.ids[i]) for i in idx)
    ids = torch.full((len(idx), width), pad_id, dtype=torch.long)
    mask = torch.zeros((len(idx), width), dtype=torch.long)
    for row, i in enumerate(idx):
        seq = data.ids[i]
        ids[row, :len(seq)] = torch.as_tensor(seq)
        mask[row, :len(seq)] = 1
    return ids, mask, torch.as_tensor(data.labels[idx], dtype=label_dtype)


def lr_factor(step: int, *, total: int, warmup: int, schedule: str) -> float:
    """Multiplier of the base learning rate at global step `step` of `total`."""
    if warmup and step < warmup:
        return (step + 1) / warmup
    if schedule == "constant":
        return 1.0
    progress = min(1.0, (step - warmup) / max(1, total - warmup))
    if schedule == "linear":
        return max(0.0, 1.0 - progress)
    return 0.5 * (1.0 + math.cos(math.pi * progress))


@dataclass
class Schedule:
    """Where this round's local steps sit in the federation-wide schedule."""

    start_step: int
    total_steps: int
    warmup_steps: int


def steps_per_round(n_train: int, cfg: TrainConfig) -> int:
    return max(1, math.ceil(cfg.local_epochs * n_train / cfg.batch_size))


def make_optimizer(model: torch.nn.Module, cfg: TrainConfig) -> torch.optim.Optimizer:
    head, rest = [], []
    for name, p in model.named_parameters():
        if p.requires_grad:
            (head if ("classifier" in name or ".score." in name) else rest).append(p)
    groups = [{"params": rest, "lr": cfg.learning_rate}]
    if head:
        groups.append({"params": head, "lr": cfg.head_learning_rate or cfg.learning_rate})
    for g in groups:
        g["base_lr"] = g["lr"]
    return torch.optim.AdamW(groups, weight_decay=cfg.weight_decay)


def loss_fn(logits: torch.Tensor, labels: torch.Tensor,
            class_weights: torch.Tensor | None = None) -> torch.Tensor:
    if labels.dtype == torch.float32:
        return torch.nn.functional.mse_loss(logits.squeeze(-1), labels)
    return torch.nn.functional.cross_entropy(logits, labels, weight=class_weights)


def train(model: torch.nn.Module, data: Encoded, *, cfg: TrainConfig, schedule: Schedule,
          rng: np.random.Generator, pad_id: int = 0, progress: bool = False,
          desc: str = "train") -> dict[str, float]:
    """Run this round's local steps; returns mean loss and counts."""
    model.train()
    opt = make_optimizer(model, cfg)
    params = [p for g in opt.param_groups for p in g["params"]]
    steps = steps_per_round(len(data), cfg)
    done, seen, loss_sum = 0, 0, 0.0
    bar = tqdm(total=steps, desc=desc, disable=not progress, leave=False)
    while done < steps:
        for ids, mask, y, _ in batches(data, batch_size=cfg.batch_size, shuffle=True, rng=rng,
                                       pad_id=pad_id):
            factor = lr_factor(schedule.start_step + done, total=schedule.total_steps,
                               warmup=schedule.warmup_steps, schedule=cfg.schedule)
            for g in opt.param_groups:
                g["lr"] = g["base_lr"] * factor
            loss = loss_fn(model(input_ids=ids, attention_mask=mask).logits, y)
            loss.backward()
            if cfg.max_grad_norm > 0:
                torch.nn.utils.clip_grad_norm_(params, cfg.max_grad_norm)
            opt.step()
            opt.zero_grad(set_to_none=True)
            loss_sum += float(loss.detach()) * len(y)
            seen += len(y)
            done += 1
            bar.update(1)
            if done >= steps:
                break
    bar.close()
    return {"train_loss": loss_sum / max(1, seen), "num_examples": seen, "steps": done}


@torch.inference_mode()
def predict(model: torch.nn.Module, data: Encoded, *, batch_size: int = 128,
            pad_id: int = 0) -> np.ndarray:
    """Logits for every row of `data`, in the original row order."""
    model.eval()
    out: np.ndarray | None = None
    for ids, mask, _, idx in batches(data, batch_size=batch_size, shuffle=False, rng=None,
                                     pad_id=pad_id):
        logits = model(input_ids=ids, attention_mask=mask).logits.float().numpy()
        if out is None:
            out = np.zeros((len(data), logits.shape[1]), dtype=np.float32)
        out[idx] = logits
    return out if out is not None else np.zeros((0, 1), dtype=np.float32)


def evaluate(model: torch.nn.Module, data: Encoded, *, num_labels: int,
             pad_id: int = 0) -> dict[str, float]:
    """Task metrics of the model on `data` (classification when num_labels > 1)."""
    logits = predict(model, data, pad_id=pad_id)
    if num_labels == 1:
        return regression_metrics(logits[:, 0] if len(logits) else logits, data.labels)
    return classification_metrics(logits, data.labels, num_labels=num_labels)
