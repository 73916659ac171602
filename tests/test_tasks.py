"""Task types beyond classification: regression and causal-LM instruction tuning, unit and end
to end (a real 2-site, 2-round simulation each)."""

from __future__ import annotations

import numpy as np
import pandas as pd
import pytest
import torch

from client.lm import encode_lm, evaluate_lm
from client.trainer import Schedule, batches, encode, evaluate, loss_fn, train
from common.config import ModelConfig, TaskConfig, TrainConfig
from common.metrics import regression_metrics, rouge_l_f1
from common.model import build_model
from tests.conftest import make_pairs, make_texts
from tests.simhelp import simulate

TEMPLATE = TaskConfig().prompt_template


def test_rouge_l_is_lcs_f1():
    assert rouge_l_f1(["a", "b", "c", "d"], ["a", "b", "c", "d"]) == 1.0
    assert rouge_l_f1([], ["a"]) == 0.0 and rouge_l_f1(["x"], ["a"]) == 0.0
    # LCS("a x b c", "a b c d") = 3: P = 3/4, R = 3/4
    assert rouge_l_f1(["a", "x", "b", "c"], ["a", "b", "c", "d"]) == pytest.approx(0.75)


def test_regression_metrics_and_mse_loss():
    m = regression_metrics(np.array([1.0, 2.0, 3.0]), np.array([1.0, 2.0, 5.0]))
    assert m["mae"] == pytest.approx(2 / 3) and m["rmse"] == pytest.approx(np.sqrt(4 / 3))
    assert m["r2"] == pytest.approx(1 - 4 / (((np.array([1, 2, 5]) - 8 / 3) ** 2).sum()))
    loss = loss_fn(torch.tensor([[1.0], [3.0]]), torch.tensor([0.0, 3.0]))
    assert float(loss) == pytest.approx(0.5)


def test_lm_labels_only_on_response_tokens(tiny_lm_dir):
    tok = build_model(ModelConfig(base=str(tiny_lm_dir)), num_labels=0).tokenizer
    data = encode_lm(tok, ["what is the fee", "pin ?"], ["one euro", "reset it now free"],
                     template=TEMPLATE, max_length=64)
    (ids, _, labels, idx), = batches(data, batch_size=2, shuffle=False, rng=None, pad_id=0)
    for row, i in enumerate(idx):
        start, length = int(data.prompt_lens[i]), len(data.ids[i])
        assert (labels[row, :start] == -100).all() and (labels[row, length:] == -100).all()
        assert torch.equal(labels[row, start:length], ids[row, start:length])
        assert int(labels[row, length - 1]) == tok.eos_token_id  # the model learns to stop
    assert tok.decode(data.ids[0][data.prompt_lens[0]:], skip_special_tokens=True) == "one euro"
    # truncation keeps the prompt's END (the response cue) and some response
    long = encode_lm(tok, ["fee " * 60], ["one two three"], template=TEMPLATE, max_length=16)
    assert len(long.ids[0]) <= 16 and long.prompt_lens[0] < len(long.ids[0])


def test_lm_training_lowers_perplexity_and_raises_rouge(tiny_lm_dir):
    built = build_model(ModelConfig(base=str(tiny_lm_dir), max_length=48), num_labels=0, seed=0)
    assert built.task == "causal-lm" and built.model.peft_config["default"].task_type == "CAUSAL_LM"
    tok = built.tokenizer
    data = encode_lm(tok, *make_pairs(160), template=TEMPLATE, max_length=48)
    test = encode_lm(tok, *make_pairs(16, seed=1), template=TEMPLATE, max_length=48)
    before = evaluate_lm(built.model, test, tokenizer=tok, generate_tokens=8)
    torch.manual_seed(0)
    train(built.model, data, cfg=TrainConfig(local_epochs=4, batch_size=16, learning_rate=1e-2),
          schedule=Schedule(0, 40, 0), rng=np.random.default_rng(0))
    after = evaluate_lm(built.model, test, tokenizer=tok, generate_tokens=8)
    assert after["perplexity"] < before["perplexity"] / 3
    assert after["rouge_l"] > before["rouge_l"] and after["rouge_l"] > 0.3


def test_regression_head_trains(tiny_model_dir):
    built = build_model(ModelConfig(base=str(tiny_model_dir)), num_labels=1, seed=0)
    texts, labels = make_texts(120, 4)
    y = np.array([float(s.split("_")[1]) for s in labels], dtype=np.float64)
    data = encode(built.tokenizer, texts, y, max_length=32)
    before = evaluate(built.model, data, num_labels=1)
    train(built.model, data, cfg=TrainConfig(local_epochs=8, batch_size=16), schedule=Schedule(0, 64, 0),
          rng=np.random.default_rng(0))
    after = evaluate(built.model, data, num_labels=1)
    assert set(after) == {"mae", "rmse", "r2"} and after["rmse"] < before["rmse"]


@pytest.mark.slow
def test_regression_e2e_full_finetune_frozen_fedprox(tmp_path, tiny_model_dir):
    """Regression, full fine-tuning (with the loud size warning) and freeze-modules, under FedProx."""
    texts, labels = make_texts(200, 4)
    y = [float(s.split("_")[1]) * 2.5 for s in labels]
    pd.DataFrame({"text": texts, "score": y}).to_csv(tmp_path / "pooled.csv", index=False)
    summary, rows, log = simulate(tmp_path / "run", [
        f"model.base={tiny_model_dir}", f"simulation.data={tmp_path / 'pooled.csv'}",
        "task.type=regression", "data.label-column=score", "model.finetune=full",
        "model.freeze-modules=embeddings", "federation.strategy=fedprox",
        "federation.proximal-mu=0.01", "model.max-length=32", "train.local-epochs=2"])
    assert "full fine-tuning" in log and "MB" in log
    for key in ("mae", "rmse", "r2"):
        assert key in summary and np.isfinite(summary[key])
    assert summary["rmse"] < 5.0  # targets in [0, 7.5]; a constant predictor of 0 scores ~4.6
    assert "accuracy" not in summary
    for site in rows[-1]["per_site"].values():
        assert {"mae", "rmse", "r2"} <= set(site["evaluate"])


@pytest.mark.slow
def test_causal_lm_e2e(tmp_path, tiny_lm_dir):
    prompts, responses = make_pairs(240)
    pd.DataFrame({"prompt": prompts, "response": responses}).to_csv(tmp_path / "pairs.csv", index=False)
    summary, rows, _ = simulate(tmp_path / "run", [
        f"model.base={tiny_lm_dir}", f"simulation.data={tmp_path / 'pairs.csv'}",
        "task.type=causal-lm", "data.text-column=prompt", "data.label-column=response",
        "model.max-length=48", "train.local-epochs=3",
        "train.learning-rate=0.01", "task.generate-tokens=8"])
    assert np.isfinite(summary["perplexity"]) and 1.0 < summary["perplexity"] < 30  # init: ~285
    assert 0.0 <= summary["rouge_l"] <= 1.0
    first, last = rows[0]["evaluate"], rows[-1]["evaluate"]
    assert last["perplexity"] < first["perplexity"]
    for site in rows[-1]["per_site"].values():
        assert {"perplexity", "rouge_l", "loss"} <= set(site["evaluate"])
