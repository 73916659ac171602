"""`fedtune predict`: batch predictions for a CSV/JSONL file with an exported or a run's model.

The input goes through the site pipeline's own steps (common.data: load_table, validate_frame,
clean_text, scrub_frame) with the run's data settings, so the model sees text prepared exactly
as in training. Unlike training, no row is ever dropped: a row that would be (empty text, a label
outside the label space) is an error naming the file, row, column and fix. The label column is
optional; when present, accuracy is printed too. Output (by extension): CSV with columns row,
label[, true_label], prob_<label>... or JSONL objects {"row", "label", "probs"[, "true_label"]}.
"""

from __future__ import annotations

import dataclasses
import json
import time
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import pandas as pd
import torch
from tqdm.auto import tqdm

from client.trainer import batches, encode
from common.data import DataConfig, clean_text, load_table, scrub_frame, validate_frame
from common.atomic import atomic_write_bytes
from common.data.load import row_ref
from common.device import Accel, place, resolve_device
from common.errors import DataError, ModelError
from common.metrics import softmax
from common.model import load_tokenizer, quiet_transformers

OUTPUT_FORMATS = {".csv": "csv", ".jsonl": "jsonl", ".ndjson": "jsonl"}


@dataclass
class Predictor:
    """A loaded model with everything needed to prepare its input like its training data."""

    model: torch.nn.Module
    tokenizer: object
    labels: list[str]
    task: str
    max_length: int
    data: DataConfig
    seed: int = 0
    device: torch.device = torch.device("cpu")  # where the model runs (train.device)


def load_predictor(model_dir: str | Path, *, device: str | None = None) -> Predictor:
    """An export dir (merged model; or its int8/ folder) or a run dir (base model + adapter), on
    `device` (auto | cpu | cuda[:N]; None = a run dir's train.device, else auto). The int8 model
    is a CPU model (dynamic quantisation) and always runs on the CPU."""
    from transformers import AutoModelForSequenceClassification

    from fedtune.export import INT8_WEIGHTS, load_adapter_model, load_int8, load_run

    quiet_transformers()
    d = Path(model_dir)
    if (d / "config.toml").is_file() and (d / "adapter").is_dir():
        info = load_run(d)
        model, tok = load_adapter_model(info)
        dev = resolve_device(device or info.cfg.train.device)
        return Predictor(model=place(model, dev), tokenizer=tok, labels=info.labels, task=info.cfg.task.type,
                         max_length=info.cfg.model.max_length, data=info.cfg.data, seed=info.cfg.train.seed,
                         device=dev)
    if not (d / "config.json").is_file():
        raise ModelError(f"{d} is neither a `fedtune export` directory (config.json + model weights) nor a "
                         "run directory (config.toml + adapter/): pass one of those as MODEL_DIR")
    meta_path = d / "export.json" if (d / "export.json").is_file() else d.parent / "export.json"
    meta = json.loads(meta_path.read_text(encoding="utf-8")) if meta_path.is_file() else {}
    dev = resolve_device(device or "auto")
    if (d / INT8_WEIGHTS).is_file():
        model, dev = load_int8(d), torch.device("cpu")
    else:
        try:
            model = AutoModelForSequenceClassification.from_pretrained(str(d)).eval()
        except (OSError, ValueError) as err:
            raise ModelError(f"cannot load the model in {d}: {err}") from None
    id2label = getattr(model.config, "id2label", {}) or {}
    labels = meta.get("labels") or [str(id2label[i]) for i in sorted(id2label)]
    data = DataConfig(**meta["data"]) if meta.get("data") else DataConfig()
    return Predictor(model=place(model.eval(), dev), tokenizer=load_tokenizer(str(d)), labels=list(labels),
                     task=meta.get("task", "classification"), max_length=int(meta.get("max_length", 128)),
                     data=data, seed=int(meta.get("seed", 0)), device=dev)


def read_input(path: str | Path, *, pred: Predictor) -> tuple[pd.DataFrame, bool]:
    """Validated, cleaned, scrubbed (row, text, label) frame with one row per input row, and
    whether the file had labels."""
    raw = load_table(path)
    source = str(raw.path)
    # drop -> truncate: the tokenizer truncates anyway, and every row must get a prediction
    cfg = dataclasses.replace(pred.data, bad_label_policy="fail", long_row_policy=(
        "truncate" if pred.data.long_row_policy == "drop" else pred.data.long_row_policy))
    has_labels = cfg.label_column in raw.frame.columns
    table = raw.frame if has_labels else raw.frame.assign(**{cfg.label_column: "-"})
    frame, _ = validate_frame(table, cfg=cfg, source=source, fmt=raw.fmt,
                              label_names=pred.labels if has_labels and pred.task == "classification" else None,
                              task=pred.task if has_labels else "classification")
    texts = [clean_text(t) for t in frame["text"].tolist()]
    empty = [row for row, t in zip(frame["row"].tolist(), texts) if len(t) < max(1, cfg.min_chars)]
    if empty:
        column = cfg.template or cfg.text_column
        more = f" and {len(empty) - 5} more" if len(empty) > 5 else ""
        raise DataError(f"{source}: {row_ref(empty[0], raw.fmt)}, column {column!r}: text is empty after cleaning "
                        f"(rows {', '.join(map(str, empty[:5]))}{more}); fix: fill in the text or remove "
                        "those rows — every input row gets a prediction")
    frame = frame.assign(text=texts)
    if cfg.scrub_pii:
        frame, _ = scrub_frame(frame, date_policy=cfg.date_policy, seed=pred.seed)
    return frame, has_labels


