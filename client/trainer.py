"""Plain PyTorch training and evaluation, no Flower: tokenise once, batch by similar length, pad
to the longest in each batch, AdamW (or SGD) with warm-up and a schedule that spans the whole
federation. One loop serves every task (classification, regression, causal LM), the federated
site, the DP trainer's loss and the one-site FineTuner."""

from __future__ import annotations

import math
from dataclasses import dataclass

import numpy as np
import torch
from tqdm.auto import tqdm

from client.losses import IGNORE, Loss, loss_fn, make_loss  # noqa: F401 - re-exported
from common.config import TrainConfig
from common.device import Accel, accel_for, model_device, place
from common.errors import ConfigError
from common.metrics import classification_metrics, regression_metrics


@dataclass
class Encoded:
    """A tokenised split: token id lists (unpadded) and targets."""

    ids: list[list[int]]
    labels: np.ndarray
    # causal LM only: tokens of each row's prompt; labels are then built per token (-100 on the
    # prompt and padding) and `labels` is unused.
    prompt_lens: np.ndarray | None = None

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
    if data.prompt_lens is not None:
        return _collate_lm(data, idx, pad_id=pad_id)
    label_dtype = torch.float32 if data.labels.dtype.kind == "f" else torch.long
    width = max(len(data.ids[i]) for i in idx)
    ids = torch.full((len(idx), width), pad_id, dtype=torch.long)
    mask = torch.zeros((len(idx), width), dtype=torch.long)
    for row, i in enumerate(idx):
        seq = data.ids[i]
        ids[row, :len(seq)] = torch.as_tensor(seq)
        mask[row, :len(seq)] = 1
    return ids, mask, torch.as_tensor(data.labels[idx], dtype=label_dtype)


def _collate_lm(data: Encoded, idx: np.ndarray, *, pad_id: int):
    width = max(len(data.ids[i]) for i in idx)
    ids = torch.full((len(idx), width), pad_id, dtype=torch.long)
    mask = torch.zeros((len(idx), width), dtype=torch.long)
    labels = torch.full((len(idx), width), IGNORE, dtype=torch.long)
    for row, i in enumerate(idx):
        seq = torch.as_tensor(data.ids[i])
        ids[row, :len(seq)] = seq
        mask[row, :len(seq)] = 1
        start = int(data.prompt_lens[i])
        labels[row, start:len(seq)] = seq[start:]
    return ids, mask, labels


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

    def apply(self, opt: torch.optim.Optimizer, step: int, *, kind: str) -> None:
        """Set every parameter group's rate for this round's local step `step` (train.schedule
        `kind`); each group keeps its own base rate (the head may have its own)."""
        factor = lr_factor(self.start_step + step, total=self.total_steps,
                           warmup=self.warmup_steps, schedule=kind)
        for g in opt.param_groups:
            g["lr"] = g["base_lr"] * factor


def steps_per_round(n_train: int, cfg: TrainConfig) -> int:
    """Optimizer steps per round: each sees train.batch-size x train.grad-accum rows."""
    if not isinstance(cfg.batch_size, int):
        raise ConfigError(f"train.batch-size = {cfg.batch_size!r} is not resolved yet: the site "
                          "resolves `auto` by probing its device (client.probe.resolve_batch_size)")
    return max(1, math.ceil(cfg.local_epochs * n_train / (cfg.batch_size * cfg.grad_accum)))


def make_optimizer(model: torch.nn.Module, cfg: TrainConfig) -> torch.optim.Optimizer:
    """AdamW (or SGD with momentum) over the trainable parameters; the new head at its own rate."""
    head, rest = [], []
    for name, p in model.named_parameters():
        if p.requires_grad:
            (head if ("classifier" in name or ".score." in name) else rest).append(p)
    groups = [{"params": rest, "lr": cfg.learning_rate}]
    if head:
        groups.append({"params": head, "lr": cfg.head_learning_rate or cfg.learning_rate})
    for g in groups:
        g["base_lr"] = g["lr"]
    if cfg.optimizer == "sgd":
        return torch.optim.SGD(groups, momentum=0.9, weight_decay=cfg.weight_decay)
    return torch.optim.AdamW(groups, weight_decay=cfg.weight_decay)


def proximal_term(anchor: list[tuple[torch.Tensor, torch.Tensor]], mu: float) -> torch.Tensor:
    """FedProx: mu/2 * ||w - w_global||^2 over the trainable parameters."""
    return 0.5 * mu * sum(((p - g) ** 2).sum() for p, g in anchor)


