"""Baselines and personalization through a real `fedtune simulate` (Flower SuperLink + Ray, 2
sites, tiny model): every message the sites sent, as the outbound guard saw it, carries only
adapter arrays (train) and whitelisted aggregate metrics — the local-only and personalized
models never leave; summary.json has the worst-site and joining views; the terminal line shows
each site's gain over its local-only model."""

from __future__ import annotations

import hashlib
import json
from pathlib import Path

import pandas as pd
import pytest

from client.guard import ALLOWED_METRICS
from tests.conftest import make_texts
from tests.simhelp import run, run_simulate

pytestmark = pytest.mark.slow  # a real federation (deselect with -m "not slow")


@pytest.fixture(scope="module")
def sim(tmp_path_factory, tiny_model_dir):
    tmp = tmp_path_factory.mktemp("baselines-e2e")
    texts, labels = make_texts(240, 4)
    pd.DataFrame({"text": texts, "label": labels}).to_csv(tmp / "pooled.csv", index=False)
    sets = [f"model.base={tiny_model_dir}", f"simulation.data={tmp / 'pooled.csv'}",
            "simulation.sites=2", "simulation.partition=dirichlet:0.3", "federation.rounds=2",
            "model.max-length=32", "train.learning-rate=0.01", "federation.baselines=true",
            "federation.personalize-epochs=1"]
    proc = run_simulate(tmp / "run", sets, timeout=900, extra_env={"FEDTUNE_AUDIT_DIR": str(tmp / "audit")})
    return tmp, proc.stdout + proc.stderr


def test_only_whitelisted_metrics_and_adapter_arrays_left_the_sites(sim):
    tmp, _ = sim
    entries = [json.loads(x) for f in (tmp / "audit").glob("*.jsonl") for x in f.read_text().splitlines()]
    assert len(entries) == 2 * 2 * 2  # sites x rounds x (train, evaluate)
    sent = set()
    for e in entries:
        assert e["violations"] == [] and "error" not in e
        kinds = {r["kind"] for r in e["records"].values()}
        assert kinds == ({"arrays", "metrics", "config"} if e["type"] == "train" else {"metrics", "config"})
        for rec in e["records"].values():
            if rec["kind"] == "metrics":
                sent |= set(rec["values"])
    assert sent <= ALLOWED_METRICS
    assert {"local_accuracy", "personal_accuracy"} <= sent


def test_summary_terminal_and_the_site_dirs(sim):
    tmp, log = sim
    summary = json.loads((tmp / "run" / "summary.json").read_text())
    assert {"accuracy", "loss", "macro_f1"} <= set(summary["worst_site"])
    assert summary["worst_site"]["accuracy"]["min_site"] in ("site-0", "site-1")
    assert set(summary["joining"]["sites"]) == {"site-0", "site-1"}
    rounds = [x for x in log.splitlines() if x.startswith("round ")]
    assert len(rounds) == 2 and all("(local " in x for x in rounds)
    for site in ("site-0", "site-1"):
        d = tmp / "run" / "sites" / site
        assert len(list((d / "local").glob("run-*.pt"))) == 1
        assert len(list((d / "personalized").glob("run-*/adapter/adapter_model.safetensors"))) == 1
    # what the coordinator keeps (its run dir less the simulated sites' own dirs) holds no copy
    # of a site's local-only or personalized weights
    def digest(path: Path) -> str:
        return hashlib.sha256(path.read_bytes()).hexdigest()

    sites = tmp / "run" / "sites"
    weights = [*sites.glob("*/local/*.pt"), *sites.glob("*/personalized/*/adapter/*.safetensors")]
    kept = {digest(p) for p in weights}
    coordinator = [p for p in (tmp / "run").rglob("*") if p.is_file() and sites not in p.parents]
    assert coordinator and kept and not kept & {digest(p) for p in coordinator}


def test_cli_exports_a_sites_personalized_adapter(sim, tmp_path):
    tmp, _ = sim
    out = tmp_path / "export"
    proc = run("export", str(tmp / "run"), "--out", str(out), "--personalized", "site-0")
    assert proc.returncode == 0, proc.stdout[-2000:] + proc.stderr[-2000:]
    assert "site-0's personalized adapter" in proc.stdout
    meta = json.loads((out / "export.json").read_text())
    assert meta["personalized"]["site"] == "site-0"
    assert Path(meta["source_run"]).parent == (tmp / "run" / "sites" / "site-0" / "personalized").resolve()
