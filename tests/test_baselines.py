"""Baselines, worst-site view and personalization (#17) on a tiny 2-site federation, in process:
fedtune's own coordinator (server.app.run) and ClientApp handlers and mods (outbound guard
included), joined by bench/inproc.py's Grid. The slow end-to-end check through `fedtune
simulate` and its leak audit is tests/test_baselines_e2e.py."""

from __future__ import annotations

import json
from pathlib import Path

import pandas as pd
import pytest
import torch

from bench.inproc import run_inprocess
from client.guard import ALLOWED_METRICS, JOIN_METRICS
from common.config import resolve
from tests.conftest import make_texts


def _cfg(tmp: Path, model: Path, *extra: str):
    texts, labels = make_texts(240, 4)
    # site 0 sees mostly intents 0-1, site 1 mostly 2-3 (by-column partition)
    owner = [0 if int(lab.split("_")[1]) < 2 else 1 for lab in labels]
    owner = [o if i % 7 else 1 - o for i, o in enumerate(owner)]
    pd.DataFrame({"text": texts, "label": labels, "bank": owner}).to_csv(tmp / "pooled.csv", index=False)
    return resolve(sets=[f"model.base={model}", f"simulation.data={tmp / 'pooled.csv'}",
                         "simulation.sites=2", "simulation.partition=column:bank",
                         "federation.rounds=2", "model.max-length=32", "train.learning-rate=0.01",
                         "train.threads=1", "data.split=0.6,0.1,0.3", *extra])


def _rows(run: Path) -> list[dict]:
    return [json.loads(x) for x in (run / "metrics.jsonl").read_text().splitlines() if x]


def _audit(audit: Path) -> list[dict]:
    return [json.loads(x) for f in audit.glob("*.jsonl") for x in f.read_text().splitlines() if x]


@pytest.fixture(scope="module")
def fed(tmp_path_factory, tiny_model_dir):
    """One in-process run with baselines and personalization on, the guard's audit switched on."""
    import os

    tmp = tmp_path_factory.mktemp("baselines")
    audit = tmp / "audit"
    os.environ["FEDTUNE_AUDIT_DIR"] = str(audit)
    try:
        cfg = _cfg(tmp, tiny_model_dir, "federation.baselines=true", "federation.personalize-epochs=1")
        run_inprocess(cfg, out=tmp / "run", log=tmp / "log.txt")
    finally:
        del os.environ["FEDTUNE_AUDIT_DIR"]
    return tmp / "run", audit, (tmp / "log.txt").read_text()


def test_each_site_reports_its_local_only_and_personalized_metrics(fed):
    run, _, _ = fed
    rows = _rows(run)
    for row in rows:
        for site in ("site-0", "site-1"):
            ev = row["per_site"][site]["evaluate"]
            assert 0 <= ev["local_accuracy"] <= 1 and ev["local_loss"] > 0
        assert {"global", "local_only", "gain"} <= set(row["joining"]["sites"]["site-0"])
    # personalization only after the last round
    assert not any(k.startswith("personal_") for k in rows[0]["per_site"]["site-0"]["evaluate"])
    last = rows[-1]["per_site"]
    assert all(0 <= last[s]["evaluate"]["personal_accuracy"] <= 1 for s in last)
    gain = rows[-1]["joining"]["sites"]["site-1"]
    ev = last["site-1"]["evaluate"]
    assert gain["gain"] == pytest.approx(ev["accuracy"] - ev["local_accuracy"])


def test_local_only_model_trains_the_runs_epochs_at_the_site(fed):
    run, _, _ = fed
    for site in ("site-0", "site-1"):
        saved = list((run / "sites" / site / "local").glob("run-*.pt"))
        assert len(saved) == 1
        state = torch.load(saved[0], weights_only=True)
        assert state["round"] == 2  # one round's local epochs per federated round
        # it is not the global adapter: the local-only model never saw the other site's data
        from peft import load_peft_weights

        glob = load_peft_weights(str(run / "adapter"))
        key = next(k for k in state["state"] if "lora_B" in k)
        peft_key = next(k for k in glob if k.endswith(key.split("base_model.model.", 1)[-1]))
        assert not torch.allclose(state["state"][key], glob[peft_key])


