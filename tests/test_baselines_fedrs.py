"""FedRS restricted softmax (train.absent-class-scale): the logits of classes absent from a
site's own train split are scaled in training only, so a site with few classes stops pushing
the other classes' logits down (the head's drift under label skew)."""

from __future__ import annotations

import numpy as np
import pytest
import torch

from client.losses import make_loss
from common.config import TrainConfig
from common.errors import ConfigError


def test_absent_classes_scaled_present_untouched():
    labels = np.array([0, 0, 2, 2])  # classes 1 and 3 absent at this site
    loss = make_loss(TrainConfig(absent_class_scale=0.5), train_labels=labels, num_labels=4)
    assert loss.absent.tolist() == [False, True, False, True]
    logits = torch.tensor([[1.0, 4.0, 0.5, -2.0]], requires_grad=True)
    y = torch.tensor([0])
    expected = torch.nn.functional.cross_entropy(torch.tensor([[1.0, 2.0, 0.5, -1.0]]), y)
    got = loss(logits, y)
    assert got.item() == pytest.approx(expected.item())
    got.backward()
    plain = torch.tensor([[1.0, 4.0, 0.5, -2.0]], requires_grad=True)
    make_loss(TrainConfig(), train_labels=labels, num_labels=4)(plain, y).backward()
    # an absent class's logit is pushed down less than without the restriction
    assert 0 < logits.grad[0, 1] < plain.grad[0, 1]


def test_off_by_default_and_when_every_class_is_present():
    assert make_loss(TrainConfig(), train_labels=np.array([0, 1]), num_labels=3).absent is None
    assert make_loss(TrainConfig(absent_class_scale=0.5), train_labels=np.array([0, 1, 2]),
                     num_labels=3).absent is None
    with pytest.raises(ConfigError, match="absent-class-scale"):
        TrainConfig(absent_class_scale=1.5)


def test_loss_to_device_keeps_the_restriction():
    loss = make_loss(TrainConfig(absent_class_scale=0.5, class_weights="balanced"),
                     train_labels=np.array([0, 0, 1]), num_labels=3)
    moved = loss.to(torch.device("cpu"))
    assert moved.absent is loss.absent and moved.absent_scale == 0.5
