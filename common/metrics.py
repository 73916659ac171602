"""Pure metric functions per task, and the example-weighted average across sites."""

from __future__ import annotations

import math
import re

import numpy as np


def softmax(logits: np.ndarray) -> np.ndarray:
    z = logits - logits.max(axis=1, keepdims=True)
    e = np.exp(z)
    return e / e.sum(axis=1, keepdims=True)


def classification_metrics(logits: np.ndarray, labels: np.ndarray, *, num_labels: int,
                           threshold: float | None = None) -> dict[str, float]:
    """accuracy, macro-F1 over the labels present at this site, loss; for binary tasks also
    AUC-ROC, PR-AUC (average precision) and the recall of each class. `threshold` (binary only)
    predicts class 1 when its probability reaches it, instead of the argmax."""
    from sklearn.metrics import average_precision_score, f1_score, roc_auc_score

    labels = np.asarray(labels)
    if len(labels) == 0:
        return {"accuracy": 0.0, "macro_f1": 0.0, "loss": 0.0}
    probs = softmax(np.asarray(logits, dtype=np.float64))
    pred = probs.argmax(axis=1)
    if num_labels == 2 and threshold is not None:
        pred = (probs[:, 1] >= threshold).astype(int)
    nll = -np.log(np.clip(probs[np.arange(len(labels)), labels], 1e-12, None)).mean()
    out = {
        "accuracy": float((pred == labels).mean()),
        "macro_f1": float(f1_score(labels, pred, average="macro", zero_division=0)),
        "loss": float(nll),
    }
    if num_labels == 2:
        for c in (0, 1):
            if (labels == c).any():
                out[f"recall_{c}"] = float((pred[labels == c] == c).mean())
        if len(np.unique(labels)) == 2:
            out["auc_roc"] = float(roc_auc_score(labels, probs[:, 1]))
            out["pr_auc"] = float(average_precision_score(labels, probs[:, 1]))
    return out


def tune_threshold(prob_pos: np.ndarray, labels: np.ndarray) -> float:
    """The probability threshold for class 1 that maximises its F1 on (validation) data; 0.5 when
    the data has no positives. Candidates are midpoints between sorted distinct probabilities."""
    prob_pos = np.asarray(prob_pos, dtype=np.float64)
    labels = np.asarray(labels)
    if len(labels) == 0 or not (labels == 1).any():
        return 0.5
    uniq = np.unique(prob_pos)
    cands = np.concatenate([[uniq[0]], (uniq[:-1] + uniq[1:]) / 2]) if len(uniq) > 1 else uniq
    pos = labels == 1
    best, best_f1 = 0.5, -1.0
    for t in cands:
        pred = prob_pos >= t
        tp = float((pred & pos).sum())
        f1 = 2 * tp / (pred.sum() + pos.sum())
        if f1 > best_f1 + 1e-12:
            best, best_f1 = float(t), f1
    return best


def balanced_class_weights(labels: np.ndarray, *, num_labels: int) -> np.ndarray:
    """n / (K * n_c) per class c from these labels (sklearn's "balanced"); classes absent here get
    1.0 (they never meet the loss at this site)."""
    counts = np.bincount(np.asarray(labels, dtype=np.int64), minlength=num_labels).astype(np.float64)
    present = counts > 0
    weights = np.ones(num_labels)
    weights[present] = counts.sum() / (present.sum() * counts[present])
    return weights


def rouge_l_f1(prediction: list[str], reference: list[str]) -> float:
    """ROUGE-L F1 of two token lists: longest common subsequence (dynamic programming)."""
    if not prediction or not reference:
        return 0.0
    prev = [0] * (len(reference) + 1)
    for p in prediction:
        cur = [0]
        for j, r in enumerate(reference):
            cur.append(prev[j] + 1 if p == r else max(prev[j + 1], cur[j]))
        prev = cur
    lcs = prev[-1]
    if lcs == 0:
        return 0.0
    precision, recall = lcs / len(prediction), lcs / len(reference)
    return 2 * precision * recall / (precision + recall)


def lm_tokens(text: str) -> list[str]:
    """Lower-cased word tokens for ROUGE-L (punctuation split off)."""
    return re.findall(r"\w+|[^\w\s]", text.lower())


def lm_metrics(*, nll_sum: float, tokens: int, rouge: list[float]) -> dict[str, float]:
    """Mean token loss and perplexity over response tokens; mean ROUGE-L F1 when generated."""
    loss = nll_sum / tokens if tokens else 0.0
    out = {"loss": float(loss), "perplexity": float(math.exp(min(loss, 50.0)))}
    if rouge:
        out["rouge_l"] = float(np.mean(rouge))
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
