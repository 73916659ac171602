"""Experiment trackers fed by the round record (server/rundir.py calls them where it writes
metrics.jsonl): `output.mlflow` (a tracking URI; "local" = SQLite + artifacts under the run
directory) and `output.tensorboard` (event files in RUN/tensorboard). Both are optional extras;
a tracker that fails mid-run warns once and the federation goes on (it is an observer)."""

from __future__ import annotations

import json
import math
import sys
from pathlib import Path
from typing import Any

from common.atomic import PUBLIC, atomic_write_text
from common.config import RunConfig
from common.errors import ConfigError

EXPERIMENT = "fedtune"


def require(cfg: RunConfig) -> None:
    """Fail before any work when a tracker is asked for and its extra is not installed."""
    if cfg.output.mlflow:
        _import("mlflow", "mlflow", "mlflow-skinny")
    if cfg.output.tensorboard:
        _import("torch.utils.tensorboard", "tensorboard", "tensorboard")


def _import(module: str, extra: str, package: str):
    import importlib

    try:
        return importlib.import_module(module)
    except ImportError as err:
        raise ConfigError(f"output.{extra} is set but {package} is not installed ({err}): "
                          f"pip install 'fedtune[{extra}]', or unset output.{extra}") from None


def scalars(row: dict) -> dict[str, float]:
    """A round record as flat tracker keys: weighted `train/...`, `evaluate/...`, per site
    `site/<name>/train/...`, `site/<name>/evaluate/...`, `site/<name>/epsilon`, bytes."""
    out: dict[str, float] = {}
    for phase in ("train", "evaluate"):
        for k, v in row.get(phase, {}).items():
            out[f"{phase}/{k}"] = v
    for site, per in row.get("per_site", {}).items():
        for phase in ("train", "evaluate"):
            for k, v in per.get(phase, {}).items():
                key = "epsilon" if k == "epsilon" else f"{phase}/{k}"
                out[f"site/{site}/{key}"] = v
        out[f"site/{site}/upload_bytes"] = per.get("upload_bytes", 0)
    out["upload_bytes"] = row.get("upload_bytes", 0)
    out["round_s"] = row.get("round_s", 0.0)
    out["failures"] = len(row.get("failures", [])) + len(row.get("rejected", {}))
    return {k.replace(" ", "_"): float(v) for k, v in out.items()
            if isinstance(v, (int, float)) and not isinstance(v, bool) and math.isfinite(v)}


class _MLflow:
    def __init__(self, uri: str, run_dir: Path, cfg: RunConfig):
        mlflow = _import("mlflow", "mlflow", "mlflow-skinny")
        from mlflow.entities import Param
        from mlflow.tracking import MlflowClient

        artifacts = None
        if uri == "local":
            uri = f"sqlite:///{(run_dir / 'mlflow.db').resolve()}"
            artifacts = (run_dir / "mlflow-artifacts").resolve().as_uri()
        self.client = MlflowClient(tracking_uri=uri)
        self.uri = uri
        exp = self.client.get_experiment_by_name(EXPERIMENT)
        exp_id = exp.experiment_id if exp else self.client.create_experiment(
            EXPERIMENT, artifact_location=artifacts)
        id_file = run_dir / "mlflow-run.json"
        previous = json.loads(id_file.read_text()) if id_file.is_file() else {}
        if previous.get("tracking_uri") == uri:  # a resumed run continues its MLflow run
            self.run_id = previous["run_id"]
            self.client.update_run(self.run_id, status="RUNNING")
            return
        run = self.client.create_run(exp_id, run_name=run_dir.resolve().name,
                                     tags={"fedtune.config_hash": cfg.hash()})
        self.run_id = run.info.run_id
        atomic_write_text(id_file, json.dumps({"tracking_uri": uri, "run_id": self.run_id}), mode=PUBLIC)
        params = [Param(k, str(v)[:6000]) for k, v in sorted(cfg.to_flat().items())]
        for i in range(0, len(params), 100):  # MLflow takes at most 100 params per batch
            self.client.log_batch(self.run_id, params=params[i:i + 100])
        del mlflow

    def log_round(self, row: dict) -> None:
        from mlflow.entities import Metric

        now = int(row.get("elapsed_s", 0) * 1000)
        metrics = [Metric(k, v, now, row["round"]) for k, v in scalars(row).items()]
        for i in range(0, len(metrics), 1000):
            self.client.log_batch(self.run_id, metrics=metrics[i:i + 1000])

    def finish(self, run_dir: Path, summary: dict) -> None:
        if (run_dir / "adapter").is_dir():
            self.client.log_artifacts(self.run_id, str(run_dir / "adapter"), "adapter")
        if (run_dir / "summary.json").is_file():
            self.client.log_artifact(self.run_id, str(run_dir / "summary.json"))
        self.client.set_terminated(self.run_id)


class _TensorBoard:
    def __init__(self, run_dir: Path, cfg: RunConfig):
        tb = _import("torch.utils.tensorboard", "tensorboard", "tensorboard")
        self.writer = tb.SummaryWriter(log_dir=str(run_dir / "tensorboard"))
        self.writer.add_text("config", "```\n" + cfg.to_toml() + "\n```", 0)

    def log_round(self, row: dict) -> None:
        for k, v in scalars(row).items():
            self.writer.add_scalar(k, v, row["round"])
        self.writer.flush()

    def finish(self, run_dir: Path, summary: dict) -> None:
        self.writer.close()


class Trackers:
    """The trackers the config asks for; `log_round` per round record, `finish` at the end."""

    def __init__(self, cfg: RunConfig, run_dir: Path):
        self.run_dir, self.active = Path(run_dir), []
        if cfg.output.mlflow:
            self.active.append(_MLflow(cfg.output.mlflow, self.run_dir, cfg))
        if cfg.output.tensorboard:
            self.active.append(_TensorBoard(self.run_dir, cfg))

    def _each(self, method: str, *args: Any) -> None:
        for tracker in list(self.active):
            try:
                getattr(tracker, method)(*args)
            except Exception as err:  # noqa: BLE001 - an observer never stops the federation
                print(f"fedtune: WARNING {type(tracker).__name__.strip('_')} tracking stopped: "
                      f"{type(err).__name__}: {err}", file=sys.stderr, flush=True)
                self.active.remove(tracker)

    def log_round(self, row: dict) -> None:
        self._each("log_round", row)

    def finish(self, summary: dict) -> None:
        self._each("finish", self.run_dir, summary)


RUNS_INDEX_ENV = "FEDTUNE_RUNS_INDEX"  # set by `fedtune coordinator start` for its ServerApps


def announce(run_dir: Path) -> None:
    """Append this run directory to the coordinator's index of runs (one absolute path a line),
    when the coordinator set one: its status page and /metrics read the runs listed there."""
    import os

    index = os.environ.get(RUNS_INDEX_ENV)
    if not index:
        return
    line = f"{Path(run_dir).resolve()}\n"
    try:
        with open(index, "a", encoding="utf-8") as fh:
            fh.write(line)
    except OSError as err:
        print(f"fedtune: WARNING cannot list this run in {index}: {err}", file=sys.stderr, flush=True)