@torch.inference_mode()
def predict_scores(pred: Predictor, texts: list[str], *, batch_size: int = 64,
                   progress: bool = True) -> np.ndarray:
    """Class probabilities (or regression values, shape (n, 1)) in input order."""
    data = encode(pred.tokenizer, texts, np.zeros(len(texts), dtype=np.int64), max_length=pred.max_length)
    out = np.zeros((len(texts), max(1, len(pred.labels)) if pred.task != "regression" else 1), np.float32)
    pad = int(getattr(pred.tokenizer, "pad_token_id", 0) or 0)
    bar = tqdm(total=len(texts), desc="predict", unit="row", disable=not progress)
    move = Accel(device=pred.device).move
    for ids, mask, _, idx in batches(data, batch_size=batch_size, shuffle=False, rng=None, pad_id=pad):
        ids, mask = move(ids, mask)
        logits = pred.model(input_ids=ids, attention_mask=mask).logits.float().cpu().numpy()
        out[idx] = logits if pred.task == "regression" else softmax(logits.astype(np.float64))
        bar.update(len(idx))
    bar.close()
    return out


def format_output(frame: pd.DataFrame, scores: np.ndarray, *, pred: Predictor, has_labels: bool,
                  fmt: str) -> bytes:
    """The predictions as CSV or JSONL bytes."""
    rows = frame["row"].tolist()
    if pred.task == "regression":
        table = pd.DataFrame({"row": rows, "value": scores[:, 0]})
        if has_labels:
            table["true_value"] = frame["label"].to_numpy()
    else:
        names = pred.labels
        table = pd.DataFrame({"row": rows, "label": [names[i] for i in scores.argmax(axis=1)]})
        if has_labels:
            table["true_label"] = [names[i] for i in frame["label"].tolist()]
        for j, name in enumerate(names):
            table[f"prob_{name}"] = np.round(scores[:, j].astype(np.float64), 6)
    if fmt == "csv":
        return table.to_csv(index=False).encode("utf-8")
    prob_cols = [c for c in table.columns if c.startswith("prob_")]
    lines = []
    for rec in table.to_dict(orient="records"):
        obj = {k: v for k, v in rec.items() if k not in prob_cols}
        if prob_cols:
            obj["probs"] = {c[5:]: rec[c] for c in prob_cols}
        lines.append(json.dumps(obj))
    return ("\n".join(lines) + "\n").encode("utf-8")


def predict_file(model_dir: str | Path, *, data: str | Path, out: str | Path, batch_size: int = 64,
                 text_column: str | None = None, progress: bool = True, device: str | None = None) -> dict:
    """Predict every row of `data` and write `out` atomically; returns counts and throughput.
    `device`: auto | cpu | cuda[:N] (None = the run's train.device, or auto)."""
    out = Path(out)
    fmt = OUTPUT_FORMATS.get(out.suffix.lower())
    if fmt is None:
        raise DataError(f"--out {out}: unsupported output type {out.suffix!r}; fix: end the name with "
                        f"{' or '.join(sorted(OUTPUT_FORMATS))}")
    pred = load_predictor(model_dir, device=device)
    if text_column:
        pred.data = dataclasses.replace(pred.data, text_column=text_column, template="")
    frame, has_labels = read_input(data, pred=pred)
    t0 = time.perf_counter()
    scores = predict_scores(pred, frame["text"].tolist(), batch_size=batch_size, progress=progress)
    seconds = time.perf_counter() - t0
    atomic_write_bytes(out, format_output(frame, scores, pred=pred, has_labels=has_labels, fmt=fmt))
    result = {"rows": len(frame), "seconds": round(seconds, 3), "device": str(pred.device),
              "rows_per_s": round(len(frame) / max(seconds, 1e-9), 1), "out": str(out)}
    if has_labels and pred.task != "regression":
        result["accuracy"] = float((scores.argmax(axis=1) == frame["label"].to_numpy()).mean())
    return result