def test_nothing_but_whitelisted_metrics_leaves(fed):
    _, audit, _ = fed
    entries = _audit(audit)
    evals = [e for e in entries if e["type"].startswith("evaluate")]
    assert len(evals) == 4  # 2 sites x 2 rounds
    for e in entries:
        assert e["violations"] == [] and "error" not in e
        for rec in e["records"].values():
            if rec["kind"] == "metrics":
                assert set(rec["values"]) <= ALLOWED_METRICS
            elif rec["kind"] == "config":
                assert rec["values"].keys() == {"name"}
        if e["type"].startswith("evaluate"):  # an evaluate reply carries no arrays at all
            assert {r["kind"] for r in e["records"].values()} == {"metrics", "config"}
    sent = {k for e in evals for rec in e["records"].values() if rec["kind"] == "metrics"
            for k in rec["values"]}
    assert {"local_accuracy", "personal_accuracy"} <= sent <= ALLOWED_METRICS
    assert sent & set(JOIN_METRICS)


def test_worst_site_fields_in_summary_and_terminal(fed):
    run, _, log = fed
    summary = json.loads((run / "summary.json").read_text())
    acc = summary["worst_site"]["accuracy"]
    per = {s: v["accuracy"] for s, v in summary["per_site"].items()}
    assert acc["min"] == min(per.values()) and acc["min_site"] == min(per, key=per.get)
    assert acc["worst_site"] == acc["min_site"] and acc["spread"] == pytest.approx(max(per.values()) - min(per.values()))
    assert acc["weighted_mean"] == pytest.approx(summary["accuracy"])
    loss = summary["worst_site"]["loss"]  # lower is better: the worst site has the highest loss
    assert loss["worst"] == loss["max"]
    assert set(summary["joining"]["sites"]) == {"site-0", "site-1"}
    lines = [x for x in log.splitlines() if x.startswith("round ")]
    assert len(lines) == 2 and all("(local " in x and "worst accuracy" in x for x in lines)
    assert "pers " in lines[-1]


def test_personalized_adapter_stays_at_the_site_and_exports(fed, tmp_path):
    from client.personalize import find_personalized, run_config_hash
    from fedtune.export import export_run
    from fedtune.predict import load_predictor, predict_scores

    run, _, _ = fed
    site_dir = run / "sites" / "site-1"
    pdir = find_personalized(site_dir, config_hash=run_config_hash(run))
    assert pdir.parent == site_dir / "personalized"
    meta = json.loads((pdir / "personalized.json").read_text())
    summary = json.loads((run / "summary.json").read_text())
    assert meta["test"]["accuracy"] == pytest.approx(summary["per_site"]["site-1"]["personal_accuracy"])
    out = tmp_path / "export"
    export_run(run, out=out, personalized="site-1")
    got = json.loads((out / "export.json").read_text())
    assert got["personalized"]["site"] == "site-1" and Path(got["source_run"]) == pdir.resolve()
    # the exported model is the personalized adapter, not the global one
    texts = make_texts(40, 4, seed=3)[0]
    glob = predict_scores(load_predictor(str(run)), texts, progress=False)
    pers = predict_scores(load_predictor(str(out)), texts, progress=False)
    assert not (abs(glob - pers) < 1e-6).all()


