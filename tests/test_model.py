import numpy as np
import pytest
import torch

from client.trainer import Schedule, batches, encode, evaluate, lr_factor, predict, train
from common.adapter import check_keys, get_state, set_state
from common.config import ModelConfig, TrainConfig
from common.errors import ModelError
from common.model import build_model
from tests.conftest import make_texts


def _model(tiny_model_dir, **kw):
    return build_model(ModelConfig(base=str(tiny_model_dir), **kw), num_labels=4, seed=0)


def test_only_lora_and_head_trainable(tiny_model_dir):
    built = _model(tiny_model_dir, lora_r=4)
    names = [n for n, p in built.model.named_parameters() if p.requires_grad]
    assert names and all("lora_" in n or "classifier" in n for n in names)
    state = get_state(built.model)
    assert any("lora_A" in k for k in state) and any("classifier" in k for k in state)
    assert not any("embeddings" in k for k in state)


def test_freeze_layers_has_no_lora_in_frozen_layers(tiny_model_dir):
    built = _model(tiny_model_dir, lora_r=4, freeze_layers=1)
    names = [n for n, p in built.model.named_parameters() if p.requires_grad]
    assert not any(".layer.0." in n for n in names)
    assert any(".layer.1." in n for n in names)


def test_full_finetune_trains_everything_not_frozen(tiny_model_dir):
    built = _model(tiny_model_dir, finetune="full", freeze_layers=1)
    trainable = {n for n, p in built.model.named_parameters() if p.requires_grad}
    assert not any(".layer.0." in n or "embeddings" in n for n in trainable)
    assert any(".layer.1." in n for n in trainable)


def test_bad_model_dir_and_targets(tmp_path, tiny_model_dir):
    with pytest.raises(ModelError, match="not a directory"):
        build_model(ModelConfig(base=str(tmp_path / "nope")), num_labels=2)
    (tmp_path / "empty").mkdir()
    with pytest.raises(ModelError, match="config.json"):
        build_model(ModelConfig(base=str(tmp_path / "empty")), num_labels=2)
    with pytest.raises(ModelError, match="target-modules"):
        build_model(ModelConfig(base=str(tiny_model_dir), target_modules="q_proj"), num_labels=2)


def test_state_round_trip_and_key_check(tiny_model_dir):
    a = _model(tiny_model_dir).model
    b = build_model(ModelConfig(base=str(tiny_model_dir)), num_labels=4, seed=1).model
    sa = get_state(a)
    set_state(b, sa)
    assert all(torch.equal(sa[k], v) for k, v in get_state(b).items())
    bad = dict(sa)
    bad.pop(next(iter(bad)))
    with pytest.raises(ModelError, match="missing"):
        check_keys(sa, bad)


def test_dynamic_padding_batches_are_tight_and_cover_all():
    data = encode(_FakeTok(), ["a " * n for n in range(1, 200)], np.zeros(199, dtype=int), max_length=64)
    seen, waste = [], 0
    for ids, mask, y, idx in batches(data, batch_size=16, shuffle=True, rng=np.random.default_rng(0)):
        seen += list(idx)
        waste += int((mask == 0).sum())
    assert sorted(seen) == list(range(199))
    assert waste < 0.1 * sum(len(x) for x in data.ids)


class _FakeTok:
    def __call__(self, texts, truncation, max_length):
        return {"input_ids": [[1] * min(max_length, len(t.split())) for t in texts]}


def test_lr_schedule_warmup_then_decay():
    assert lr_factor(0, total=100, warmup=10, schedule="cosine") == pytest.approx(0.1)
    assert lr_factor(9, total=100, warmup=10, schedule="cosine") == pytest.approx(1.0)
    assert lr_factor(99, total=100, warmup=10, schedule="linear") < 0.05
    assert lr_factor(50, total=100, warmup=0, schedule="constant") == 1.0


def test_training_learns_and_predict_keeps_row_order(tiny_model_dir):
    torch.manual_seed(0)
    built = _model(tiny_model_dir, lora_r=8)
    texts, labels = make_texts(200, 4)
    y = np.array([int(s.split("_")[1]) for s in labels])
    data = encode(built.tokenizer, texts, y, max_length=32)
    before = evaluate(built.model, data, num_labels=4)
    cfg = TrainConfig(local_epochs=10, batch_size=16, learning_rate=3e-3)
    train(built.model, data, cfg=cfg, schedule=Schedule(0, 130, 0), rng=np.random.default_rng(0))
    after = evaluate(built.model, data, num_labels=4)
    assert after["loss"] < before["loss"]
    assert after["accuracy"] >= 0.45  # chance is 0.25
    logits = predict(built.model, data)
    single = predict(built.model, encode(built.tokenizer, texts[5:6], y[5:6], max_length=32))
    assert np.allclose(logits[5], single[0], atol=1e-4)
