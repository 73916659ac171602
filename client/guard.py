"""The outbound guard: a Flower mod that inspects every reply a site is about to send and blocks
anything but adapter arrays and whitelisted aggregate metrics. With FEDTUNE_AUDIT_DIR set, it
also appends a description of each outgoing message (names, shapes, dtypes — never values of
arrays) to `<dir>/outbound-<pid>.jsonl`, which the leak tests read."""

from __future__ import annotations

import json
import logging
import os
import time
from pathlib import Path

from flwr.app import ArrayRecord, ConfigRecord, Context, Error, Message, MetricRecord

from common.compress import INT_DTYPES
from common.errors import CODES, LEAK, is_public_reason, reason

log = logging.getLogger("fedtune.site")

# The one whitelist: aggregate metrics a site may share (client/app.py picks from these per
# message type); everything else is refused.
# privacy_unit_person: 1 when the epsilon is per person (data.group-column), 0 per record
TRAIN_METRICS = ("train_loss", "steps", "train_seconds", "epsilon", "delta", "epsilon_budget",
                 "noise_multiplier", "privacy_unit_person")
EVAL_METRICS = ("mia_auc", "accuracy", "macro_f1", "loss", "auc_roc", "mae", "rmse", "r2",
                "eval_seconds", "perplexity", "rouge_l", "recall_0", "recall_1", "pr_auc",
                "threshold")
VAL_METRICS = ("loss", "accuracy", "macro_f1", "rmse", "mae")
# What joining bought the site (client/baseline.py): its local-only model's and its personalized
# adapter's test metrics, as local_<m> / personal_<m> — aggregates of its own test split.
COMPARED = ("accuracy", "macro_f1", "loss", "mae", "rmse", "perplexity", "rouge_l")
JOIN_METRICS = tuple(f"{p}_{k}" for p in ("local", "personal") for k in COMPARED)
ALLOWED_METRICS = frozenset({"num-examples", *TRAIN_METRICS, *EVAL_METRICS,
                             *(f"val_{k}" for k in VAL_METRICS), *JOIN_METRICS})
EVAL_METRICS += tuple(f"val_{k}" for k in VAL_METRICS) + JOIN_METRICS
ALLOWED_CONFIG = {"site": frozenset({"name"})}
BLOCKED = reason("the site's outbound guard blocked a reply that carried more than adapter arrays "
                 "and whitelisted aggregate metrics; the site's log names what")


# ---- SecAgg+ (privacy.secure-aggregation; client/secagg.py) ----------------------------------
# Each SecAgg+ stage's reply as Flower's secaggplus_mod writes it (flwr 1.42): key -> value kind.
SECAGG_RECORD = "secaggplus_configs"
SECAGG_STAGES = {
    "setup": {"pk1": "bytes", "pk2": "bytes"},  # the site's two public keys
    "share_keys": {"dsts": "ints", "ctxts": "bytes_list"},  # encrypted key shares per neighbour
    "collect_masked_vectors": {"masked_params": "bytes_list"},  # masked, quantized update
    "unmask": {"nids": "ints", "shares": "bytes_list"},  # key shares that remove the masks
}
# The legacy frames around them (flwr.compat recorddict_compat), arrays cleared by the mod.
LEGACY_FIT = frozenset({"fitres.parameters", "fitres.num_examples", "fitres.metrics",
                        "fitres.status"})
LEGACY_EVAL = frozenset({"evaluateres.loss", "evaluateres.num_examples", "evaluateres.metrics",
                         "evaluateres.status"})
QUANTIZATION_RANGE = 2**22  # entries of an UNmasked quantized vector all lie below this


def is_legacy_reply(msg: Message) -> bool:
    return any(n == SECAGG_RECORD or n.startswith(("fitres.", "evaluateres.")) for n in msg.content)


def _kind_ok(value, kind: str) -> bool:
    if kind == "bytes":
        return isinstance(value, bytes)
    inner = int if kind == "ints" else bytes
    return isinstance(value, list) and all(type(v) is inner for v in value)


def _masked(blobs: list[bytes]) -> list:
    import numpy as np
    from flwr.common import bytes_to_ndarray

    return [np.asarray(bytes_to_ndarray(b)) for b in blobs]


def describe_secagg(rec: ConfigRecord) -> dict:
    """A SecAgg+ record without its secrets: stage, sizes, and for masked vectors the share of
    entries at or above the quantization range (0 for an unmasked vector, ~1 for a masked one)."""
    stage = next((s for s, shape in SECAGG_STAGES.items() if set(rec) == set(shape)), "unknown")
    out: dict = {"kind": "secagg", "stage": stage, "values": {
        k: ({"bytes": len(v)} if isinstance(v, bytes) else {"items": len(v)}
            if isinstance(v, list) else repr(type(v))) for k, v in rec.items()}}
    if stage == "collect_masked_vectors":
        vecs = _masked(rec["masked_params"])
        n = sum(v.size for v in vecs)
        high = sum(int((v >= QUANTIZATION_RANGE).sum()) for v in vecs)
        out["masked"] = {"dtypes": sorted({str(v.dtype) for v in vecs}), "entries": n,
                         "share_at_or_above_quantization_range": high / max(1, n)}
    return out


