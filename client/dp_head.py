"""DP linear probing: DP-SGD on the classification head alone, over the inputs the frozen model
feeds it, computed once (a forward pass without gradients) and reused for every step.

Why: on ~1,100 records per site and 77 classes, one DP-SGD step over the whole adapter (~370 k
parameters) carries ~50x more noise than signal (bench/dp_snr.py); the head alone (~30 k) with
large Poisson batches keeps most of the signal. And because nothing below the head changes
while only the head trains, its per-record gradients have a closed form: for a linear head
z = W h + b and a per-record loss l(z, y), the gradient of record i is g_i h_i^T (W) and g_i (b),
with g_i = dl/dz_i, so its norm is |g_i| sqrt(|h_i|^2 + 1) and the clipped sum over a batch is
one matrix product. No Opacus hooks, no backward pass through the encoder.

The mechanism is DP-SGD unchanged: Poisson sampling of units (records, or persons with all their
records — client/dp_units.py), each unit's summed gradient clipped to C, Gaussian noise of std
sigma C from the OS-seeded generator in Opacus' secure mode, divided by the expected batch; so
the ledger's accounting (client/privacy.py) applies as is."""

from __future__ import annotations

import numpy as np
import torch

from client.losses import Loss
from client.dp_units import Units
from client.trainer import Encoded, Schedule, batches


def find_head(model: torch.nn.Module) -> torch.nn.Linear:
    """The trainable linear classification head (peft's modules_to_save copy, never the frozen
    `original_module`)."""
    for name, mod in model.named_modules():
        leaf = name.split(".")
        if (isinstance(mod, torch.nn.Linear) and "original_module" not in leaf
                and ("classifier" in leaf or "score" in leaf) and mod.weight.requires_grad):
            return mod
    raise ValueError("DP linear probing needs a trainable linear classification head "
                     "(`classifier` or `score`); this model has none: set privacy.probe-rounds=0")


@torch.no_grad()
def head_inputs(model: torch.nn.Module, data: Encoded, *, pad_id: int = 0,
                batch_size: int = 128) -> torch.Tensor:
    """What the head sees for every row of `data` (eval mode: no dropout), in row order, float32
    on the CPU."""
    head = find_head(model)
    seen: list[torch.Tensor] = []
    hook = head.register_forward_hook(lambda _m, args, _out: seen.append(args[0].detach().float()))
    was_training = model.training
    model.eval()
    device = head.weight.device
    out = torch.zeros((len(data), head.in_features), dtype=torch.float32)
    try:
        for ids, mask, _, idx in batches(data, batch_size=batch_size, shuffle=False, rng=None,
                                         pad_id=pad_id):
            seen.clear()
            model(input_ids=ids.to(device), attention_mask=mask.to(device))
            out[torch.as_tensor(idx)] = seen[-1].cpu()
    finally:
        hook.remove()
        model.train(was_training)
    return out


def per_record_loss(loss: Loss, logits: torch.Tensor, labels: torch.Tensor) -> torch.Tensor:
    """Each record's own task loss (cross-entropy or focal, times its class weight): the
    per-record objective whose gradients DP-SGD clips."""
    logp = torch.log_softmax(logits, dim=-1).gather(1, labels[:, None]).squeeze(1)
    out = -logp if loss.focal_gamma is None else -((1 - logp.exp()) ** loss.focal_gamma) * logp
    if loss.class_weights is not None:
        out = out * loss.class_weights.to(out.device)[labels]
    return out


