"""End to end on loopback: `fedtune certs`, a real coordinator (TLS + node authentication) and real
sites, each reading only its own data file, one 2-round federation run via `fedtune run`.

Sites a, b, c are the federation. Site d is enrolled too but its policy pins another base model:
it refuses every round, so the run still has exactly a, b, c. Site e is never enrolled; a site with another CA is also tried."""

from __future__ import annotations

import json
import time
from pathlib import Path

import pytest

from tests.conftest import make_texts
from tests.simhelp import LABELS, Federation

pytestmark = pytest.mark.slow  # real federations (deselect with -m "not slow")

@pytest.fixture(scope="module")
def fed(tmp_path_factory, tiny_model_dir):
    import pandas as pd

    tmp = tmp_path_factory.mktemp("deploy")
    f = Federation(tmp, tiny_model_dir)
    try:
        made = f.cli("certs", "--out", str(tmp / "certs"), "--sites", "a,b,c,d,e", "--san", "127.0.0.1,localhost")
        assert made.returncode == 0, made.stderr
        assert f.cli("certs", "--out", str(tmp / "other"), "--sites", "x").returncode == 0
        texts, labels = make_texts(600, 4)
        for i, name in enumerate("abcde"):  # every site its own file; nobody sees the pool
            pd.DataFrame({"text": texts[i % 4::4], "label": labels[i % 4::4]}).to_csv(tmp / f"data-{name}.csv",
                                                                              index=False)
        (tmp / "d-policy.toml").write_text(f'base-model-sha256 = ["{"0" * 64}"]\ntask-types = ["classification"]\n')
        f.spawn("coordinator", "coordinator", "start", "--certs", str(tmp / "certs/coordinator"),
                "--port", str(f.port), "--state", str(tmp / "coord/state.db"))
        f.wait_for("coordinator", f"coordinator listening on https://{f.coordinator}", 90)
        for name in "abcd":
            enrolled = f.cli("coordinator", "enroll", "--certs", str(tmp / "certs/coordinator"), "--site", name,
                             "--coordinator", f.coordinator)
            assert enrolled.returncode == 0 and "enrolled site" in enrolled.stdout, enrolled.stdout + enrolled.stderr
        yield f
    finally:
        f.stop()


def test_site_without_the_federation_ca_cannot_connect(fed):
    proc = fed.cli(*fed.site_args("a", ca=fed.tmp / "other/site-x/ca.crt"), timeout=60)
    assert proc.returncode == 2, proc.stdout + proc.stderr
    assert "does not trust" in proc.stderr and "fedtune certs" in proc.stderr


def test_site_whose_key_is_not_enrolled_is_refused(fed):
    proc = fed.cli(*fed.site_args("e"), timeout=90)
    assert proc.returncode == 2, proc.stdout[-2000:] + proc.stderr
    assert "not enrolled" in proc.stderr and "fedtune coordinator enroll" in proc.stderr
    assert "--site e" in proc.stderr


def test_enroll_is_idempotent(fed):
    again = fed.cli("coordinator", "enroll", "--certs", str(fed.tmp / "certs/coordinator"), "--site", "a",
                    "--coordinator", fed.coordinator)
    assert again.returncode == 0 and "already enrolled" in again.stdout


@pytest.fixture(scope="module")
def run(fed):
    for name in "abc":
        fed.spawn(f"site-{name}", *fed.site_args(name))
    fed.spawn("site-d", *fed.site_args("d", policy=fed.tmp / "d-policy.toml"))
    for name in "abcd":
        fed.wait_for(f"site-{name}", f"site {name} connected to coordinator", 90)
    out = fed.tmp / "run"
    t0 = time.monotonic()
    proc = fed.cli("run", "--coordinator", fed.coordinator, "--ca", str(fed.tmp / "certs/site-a/ca.crt"),
                   "--out", str(out), "--set", f"model.base={fed.tiny}", "--set", "federation.rounds=2",
                   "--set", "federation.min-sites=3", "--set", f"task.labels={','.join(LABELS)}",
                   "--set", "model.max-length=32", "--set", "train.threads=1",
                   "--set", "train.learning-rate=0.003", "--set", "federation.evaluate-every=2",
                   timeout=600)  # evaluate in the last round only: every message costs a process
    wall = time.monotonic() - t0
    assert proc.returncode == 0, proc.stdout[-4000:] + proc.stderr[-4000:]
    return out, proc, wall


def test_run_directory_contract(run):
    out, proc, wall = run
    for name in ("config.toml", "metrics.jsonl", "summary.json", "adapter/adapter_config.json",
                 "adapter/adapter_model.safetensors", "adapter/labels.json"):
        assert (out / name).is_file(), name
    rows = [json.loads(line) for line in (out / "metrics.jsonl").read_text().splitlines()]
    assert [r["round"] for r in rows] == [1, 2]
    for row in rows:
        assert {"a", "b", "c"} <= set(row["per_site"]), row["per_site"].keys()
        for site in "abc":
            assert row["per_site"][site]["train"]["num-examples"] > 0
    for site in "abc":
        assert 0.0 <= rows[-1]["per_site"][site]["evaluate"]["accuracy"] <= 1.0
    summary = json.loads((out / "summary.json").read_text())
    assert summary["rounds"] == 2 and {"a", "b", "c"} <= set(summary["sites"])
    assert "round   2/2" in proc.stdout and '"rounds": 2' in proc.stdout
    print(f"federation run wall time {wall:.0f}s")


def test_site_policy_refusal_reaches_the_coordinator(run, fed):
    out, proc, _ = run
    rows = [json.loads(line) for line in (out / "metrics.jsonl").read_text().splitlines()]
    for row in rows:
        assert set(row["per_site"]) == {"a", "b", "c"}
        # only the code's fixed reason reaches the coordinator, never the policy file's path
        assert any("refused by the site's policy" in f for f in row["failures"]), row
        assert not any("d-policy.toml" in f or str(fed.tmp) in f for f in row["failures"]), row
    assert json.loads((out / "summary.json").read_text())["sites"] == ["a", "b", "c"]


def test_only_adapter_arrays_and_whitelisted_metrics_leave_deployed_sites(run, fed):
    """Every message the real site processes sent (logged by their outbound guard)."""
    from client.guard import ALLOWED_METRICS
    from common.adapter import get_state
    from common.config import ModelConfig
    from common.model import build_model

    model = build_model(ModelConfig(base=str(fed.tiny), max_length=32), num_labels=len(LABELS)).model
    expected = {k: list(v.shape) for k, v in get_state(model).items()}
    entries = [json.loads(line) for f in (fed.tmp / "audit").glob("*.jsonl")
               for line in f.read_text().splitlines()]
    assert sum(1 for e in entries if e["type"] == "train" and "error" not in e) >= 6  # 3 sites x 2 rounds
    for e in entries:
        assert e["violations"] == []
        if "error" in e:
            assert "refused" in e["error"]  # site d's policy refusals carry only their reason
            continue
        for name, rec in e["records"].items():
            if rec["kind"] == "arrays":
                assert {k: v["shape"] for k, v in rec["arrays"].items()} == expected
            elif rec["kind"] == "metrics":
                assert set(rec["values"]) <= ALLOWED_METRICS
            else:
                assert rec["kind"] == "config" and name == "site" and set(rec["values"]) == {"name"}


def test_every_process_is_reaped(run, fed):
    left = fed.stop()
    for name, proc in fed.procs.items():
        assert proc.returncode is not None, name
    assert "SIGTERM received" in fed.output("coordinator")
    assert left == [], [Path(f"/proc/{p}/cmdline").read_bytes()[:200] for p in left]
