"""DP-SGD local training with Opacus: Poisson-sampled batches (each row joins a step with
probability q, so a batch can be empty), per-example gradients clipped to max_grad_norm, Gaussian
noise added by Opacus' DPOptimizer. Accounting is the ledger's job (client/privacy.py).

Speed: a Poisson batch is random, so padding it to its longest row wastes most of the compute on
short-text data (about 0.35 real/padded tokens on Banking77). Each logical batch is therefore
sorted by length and cut into a few micro-batches, each padded to its own longest row; Opacus
clips every example's gradient and accumulates across the micro-batches (its virtual-step
mechanism, `signal_skip_step`), then adds noise once for the logical batch. Per-example clipping
does not depend on how a batch is cut, so the mechanism, and its accounting, are unchanged."""

from __future__ import annotations

import os

import numpy as np
import torch
from tqdm.auto import tqdm

from client.dp_units import Units, sum_by_unit, unit_micro_batches
from client.trainer import Encoded, Loss, Schedule, collate, make_optimizer
from common.config import TrainConfig
from common.device import Accel, place, resolve_device
from common.errors import ConfigError


def train_dp(model: torch.nn.Module, data: Encoded, *, cfg: TrainConfig, schedule: Schedule,
             rng: np.random.Generator, steps: int, sample_rate: float, noise_multiplier: float,
             max_grad_norm: float, pad_id: int = 0, progress: bool = False,
             loss: Loss | None = None, units: Units | None = None) -> dict[str, float]:
    """Run `steps` DP-SGD steps; returns mean loss and counts. The model's hooks are removed
    afterwards, so the same model object serves the next (possibly non-DP) round. `loss` is the
    site's task loss (class weights, focal), the plain task loss when None. `units` (persons,
    client/dp_units.py) makes the person the privacy unit: persons are Poisson-sampled at
    `sample_rate`, and each person's summed gradient is clipped; None = every record."""
    from opacus import GradSampleModule
    from opacus.optimizers import DPOptimizer

    device = dp_device(cfg)
    place(model, device)
    model.train()
    loss = loss or Loss()
    if loss.class_weights is not None:
        loss = loss.to(device)
    gsm = GradSampleModule(model, batch_first=True, loss_reduction="mean")
    # Noise from a generator seeded by the OS CSPRNG (never train.seed, which the coordinator
    # sends), in Opacus' secure mode (robust to floating-point attacks on the Gaussian sampler).
    generator = torch.Generator(device=next(model.parameters()).device)
    generator.manual_seed(int.from_bytes(os.urandom(8), "little") & (2**63 - 1))
    opt = DPOptimizer(make_optimizer(model, cfg), noise_multiplier=noise_multiplier,
                      max_grad_norm=max_grad_norm, generator=generator, secure_mode=True,
                      expected_batch_size=max(1, round(sample_rate * (units.count if units else len(data)))),
                      loss_reduction="mean")
    seen, loss_sum, empty = 0, 0.0, 0
    lengths = np.fromiter((len(x) for x in data.ids), dtype=np.int64, count=len(data))
    try:
        for step in tqdm(range(steps), desc="dp-train", disable=not progress, leave=False):
            schedule.apply(opt, step, kind=cfg.schedule)
            if units is None or units.kind == "record":
                idx = np.flatnonzero(rng.random(len(data)) < sample_rate)
                parts = [(part, None) for part in micro_batches(idx, lengths)] if len(idx) else []
            else:  # persons: all of a sampled person's rows, never split across micro-batches
                idx, local = units.sample(rng, sample_rate)
                parts = unit_micro_batches(idx, local, lengths)
            if len(idx) == 0:
                # An empty Poisson batch still releases a noisy (pure-noise) update, as the
                # analysis of DP-SGD assumes; skipping it would reveal that the batch was empty.
                empty += 1
                _noise_only_step(opt)
                continue
            for k, (part, local) in enumerate(parts):
                ids, mask, y = Accel(device=device).move(*collate(data, part, pad_id=pad_id))
                part_loss = loss(gsm(input_ids=ids, attention_mask=mask).logits, y)
                part_loss.backward()
                if local is not None:  # per-row gradients -> per-person sums, clipped as one
                    _sum_by_person(opt, torch.as_tensor(local, device=device))
                # all but the last micro-batch: clip and accumulate, no noise, no update
                opt.signal_skip_step(do_skip=k < len(parts) - 1)
                opt.step()
                opt.zero_grad(set_to_none=True)
                loss_sum += float(part_loss.detach()) * len(part)
            seen += len(idx)
    finally:
        gsm._close()  # remove Opacus' hooks and per-sample grad buffers from the cached model
    return {"train_loss": loss_sum / max(1, seen), "num_examples": seen, "steps": steps,
            "empty_batches": empty}


def dp_device(cfg: TrainConfig) -> torch.device:
    """train.device for DP-SGD, which always runs in float32: per-example norms and clipping in
    bf16/fp16 could let a clipped gradient exceed privacy.max-grad-norm, the bound the ledger's
    accounting assumes. Where the steps run does not change the accounting."""
    device = resolve_device(cfg.device)
    if cfg.precision in ("bf16", "fp16"):
        raise ConfigError(f"config key `train.precision` = {cfg.precision!r} with privacy.dp: DP-SGD "
                          "clips per-example gradients in float32; set train.precision=auto or fp32")
    return device


def micro_batches(idx: np.ndarray, lengths: np.ndarray, *, slack: float = 1.5,
                  min_size: int = 8) -> list[np.ndarray]:
    """Cut one logical batch into length-sorted micro-batches: a new one starts when padding the
    current one to the next (longer) row would exceed `slack` x its real tokens."""
    order = idx[np.argsort(lengths[idx], kind="stable")]
    parts, start, real = [], 0, 0
    for j, i in enumerate(order):
        n = j - start + 1
        if n > min_size and n * lengths[i] > slack * (real + lengths[i]):
            parts.append(order[start:j])
            start, real = j, 0
        real += int(lengths[i])
    parts.append(order[start:])
    return parts


def _sum_by_person(opt, local: torch.Tensor) -> None:
    """Replace every trainable parameter's per-row gradients by per-person sums, so Opacus'
    clipping (next opt.step) bounds each person's total contribution by max_grad_norm."""
    params = [p for p in opt.params if getattr(p, "grad_sample", None) is not None]
    k = int(local.max()) + 1
    for p, summed in zip(params, sum_by_unit([p.grad_sample for p in params], local, k)):
        p.grad_sample = summed


def _noise_only_step(opt) -> None:
    """The DP-SGD step of an empty batch: zero clipped sum + Gaussian noise, scaled as usual."""
    for p in opt.params:
        p.summed_grad = torch.zeros_like(p)
    opt.add_noise()
    for p in opt.params:  # opt.scale_grad() needs per-sample grads, which an empty batch lacks
        p.grad /= opt.expected_batch_size
    opt.original_optimizer.step()
    opt.zero_grad(set_to_none=True)
