"""Pure metric functions per task, and the example-weighted average across sites."""

from __future__ import annotations

import numpy as np


def softmax(logits: np.ndarray) -> np.ndarray:
    z = logits - logits.max(axis=1, keepdims=True)
    e = np.exp(z)
    return e / e.sum(axis=1, keepdims=True)


def classification_metrics(logits: np.ndarray, labels: np.ndarray, *,
                           num_labels: int) -> dict[str, float]:
    """accuracy, macro-F1 over the labels present at this site, loss; AUC-ROC when binary."""
    from sklearn.metrics import f1_score, roc_auc_score

    labels = np.asarray(labels)
    if len(labels) == 0:
        return {"accuracy": 0.0, "macro_f1": 0.0, "loss": 0.0}
    probs = softmax(np.asarray(logits, dtype=np.float64))
    pred = probs.argmax(axis=1)
    nll = -np.log(np.clip(probs[np.arange(len(labels)), labels], 1e-12, None)).mean()
    out = {
        "accuracy": float((pred == labels).mean()),
        "macro_f1": float(f1_score(labels, pred, average="macro", zero_division=0)),
        "loss": float(nll),
    }
    if num_labels == 2 and len(np.unique(labels)) == 2:
        out["auc_roc"] = float(roc_auc_score(labels, probs[:, 1]))
    return out


def regression_metrics(preds: np.ndarray, targets: np.ndarray) -> dict[str, float]:
    preds = np.asarray(preds, dtype=np.float64).reshape(-1)
    targets = np.asarray(targets, dtype=np.float64).reshape(-1)
    if len(targets) == 0:
        return {"mae": 0.0, "rmse": 0.0, "r2": 0.0}
    err = preds - targets
    var = ((targets - targets.mean()) ** 2).sum()
    return {"mae": float(np.abs(err).mean()), "rmse": float(np.sqrt((err ** 2).mean())),
            "r2": float(1 - (err ** 2).sum() / var) if var > 0 else 0.0}


def weighted_mean(rows: list[dict[str, float]], weights: list[float]) -> dict[str, float]:
    """Average every metric present in all rows, weighted by example counts."""
    if not rows:
        return {}
    total = float(sum(weights)) or 1.0
    keys = set(rows[0]).intersection(*rows[1:])
    return {k: float(sum(r[k] * w for r, w in zip(rows, weights)) / total) for k in sorted(keys)}