def test_off_by_default_and_under_dp_without_the_sites_consent(tmp_path, tiny_model_dir):
    """No key: nothing extra is trained or sent. Under DP without allow-local-models-under-dp
    (a simulated site has no policy file: the safe default) the local models are skipped."""
    from client.baseline import allowed
    from client.policy import SitePolicy

    cfg = _cfg(tmp_path, tiny_model_dir, "federation.rounds=1")
    run_inprocess(cfg, out=tmp_path / "plain", log=tmp_path / "log.txt")
    ev = _rows(tmp_path / "plain")[-1]["per_site"]["site-0"]["evaluate"]
    assert not set(ev) & set(JOIN_METRICS)
    assert not (tmp_path / "plain" / "sites" / "site-0" / "local").exists()
    dp = _cfg(tmp_path, tiny_model_dir, "privacy.dp=true", "federation.baselines=true")
    assert not allowed(dp, SitePolicy()) and allowed(dp, SitePolicy(allow_local_models_under_dp=True))
    assert not allowed(cfg, SitePolicy(share_metrics=False))


def test_under_dp_only_a_consenting_site_trains_local_models_and_accounts_them(tmp_path, tiny_model_dir):
    """site-0's policy sets allow-local-models-under-dp, site-1's does not: site-0 reports
    local_/personal_ metrics and its ledger holds their plans and rounds (epsilon spent on them);
    site-1 reports neither and its ledger holds only the federation's run."""
    import zlib

    from bench.inproc import InProcessGrid, bench_client_app
    from client import site as site_mod
    from fedtune.simulate import prepare_sites
    from server import app as server_app
    from tests.test_privacy import journal_entries

    out = tmp_path / "run"
    cfg = _cfg(tmp_path, tiny_model_dir, "privacy.dp=true", "privacy.epsilon=4",
               "federation.baselines=true", "federation.personalize-epochs=0.5",
               "federation.min-sites=1", "simulation.site-budgets=50,50")
    out.mkdir()
    cfg = prepare_sites(cfg, out)
    run_id = zlib.crc32(str(out).encode()) & 0x7FFFFFFF
    grid = InProcessGrid(bench_client_app(), num_nodes=2, run_config=cfg.to_flat(), run_id=run_id)
    nodes = list(grid.nodes.values())
    nodes[0].node_config.update({"policy-file": "p0.toml", "policy-allow-local-models-under-dp": True})
    nodes[1].node_config.update({"policy-file": "p1.toml"})
    site_mod.clear_sites()
    try:
        server_app.run(grid, cfg)
    finally:
        site_mod.clear_sites()
    rows = _rows(out)
    assert [r["sites_trained"] for r in rows] == [["site-0", "site-1"]] * 2  # never starved
    # under DP the local models train after the federation's last round: metrics only then
    assert not set(rows[0]["per_site"]["site-0"]["evaluate"]) & set(JOIN_METRICS)
    last = rows[-1]["per_site"]
    assert {"local_accuracy", "personal_accuracy"} <= set(last["site-0"]["evaluate"])
    assert not set(last["site-1"]["evaluate"]) & set(JOIN_METRICS)
    runs0 = {e["run"] for e in journal_entries(out / "sites" / "site-0") if e["kind"] == "plan"}
    assert runs0 == {str(run_id), f"{run_id}-local", f"{run_id}-personal"}
    rounds0 = [(e["run"], e["round"]) for e in journal_entries(out / "sites" / "site-0")
               if e["kind"] == "round"]
    assert sorted(rounds0) == sorted([(str(run_id), 1), (str(run_id), 2), (f"{run_id}-local", 1),
                                      (f"{run_id}-local", 2), (f"{run_id}-personal", 1)])
    runs1 = {e["run"] for e in journal_entries(out / "sites" / "site-1") if e["kind"] == "plan"}
    assert runs1 == {str(run_id)}


def test_report_shows_worst_site_and_what_joining_bought(fed, tmp_path):
    from fedtune.report import render_report

    run, _, _ = fed
    page, _ = render_report(run, bench_dirs=[])
    assert "Across sites: weighted mean, worst site, spread" in page
    assert "What joining bought each site" in page
    summary = json.loads((run / "summary.json").read_text())
    assert summary["worst_site"]["accuracy"]["worst_site"] in page
