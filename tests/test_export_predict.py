"""`fedtune export` and `fedtune predict` on a real (tiny) simulated run.

Also home of the helpers the other post-training tests share: one simulated run per test
session (`shared_run`), copies of it, and a second tiny base model with different weights."""

from __future__ import annotations

import json
import os
import shutil
from pathlib import Path

import numpy as np
import pandas as pd
import pytest
import torch

from fedtune.cli import main
from tests.conftest import make_texts
from tests.simhelp import run_simulate

pytestmark = pytest.mark.slow  # real federations (deselect with -m "not slow")


def shared_run(tmp_path_factory, tiny_model_dir) -> Path:
    """One 2-site, 2-round simulation per test session (the same command as the e2e test); later
    callers find it in the session's base temp dir. Tests must not modify it: use copy_run."""
    home = tmp_path_factory.getbasetemp() / "shared-sim"
    out = home / "run"
    if (out / "summary.json").is_file():
        return out
    home.mkdir(exist_ok=True)
    texts, labels = make_texts(300, 4)
    texts[7] = texts[7] + " mail me at jane.doe@example.com"
    pd.DataFrame({"text": texts, "label": labels}).to_csv(home / "pooled.csv", index=False)
    sets = [f"model.base={tiny_model_dir}", f"simulation.data={home / 'pooled.csv'}", "simulation.sites=2",
            "simulation.partition=iid", "federation.rounds=2", "model.max-length=32",
            "train.learning-rate=0.003", "train.local-epochs=2"]
    run_simulate(out, sets, "--quiet")
    return out


def copy_run(run: Path, dest: Path) -> Path:
    """A private copy of a run directory (without Flower's state) that a test may change."""
    shutil.copytree(run, dest, ignore=shutil.ignore_patterns(".flwr", "*.log", "log.txt"))
    return dest


def other_base(tiny_model_dir: Path, dest: Path, seed: int = 1) -> Path:
    """Same architecture and tokenizer as the tiny model, different weights (another sha256)."""
    from transformers import BertConfig, BertModel

    if (dest / "config.json").is_file():
        return dest
    dest.mkdir(parents=True)
    for name in os.listdir(tiny_model_dir):
        if name.startswith("tokenizer") or name.endswith((".txt", "special_tokens_map.json")):
            shutil.copy(tiny_model_dir / name, dest / name)
    torch.manual_seed(seed)
    BertModel(BertConfig.from_pretrained(str(tiny_model_dir))).save_pretrained(dest)
    return dest


@pytest.fixture(scope="module")
def run_dir(tmp_path_factory, tiny_model_dir) -> Path:
    return shared_run(tmp_path_factory, tiny_model_dir)


@pytest.fixture(scope="module")
def exported(run_dir, tmp_path_factory) -> tuple[Path, int]:
    out = tmp_path_factory.mktemp("export") / "model"
    rc = main(["export", str(run_dir), "--out", str(out), "--int8"])
    return out, rc


@pytest.fixture
def data_file(tmp_path) -> Path:
    texts, labels = make_texts(40, 4, seed=3)
    texts[2] = "card blocked, call me on +44 20 7946 0958 please"
    path = tmp_path / "new.csv"
    pd.DataFrame({"text": texts, "label": labels}).to_csv(path, index=False)
    return path


def test_export_layout_and_labels(exported, run_dir):
    out, rc = exported
    assert rc == 0
    for name in ("config.json", "model.safetensors", "tokenizer.json", "export.json", "int8/model_int8.pt",
                 "int8/config.json"):
        assert (out / name).is_file(), name
    for f in (run_dir / "adapter").iterdir():  # the adapter is an exact copy
        assert (out / "adapter" / f.name).read_bytes() == f.read_bytes()
    meta = json.loads((out / "export.json").read_text())
    assert meta["max_abs_logit_diff"] < 1e-4 and meta["labels"] == [f"intent_{i}" for i in range(4)]
    cfg = json.loads((out / "config.json").read_text())
    assert cfg["id2label"] == {str(i): f"intent_{i}" for i in range(4)}
    assert cfg["label2id"] == {f"intent_{i}": i for i in range(4)}


def test_merged_equals_adapter_and_int8_predicts(exported, run_dir):
    """Stock transformers on the export == base + PEFT adapter, on real texts; int8 agrees."""
    from transformers import AutoModelForSequenceClassification, AutoTokenizer

    from fedtune.export import load_adapter_model, load_int8, load_run

    out, _ = exported
    texts, _ = make_texts(24, 4, seed=5)
    merged = AutoModelForSequenceClassification.from_pretrained(str(out)).eval()
    tok = AutoTokenizer.from_pretrained(str(out))
    adapter_model, _ = load_adapter_model(load_run(run_dir))
    int8 = load_int8(out / "int8")
    enc = tok(texts, padding=True, truncation=True, max_length=32, return_tensors="pt")
    with torch.no_grad():
        a, m, q = (model(**enc).logits for model in (adapter_model, merged, int8))
    assert (a - m).abs().max() < 1e-4
    assert torch.equal(a.argmax(-1), m.argmax(-1))
    assert q.shape == a.shape and torch.isfinite(q).all() and (q - a).abs().max() < 0.05


