"""Mean pooling for BERT-style sequence classifiers (model.pooling = mean).

The stock `*ForSequenceClassification` head reads the encoder's pooler: the [CLS] token through
a dense layer and tanh. Sentence-embedding models such as all-MiniLM-L6-v2 were trained for the
mean of the last hidden states over the real tokens instead, and that vector is far better
as-is: on the demo (77 Banking77 intents) the label-name head classifies 0.60 of the test
queries zero-shot with mean pooling vs 0.45 with the [CLS] pooler, and a linear head on it
reaches 0.86 without DP vs 0.66 (bench/results/dp_sweep.md). That is what makes DP linear probing
work: a DP-trained head needs features that already separate the classes.

The encoder's pooler is replaced by a parameter-free module; a forward pre-hook on the encoder
hands it the attention mask of the current call (the pooler itself only receives hidden states)."""

from __future__ import annotations

import torch

from common.errors import ModelError


class MeanPooler(torch.nn.Module):
    """Mean of the hidden states over the tokens the attention mask marks as real."""

    def __init__(self) -> None:
        super().__init__()
        self.mask: torch.Tensor | None = None  # set by the encoder's pre-hook for each call

    def forward(self, hidden: torch.Tensor) -> torch.Tensor:
        mask = self.mask
        if mask is None or tuple(mask.shape) != tuple(hidden.shape[:2]):
            mask = torch.ones(hidden.shape[:2], device=hidden.device)
        m = mask[..., None].to(hidden.dtype)
        return (hidden * m).sum(1) / m.sum(1).clamp_min(1.0)


def use_mean_pooling(model: torch.nn.Module) -> None:
    """Replace the pooler of `model`'s encoder (model.<base_model_prefix>.pooler) in place."""
    encoder = getattr(model, getattr(model, "base_model_prefix", ""), None)
    if encoder is None or not hasattr(encoder, "pooler"):
        raise ModelError(f"model.pooling = mean needs a BERT-style encoder with a pooler; "
                         f"{type(model).__name__} has none: use model.pooling = cls")
    pooler = MeanPooler()
    encoder.pooler = pooler

    def keep_mask(_module, args, kwargs):
        mask = kwargs.get("attention_mask", args[1] if len(args) > 1 else None)
        pooler.mask = mask

    encoder.register_forward_pre_hook(keep_mask, with_kwargs=True)
