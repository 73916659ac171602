"""Section 2 — local training throughput on one site's data (Banking77 texts, batch 32, the
default LoRA r=16 on every linear layer, all cores as one site gets with concurrency 1):

* fedtune's trainer (client/trainer.train: length bucketing + pad to longest, AdamW with param
  groups, schedule, grad clipping) vs a plain PEFT + PyTorch loop written here (HF
  DataCollatorWithPadding = pad to longest per batch, AdamW, no bucketing), and the same plain loop
  fed fedtune's bucketed batches; same model weights, data, batch size and steps.
* DP vs non-DP local training (client/trainer.train, the default LoRA): the DP default (the size
  rule of common/dp_recipe.py: DP linear probing — the head's inputs computed once by a forward
  pass, then closed-form per-record gradients, client/dp_head.py), and DP-SGD over the FFA-LoRA
  adapter with Opacus (client/dp_trainer.train_dp, what privacy.probe-rounds=0 trains), with and
  without length-sorted micro-batches. Samples/s = records the DP steps drew / wall time,
  the forward pass that computes the head's inputs included.
* the share of the machine's matmul limit, measured in this run, that training reaches.

FLOPs per sample: 2 x P_tok x T forward (P_tok = weights of every Linear applied per token:
base + LoRA A/B; T = mean real tokens per sample) + 2 x P_cls (pooler + head, once per sample);
x3 for forward + backward. Attention-score matmuls (4 T^2 d per layer, < 5% at T ~ 16) are left
out. With a frozen base the true backward is nearer x2 (no weight gradients): both are reported."""

from __future__ import annotations

import contextlib
import dataclasses
import math
import os
import time

import numpy as np
import pandas as pd
import torch


def matmul_gflops(seconds: float) -> dict:
    """Best fp32 GEMM rate over a few square sizes, with this process's torch threads."""
    best, per = 0.0, {}
    for n in (512, 1024, 2048):
        a, b = torch.randn(n, n), torch.randn(n, n)
        a @ b
        reps, t0 = 0, time.perf_counter()
        while time.perf_counter() - t0 < seconds / 3 or reps < 2:
            a @ b
            reps += 1
        per[n] = 2 * n ** 3 * reps / (time.perf_counter() - t0) / 1e9
        best = max(best, per[n])
    return {"gflops": best, "by_size": per}


def matmul_params(model: torch.nn.Module) -> tuple[int, int]:
    """(weights applied per token, weights applied once per sample) over the Linear layers used
    in the forward pass (skipping peft's unused `original_module` copy of the head)."""
    per_token = per_sample = 0
    for name, mod in model.named_modules():
        if isinstance(mod, torch.nn.Linear) and "original_module" not in name:
            n = mod.in_features * mod.out_features
            if "pooler" in name or "classifier" in name:
                per_sample += n
            else:
                per_token += n
    return per_token, per_sample


def _plain_model(base: str, built, num_labels: int):
    """The same LoRA model built the plain way: transformers + peft, no fedtune code."""
    from peft import LoraConfig, get_peft_model
    from transformers import AutoModelForSequenceClassification

    pc = built.model.peft_config["default"]
    torch.manual_seed(0)
    model = AutoModelForSequenceClassification.from_pretrained(base, num_labels=num_labels)
    lcfg = LoraConfig(r=pc.r, lora_alpha=pc.lora_alpha, lora_dropout=pc.lora_dropout,
                      target_modules=sorted(pc.target_modules), modules_to_save=["classifier"],
                      task_type="SEQ_CLS")
    model = get_peft_model(model, lcfg)
    model.load_state_dict(built.model.state_dict())  # identical weights
    return model


def _plain_loop(model, tokenizer, enc, *, batch_size: int, lr: float, sampler=None, seed: int = 0):
    """The textbook loop: DataLoader + DataCollatorWithPadding, AdamW, loss from the model."""
    from torch.utils.data import DataLoader
    from transformers import DataCollatorWithPadding

    feats = [{"input_ids": ids, "labels": int(y)} for ids, y in zip(enc.ids, enc.labels)]
    collate = DataCollatorWithPadding(tokenizer, padding="longest")
    loader = (DataLoader(feats, batch_sampler=sampler, collate_fn=collate) if sampler is not None else
              DataLoader(feats, batch_size=batch_size, shuffle=True, collate_fn=collate,
                         generator=torch.Generator().manual_seed(seed)))
    opt = torch.optim.AdamW([p for p in model.parameters() if p.requires_grad], lr=lr)
    model.train()
    seen = padded = 0
    t0 = time.perf_counter()
    for batch in loader:
        model(**batch).loss.backward()
        opt.step()
        opt.zero_grad(set_to_none=True)
        seen += len(batch["labels"])
        padded += batch["input_ids"].numel()
    return seen, time.perf_counter() - t0, padded


