"""train.batch-size = auto: the largest batch that fits this site's GPU, found by a short probe
(forward + backward on the longest rows at doubling sizes until out of memory or a cap). On a
CPU, auto means 32 (memory is not what limits a CPU). The result is kept in the site's own
directory, so every round of a run (one process per message in deployment) and so every DP
round's sampling rate uses the same batch size."""

from __future__ import annotations

import dataclasses
import json
from pathlib import Path

import torch

from client.trainer import Encoded, Loss, collate
from common.config import TrainConfig
from common.atomic import atomic_write_bytes
from common.device import accel_for, place

CPU_AUTO = 32  # train.batch-size = auto on a CPU
PROBE_FILE = "batch-probe.json"


def resolve_batch_size(model: torch.nn.Module, data: Encoded, *, cfg: TrainConfig,
                       loss: Loss | None = None, pad_id: int = 0, site_dir: str | Path | None = None,
                       dp: bool = False, cap: int = 512) -> tuple[int, str]:
    """(batch size, how it was chosen) for train.batch-size; probes only for `auto` on CUDA.
    Under DP the probed size is halved (Opacus keeps a per-example gradient of every trained
    parameter). `site_dir` keeps the probe's result across processes."""
    if cfg.batch_size != "auto":
        return int(cfg.batch_size), "configured"
    if dp:  # DP-SGD runs in float32 (client/dp_trainer.py): probe what it will use
        cfg = dataclasses.replace(cfg, precision="fp32")
    accel = accel_for(cfg)
    if accel.device.type != "cuda" or len(data) == 0:
        return CPU_AUTO, "auto on CPU"
    longest = max(len(x) for x in data.ids)
    key = (f"{torch.cuda.get_device_name(accel.device)}|{accel.precision}|dp={dp}|cap={cap}|"
           f"len={longest}|params={sum(p.numel() for p in model.parameters())}|"
           f"trainable={sum(p.numel() for p in model.parameters() if p.requires_grad)}")
    path = Path(site_dir) / PROBE_FILE if site_dir else None
    cache = json.loads(path.read_text(encoding="utf-8")) if path and path.is_file() else {}
    if key in cache:
        return int(cache[key]), "auto (probed earlier)"
    size = probe(model, data, cfg=cfg, loss=loss or Loss(), pad_id=pad_id, cap=cap)
    size = max(1, size // 2) if dp else size
    if path:
        cache[key] = size
        atomic_write_bytes(path, json.dumps(cache, indent=1).encode("utf-8"))
    return size, "auto (probed)"


def probe(model: torch.nn.Module, data: Encoded, *, cfg: TrainConfig, loss: Loss, pad_id: int = 0,
          cap: int = 512) -> int:
    """The largest power-of-two batch (up to `cap`, and no bigger than the data needs) of the
    longest rows whose forward + backward fits; the model's weights and RNG are left untouched."""
    accel = accel_for(cfg)
    place(model, accel.device)
    if loss.class_weights is not None:
        loss = loss.to(accel.device)
    order = sorted(range(len(data)), key=lambda i: -len(data.ids[i]))
    limit = min(cap, 1 << max(0, (len(data) - 1).bit_length()))
    best, size = 0, 1
    was_training = model.training
    model.train()
    with torch.random.fork_rng(devices=[accel.device] if accel.device.type == "cuda" else []):
        while size <= limit:
            idx = [order[i % len(order)] for i in range(size)]
            try:
                ids, mask, y = accel.move(*collate(data, idx, pad_id=pad_id))
                with accel.autocast():
                    out = loss(model(input_ids=ids, attention_mask=mask).logits, y)
                out.backward()
                best = size
            except torch.cuda.OutOfMemoryError:
                break
            finally:
                out = None
                model.zero_grad(set_to_none=True)
                if accel.device.type == "cuda":
                    torch.cuda.empty_cache()
            size *= 2
    model.train(was_training)
    return max(1, best)
