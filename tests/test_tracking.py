"""output.mlflow / output.tensorboard: what the run directory's round record says is what the
trackers hold, read back with each library's own reader; a missing extra is a named error."""

from __future__ import annotations

import dataclasses
import json
import subprocess
import sys
from pathlib import Path

import pytest

from common.config import RunConfig, from_flat
from common.errors import ConfigError
from server.rundir import RunDir
from server.roundlog import RoundLog
from server.tracking import require, scalars

ROOT = Path(__file__).resolve().parents[1]


def _round(n: int) -> RoundLog:
    log = RoundLog(round=n)
    for i, site in enumerate(("site-0", "site-1")):
        log.train[site] = {"num-examples": 50.0 + i, "train_loss": 1.0 / n + i, "epsilon": 0.5 * n + i,
                           "epsilon_budget": 8.0, "train_seconds": 2.0}
        log.evaluate[site] = {"num-examples": 20.0, "accuracy": 0.4 + 0.1 * n + 0.05 * i, "loss": 1.5 / n}
        log.upload_bytes[site] = 1000 + i
    if n == 2:
        log.rejected["site-9"] = "update norm 80.1 is 12x the median"
    return log


def _run(tmp_path: Path, **output) -> tuple[RunDir, list[dict]]:
    cfg = RunConfig()
    cfg = dataclasses.replace(cfg, output=dataclasses.replace(cfg.output, **output))
    run = RunDir(tmp_path / "run", cfg)
    rows = [run.record_round(_round(n)) for n in (1, 2, 3)]
    (run.path / "adapter").mkdir()
    (run.path / "adapter" / "adapter_config.json").write_text('{"r": 16}')
    run.write_summary({"final_round": 3})
    return run, rows


def test_mlflow_local_store_round_trip(tmp_path):
    from mlflow.tracking import MlflowClient

    run, rows = _run(tmp_path, mlflow="local")
    ids = json.loads((run.path / "mlflow-run.json").read_text())
    client = MlflowClient(tracking_uri=ids["tracking_uri"])
    assert ids["tracking_uri"].startswith("sqlite:///") and str(run.path) in ids["tracking_uri"]
    got = client.get_run(ids["run_id"])
    assert got.info.status == "FINISHED" and got.info.run_name == "run"
    assert got.data.params["federation.rounds"] == str(RunConfig().federation.rounds)
    assert got.data.params["output.mlflow"] == "local"
    for key in ("evaluate/accuracy", "site/site-1/evaluate/accuracy", "site/site-0/epsilon", "train/train_loss"):
        history = sorted(client.get_metric_history(ids["run_id"], key), key=lambda m: m.step)
        assert [m.step for m in history] == [1, 2, 3], key
        assert [m.value for m in history] == pytest.approx([scalars(r)[key] for r in rows]), key
    eps = client.get_metric_history(ids["run_id"], "site/site-1/epsilon")
    assert sorted(m.value for m in eps) == pytest.approx([1.5, 2.0, 2.5])
    assert [m.value for m in client.get_metric_history(ids["run_id"], "failures")] == [0, 1, 0]
    artifacts = {a.path for a in client.list_artifacts(ids["run_id"], "adapter")}
    assert artifacts == {"adapter/adapter_config.json"}
    local = Path(client.download_artifacts(ids["run_id"], "adapter/adapter_config.json", str(tmp_path)))
    assert json.loads(local.read_text()) == {"r": 16}
    assert (run.path / "mlflow-artifacts").is_dir()  # nothing written to the working directory


def test_tensorboard_event_files_round_trip(tmp_path):
    from tensorboard.backend.event_processing.event_accumulator import EventAccumulator

    run, rows = _run(tmp_path, tensorboard=True)
    acc = EventAccumulator(str(run.path / "tensorboard"))
    acc.Reload()
    tags = set(acc.Tags()["scalars"])
    assert {"evaluate/accuracy", "site/site-0/evaluate/accuracy", "site/site-1/epsilon", "upload_bytes"} <= tags
    for key in ("evaluate/accuracy", "site/site-0/evaluate/accuracy", "site/site-1/epsilon"):
        events = acc.Scalars(key)
        assert [e.step for e in events] == [1, 2, 3]
        assert [e.value for e in events] == pytest.approx([scalars(r)[key] for r in rows], rel=1e-6)


def test_round_record_is_the_one_source(tmp_path):
    run, rows = _run(tmp_path)
    on_disk = [json.loads(line) for line in (run.path / "metrics.jsonl").read_text().splitlines()]
    assert on_disk == json.loads(json.dumps(rows))
    flat = scalars(on_disk[1])
    assert flat["site/site-0/epsilon"] == 1.0 and flat["evaluate/accuracy"] == pytest.approx(
        on_disk[1]["evaluate"]["accuracy"]) and flat["failures"] == 1
    assert not (run.path / "mlflow.db").exists() and not (run.path / "tensorboard").exists()


def test_missing_extra_is_named(tmp_path):
    code = ("import sys; sys.modules['mlflow'] = None; sys.modules['torch.utils.tensorboard'] = None\n"
            "from common.config import from_flat\nfrom server.tracking import require\n"
            "for k, v in (('output.mlflow', 'local'), ('output.tensorboard', True)):\n"
            "    try:\n        require(from_flat({k: v}))\n    except Exception as e:\n        print(e)\n")
    out = subprocess.run([sys.executable, "-c", code], cwd=ROOT, capture_output=True, text=True, timeout=120)
    assert "pip install 'fedtune[mlflow]'" in out.stdout, out.stdout + out.stderr
    assert "pip install 'fedtune[tensorboard]'" in out.stdout, out.stdout + out.stderr


def test_config_keys_default_off():
    cfg = from_flat({"output.mlflow": "sqlite:///x.db", "output.tensorboard": True})
    assert cfg.output.mlflow == "sqlite:///x.db" and cfg.output.tensorboard
    assert RunConfig().output.mlflow == "" and RunConfig().output.tensorboard is False
    assert cfg.hash() == RunConfig().hash()  # where a run is tracked does not change the run
    require(RunConfig())  # nothing asked: nothing imported, nothing raised
    with pytest.raises(ConfigError):
        from_flat({"output.tensorboard": "maybe"})
