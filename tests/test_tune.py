"""`fedtune tune`: a 3-trial search on a tiny model beats a deliberately bad learning rate on the
validation metric; best.toml is a config `fedtune simulate` takes; DP spend is shown and refused."""

import json

import pandas as pd
import pytest

from tests.conftest import make_texts

pytest.importorskip("optuna")

SPACE = """
[tune]
trials = 3
metric = "accuracy"
seed = 0
[tune.space."train.learning-rate"]
low = 3e-3
high = 3e-2
log = true
"""


def _sets(tiny_model_dir, data):
    return [f"model.base={tiny_model_dir}", f"simulation.data={data}", "simulation.sites=2",
            "simulation.partition=iid", "federation.rounds=2", "model.max-length=24", "train.batch-size=16",
            "train.learning-rate=1e-7", "train.head-learning-rate=0", "train.local-epochs=2"]  # bad lr


@pytest.mark.slow
def test_three_trials_beat_a_bad_default_learning_rate(tiny_model_dir, tmp_path):
    from common.config import resolve
    from fedtune.cli import main

    texts, labels = make_texts(240, 3)
    data = tmp_path / "pooled.csv"
    pd.DataFrame({"text": texts, "label": labels}).to_csv(data, index=False)
    (tmp_path / "space.toml").write_text(SPACE)
    sets = _sets(tiny_model_dir, data)
    argv = ["tune", "--space", str(tmp_path / "space.toml"), "--out", str(tmp_path / "tune")]
    for s in sets:
        argv += ["--set", s]
    assert main(argv) == 0
    result = json.loads((tmp_path / "tune" / "tune.json").read_text())
    assert result["metric"] == "val_accuracy" and len(result["trials"]) == 3
    assert result["trials"][0]["train.learning-rate"] == pytest.approx(1e-7)  # trial 0 = the defaults
    assert result["best"]["train.learning-rate"] >= 3e-3
    assert result["best_score"] > result["defaults_score"]
    assert all(len(t["per_round"]) == 2 for t in result["trials"])
    best = resolve(tmp_path / "tune" / "best.toml")
    assert best.train.learning_rate == pytest.approx(result["best"]["train.learning-rate"])
    table = (tmp_path / "tune" / "trials.csv").read_text().splitlines()
    assert table[0].startswith("trial,train.learning-rate,val_accuracy,state") and len(table) == 4


def test_dp_search_shows_the_total_and_refuses(tiny_model_dir, tmp_path, capsys):
    from fedtune.cli import main

    (tmp_path / "space.toml").write_text(SPACE)
    argv = ["tune", "--space", str(tmp_path / "space.toml"), "--out", str(tmp_path / "t"),
            "--set", f"model.base={tiny_model_dir}", "--set", "privacy.dp=true", "--set", "privacy.epsilon=4"]
    assert main(argv) == 2
    out = capsys.readouterr()
    assert "3 trials x epsilon 4 = up to 12 epsilon" in out.out
    assert "--accept-dp-spend" in out.err and not (tmp_path / "t" / "trials").exists()


@pytest.mark.parametrize("body,needle", [
    ("[tune]\ntrials = 2\n", "no [tune.space]"),
    ('[tune.space."lr"]\nlow = 1\nhigh = 2\n', "section.key"),
    ('[tune.space."train.learning-rate"]\nlow = 0.1\nhigh = 0.01\n', "low < high"),
    ('[tune.space."train.learning-rate"]\nlow = 0\nhigh = 1\nlog = true\n', "log = true needs low > 0"),
    ('[tune.space."train.learnig-rate"]\nlow = 0.1\nhigh = 1\n', "not a run config key"),
    ('[tune]\nmetric = "test_accuracy"\n[tune.space."train.learning-rate"]\nlow = 0.1\nhigh = 1\n', "tune.metric"),
])
def test_bad_space_names_the_problem(tmp_path, capsys, body, needle):
    from fedtune.cli import main

    (tmp_path / "s.toml").write_text(body)
    assert main(["tune", "--space", str(tmp_path / "s.toml"), "--out", str(tmp_path / "o")]) == 2
    err = capsys.readouterr().err
    assert needle in err and "s.toml" in err or needle == "not a run config key" and needle in err


@pytest.mark.slow
def test_pruner_stops_the_federation_between_rounds(tiny_model_dir, tmp_path):
    """A pruned trial really stops: after round 1 of 3 the coordinator runs no further round."""
    import optuna

    from common.config import resolve
    from fedtune.tune import _run

    texts, labels = make_texts(120, 3)
    data = tmp_path / "pooled.csv"
    pd.DataFrame({"text": texts, "label": labels}).to_csv(data, index=False)
    cfg = resolve(None, _sets(tiny_model_dir, data)[:-3] + [
        "federation.rounds=3", "federation.early-stopping-patience=4", "federation.early-stopping-metric=accuracy"])
    study = optuna.create_study(direction="maximize", pruner=optuna.pruners.ThresholdPruner(lower=2.0))
    curve, pruned = _run(cfg, out=tmp_path / "trial", runner="inproc", trial=study.ask(), metric="accuracy")
    assert pruned and len(curve) == 1 and 0 <= curve[0] <= 1
    rows = (tmp_path / "trial" / "metrics.jsonl").read_text().splitlines()
    assert len(rows) == 1 and not (tmp_path / "trial" / "summary.json").exists()