def _frame_violations(content, prefix: str) -> list[str]:
    """The legacy FitRes/EvaluateRes frame: status, example count, whitelisted metrics, site."""
    bad = []
    status, count = content[f"{prefix}.status"], content[f"{prefix}.num_examples"]
    if set(status) != {"code", "message"} or len(str(status.get("message", ""))) > 100:
        bad.append(f"{prefix}.status must hold only a code and a short message")
    if set(count) != {"num_examples"} or type(count["num_examples"]) is not int:
        bad.append(f"{prefix}.num_examples must hold only the integer num_examples")
    if prefix == "evaluateres" and set(content["evaluateres.loss"]) != {"loss"}:
        bad.append("evaluateres.loss must hold only loss")
    for k, v in content[f"{prefix}.metrics"].items():
        if k == "site" and isinstance(v, str) and len(v) <= 100:
            continue
        if k not in ALLOWED_METRICS:
            bad.append(f"metric {k!r} is not on the site's whitelist")
        elif type(v) not in (int, float):
            bad.append(f"metric {k!r} must be a number, not {type(v).__name__}")
    return bad


def secagg_violations(msg: Message) -> list[str]:
    """Legacy replies may leave only as SecAgg+ protocol records in their documented shape or as
    a legacy EvaluateRes (metrics only); plaintext parameters never (the mod clears them)."""
    content, names = msg.content, set(msg.content)
    bad = [f"array record {n} carries {len(r)} arrays: under SecAgg+ no plaintext array may leave"
           for n, r in content.array_records.items() if len(r)]
    if SECAGG_RECORD in names:
        rec = content[SECAGG_RECORD]
        stage = next((s for s, shape in SECAGG_STAGES.items() if set(rec) == set(shape)), None)
        if stage is None or not isinstance(rec, ConfigRecord):
            return bad + [f"{SECAGG_RECORD} with keys {sorted(rec)} is no SecAgg+ stage reply"]
        bad += [f"{SECAGG_RECORD}/{k} is not {kind}" for k, kind in SECAGG_STAGES[stage].items()
                if not _kind_ok(rec[k], kind)]
        collect = stage == "collect_masked_vectors"
        expected = LEGACY_FIT | {SECAGG_RECORD} if collect else {SECAGG_RECORD}
        if names != expected:
            return bad + [(f"the SecAgg+ {stage} reply may carry only {sorted(expected)}, not "
                           f"{sorted(names ^ expected)}")]
        if collect:
            try:
                kinds = {v.dtype.kind for v in _masked(rec["masked_params"])} if not bad else set()
            except ValueError:
                kinds = {"undecodable"}
            if kinds - set("iu"):
                bad.append("masked_params must be integer (masked, quantized) vectors")
            bad += _frame_violations(content, "fitres")
        return bad
    if names == LEGACY_EVAL:
        return bad + _frame_violations(content, "evaluateres")
    return bad + [f"legacy records {sorted(names)} may not leave without SecAgg+ masking"]


def describe(msg: Message) -> dict:
    """What a reply carries, without array values."""
    out: dict = {"type": msg.metadata.message_type, "time": time.time(), "records": {}}
    if msg.has_error():
        out["error"] = msg.error.reason
        out["code"] = msg.error.code
        return out
    for name, rec in msg.content.items():
        if isinstance(rec, ArrayRecord):
            out["records"][name] = {"kind": "arrays", "arrays": {
                k: {"shape": list(a.shape), "dtype": a.dtype} for k, a in rec.items()}}
        elif isinstance(rec, MetricRecord):
            out["records"][name] = {"kind": "metrics", "values": dict(rec)}
        elif isinstance(rec, ConfigRecord) and name == SECAGG_RECORD:
            out["records"][name] = describe_secagg(rec)
        elif isinstance(rec, ConfigRecord):
            out["records"][name] = {"kind": "config", "values": dict(rec)}
        else:
            out["records"][name] = {"kind": type(rec).__name__}
    return out


def violations(msg: Message) -> list[str]:
    """Reasons this reply may not leave the site (empty = fine)."""
    if msg.has_error():  # only a known code with a registered, value-free reason (common/errors.py)
        err = msg.error
        if err.code not in CODES or not is_public_reason(err.reason):
            return [f"error reply with code {err.code} and an unregistered reason"]
        return []
    if is_legacy_reply(msg):
        return secagg_violations(msg)
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
    if ctx.run_config.get("privacy.secure-aggregation") is True and reply.has_content():
        problems += [f"array record {n} would leave in plaintext, but privacy.secure-aggregation"
                     " is on: only SecAgg+-masked updates may leave" for n, r in
                     reply.content.array_records.items() if len(r)]
    audit_dir = os.environ.get("FEDTUNE_AUDIT_DIR")
    if audit_dir:
        entry = describe(reply)
        entry["violations"] = problems
        path = Path(audit_dir) / f"outbound-{os.getpid()}.jsonl"
        path.parent.mkdir(parents=True, exist_ok=True)
        with open(path, "a", encoding="utf-8") as fh:
            fh.write(json.dumps(entry) + "\n")
    if problems:
        log.error("outbound guard blocked a %s reply: %s", msg.metadata.message_type,
                  "; ".join(problems))
        return Message(Error(code=LEAK, reason=BLOCKED), reply_to=msg)
    return reply
