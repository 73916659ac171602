"""CI smoke test of the benchmark suite: `python bench/run_all.py --quick` (tiny model, tiny data,
one real Flower simulation) must finish and write well-formed results — every key present, every
number finite. No timing assertions: CI machines vary."""

from __future__ import annotations

import json
import math
import os
import subprocess
import sys
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]

REQUIRED = {
    "traffic": ["full_model.wire_bytes", "full_model.params", "best"],
    "throughput": ["samples_per_s.fedtune", "samples_per_s.plain_no_bucketing",
                   "samples_per_s.plain_bucketed", "samples_per_s.dp", "samples_per_s.non_dp",
                   "ratios.fedtune_over_plain", "ratios.fedtune_over_plain_bucketed",
                   "ratios.dp_over_non_dp", "matmul.gflops", "flops_per_sample_train_x3",
                   "machine_fraction_x3", "padding_efficiency.fedtune"],
    "overhead": ["federated.wall_s", "federated.coordinator_wall_s", "centralized.wall_s",
                 "centralized.train_s", "ratios.wall_fed_over_central",
                 "federated.memory.peak_rss_bytes"],
    "scale": ["many_sites.wall_s", "many_sites.memory.peak_rss_bytes",
              "many_sites.memory.peak_pss_bytes", "aggregation.validate_plus_aggregate_s",
              "aggregation.naive_numpy_validate_s", "aggregation.flower_fedavg_aggregate_s",
              "aggregation.numpy_weighted_sum_s", "aggregation.max_abs_diff_vs_flower",
              "ratios.peak_rss_gib", "ratios.aggregate_1000_s"],
}
ACCURACY = ["centralized.pooled_accuracy", "fedavg.pooled_accuracy", "fedprox.pooled_accuracy",
            "ffa.pooled_accuracy", "dp_eps8.pooled_accuracy", "local_only.mean_pooled_accuracy",
            "local_only.mean_own_test_accuracy", "ratios.fedavg_over_centralized",
            "ratios.fedavg_minus_local_only_points"]
TRAFFIC_ROW = ["bytes_per_site_round", "bytes_per_site_run", "full_over_this", "accuracy",
               "points_vs_uncompressed"]


def _get(obj, path: str):
    for part in path.split("."):
        assert isinstance(obj, dict) and part in obj, f"missing key {path!r} (at {part!r})"
        obj = obj[part]
    return obj


def _finite(value, where: str) -> None:
    assert isinstance(value, (int, float)) and not isinstance(value, bool), f"{where}: {value!r}"
    assert math.isfinite(value), f"{where} is not finite: {value!r}"


@pytest.fixture(scope="module")
def quick(tmp_path_factory):
    out, work = tmp_path_factory.mktemp("bench-out"), tmp_path_factory.mktemp("bench-work")
    env = dict(os.environ, PATH=f"{Path(sys.executable).parent}{os.pathsep}{os.environ['PATH']}")
    proc = subprocess.run([sys.executable, "bench/run_all.py", "--quick", "--out", str(out),
                           "--work", str(work)], cwd=ROOT, env=env, capture_output=True,
                          text=True, timeout=1800)
    assert proc.returncode == 0, proc.stdout[-3000:] + proc.stderr[-3000:]
    return out, proc


def test_every_section_is_written_with_finite_numbers(quick):
    out, _ = quick
    for section, keys in REQUIRED.items():
        res = json.loads((out / f"{section}.json").read_text())
        for key in keys:
            value = _get(res, key)
            if key != "best":
                _finite(value, f"{section}.{key}")
        assert res["quick"] is True
    traffic = json.loads((out / "traffic.json").read_text())
    assert len(traffic["rows"]) >= 7 and traffic["best"] in traffic["rows"]
    for label, row in traffic["rows"].items():
        for key in TRAFFIC_ROW:
            _finite(row[key], f"traffic.{label}.{key}")
    overhead = json.loads((out / "overhead.json").read_text())
    for label, secs in overhead["breakdown_s"].items():
        _finite(secs, f"overhead.{label}")
    accuracy = json.loads((out / "accuracy.json").read_text())
    for dataset in ("banking77", "medical"):
        for key in ACCURACY:
            _finite(_get(accuracy[dataset], key), f"accuracy.{dataset}.{key}")


def test_summary_and_results_table(quick):
    out, proc = quick
    summary = json.loads((out / "summary.json").read_text())
    assert summary["errors"] == {}
    assert len(summary["targets"]) >= 9
    for row in summary["targets"]:
        _finite(row["measured"], row["target"])
        assert isinstance(row["met"], bool)
    md = (out / "RESULTS.md").read_text()
    for needle in ("| CPU |", "| cores |", "| RAM |", "| torch threads |", "## Targets",
                   "## 1. Traffic", "## 2. Local training", "## 3. Federation overhead",
                   "## 4. Accuracy", "## 5. Scale"):
        assert needle in md, needle
    assert "MET" in proc.stdout or "MISS" in proc.stdout
