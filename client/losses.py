"""The task losses a site trains with (train.loss, train.class-weights, train.absent-class-scale):
MSE, next-token cross-entropy, (weighted) cross-entropy and focal loss, as one callable `Loss`."""

from __future__ import annotations

import dataclasses
from dataclasses import dataclass

import numpy as np
import torch

from common.config import TrainConfig
from common.metrics import balanced_class_weights

IGNORE = -100  # label of tokens that carry no loss (prompt and padding of a causal LM)


def loss_fn(logits: torch.Tensor, labels: torch.Tensor,
            class_weights: torch.Tensor | None = None, *, focal_gamma: float | None = None) -> torch.Tensor:
    """MSE for float targets, next-token cross-entropy on labelled tokens for a causal LM (labels
    of shape batch x tokens), else (weighted) cross-entropy or, with `focal_gamma`, focal loss."""
    F = torch.nn.functional
    if labels.dtype == torch.float32:
        return F.mse_loss(logits.squeeze(-1), labels)
    if labels.dim() == 2:  # causal LM: token t predicts token t+1
        return F.cross_entropy(logits[:, :-1].flatten(0, 1).float(), labels[:, 1:].flatten(),
                               ignore_index=IGNORE)
    if focal_gamma is None:
        return F.cross_entropy(logits, labels, weight=class_weights)
    logp = F.log_softmax(logits.float(), dim=-1).gather(1, labels[:, None]).squeeze(1)
    focal = -((1 - logp.exp()) ** focal_gamma) * logp
    if class_weights is None:
        return focal.mean()
    w = class_weights[labels]
    return (w * focal).sum() / w.sum()


@dataclass(frozen=True)
class Loss:
    """The task loss a site trains with (train.loss, train.class-weights), as one callable."""

    class_weights: torch.Tensor | None = None
    focal_gamma: float | None = None
    # FedRS (restricted softmax, Li & Zhan, KDD 2021): the logits of classes absent from this
    # site's train split are scaled by `absent_scale` in training, so a site with few classes
    # stops pushing the others' logits down — the head's main drift under label skew
    absent: torch.Tensor | None = None  # bool mask over the classes
    absent_scale: float = 1.0

    def __call__(self, logits: torch.Tensor, labels: torch.Tensor) -> torch.Tensor:
        # under mixed precision the loss is still taken in float32 (a no-op for fp32 logits)
        logits = logits.float()
        if self.absent is not None and labels.dim() == 1 and labels.dtype != torch.float32:
            scale = torch.ones(logits.shape[-1], device=logits.device)
            scale[self.absent.to(logits.device)] = self.absent_scale
            logits = logits * scale
        return loss_fn(logits, labels, self.class_weights, focal_gamma=self.focal_gamma)

    def to(self, device: torch.device) -> "Loss":
        """The same loss with its class weights on `device`."""
        if self.class_weights is None:
            return self
        return dataclasses.replace(self, class_weights=self.class_weights.to(device))


def make_loss(cfg: TrainConfig, *, train_labels: np.ndarray | None = None, num_labels: int = 0) -> Loss:
    """train.loss / train.class-weights for a classification task; class weights come from THIS
    site's own train counts (`train_labels`). Other tasks get their plain loss."""
    if num_labels < 2:
        return Loss()
    weights = None
    if cfg.class_weights == "balanced" and train_labels is not None:
        weights = torch.as_tensor(balanced_class_weights(train_labels, num_labels=num_labels),
                                  dtype=torch.float32)
    absent = None
    if cfg.absent_class_scale < 1 and train_labels is not None and len(train_labels):
        present = np.bincount(np.asarray(train_labels, dtype=np.int64), minlength=num_labels) > 0
        absent = torch.as_tensor(~present[:num_labels]) if not present.all() else None
    return Loss(class_weights=weights, focal_gamma=cfg.focal_gamma if cfg.loss == "focal" else None,
                absent=absent, absent_scale=cfg.absent_class_scale)