def _dp_model(h, num_labels: int):
    """The model a DP site trains: mean pooling and FFA-LoRA (lora_A frozen), as privacy.dp resolves."""
    from common.adapter import FFA_FROZEN
    from common.model import build_model

    cfg = h.config("banking77", ["privacy.dp=true"])
    model = build_model(cfg.model, num_labels=num_labels, seed=0).model
    for name, p in model.named_parameters():
        if any(part in name for part in FFA_FROZEN):
            p.requires_grad = False
    return model


def _dp_probe(model, enc, *, pad: int, seed: int) -> float:
    """Samples/s of one round of the DP default (DP linear probing by the size rule), cold cache."""
    from client.dp_head import find_head, head_inputs, train_head_dp
    from client.dp_units import units_of
    from client.trainer import Schedule
    from client.accounting import calibrate_noise
    from common.dp_recipe import auto_recipe

    def sigma_of(q: float, steps: int) -> float:  # the default accountant, epsilon 8, delta 1/(10 n)
        return calibrate_noise([], sample_rate=q, steps=steps, target_epsilon=8.0,
                               delta=0.1 / len(enc), accountant="rdp")

    recipe = auto_recipe(units=len(enc), unit="record", rounds=1, sigma_of=sigma_of)
    t0 = time.perf_counter()
    x = head_inputs(model, enc, pad_id=pad)
    head = find_head(model)
    opt = torch.optim.SGD(head.parameters(), lr=recipe.learning_rate, momentum=0.9)
    for g in opt.param_groups:
        g["base_lr"] = recipe.learning_rate
    stats = train_head_dp(head, x, torch.tensor(np.asarray(enc.labels)), optimizer=opt,
                          schedule=Schedule(0, recipe.steps_per_round, 0), kind="constant",
                          steps=recipe.steps_per_round, units=units_of(None, len(enc)),
                          sample_rate=recipe.sample_rate, rng=np.random.default_rng(seed),
                          noise_multiplier=1.0, clip=recipe.clip, generator=torch.Generator().manual_seed(seed))
    return stats["num_examples"] / (time.perf_counter() - t0)


@contextlib.contextmanager
def _one_piece_poisson_batches():
    import client.dp_trainer as dpt

    saved = dpt.micro_batches
    dpt.micro_batches = lambda idx, lengths: [idx]
    try:
        yield
    finally:
        dpt.micro_batches = saved


def run(h) -> dict:
    from client.dp_trainer import train_dp
    from client.trainer import Schedule, batches, encode, train
    from common.model import build_model

    n, reps = (64, 1) if h.quick else (640, 2)
    cfg = h.config("banking77")
    frame = pd.read_csv(h.data_file("banking77")).head(n)
    names = sorted(pd.read_csv(h.data_file("banking77"))["label"].unique())
    y = frame["label"].map({k: i for i, k in enumerate(names)}).to_numpy()
    torch.set_num_threads(os.cpu_count() or 1)
    built = build_model(cfg.model, num_labels=len(names), seed=0)
    tok, bs = built.tokenizer, cfg.train.batch_size
    pad = tok.pad_token_id or 0
    enc = encode(tok, frame["text"].tolist(), y, max_length=cfg.model.max_length)
    steps = math.ceil(n / bs)
    tcfg = dataclasses.replace(cfg.train, local_epochs=1.0)
    sched = Schedule(start_step=0, total_steps=steps, warmup_steps=0)
    real_tokens = sum(len(x) for x in enc.ids)
    plain = _plain_model(built.base, built, len(names))

    dp_model = _dp_model(h, len(names))
    best = {k: 0.0 for k in ("fedtune", "plain_no_bucketing", "plain_bucketed", "dp", "dp_adapter",
                             "dp_one_piece", "non_dp")}
    padded = {}
    for rep in range(reps):  # interleaved repeats, best kept: other load on the machine is noise
        h.say(f"  throughput repeat {rep + 1}/{reps}: fedtune, plain, plain+bucketing, DP ...")
        t0 = time.perf_counter()
        stats = train(built.model, enc, cfg=tcfg, schedule=sched, rng=np.random.default_rng(rep),
                      pad_id=pad, steps=steps)
        best["fedtune"] = max(best["fedtune"], stats["num_examples"] / (time.perf_counter() - t0))
        best["non_dp"] = best["fedtune"]  # the same call is the non-DP reference
        seen, secs, padded["plain_no_bucketing"] = _plain_loop(plain, tok, enc, batch_size=bs,
                                                               lr=tcfg.learning_rate, seed=rep)
        best["plain_no_bucketing"] = max(best["plain_no_bucketing"], seen / secs)
        groups = [idx.tolist() for *_, idx in batches(enc, batch_size=bs, shuffle=True,
                                                      rng=np.random.default_rng(rep), pad_id=pad)]
        seen, secs, padded["plain_bucketed"] = _plain_loop(plain, tok, enc, batch_size=bs,
                                                           lr=tcfg.learning_rate, sampler=groups)
        best["plain_bucketed"] = max(best["plain_bucketed"], seen / secs)
        best["dp"] = max(best["dp"], _dp_probe(dp_model, enc, pad=pad, seed=rep))
        t0 = time.perf_counter()
        dp = train_dp(dp_model, enc, cfg=tcfg, schedule=sched, rng=np.random.default_rng(rep),
                      steps=steps, sample_rate=bs / n, noise_multiplier=1.0, max_grad_norm=1.0,
                      pad_id=pad)
        best["dp_adapter"] = max(best["dp_adapter"], dp["num_examples"] / (time.perf_counter() - t0))
        with _one_piece_poisson_batches():  # the same DP step without micro-batching
            t0 = time.perf_counter()
            dp = train_dp(dp_model, enc, cfg=tcfg, schedule=sched, rng=np.random.default_rng(rep),
                          steps=steps, sample_rate=bs / n, noise_multiplier=1.0, max_grad_norm=1.0,
                          pad_id=pad)
            best["dp_one_piece"] = max(best["dp_one_piece"], dp["num_examples"] / (time.perf_counter() - t0))
    padded["fedtune"] = sum(len(g) * max(len(enc.ids[i]) for i in g) for g in groups)

    mm = matmul_gflops(0.3 if h.quick else 3.0)
    p_tok, p_cls = matmul_params(built.model)
    t_mean = real_tokens / n
    fwd = 2 * p_tok * t_mean + 2 * p_cls
    util = best["fedtune"] * 3 * fwd / (mm["gflops"] * 1e9)
    return {
        "samples": n, "batch_size": bs, "steps": steps, "repeats": reps,
        "torch_threads": torch.get_num_threads(), "max_length": cfg.model.max_length,
        "samples_per_s": best,
        "padding_efficiency": {k: real_tokens / v for k, v in padded.items()},
        "ratios": {"fedtune_over_plain": best["fedtune"] / best["plain_no_bucketing"],
                   "fedtune_over_plain_bucketed": best["fedtune"] / best["plain_bucketed"],
                   "dp_over_non_dp": best["dp"] / best["non_dp"],
                   "dp_adapter_over_non_dp": best["dp_adapter"] / best["non_dp"],
                   "dp_one_piece_over_non_dp": best["dp_one_piece"] / best["non_dp"]},
        "matmul": mm, "params_per_token": p_tok, "params_per_sample": p_cls,
        "mean_tokens": t_mean, "flops_per_sample_fwd": fwd, "flops_per_sample_train_x3": 3 * fwd,
        "machine_fraction_x3": util, "machine_fraction_x2": util * 2 / 3,
    }


