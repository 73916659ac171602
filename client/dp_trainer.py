"""DP-SGD local training with Opacus: Poisson-sampled batches (each row joins a step with
probability q, so a batch can be empty), per-example gradients clipped to max_grad_norm, Gaussian
noise added by Opacus' DPOptimizer. Accounting is the ledger's job (client/privacy.py)."""

from __future__ import annotations

import numpy as np
import torch
from tqdm.auto import tqdm

from client.trainer import Encoded, Loss, Schedule, collate, lr_factor, make_optimizer
from common.config import TrainConfig


def train_dp(model: torch.nn.Module, data: Encoded, *, cfg: TrainConfig, schedule: Schedule,
             rng: np.random.Generator, steps: int, sample_rate: float, noise_multiplier: float,
             max_grad_norm: float, pad_id: int = 0, progress: bool = False,
             loss: Loss | None = None) -> dict[str, float]:
    """Run `steps` DP-SGD steps; returns mean loss and counts. The model's hooks are removed
    afterwards, so the same model object serves the next (possibly non-DP) round. `loss` is the
    site's task loss (class weights, focal), the plain task loss when None."""
    from opacus import GradSampleModule
    from opacus.optimizers import DPOptimizer

    model.train()
    loss = loss or Loss()
    gsm = GradSampleModule(model, batch_first=True, loss_reduction="mean")
    opt = DPOptimizer(make_optimizer(model, cfg), noise_multiplier=noise_multiplier,
                      max_grad_norm=max_grad_norm,
                      expected_batch_size=max(1, round(sample_rate * len(data))),
                      loss_reduction="mean")
    seen, loss_sum, empty = 0, 0.0, 0
    try:
        for step in tqdm(range(steps), desc="dp-train", disable=not progress, leave=False):
            factor = lr_factor(schedule.start_step + step, total=schedule.total_steps,
                               warmup=schedule.warmup_steps, schedule=cfg.schedule)
            for g in opt.param_groups:
                g["lr"] = g["base_lr"] * factor
            idx = np.flatnonzero(rng.random(len(data)) < sample_rate)
            if len(idx) == 0:
                # An empty Poisson batch: nothing to release. The ledger still counts the step,
                # which only over-states epsilon (conservative).
                empty += 1
                continue
            ids, mask, y = collate(data, idx, pad_id=pad_id)
            step_loss = loss(gsm(input_ids=ids, attention_mask=mask).logits, y)
            step_loss.backward()
            opt.step()
            opt.zero_grad(set_to_none=True)
            loss_sum += float(step_loss.detach()) * len(idx)
            seen += len(idx)
    finally:
        gsm._close()  # remove Opacus' hooks and per-sample grad buffers from the cached model
    return {"train_loss": loss_sum / max(1, seen), "num_examples": seen, "steps": steps,
            "empty_batches": empty}
