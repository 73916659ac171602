"""Membership-inference audit at a site: how well does a simple loss threshold tell the site's
training rows ("members") from its held-out test rows, using the global model?

Only the single AUC number leaves the site. 0.5 means the model's loss carries no membership
signal; values well above 0.5 mean the model memorised its training rows (consider DP-SGD, fewer
rounds or more data). No Flower imports: the lead wires this into the ClientApp as a message.
"""

from __future__ import annotations

import numpy as np
import torch

from client.trainer import Encoded, batches
from common.device import Accel, model_device
from common.errors import DataError


def _subsample(data: Encoded, *, max_examples: int, rng: np.random.Generator) -> Encoded:
    if len(data) <= max_examples:
        return data
    keep = np.sort(rng.choice(len(data), size=max_examples, replace=False))
    return Encoded(ids=[data.ids[i] for i in keep], labels=np.asarray(data.labels)[keep])


@torch.inference_mode()
def per_example_loss(model: torch.nn.Module, data: Encoded, *, num_labels: int,
                     pad_id: int = 0, batch_size: int = 128) -> np.ndarray:
    """Cross-entropy (classification) or squared error (num_labels == 1) of every row, in order."""
    model.eval()
    move = Accel(device=model_device(model)).move  # runs where the model is (train.device)
    out = np.zeros(len(data), dtype=np.float64)
    for ids, mask, y, idx in batches(data, batch_size=batch_size, shuffle=False, rng=None, pad_id=pad_id):
        ids, mask, y = move(ids, mask, y)
        logits = model(input_ids=ids, attention_mask=mask).logits.float()
        if num_labels == 1:
            loss = (logits.squeeze(-1) - y.float()) ** 2
        else:
            loss = torch.nn.functional.cross_entropy(logits, y.long(), reduction="none")
        out[idx] = loss.double().cpu().numpy()
    return out


def loss_threshold_auc(model: torch.nn.Module, train: Encoded, test: Encoded, *, num_labels: int,
                       max_examples: int = 2000, seed: int = 0, pad_id: int = 0) -> float:
    """AUC of predicting "member" (a train row) from a low loss, over at most `max_examples` rows
    of each split (sampled with `seed`). Returns a float in [0, 1]; raises DataError when a split
    is empty."""
    from sklearn.metrics import roc_auc_score

    if len(train) == 0 or len(test) == 0:
        raise DataError(f"membership audit needs rows in both splits (train {len(train)}, test "
                        f"{len(test)}): give the site a test split (data.split, e.g. 0.7,0.2,0.1)")
    if max_examples < 1:
        raise ValueError(f"max_examples={max_examples} must be >= 1")
    rng = np.random.default_rng(seed)
    members = _subsample(train, max_examples=max_examples, rng=rng)
    others = _subsample(test, max_examples=max_examples, rng=rng)
    losses = np.concatenate([per_example_loss(model, members, num_labels=num_labels, pad_id=pad_id),
                             per_example_loss(model, others, num_labels=num_labels, pad_id=pad_id)])
    is_member = np.concatenate([np.ones(len(members)), np.zeros(len(others))])
    return float(roc_auc_score(is_member, -losses))
