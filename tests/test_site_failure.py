"""A site process dies mid-round on the real deployment engine (TLS + node authentication):
the round completes with the sites that replied, the run finishes, and the restarted site
rejoins at a later round."""

from __future__ import annotations

import json
import os
import signal
import time

import pandas as pd
import pytest

from tests.conftest import make_texts
from tests.simhelp import LABELS, Federation, flower_processes, start, stop

pytestmark = pytest.mark.slow  # real federations (deselect with -m "not slow")


@pytest.fixture(scope="module")
def federation(tmp_path_factory, tiny_model_dir):
    tmp = tmp_path_factory.mktemp("failure")
    f = Federation(tmp, tiny_model_dir)
    try:
        assert f.cli("certs", "--out", str(tmp / "certs"), "--sites", "a,b,c").returncode == 0
        texts, labels = make_texts(360, 4)
        for i, name in enumerate("abc"):
            pd.DataFrame({"text": texts[i::3], "label": labels[i::3]}).to_csv(tmp / f"data-{name}.csv",
                                                                            index=False)
        f.spawn("coordinator", "coordinator", "start", "--certs", str(tmp / "certs/coordinator"),
                "--port", str(f.port), "--state", str(tmp / "coord/state.db"))
        f.wait_for("coordinator", "coordinator listening", 90)
        for name in "abc":
            assert f.cli("coordinator", "enroll", "--certs", str(tmp / "certs/coordinator"),
                         "--site", name, "--coordinator", f.coordinator).returncode == 0
            f.spawn(f"site-{name}", *f.site_args(name))
        for name in "abc":
            f.wait_for(f"site-{name}", f"site {name} connected to coordinator", 90)
        yield f
    finally:
        # The SIGKILLed site's own children (its flwr-clientapp) are orphans, as after a real power
        # loss; stop() reaps them with everything else. Nothing of ours may remain.
        f.stop()
        assert flower_processes(f.marker) == []


def test_killed_site_does_not_stop_the_run_and_rejoins(federation):
    f = federation
    out = f.tmp / "run"
    runner = start("run", "--coordinator", f.coordinator,
                   "--ca", str(f.tmp / "certs/site-a/ca.crt"), "--out", str(out), "--quiet",
                   "--set", f"model.base={f.tiny}", "--set", "federation.rounds=8",
                   "--set", "federation.min-sites=2", "--set", f"task.labels={','.join(LABELS)}",
                   "--set", "model.max-length=32", "--set", "train.threads=1",
                   "--set", "federation.round-timeout=45", "--set", "federation.evaluate-every=8",
                   log=f.tmp / "runner.out", env=f.env)
    try:
        deadline = time.monotonic() + 120
        while not (out / "config.toml").is_file() and time.monotonic() < deadline:
            time.sleep(0.2)  # the ServerApp has started round 1
        time.sleep(2.0)
        os.killpg(f.procs["site-c"].pid, signal.SIGKILL)  # the hospital's server loses power
        f.procs["site-c"].wait(timeout=10)
        while not (out / "metrics.jsonl").is_file() and time.monotonic() < deadline + 240:
            time.sleep(0.5)
        f.spawn("site-c", *f.site_args("c"))  # back up: same key, same site dir
        runner.wait(timeout=600)
    finally:
        stop(runner)
    stdout = (f.tmp / "runner.out").read_text(errors="replace")
    assert runner.returncode == 0, stdout[-3000:]
    rows = [json.loads(line) for line in (out / "metrics.jsonl").read_text().splitlines()]
    assert [r["round"] for r in rows] == list(range(1, 9))
    assert rows[0]["sites_trained"] == ["a", "b"]  # the round completed with the sites that replied
    assert any("c" in r["sites_trained"] for r in rows[1:]), [r["sites_trained"] for r in rows]
    assert json.loads((out / "summary.json").read_text())["rounds"] == 8
