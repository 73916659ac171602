"""DP federation end to end (real Flower simulation, real Opacus accounting, real files):
epsilon accumulates across rounds and across two runs on the same site directories (new
processes each time), a site at its budget refuses and the run goes on without it, and every
message a site sends carries only adapter arrays and whitelisted aggregate metrics."""

from __future__ import annotations

import json
import subprocess
from pathlib import Path

import pandas as pd
import pytest

from client.guard import ALLOWED_METRICS
from common.adapter import FFA_FROZEN, get_state
from common.config import ModelConfig
from common.model import build_model
from tests.conftest import make_texts
from tests.simhelp import run_simulate
from tests.test_privacy import _independent_epsilon, journal_entries

pytestmark = pytest.mark.slow  # real federations (deselect with -m "not slow")


def _simulate(out: Path, sets: list[str], audit: Path) -> subprocess.CompletedProcess:
    return run_simulate(out, sets, timeout=900, extra_env={"FEDTUNE_AUDIT_DIR": str(audit)})


@pytest.fixture(scope="module")
def two_dp_runs(tmp_path_factory, tiny_model_dir):
    tmp = tmp_path_factory.mktemp("dp")
    texts, labels = make_texts(320, 4)
    pd.DataFrame({"text": texts, "label": labels}).to_csv(tmp / "pooled.csv", index=False)
    sets = [f"model.base={tiny_model_dir}", f"simulation.data={tmp / 'pooled.csv'}",
            "simulation.sites=2", "simulation.partition=iid", f"simulation.sites-dir={tmp / 'sites'}",
            "simulation.site-budgets=50,2", "federation.rounds=2", "federation.min-sites=1",
            "model.max-length=32", "privacy.dp=true", "privacy.epsilon=2", "train.learning-rate=0.01"]
    audit = tmp / "audit"
    runs = [_simulate(tmp / f"run{i}", sets, audit) for i in (1, 2)]
    return tmp, runs, audit


def _metrics(run: Path) -> list[dict]:
    return [json.loads(line) for line in (run / "metrics.jsonl").read_text().splitlines()]


def test_epsilon_accumulates_across_rounds_and_runs(two_dp_runs):
    tmp, _, _ = two_dp_runs
    eps = [r["per_site"]["site-0"]["train"]["epsilon"] for r in _metrics(tmp / "run1")] + \
          [r["per_site"]["site-0"]["train"]["epsilon"] for r in _metrics(tmp / "run2")]
    assert len(eps) == 4 and all(a < b for a, b in zip(eps, eps[1:]))
    assert eps[1] <= 2.0 + 1e-3 < eps[3] <= 4.0 + 1e-3  # each run adds at most privacy.epsilon
    entries = journal_entries(tmp / "sites" / "site-0")  # one lineage for both runs, chain verified
    assert [e["round"] for e in entries if e["kind"] == "round"] == [1, 2, 1, 2]
    assert len({e["run"] for e in entries if e["kind"] == "plan"}) == 2
    assert _independent_epsilon(tmp / "sites" / "site-0") == pytest.approx(eps[3], rel=1e-3)


def test_site_at_budget_refuses_and_run_continues(two_dp_runs):
    tmp, runs, _ = two_dp_runs
    run2 = _metrics(tmp / "run2")
    for row in run2:  # the coordinator names a failing sender by its node (server/strategy.py)
        assert row["sites_trained"] == ["site-0"]
        assert any("refused" in f and not f.startswith("site-0") for f in row["failures"])
    summary = json.loads((tmp / "run2" / "summary.json").read_text())
    refused = [v["refused_rounds"] for k, v in summary["privacy"].items()
               if not k.startswith("site-0") and "refused_rounds" in v]
    assert refused == [[1, 2]]
    spent = _independent_epsilon(tmp / "sites" / "site-1")
    assert spent <= 2.0 + 1e-6
    assert "refused" in runs[1].stdout


def test_only_adapter_arrays_and_whitelisted_metrics_leave_sites(two_dp_runs, tiny_model_dir):
    _, _, audit = two_dp_runs
    # privacy.dp with pooling "auto" reads mean-pooled features: the [CLS] pooler (and its LoRA) is gone
    model = build_model(ModelConfig(base=str(tiny_model_dir), max_length=32, pooling="mean"),
                        num_labels=4).model
    expected = {k: list(v.shape) for k, v in get_state(model, exclude=FFA_FROZEN).items()}
    entries = [json.loads(line) for f in audit.glob("*.jsonl") for line in f.read_text().splitlines()]
    assert len(entries) >= 2 * 2 * 2  # both runs x train+evaluate x rounds, at least
    for e in entries:
        assert e["violations"] == []
        if "error" in e:  # a refusal carries only its reason
            assert "refused" in e["error"]
            continue
        kinds = {name: rec["kind"] for name, rec in e["records"].items()}
        assert set(kinds.values()) <= {"arrays", "metrics", "config"}
        for rec in e["records"].values():
            if rec["kind"] == "arrays":
                assert {k: v["shape"] for k, v in rec["arrays"].items()} == expected
            elif rec["kind"] == "metrics":
                assert set(rec["values"]) <= ALLOWED_METRICS
                assert all(isinstance(v, (int, float)) for v in rec["values"].values())
            else:
                assert rec["values"].keys() == {"name"}
    assert any(e.get("type") == "train" and "arrays" in str(e["records"]) for e in entries)
