"""The one-site FineTuner: the docs/training.md example runs as written, params are checked, labels
may be strings or ints, and the saved directory is stock PEFT."""

from __future__ import annotations

import json
import re
from pathlib import Path

import numpy as np
import pytest

from common.errors import ConfigError
from fedtune import FineTuner
from tests.conftest import make_texts

ROOT = Path(__file__).resolve().parents[1]


def _doc_example() -> str:
    text = (ROOT / "docs/training.md").read_text(encoding="utf-8")
    blocks = re.findall(r"```python\n(.*?)```", text, flags=re.DOTALL)
    return next(b for b in blocks if "FineTuner(" in b)


def test_docs_example_runs_as_written(tmp_path, tiny_model_dir, monkeypatch, capsys):
    (tmp_path / "data").symlink_to(ROOT / "data")
    monkeypatch.chdir(tmp_path)
    monkeypatch.setenv("FEDTUNE_BASE_MODEL", str(tiny_model_dir))
    scope: dict = {"__name__": "__docs__"}
    exec(compile(_doc_example(), "docs/training.md", "exec"), scope)  # noqa: S102 - the doc example, as written
    out = capsys.readouterr().out
    assert "accuracy" in out and "epoch 1:" in out
    saved = tmp_path / "runs/finetuner-demo"
    for name in ("adapter_model.safetensors", "adapter_config.json", "labels.json", "fedtune.json"):
        assert (saved / name).is_file(), name
    assert len(json.loads((saved / "labels.json").read_text())) == 5
    assert scope["tuner"].predict(["card"])[0] in json.loads((saved / "labels.json").read_text())


def test_unknown_param_names_the_valid_ones():
    with pytest.raises(ConfigError, match="learnig_rate.*learning_rate"):
        FineTuner(task_type="classification", num_classes=2).set_params(learnig_rate=0.1)
    with pytest.raises(ConfigError, match="train.optimizer"):
        FineTuner().set_params(optimizer="lion")
    with pytest.raises(ConfigError, match="task_type"):
        FineTuner(task_type="summarization")


def test_int_labels_save_and_stock_peft_reload(tmp_path, tiny_model_dir):
    import torch
    from peft import PeftModel
    from transformers import AutoModelForSequenceClassification, AutoTokenizer

    texts, names = make_texts(160, 3)
    labels = [int(s.split("_")[1]) for s in names]
    tuner = FineTuner(base_model=tiny_model_dir, num_classes=3)
    tuner.set_params(epochs=6, patience=6, batch_size=16, learning_rate=1e-2, max_length=24, verbose=False)
    tuner.fit(texts[:120], labels[:120], texts[120:], labels[120:])
    preds = tuner.predict(texts[120:])
    assert all(isinstance(p, int) for p in preds)
    metrics = tuner.evaluate(texts[120:], labels[120:])
    assert metrics["accuracy"] > 0.5 and len(tuner.history) >= 1
    assert np.allclose(tuner.predict_proba(texts[:4]).sum(axis=1), 1.0, atol=1e-5)
    out = tuner.save(tmp_path / "adapter")
    base = AutoModelForSequenceClassification.from_pretrained(str(tiny_model_dir), num_labels=3)
    model = PeftModel.from_pretrained(base, str(out)).eval()
    tok = AutoTokenizer.from_pretrained(str(tiny_model_dir))
    with torch.no_grad():
        enc = tok(texts[120:], truncation=True, max_length=24, padding=True, return_tensors="pt")
        stock = model(**enc).logits.argmax(-1).tolist()
    assert stock == preds
    assert json.loads((out / "labels.json").read_text()) == ["0", "1", "2"]


def test_regression_and_binary_threshold(tiny_model_dir):
    texts, names = make_texts(120, 2)
    y = [float(s.split("_")[1]) for s in names]
    reg = FineTuner(base_model=str(tiny_model_dir), task_type="regression")
    reg.set_params(epochs=2, verbose=False, max_length=24)
    reg.fit(texts[:90], y[:90], texts[90:], y[90:])
    assert set(reg.evaluate(texts[90:], y[90:])) == {"mae", "rmse", "r2"}
    assert all(isinstance(v, float) for v in reg.predict(texts[:3]))
    clf = FineTuner(base_model=str(tiny_model_dir), labels=["intent_0", "intent_1"])
    clf.set_params(epochs=2, verbose=False, tune_threshold=True, class_weights="balanced", max_length=24)
    clf.fit(texts[:90], names[:90], texts[90:], names[90:])
    assert clf.threshold is not None and {"recall_1", "pr_auc", "threshold"} <= set(clf.evaluate(texts[90:], names[90:]))
    assert set(clf.predict(texts[:5])) <= {"intent_0", "intent_1"}


def test_device_batch_auto_and_grad_accum(tiny_model_dir, capsys):
    import torch

    texts, names = make_texts(64, 2)
    tuner = FineTuner(base_model=str(tiny_model_dir), labels=["intent_0", "intent_1"])
    tuner.set_params(epochs=1, max_length=24, batch_size="auto", grad_accum=2, device="auto")
    tuner.fit(texts, names)
    if not torch.cuda.is_available():
        assert "device cpu (CPU), fp32, batch size 32 (auto on CPU), grad-accum 2" in capsys.readouterr().out
        assert tuner.history[0]["steps"] == 1  # 64 rows / (32 x 2)
        with pytest.raises(ConfigError, match="train.device"):
            FineTuner(base_model=str(tiny_model_dir)).set_params(device="cuda", verbose=False).fit(texts, names)
    assert len(tuner.predict(texts[:3])) == 3
    with pytest.raises(ConfigError, match="train.device"):
        tuner.set_params(device="gpu")
