"""Imbalanced data (fraud: ~10 % positives): balanced class weights from each site's own counts,
focal loss, binary recall per class / PR-AUC, and a decision threshold tuned on validation."""

from __future__ import annotations

import random

import numpy as np
import pandas as pd
import pytest
import torch

from client.trainer import Loss, loss_fn, make_loss
from common.config import TrainConfig, resolve
from common.errors import ConfigError
from common.metrics import (
    balanced_class_weights,
    classification_metrics,
    tune_threshold,
)
from tests.simhelp import simulate


def test_balanced_weights_from_counts():
    labels = np.array([0] * 90 + [1] * 10)
    assert np.allclose(balanced_class_weights(labels, num_labels=2), [100 / 180, 100 / 20])
    # a class this site never saw gets 1.0 (it never meets the loss here)
    assert np.allclose(balanced_class_weights(np.array([0, 0, 2]), num_labels=3), [0.75, 1.0, 1.5])


def test_make_loss_uses_the_sites_own_counts_and_weighted_loss_differs():
    cfg = TrainConfig(class_weights="balanced")
    loss = make_loss(cfg, train_labels=np.array([0] * 9 + [1]), num_labels=2)
    assert torch.allclose(loss.class_weights, torch.tensor([10 / 18, 5.0]))
    assert make_loss(TrainConfig(), train_labels=np.array([0, 1]), num_labels=2).class_weights is None
    logits = torch.tensor([[2.0, -1.0], [0.5, 0.2], [0.1, 0.3], [1.0, 1.5]])
    y = torch.tensor([0, 1, 1, 0])
    assert not torch.isclose(loss(logits, y), Loss()(logits, y))
    manual = torch.nn.functional.cross_entropy(logits, y, reduction="none")
    w = loss.class_weights[y]
    assert torch.isclose(loss(logits, y), (w * manual).sum() / w.sum())


def test_focal_loss():
    logits = torch.tensor([[3.0, -1.0], [0.2, 0.1], [-2.0, 2.5]])
    y = torch.tensor([0, 1, 1])
    ce = loss_fn(logits, y)
    assert torch.isclose(loss_fn(logits, y, focal_gamma=0.0), ce)
    assert loss_fn(logits, y, focal_gamma=2.0) < ce  # easy examples are down-weighted
    focal = make_loss(TrainConfig(loss="focal", focal_gamma=2.0), train_labels=np.array([0, 1]), num_labels=2)
    assert focal.focal_gamma == 2.0
    with pytest.raises(ConfigError, match="train.loss"):
        resolve(None, ["train.loss=hinge"])


def test_binary_metrics_and_threshold():
    # positives score 0.3-0.4: argmax misses them all, a tuned threshold finds them
    p1 = np.array([0.05, 0.1, 0.15, 0.2, 0.1, 0.3, 0.35, 0.4])
    y = np.array([0, 0, 0, 0, 0, 1, 1, 1])
    logits = np.log(np.stack([1 - p1, p1], axis=1))
    plain = classification_metrics(logits, y, num_labels=2)
    assert plain["recall_1"] == 0.0 and plain["recall_0"] == 1.0
    assert plain["pr_auc"] == pytest.approx(1.0) and plain["auc_roc"] == pytest.approx(1.0)
    t = tune_threshold(p1, y)
    assert 0.2 < t <= 0.3
    tuned = classification_metrics(logits, y, num_labels=2, threshold=t)
    assert tuned["recall_1"] == 1.0 and tuned["accuracy"] == 1.0
    assert tune_threshold(p1, np.zeros(8)) == 0.5


def fraud_frame(n: int, seed: int = 0) -> pd.DataFrame:
    rng = random.Random(seed)
    normal = ["card", "arrived", "top", "up", "balance", "exchange", "rate", "transfer", "pending", "cash", "atm"]
    fraud = ["stolen", "declined", "charged", "twice", "wrong", "amount"]
    rows = []
    for i in range(n):
        bad = i % 10 == 0
        words = [rng.choice(fraud) for _ in range(2)] if bad else []
        words += [rng.choice(normal) for _ in range(3)]
        rng.shuffle(words)
        rows.append((" ".join(words) + f" {i}", "fraud" if bad else "ok"))
    return pd.DataFrame(rows, columns=["text", "label"])


@pytest.mark.slow
def test_imbalanced_binary_e2e(tmp_path, tiny_model_dir):
    fraud_frame(400).to_csv(tmp_path / "tx.csv", index=False)
    summary, rows, _ = simulate(tmp_path / "run", [
        f"model.base={tiny_model_dir}", f"simulation.data={tmp_path / 'tx.csv'}",
        "task.labels=ok,fraud",  # the positive class (id 1) is the second label
        "train.class-weights=balanced", "train.loss=focal", "train.tune-threshold=true",
        "federation.strategy=fedyogi", "federation.server-lr=0.05", "model.max-length=24",
        "train.local-epochs=2"])
    for key in ("accuracy", "macro_f1", "recall_0", "recall_1", "pr_auc", "threshold"):
        assert key in summary and 0.0 <= summary[key] <= 1.0, key
    assert summary["pr_auc"] > 0.3  # chance level is the positive rate, 0.1
    for site in rows[-1]["per_site"].values():
        assert {"recall_1", "pr_auc", "threshold"} <= set(site["evaluate"])