def table(res: dict) -> str:
    s, r, p = res["samples_per_s"], res["ratios"], res["padding_efficiency"]
    lines = [f"{res['samples']} Banking77 texts, batch {res['batch_size']}, {res['steps']} steps, "
             f"{res['torch_threads']} torch threads, best of {res['repeats']}", "",
             "| loop | samples/s | real / padded tokens |", "|---|---:|---:|",
             f"| fedtune trainer (bucketing) | {s['fedtune']:.1f} | {p['fedtune']:.2f} |",
             f"| plain PEFT loop, pad to longest, no bucketing | {s['plain_no_bucketing']:.1f} | "
             f"{p['plain_no_bucketing']:.2f} |",
             f"| plain PEFT loop + fedtune's bucketed batches | {s['plain_bucketed']:.1f} | "
             f"{p['plain_bucketed']:.2f} |",
             f"| DP default: DP linear probing by the size rule (head inputs computed once, "
             f"closed-form per-record gradients) | {s['dp']:.1f} | - |",
             f"| DP-SGD over the FFA-LoRA adapter (Opacus, Poisson q={res['batch_size']}/{res['samples']}, "
             f"length-sorted micro-batches; privacy.probe-rounds=0) | {s.get('dp_adapter', float('nan')):.1f} | - |",
             f"| the same, each Poisson batch in one piece (padded to its longest row) | "
             f"{s.get('dp_one_piece', float('nan')):.1f} | - |",
             "", f"fedtune / plain = **{r['fedtune_over_plain']:.2f}x** (vs plain + bucketing "
             f"{r['fedtune_over_plain_bucketed']:.2f}x); DP / non-DP = **{r['dp_over_non_dp']:.2f}x** "
             f"(DP default; DP-SGD over the adapter {r.get('dp_adapter_over_non_dp', float('nan')):.2f}x).",
             f"Matmul limit {res['matmul']['gflops']:.1f} GFLOP/s; model {res['params_per_token']:,} "
             f"matmul weights per token, {res['mean_tokens']:.1f} real tokens per sample -> "
             f"{res['flops_per_sample_train_x3'] / 1e6:.0f} MFLOP per training sample (x3); training "
             f"reaches {100 * res['machine_fraction_x3']:.1f} % of the limit "
             f"({100 * res['machine_fraction_x2']:.1f} % counting x2)."]
    return "\n".join(lines)
