"""End to end: a real Flower simulation (SuperLink + Ray) of 2 sites on a tiny model."""

from __future__ import annotations

import json

import pytest
import torch

from common.config import resolve
from common.model import build_model
from tests.conftest import make_texts
from tests.simhelp import flower_processes, run_simulate, sim_args, start

pytestmark = pytest.mark.slow  # real federations (deselect with -m "not slow")


@pytest.fixture(scope="module")
def sim_run(tmp_path_factory, tiny_model_dir):
    tmp = tmp_path_factory.mktemp("sim")
    texts, labels = make_texts(300, 4)
    import pandas as pd

    pd.DataFrame({"text": texts, "label": labels}).to_csv(tmp / "pooled.csv", index=False)
    out = tmp / "run"
    sets = [f"model.base={tiny_model_dir}", f"simulation.data={tmp / 'pooled.csv'}", "simulation.sites=2",
            "simulation.partition=iid", "federation.rounds=2", "model.max-length=32",
            "train.learning-rate=0.003", "train.local-epochs=2"]
    proc = run_simulate(out, sets)
    return out, proc, resolve(None, sets)


def test_run_directory_contract(sim_run):
    out, proc, _ = sim_run
    for name in ("config.toml", "metrics.jsonl", "metrics.csv", "summary.json", "adapter/labels.json",
                 "adapter/adapter_config.json", "adapter/adapter_model.safetensors"):
        assert (out / name).is_file(), name
    summary = json.loads((out / "summary.json").read_text())
    assert summary["rounds"] == 2 and summary["sites"] == ["site-0", "site-1"]
    assert 0.0 <= summary["accuracy"] <= 1.0 and "macro_f1" in summary
    rows = [json.loads(line) for line in (out / "metrics.jsonl").read_text().splitlines()]
    assert [r["round"] for r in rows] == [1, 2]
    for row in rows:  # every site trained and reported test metrics every round
        assert set(row["per_site"]) == {"site-0", "site-1"}
        for site in row["per_site"].values():
            assert site["train"]["num-examples"] > 0 and "accuracy" in site["evaluate"]
    assert json.loads((out / "adapter/labels.json").read_text()) == [f"intent_{i}" for i in range(4)]
    assert "round   2/2" in proc.stdout


def test_global_adapter_changed(sim_run, tiny_model_dir):
    out, _, cfg = sim_run
    initial = build_model(cfg.model, num_labels=4, seed=cfg.train.seed).model
    from peft.utils import get_peft_model_state_dict
    from safetensors.torch import load_file

    saved = load_file(str(out / "adapter/adapter_model.safetensors"))
    start = get_peft_model_state_dict(initial)
    assert set(saved) == set(start)
    changed = [k for k in saved if not torch.equal(saved[k], start[k])]
    assert any("lora_B" in k for k in changed) and any("classifier" in k for k in changed)


def test_stock_peft_reproduces_site_metrics(sim_run, tiny_model_dir):
    """Stock PeftModel.from_pretrained on the base model gives the predictions fedtune evaluated."""
    from peft import PeftModel
    from transformers import AutoModelForSequenceClassification, AutoTokenizer

    from client.trainer import encode, evaluate
    from common.data import prepare_site

    out, _, cfg = sim_run
    labels = json.loads((out / "adapter/labels.json").read_text())
    base = AutoModelForSequenceClassification.from_pretrained(str(tiny_model_dir), num_labels=len(labels))
    model = PeftModel.from_pretrained(base, str(out / "adapter")).eval()
    tok = AutoTokenizer.from_pretrained(str(tiny_model_dir))
    summary = json.loads((out / "summary.json").read_text())
    for site in ("site-0", "site-1"):
        site_dir = out / "sites" / site
        prepared = prepare_site(site_dir / "data.csv", cfg=cfg.data, seed=cfg.train.seed,
                                label_names=labels, site_dir=site_dir)
        test = prepared.test
        with torch.no_grad():
            enc = tok(test["text"].tolist(), truncation=True, max_length=cfg.model.max_length,
                      padding=True, return_tensors="pt")
            pred = model(**enc).logits.argmax(-1).numpy()
        stock_acc = float((pred == test["label"].to_numpy()).mean())
        assert stock_acc == pytest.approx(summary["per_site"][site]["accuracy"], abs=1e-9)
        ours = evaluate(model, encode(tok, test["text"].tolist(), test["label"].to_numpy(),
                                      max_length=cfg.model.max_length), num_labels=len(labels))
        assert ours["accuracy"] == pytest.approx(stock_acc, abs=1e-9)


def test_no_process_left_behind(sim_run):
    out, _, _ = sim_run
    assert flower_processes(str(out / ".flwr")) == []


def test_sigterm_stops_flower_processes(tmp_path, tiny_model_dir):
    """`kill PID` of a running `fedtune simulate` must not leave its SuperLink or nodes behind."""
    import signal
    import time

    texts, labels = make_texts(200, 4)
    import pandas as pd

    pd.DataFrame({"text": texts, "label": labels}).to_csv(tmp_path / "pooled.csv", index=False)
    out = tmp_path / "run"
    proc = start(*sim_args(out, [f"model.base={tiny_model_dir}", f"simulation.data={tmp_path / 'pooled.csv'}",
                                 "simulation.sites=2", "federation.rounds=50", "model.max-length=32"]))
    marker = str(out / ".flwr")
    try:
        deadline = time.time() + 300
        while time.time() < deadline and not (out / "metrics.jsonl").is_file():
            time.sleep(1)  # the federation is running (a round has finished)
        assert flower_processes(marker), "no Flower process was started"
        proc.send_signal(signal.SIGTERM)
        assert proc.wait(timeout=120) != 0
        time.sleep(2)
        assert flower_processes(marker) == []
    finally:
        if proc.poll() is None:
            proc.kill()
