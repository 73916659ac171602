"""Crash and resume: SIGKILL a real simulated federation mid-run, resume it from its last
checkpoint, and get the same global adapter as an uninterrupted run with the same seed."""

from __future__ import annotations

import json
import os
import signal
import time

import pandas as pd
import pytest
from safetensors.torch import load_file

from tests.conftest import make_texts
from tests.simhelp import flower_processes, run, start

pytestmark = pytest.mark.slow  # real federations (deselect with -m "not slow")


@pytest.fixture(scope="module")
def setup(tmp_path_factory, tiny_model_dir):
    tmp = tmp_path_factory.mktemp("resume")
    texts, labels = make_texts(240, 4)
    pd.DataFrame({"text": texts, "label": labels}).to_csv(tmp / "pooled.csv", index=False)
    sets = []
    for s in [f"model.base={tiny_model_dir}", f"simulation.data={tmp / 'pooled.csv'}",
              "simulation.sites=2", "simulation.partition=iid", "federation.rounds=4",
              "federation.strategy=fedadam", "model.max-length=32", "train.local-epochs=2"]:
        sets += ["--set", s]
    return tmp, sets


def test_sigkill_and_resume_equals_uninterrupted(setup):
    tmp, sets = setup
    full = run("simulate", "--out", str(tmp / "full"), "--quiet", *sets)
    assert full.returncode == 0, full.stderr[-2000:]

    crashed = tmp / "crashed"
    proc = start("simulate", "--out", str(crashed), "--quiet", *sets)
    try:
        deadline = time.time() + 300
        while time.time() < deadline and not (crashed / "checkpoints" / "round-0002").is_dir():
            time.sleep(0.2)
        assert (crashed / "checkpoints" / "round-0002").is_dir(), "run never reached round 2"
    finally:
        os.killpg(proc.pid, signal.SIGKILL)  # the crash: no clean-up of any kind
        proc.wait()
    assert not (crashed / "summary.json").exists()

    resumed = run("simulate", "--resume", str(crashed), "--quiet")
    assert resumed.returncode == 0, resumed.stdout[-2000:] + resumed.stderr[-2000:]
    rows = [json.loads(x) for x in (crashed / "metrics.jsonl").read_text().splitlines()]
    assert [r["round"] for r in rows] == [1, 2, 3, 4]  # same numbering, no round repeated

    a = load_file(str(tmp / "full" / "adapter" / "adapter_model.safetensors"))
    b = load_file(str(crashed / "adapter" / "adapter_model.safetensors"))
    assert a.keys() == b.keys()
    diffs = {k: (a[k] - b[k]).abs().max().item() for k in a}
    assert max(diffs.values()) == 0.0, diffs  # bit-identical
    assert flower_processes(str(crashed / ".flwr")) == []


def test_resume_with_changed_config_is_refused(setup):
    tmp, _ = setup
    run_dir = tmp / "full"
    assert (run_dir / "config.toml").is_file()
    out = run("simulate", "--resume", str(run_dir), "--set", "train.learning-rate=0.5", timeout=120)
    assert out.returncode == 2
    assert "changed config" in out.stderr and "train.learning-rate" in out.stderr
    missing = run("simulate", "--resume", str(tmp), timeout=120)
    assert missing.returncode == 2 and "not a fedtune run directory" in missing.stderr
