"""`fedtune prepare` CLI: outputs, config/--set/--labels parsing, exit code 2 with a clear message."""

import hashlib
import json

import pandas as pd

from fedtune.cli import main
from tests.simhelp import ROOT, run



def make_csv(tmp_path):
    path = tmp_path / "in.csv"
    rows = [f"question {i} about {('card', 'loan')[i % 2]} on 2019-03-0{1 + i % 9},{('card', 'loan')[i % 2]}"
            for i in range(40)]
    path.write_text("text,label\n" + "\n".join(rows) + "\n", encoding="utf-8")
    return path


def test_prepare_writes_splits_report_and_keeps_input(tmp_path, capsys):
    data, out = make_csv(tmp_path), tmp_path / "out"
    before = hashlib.sha256(data.read_bytes()).hexdigest()
    labels = tmp_path / "labels.txt"
    labels.write_text("card\nloan\n")
    code = main(["prepare", "--data", str(data), "--out", str(out), "--labels", str(labels),
                              "--seed", "3", "--set", "data.date_policy=shift"])
    assert code == 0
    assert hashlib.sha256(data.read_bytes()).hexdigest() == before
    frames = {n: pd.read_csv(out / f"{n}.csv") for n in ("train", "val", "test")}
    assert sum(len(f) for f in frames.values()) == 40 and set(frames["train"]["label"]) == {0, 1}
    report = json.loads((out / "report.json").read_text())
    assert report["seed"] == 3 and report["pii"]["DATE"] == 40
    assert (out / "split_manifest.json").exists()
    shared = json.loads((out / "report_shareable.json").read_text())
    assert shared["pii"]["EMAIL"] == "<5" and "seed" not in shared
    printed = capsys.readouterr().out
    assert "clean" in printed and "PII hits" in printed and "question" not in printed


def test_toml_config_and_comma_labels(tmp_path):
    data, out = make_csv(tmp_path), tmp_path / "out"
    cfg = tmp_path / "run.toml"
    cfg.write_text('[data]\nsplit = "0.5,0.5,0"\nscrub_pii = false\n[train]\nlr = 0.1\n')
    assert main(["prepare", "--data", str(data), "--out", str(out), "--config", str(cfg),
                              "--labels", "card,loan"]) == 0
    assert len(pd.read_csv(out / "test.csv")) == 0
    assert "2019-03-01" in " ".join(pd.read_csv(out / "train.csv")["text"].tolist()
                                    + pd.read_csv(out / "val.csv")["text"].tolist())


def test_config_errors_exit_2(tmp_path, capsys):
    data, out = make_csv(tmp_path), tmp_path / "out"
    cfg = tmp_path / "bad.toml"
    cfg.write_text('[data]\ntext_col = "text"\n')
    assert main(["prepare", "--data", str(data), "--out", str(out), "--config", str(cfg)]) == 2
    err = capsys.readouterr().err
    assert err.startswith("error: ") and "data.text_col" in err and "text-column" in err and "label-column" in err
    assert main(["prepare", "--data", str(data), "--out", str(out), "--set", "min_chars=3"]) == 2
    assert "data.KEY=VALUE" in capsys.readouterr().err
    assert main(["prepare", "--data", str(data), "--out", str(out), "--labels", "card"]) == 2
    assert "'loan' is not in the federation's label space" in capsys.readouterr().err
    assert not (out / "train.csv").exists()


def test_module_entry_point_exits_nonzero_on_bad_file(tmp_path):
    bad = tmp_path / "bad.csv"
    bad.write_bytes("text,label\ncaf\xe9,a\n".encode("latin-1"))
    before = hashlib.sha256(bad.read_bytes()).hexdigest()
    env = {"PYTHONPATH": str(ROOT)}
    proc = run("prepare", "--data", str(bad), "--out", str(tmp_path / "o"), extra_env=env, timeout=60)
    assert proc.returncode == 2
    assert proc.stderr.startswith("error: ") and "not valid UTF-8" in proc.stderr and "re-save" in proc.stderr
    assert hashlib.sha256(bad.read_bytes()).hexdigest() == before
    missing = run("prepare", "--data", str(tmp_path / "none.csv"), "--out", str(tmp_path / "o"),
                  extra_env=env, timeout=60)
    assert missing.returncode == 2 and "does not exist" in missing.stderr
