"""Gradient accumulation (train.grad-accum) equals one batch that many times bigger; the default
CPU path is bit-for-bit the loop it replaced; batch-size auto's probe on the CPU."""

from __future__ import annotations

import numpy as np
import pytest
import torch

from client.lm import encode_lm
from client.probe import CPU_AUTO, probe, resolve_batch_size
from client.trainer import (
    Loss,
    Schedule,
    batches,
    encode,
    lr_factor,
    make_loss,
    make_optimizer,
    steps_per_round,
    train,
)
from common.adapter import get_state
from common.config import ModelConfig, TaskConfig, TrainConfig
from common.model import build_model
from tests.conftest import make_pairs, make_texts


def _no_dropout(model: torch.nn.Module) -> torch.nn.Module:
    # dropout masks depend on how a batch is cut; equivalence is about the arithmetic
    for m in model.modules():
        if isinstance(m, torch.nn.Dropout):
            m.p = 0.0
    return model


def _clf(tiny_model_dir, n=64):
    built = build_model(ModelConfig(base=str(tiny_model_dir), lora_r=4, max_length=24), num_labels=4, seed=1)
    texts, labels = make_texts(n, 4)
    y = np.array([int(x[-1]) for x in labels])
    y[: n // 4] = 0  # unbalanced, so balanced class weights differ from 1
    return _no_dropout(built.model), encode(built.tokenizer, texts, y, max_length=24)


def _run(model, data, cfg, *, loss=None, steps=3):
    train(model, data, cfg=cfg, schedule=Schedule(0, 10, 2), rng=np.random.default_rng(7),
          loss=loss, steps=steps)
    return get_state(model)


def _assert_same(a, b, atol=2e-5):
    assert a.keys() == b.keys()
    for k in a:
        torch.testing.assert_close(a[k], b[k], atol=atol, rtol=1e-4, msg=k)


@pytest.mark.parametrize("weights", ["none", "balanced"])
def test_grad_accum_equals_a_bigger_batch(tiny_model_dir, weights):
    big_cfg = TrainConfig(batch_size=32, grad_accum=1, class_weights=weights)
    acc_cfg = TrainConfig(batch_size=8, grad_accum=4, class_weights=weights)
    model, data = _clf(tiny_model_dir)
    loss = make_loss(big_cfg, train_labels=data.labels, num_labels=4)
    big = _run(model, data, big_cfg, loss=loss)
    model, data = _clf(tiny_model_dir)
    acc = _run(model, data, acc_cfg, loss=loss)
    start = get_state(_clf(tiny_model_dir)[0])
    assert any(not torch.allclose(start[k], big[k]) for k in big)  # it trained
    _assert_same(big, acc)
    assert steps_per_round(64, acc_cfg) == steps_per_round(64, big_cfg) == 2


def test_grad_accum_equals_a_bigger_batch_causal_lm(tiny_lm_dir):
    def run(cfg):
        built = build_model(ModelConfig(base=str(tiny_lm_dir), lora_r=4), num_labels=0, seed=1)
        prompts, responses = make_pairs(24)
        data = encode_lm(built.tokenizer, prompts, responses, template=TaskConfig().prompt_template,
                         max_length=48)
        return _run(_no_dropout(built.model), data, cfg, steps=2)

    # the mean is over response tokens, which micro-batches share unevenly
    _assert_same(run(TrainConfig(batch_size=12)), run(TrainConfig(batch_size=4, grad_accum=3)))


def _reference_train(model, data, *, cfg, schedule, rng, steps, loss):
    """The CPU loop as it was before devices, precision and accumulation (frozen copy)."""
    model.train()
    opt = make_optimizer(model, cfg)
    params = [p for g in opt.param_groups for p in g["params"]]
    done = 0
    while done < steps:
        for ids, mask, y, _ in batches(data, batch_size=cfg.batch_size, shuffle=True, rng=rng):
            factor = lr_factor(schedule.start_step + done, total=schedule.total_steps,
                               warmup=schedule.warmup_steps, schedule=cfg.schedule)
            for g in opt.param_groups:
                g["lr"] = g["base_lr"] * factor
            loss(model(input_ids=ids, attention_mask=mask).logits, y).backward()
            if cfg.max_grad_norm > 0:
                torch.nn.utils.clip_grad_norm_(params, cfg.max_grad_norm)
            opt.step()
            opt.zero_grad(set_to_none=True)
            done += 1
            if done >= steps:
                break


def test_default_cpu_path_is_bit_for_bit_the_old_loop(tiny_model_dir):
    cfg = TrainConfig(batch_size=16)  # device auto -> cpu, precision auto -> fp32, grad-accum 1
    model, data = _clf(tiny_model_dir)
    model.train()  # dropout on, as in production: the RNG draws must match too
    for m in model.modules():
        if isinstance(m, torch.nn.Dropout):
            m.p = 0.1
    torch.manual_seed(3)
    new = _run(model, data, cfg, loss=Loss())
    model, data = _clf(tiny_model_dir)
    for m in model.modules():
        if isinstance(m, torch.nn.Dropout):
            m.p = 0.1
    torch.manual_seed(3)
    _reference_train(model, data, cfg=cfg, schedule=Schedule(0, 10, 2), rng=np.random.default_rng(7),
                     steps=3, loss=Loss())
    old = get_state(model)
    assert all(torch.equal(new[k], old[k]) for k in old)


def test_batch_size_auto_on_cpu_is_32_and_the_probe_leaves_the_model_alone(tiny_model_dir):
    model, data = _clf(tiny_model_dir, n=40)
    assert resolve_batch_size(model, data, cfg=TrainConfig(batch_size="auto")) == (CPU_AUTO, "auto on CPU")
    assert resolve_batch_size(model, data, cfg=TrainConfig(batch_size=12)) == (12, "configured")
    before = get_state(model)
    rng_before = torch.get_rng_state()
    # the probe itself runs on any device: on the CPU nothing runs out of memory, so it stops at
    # the cap, or at the smallest power of two covering the data
    assert probe(model, data, cfg=TrainConfig(), loss=Loss(), cap=16) == 16
    assert probe(model, data, cfg=TrainConfig(), loss=Loss(), cap=512) == 64
    assert torch.equal(torch.get_rng_state(), rng_before)
    assert all(torch.equal(before[k], v) for k, v in get_state(model).items())
    assert all(p.grad is None for p in model.parameters())
    with pytest.raises(Exception, match="not resolved"):
        steps_per_round(10, TrainConfig(batch_size="auto"))