def train(model: torch.nn.Module, data: Encoded, *, cfg: TrainConfig, schedule: Schedule,
          rng: np.random.Generator, pad_id: int = 0, progress: bool = False,
          desc: str = "train", loss: Loss | None = None, proximal_mu: float = 0.0,
          steps: int | None = None) -> dict[str, float]:
    """Run this round's local steps (`steps`, default train.local-epochs worth); returns the mean
    task loss and counts. With `proximal_mu` > 0 (FedProx) the loss also pulls the trainable
    parameters towards their values at the start of the call — the received global state.
    Runs on train.device in train.precision; each step accumulates train.grad-accum
    micro-batches of train.batch-size rows (the same gradient as one batch that many times
    bigger, up to float rounding)."""
    accel = accel_for(cfg)
    place(model, accel.device)
    model.train()
    loss = loss or Loss()
    if loss.class_weights is not None and accel.device.type != "cpu":
        loss = loss.to(accel.device)
    opt = make_optimizer(model, cfg)
    scaler = accel.scaler()
    params = [p for g in opt.param_groups for p in g["params"]]
    anchor = [(p, p.detach().clone()) for p in params] if proximal_mu > 0 else []
    steps = steps or steps_per_round(len(data), cfg)
    done, seen, loss_sum = 0, 0, 0.0
    bar = tqdm(total=steps, desc=desc, disable=not progress, leave=False)
    while done < steps:
        for ids, mask, y, _ in batches(data, batch_size=cfg.batch_size * cfg.grad_accum,
                                       shuffle=True, rng=rng, pad_id=pad_id):
            schedule.apply(opt, done, kind=cfg.schedule)
            step_loss = 0.0
            for k, (m_ids, m_mask, m_y, share) in enumerate(micro_split(ids, mask, y, cfg, loss)):
                m_ids, m_mask, m_y = accel.move(m_ids, m_mask, m_y)
                with accel.autocast():
                    task_loss = loss(model(input_ids=m_ids, attention_mask=m_mask).logits, m_y)
                total = task_loss if share is None else task_loss * share
                if anchor and k == 0:
                    total = total + proximal_term(anchor, proximal_mu)
                (scaler.scale(total) if scaler else total).backward()
                step_loss += float(task_loss.detach()) * (1.0 if share is None else share)
            if scaler:
                scaler.unscale_(opt)
            if cfg.max_grad_norm > 0:
                torch.nn.utils.clip_grad_norm_(params, cfg.max_grad_norm)
            if scaler:
                scaler.step(opt)
                scaler.update()
            else:
                opt.step()
            opt.zero_grad(set_to_none=True)
            loss_sum += step_loss * len(y)
            seen += len(y)
            done += 1
            bar.update(1)
            if done >= steps:
                break
    bar.close()
    return {"train_loss": loss_sum / max(1, seen), "num_examples": seen, "steps": done}


def micro_split(ids: torch.Tensor, mask: torch.Tensor, y: torch.Tensor, cfg: TrainConfig,
                loss: Loss):
    """Cut one (length-sorted) batch into train.grad-accum micro-batches of train.batch-size
    rows, each trimmed to its own longest row. Yields (ids, mask, labels, share): `share` is the
    micro-batch's part of the batch loss's normaliser (rows, labelled tokens of a causal LM, or
    class weights), so the shares' weighted sum equals the whole batch's mean loss; None when the
    batch is not cut."""
    if cfg.grad_accum == 1 or len(y) <= cfg.batch_size:
        yield ids, mask, y, None
        return

    def norm(labels: torch.Tensor) -> float:
        if labels.dim() == 2:  # causal LM: the mean is over labelled next tokens
            return float((labels[:, 1:] != IGNORE).sum())
        if loss.class_weights is not None:  # weighted CE / focal: sum(w l) / sum(w)
            return float(loss.class_weights.cpu()[labels].sum())
        return float(len(labels))

    whole = norm(y)
    for start in range(0, len(y), cfg.batch_size):
        part = slice(start, start + cfg.batch_size)
        width = max(1, int(mask[part].sum(dim=1).max()))
        m_y = y[part][:, :width] if y.dim() == 2 else y[part]
        yield ids[part, :width], mask[part, :width], m_y, norm(m_y) / max(whole, 1e-12)


@torch.inference_mode()
def predict(model: torch.nn.Module, data: Encoded, *, batch_size: int = 128,
            pad_id: int = 0) -> np.ndarray:
    """Logits for every row of `data`, in the original row order."""
    model.eval()
    device = model_device(model)
    out: np.ndarray | None = None
    for ids, mask, _, idx in batches(data, batch_size=batch_size, shuffle=False, rng=None,
                                     pad_id=pad_id):
        ids, mask = Accel(device=device).move(ids, mask)
        logits = model(input_ids=ids, attention_mask=mask).logits.float().cpu().numpy()
        if out is None:
            out = np.zeros((len(data), logits.shape[1]), dtype=np.float32)
        out[idx] = logits
    return out if out is not None else np.zeros((0, 1), dtype=np.float32)


def evaluate(model: torch.nn.Module, data: Encoded, *, num_labels: int, pad_id: int = 0,
             threshold: float | None = None, logits: np.ndarray | None = None) -> dict[str, float]:
    """Task metrics of the model on `data` (classification when num_labels > 1; `threshold` is
    the binary decision threshold, None = argmax). Pass `logits` to reuse a prediction."""
    logits = predict(model, data, pad_id=pad_id) if logits is None else logits
    if num_labels == 1:
        return regression_metrics(logits[:, 0] if len(logits) else logits, data.labels)
    return classification_metrics(logits, data.labels, num_labels=num_labels, threshold=threshold)