def clipped_sum(head: torch.nn.Linear, x: torch.Tensor, y: torch.Tensor, *, loss: Loss,
                clip: float, units: torch.Tensor | None = None) -> tuple[torch.Tensor, torch.Tensor | None]:
    """Sum over privacy units of each unit's gradient clipped to `clip` (L2 over W and b).
    `units` (one local id per row, 0..k-1, a unit's rows adjacent) sums a person's records
    before clipping; None = each row is its own unit."""
    logits = (x @ head.weight.T + (head.bias if head.bias is not None else 0)).detach().requires_grad_(True)
    per_record_loss(loss, logits, y).sum().backward()
    g = logits.grad  # row i depends on record i only: dl_i/dz_i
    xb = torch.cat([x, torch.ones(len(x), 1)], dim=1) if head.bias is not None else x
    if units is None:
        sq = (g * g).sum(1) * (xb * xb).sum(1)
        scale = torch.clamp(clip / torch.sqrt(sq).clamp_min(1e-12), max=1.0)
    else:
        scale = torch.clamp(clip / torch.sqrt(unit_sq_norms(g, xb, units)).clamp_min(1e-12), max=1.0)[units]
    gs = g * scale[:, None]
    return gs.T @ x, (gs.sum(0) if head.bias is not None else None)


def unit_sq_norms(g: torch.Tensor, xb: torch.Tensor, units: torch.Tensor, *, chunk: int = 1024) -> torch.Tensor:
    """|sum_{i in u} g_i xb_i^T|^2 for every unit u = sum over pairs i, j of u of (g_i . g_j)(xb_i . xb_j),
    over blocks of whole units (rows of a unit are adjacent), so memory stays chunk^2."""
    k = int(units.max()) + 1
    sq = torch.zeros(k, dtype=g.dtype)
    bounds = [0, *(torch.nonzero(units[1:] != units[:-1]).flatten() + 1).tolist(), len(units)]
    i = 0
    while i < len(bounds) - 1:
        j = i + 1  # at least one whole unit, then as many whole units as fit in `chunk` rows
        while j + 1 < len(bounds) and bounds[j + 1] - bounds[i] <= chunk:
            j += 1
        sl = slice(bounds[i], bounds[j])
        same = units[sl, None] == units[None, sl]
        pair = (g[sl] @ g[sl].T) * (xb[sl] @ xb[sl].T) * same
        sq.index_add_(0, units[sl], pair.sum(1))
        i = j
    return sq


def train_head_dp(head: torch.nn.Linear, x: torch.Tensor, y: torch.Tensor, *,
                  optimizer: torch.optim.Optimizer, schedule: Schedule, kind: str, steps: int,
                  units: Units, sample_rate: float, rng: np.random.Generator,
                  noise_multiplier: float, clip: float, generator: torch.Generator,
                  loss: Loss | None = None) -> dict[str, float]:
    """One round of DP-SGD steps on `head` over cached inputs `x` (rows) and labels `y`. Each
    step: a Poisson batch of units (records or persons), the clipped sum + N(0, (sigma C)^2) per
    coordinate, divided by the expected batch (q x units), then the optimizer's step at the
    federation-wide schedule's rate. An empty batch still adds pure noise."""
    from opacus.optimizers.optimizer import _generate_noise

    loss = loss or Loss()
    expected = max(1e-12, sample_rate * units.count)
    seen = 0
    for step in range(steps):
        rows, local = units.sample(rng, sample_rate)
        if len(rows):
            rows_t = torch.as_tensor(rows)
            per = None if units.kind == "record" else torch.as_tensor(local)
            gw, gb = clipped_sum(head, x[rows_t], y[rows_t], loss=loss, clip=clip, units=per)
        else:
            gw = torch.zeros_like(head.weight)
            gb = torch.zeros_like(head.bias) if head.bias is not None else None
        for p, grad in ((head.weight, gw), (head.bias, gb)):
            if p is not None:
                noise = _generate_noise(std=noise_multiplier * clip, reference=p, generator=generator,
                                        secure_mode=True)
                p.grad = ((grad + noise) / expected).to(p.dtype)
        schedule.apply(optimizer, step, kind=kind)
        optimizer.step()
        optimizer.zero_grad(set_to_none=True)
        seen += len(rows)
    return {"num_examples": seen, "steps": steps}
