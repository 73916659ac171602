"""model.head-init = label-names: the coordinator starts the head from the label names."""

from __future__ import annotations

import dataclasses

import pytest
import torch

from common.config import ModelConfig
from common.errors import ConfigError, ModelError
from common.model import build_model
from tests.conftest import WORDS

LABELS = sorted(set(WORDS))[:6]


def _logits(built, texts):
    batch = built.tokenizer(texts, padding=True, return_tensors="pt")
    built.model.eval()
    with torch.no_grad():
        return built.model(**batch).logits


def test_label_names_head_classifies_each_label_name_as_itself(tiny_model_dir):
    cfg = ModelConfig(base=str(tiny_model_dir), lora_r=4, head_init="label-names")
    built = build_model(cfg, num_labels=len(LABELS), seed=0, labels=LABELS)
    pred = _logits(built, LABELS).argmax(-1).tolist()
    assert pred == list(range(len(LABELS)))  # zero-shot, before any training
    head = {n: p for n, p in built.model.named_parameters() if "classifier" in n and p.requires_grad}
    assert head and all(torch.isfinite(p).all() for p in head.values())
    assert all(float(p.detach().abs().max()) == 0.0 for n, p in head.items() if n.endswith("bias"))
    # the same model with a random head does not (its rows carry no label information)
    rand = build_model(dataclasses.replace(cfg, head_init="random"), num_labels=len(LABELS), seed=0,
                       labels=LABELS)
    assert _logits(rand, LABELS).argmax(-1).tolist() != pred
    # a site builds without labels (its head is replaced by the coordinator's initial arrays)
    site = build_model(cfg, num_labels=len(LABELS), seed=0)
    assert torch.equal(_logits(site, LABELS), _logits(rand, LABELS))


def test_head_init_is_validated(tiny_model_dir):
    with pytest.raises(ConfigError, match="model.head-init"):
        ModelConfig(head_init="names")
    cfg = ModelConfig(base=str(tiny_model_dir), lora_r=4, head_init="label-names")
    with pytest.raises(ModelError, match="one row per label"):
        build_model(cfg, num_labels=len(LABELS), seed=0, labels=LABELS[:3])


def test_finetuner_takes_head_init(tiny_model_dir):
    from fedtune import FineTuner

    tuner = FineTuner(base_model=str(tiny_model_dir), labels=LABELS).set_params(
        head_init="label-names", lora_r=4, epochs=1, verbose=False, batch_size=8,
        learning_rate=1e-9, head_learning_rate=1e-9, warmup_ratio=0.0)  # keep the starting head
    texts = [f"{w} {w}" for w in LABELS] * 3
    tuner.fit(texts, [w for w in LABELS] * 3, texts[:6], LABELS[:6])
    assert tuner.model_cfg.head_init == "label-names"
    assert tuner.evaluate(LABELS, LABELS)["accuracy"] == 1.0  # each label name as itself