def test_export_refuses_overwrite_and_foreign_base(exported, run_dir, tiny_model_dir, tmp_path, capsys):
    out, _ = exported
    assert main(["export", str(run_dir), "--out", str(out)]) == 2
    assert "--force" in capsys.readouterr().err
    run = copy_run(run_dir, tmp_path / "run")
    other = other_base(tiny_model_dir, tmp_path / "other-base")
    toml = (run / "config.toml").read_text().replace(f'base = "{tiny_model_dir}"', f'base = "{other}"')
    (run / "config.toml").write_text(toml)
    assert main(["export", str(run), "--out", str(tmp_path / "x")]) == 2
    err = capsys.readouterr().err
    assert "sha256" in err and "fedtune.json" in err and not (tmp_path / "x").exists()


def test_export_aborts_when_merge_disagrees(run_dir, tmp_path):
    from common.errors import ModelError
    from fedtune.export import export_run

    with pytest.raises(ModelError, match="logits differ"):
        export_run(run_dir, out=tmp_path / "e", tolerance=0.0)
    assert not (tmp_path / "e").exists() and not list(tmp_path.glob(".e.*"))  # nothing half-written


def test_predict_export_run_and_int8_agree(exported, run_dir, data_file, tmp_path, capsys):
    out, _ = exported
    assert main(["predict", str(out), "--data", str(data_file), "--out", str(tmp_path / "p.csv")]) == 0
    printed = capsys.readouterr().out
    assert "rows/s" in printed and "accuracy" in printed
    merged = pd.read_csv(tmp_path / "p.csv")
    assert list(merged.columns) == ["row", "label", "true_label"] + [f"prob_intent_{i}" for i in range(4)]
    assert merged["row"].tolist() == list(range(1, 41))
    probs = merged[[f"prob_intent_{i}" for i in range(4)]].to_numpy()
    assert np.allclose(probs.sum(axis=1), 1.0, atol=1e-4)
    assert main(["predict", str(run_dir), "--data", str(data_file), "--out", str(tmp_path / "p.jsonl"),
                 "--quiet"]) == 0
    rows = [json.loads(line) for line in (tmp_path / "p.jsonl").read_text().splitlines()]
    assert [r["label"] for r in rows] == merged["label"].tolist()
    assert np.allclose([[r["probs"][f"intent_{i}"] for i in range(4)] for r in rows], probs, atol=1e-4)
    assert main(["predict", str(out / "int8"), "--data", str(data_file), "--out", str(tmp_path / "q.csv"),
                 "--quiet"]) == 0
    assert len(pd.read_csv(tmp_path / "q.csv")) == 40


def test_predict_without_labels_scrubs_pii(exported, data_file, tmp_path):
    from fedtune.predict import load_predictor, read_input

    frame = pd.read_csv(data_file)[["text"]]
    frame.to_json(tmp_path / "in.jsonl", orient="records", lines=True)
    assert main(["predict", str(exported[0]), "--data", str(tmp_path / "in.jsonl"),
                 "--out", str(tmp_path / "p.csv"), "--quiet"]) == 0
    assert "true_label" not in pd.read_csv(tmp_path / "p.csv").columns
    prepared, has_labels = read_input(tmp_path / "in.jsonl", pred=load_predictor(exported[0]))
    assert not has_labels and "[PHONE]" in prepared["text"][2] and "7946" not in prepared["text"][2]


@pytest.mark.parametrize("case", ["empty_text", "unknown_label", "no_text_column", "bad_out"])
def test_predict_bad_rows_fail_clearly(exported, data_file, tmp_path, capsys, case):
    frame = pd.read_csv(data_file)
    out = tmp_path / "p.csv"
    if case == "empty_text":
        frame.loc[4, "text"] = "   "
        frame.loc[9, "text"] = ""
        expect = ["data row 5", "column 'text'", "fix:", "rows 5, 10"]
    elif case == "unknown_label":
        frame.loc[6, "label"] = "intent_77"
        expect = ["data row 7", "column 'label'", "intent_77", "fix:"]
    elif case == "no_text_column":
        frame = frame.rename(columns={"text": "message"})
        expect = ["column 'text'", "'message'", "fix:"]
    else:
        out = tmp_path / "p.xlsx"
        expect = [".xlsx", "fix:"]
    bad = tmp_path / "bad.csv"
    frame.to_csv(bad, index=False)
    assert main(["predict", str(exported[0]), "--data", str(bad), "--out", str(out), "--quiet"]) == 2
    err = capsys.readouterr().err
    assert err.startswith("error: ")
    for text in expect:
        assert text in err, (text, err)
    if case != "bad_out":
        assert str(bad) in err
    assert not out.exists()


def test_predict_and_export_run_on_the_requested_device(exported, run_dir, data_file, tmp_path):
    import torch

    from common.errors import ConfigError
    from fedtune.export import export_run
    from fedtune.predict import predict_file

    out, _ = exported
    res = predict_file(out, data=data_file, out=tmp_path / "p.csv", progress=False, device="cpu")
    assert res["device"] == "cpu" and res["rows"] == 40
    # int8 is a CPU model whatever is asked for
    assert predict_file(out / "int8", data=data_file, out=tmp_path / "q.csv", progress=False)["device"] == "cpu"
    if not torch.cuda.is_available():
        with pytest.raises(ConfigError, match="train.device"):
            predict_file(run_dir, data=data_file, out=tmp_path / "r.csv", progress=False, device="cuda")
        with pytest.raises(ConfigError, match="train.device"):
            export_run(run_dir, out=tmp_path / "e", device="cuda:0")
