"""The outbound guard: a Flower mod that inspects every reply a site is about to send and blocks
anything but adapter arrays and whitelisted aggregate metrics. With FEDTUNE_AUDIT_DIR set, it
also appends a description of each outgoing message (names, shapes, dtypes — never values of
arrays) to `<dir>/outbound-<pid>.jsonl`, which the leak tests read."""

from __future__ import annotations

import json
import os
import time
from pathlib import Path

from flwr.app import ArrayRecord, ConfigRecord, Context, Error, Message, MetricRecord

from common.compress import INT_DTYPES

# Aggregate metrics a site may share; everything else is refused.
ALLOWED_METRICS = frozenset({
    "num-examples", "train_loss", "steps", "train_seconds", "epsilon", "delta", "epsilon_budget",
    "noise_multiplier", "accuracy", "macro_f1", "loss", "auc_roc", "mae", "rmse", "r2",
    "eval_seconds", "perplexity", "rouge_l", "mia_auc", "recall_0", "recall_1", "pr_auc", "threshold",
    "val_loss", "val_accuracy", "val_macro_f1", "val_rmse", "val_mae",
})
ALLOWED_CONFIG = {"site": frozenset({"name"})}
LEAK = 452  # Error code: the guard stopped a reply


def describe(msg: Message) -> dict:
    """What a reply carries, without array values."""
    out: dict = {"type": msg.metadata.message_type, "time": time.time(), "records": {}}
    if msg.has_error():
        out["error"] = msg.error.reason
        return out
    for name, rec in msg.content.items():
        if isinstance(rec, ArrayRecord):
            out["records"][name] = {"kind": "arrays", "arrays": {
                k: {"shape": list(a.shape), "dtype": a.dtype} for k, a in rec.items()}}
        elif isinstance(rec, MetricRecord):
            out["records"][name] = {"kind": "metrics", "values": dict(rec)}
        elif isinstance(rec, ConfigRecord):
            out["records"][name] = {"kind": "config", "values": dict(rec)}
        else:
            out["records"][name] = {"kind": type(rec).__name__}
    return out


def violations(msg: Message) -> list[str]:
    """Reasons this reply may not leave the site (empty = fine)."""
    if msg.has_error():
        return []
    bad = []
    for name, rec in msg.content.items():
        if isinstance(rec, ArrayRecord):
            for k, a in rec.items():
                # float tensors, or the integer parts of a compressed update (common/compress.py)
                ints = next((d for sfx, d in INT_DTYPES.items() if k.endswith(sfx)), ())
                if not (a.dtype.startswith("float") or a.dtype in ints):
                    bad.append(f"array {name}/{k} has dtype {a.dtype}, only float tensors (and "
                               "int8 .q8 / int .idx compression parts) may leave")
        elif isinstance(rec, MetricRecord):
            for k, v in rec.items():
                if k not in ALLOWED_METRICS:
                    bad.append(f"metric {k!r} is not on the site's whitelist")
                elif isinstance(v, list):
                    bad.append(f"metric {k!r} is a list (per-example values may not leave)")
        elif isinstance(rec, ConfigRecord):
            allowed = ALLOWED_CONFIG.get(name, frozenset())
            bad += [f"config {name}/{k} may not leave" for k in rec if k not in allowed]
        else:
            bad.append(f"record {name} of type {type(rec).__name__} may not leave")
    return bad


def outbound_guard_mod(msg: Message, ctx: Context, call_next) -> Message:
    reply = call_next(msg, ctx)
    problems = violations(reply)
    audit_dir = os.environ.get("FEDTUNE_AUDIT_DIR")
    if audit_dir:
        entry = describe(reply)
        entry["violations"] = problems
        path = Path(audit_dir) / f"outbound-{os.getpid()}.jsonl"
        path.parent.mkdir(parents=True, exist_ok=True)
        with open(path, "a", encoding="utf-8") as fh:
            fh.write(json.dumps(entry) + "\n")
    if problems:
        return Message(Error(code=LEAK, reason="outbound guard blocked the reply: " + "; ".join(problems)),
                       reply_to=msg)
    return reply
