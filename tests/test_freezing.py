"""model.freeze-modules (name parts or fnmatch patterns) and model.freeze-layers, under LoRA and
full fine-tuning: frozen parameters get no LoRA, no gradient, and stay bit-identical."""

from __future__ import annotations

import numpy as np
import pytest
import torch

from client.trainer import Schedule, encode, train
from common.config import ModelConfig, TrainConfig, resolve
from common.errors import ConfigError, ModelError
from common.model import build_model, matches_pattern
from tests.conftest import make_texts


def _build(tiny_model_dir, **kw):
    return build_model(ModelConfig(base=str(tiny_model_dir), lora_r=4, **kw), num_labels=4, seed=0)


def _train(built, steps=6):
    texts, labels = make_texts(64, 4)
    y = np.array([int(s.split("_")[1]) for s in labels])
    data = encode(built.tokenizer, texts, y, max_length=24)
    before = {n: p.detach().clone() for n, p in built.model.named_parameters()}
    train(built.model, data, cfg=TrainConfig(batch_size=16, learning_rate=1e-2), rng=np.random.default_rng(0),
          schedule=Schedule(0, steps, 0), steps=steps)
    after = dict(built.model.named_parameters())
    return {n: torch.equal(before[n], after[n].detach()) for n in before}


def test_pattern_matching_is_by_whole_name_parts():
    assert matches_pattern("bert.encoder.layer.1.attention.self.query", "encoder.layer.1")
    assert not matches_pattern("bert.encoder.layer.11.attention.self.query", "encoder.layer.1")
    assert matches_pattern("bert.embeddings.word_embeddings", "embeddings")
    assert not matches_pattern("bert.embeddings.word_embeddings", "word")
    assert matches_pattern("bert.encoder.layer.0.attention.self.value", "*.attention.self.v*")


def test_config_key_parses():
    cfg = resolve(None, ["model.freeze-modules=embeddings,encoder.layer.0"])
    assert cfg.model.freeze_modules == "embeddings,encoder.layer.0"
    with pytest.raises(ConfigError, match="freeze-modul"):
        resolve(None, ["model.freeze-module=embeddings"])


def test_lora_skips_frozen_modules_and_they_stay_identical(tiny_model_dir):
    built = _build(tiny_model_dir, freeze_modules="encoder.layer.0,*.attention.self.key")
    lora = [n for n, _ in built.model.named_parameters() if "lora_" in n]
    assert lora and not any(".layer.0." in n or ".key." in n for n in lora)
    assert any(".layer.1.attention.self.query" in n for n in lora)
    same = _train(built)
    assert all(same[n] for n in same if "lora_" not in n and "classifier" not in n)
    assert not all(same[n] for n in lora if "lora_B" in n)  # the unfrozen LoRA trained


def test_full_finetune_frozen_bit_identical_rest_trains(tiny_model_dir):
    built = _build(tiny_model_dir, finetune="full", freeze_modules="embeddings,encoder.layer.0")
    frozen = {n for n, p in built.model.named_parameters() if not p.requires_grad}
    assert frozen and all("embeddings" in n or ".layer.0." in n for n in frozen)
    assert not any(".layer.1." in n for n in frozen)
    same = _train(built)
    assert all(same[n] for n in frozen)
    assert not same["bert.encoder.layer.1.attention.self.query.weight"]
    assert not same["classifier.weight"]


def test_freeze_layers_and_modules_combine(tiny_model_dir):
    built = _build(tiny_model_dir, finetune="full", freeze_layers=1, freeze_modules="pooler")
    trainable = {n for n, p in built.model.named_parameters() if p.requires_grad}
    assert not any(".layer.0." in n or "embeddings" in n or "pooler" in n for n in trainable)
    assert any(".layer.1." in n for n in trainable)


def test_unknown_pattern_and_frozen_head_are_errors(tiny_model_dir):
    with pytest.raises(ModelError, match="matches no module"):
        _build(tiny_model_dir, freeze_modules="encoder.layers.0")
    with pytest.raises(ModelError, match="head"):
        _build(tiny_model_dir, freeze_modules="classifier")
