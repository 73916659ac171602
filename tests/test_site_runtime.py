"""The site runtime on the real deployment engine (coordinator + sites on loopback): a site runs
only the fedtune it installed, whatever bundle the coordinator submits, and nothing but codes and
fixed reasons leaves it when a run's config breaks its data pipeline.

Attacks, as a curious or malicious coordinator would mount them:
- submit a modified source tree whose ClientApp writes a marker file at import and would send the
  site's data file back: the marker never appears, nothing of the file reaches the coordinator;
- submit a bundle of another fedtune version, or one whose hash a site's policy does not pin:
  refused with code 459, nothing runs, the run goes on with the other sites;
- by config alone, drive every data-pipeline error a coordinator can trigger (regression on a text
  column, a label outside the label space, a wrong column name, a data file that is gone):
  the sentinel planted in the site's data, the site's paths and its unnamed columns never appear in
  what the coordinator receives, stores or logs, while the site's own log has the full story."""

from __future__ import annotations

import json
import shutil
import subprocess
import sys
from pathlib import Path

import pandas as pd
import pytest

from fedtune.flower import free_port
from tests.conftest import make_texts
from tests import simhelp
from tests.simhelp import LABELS, ROOT, Federation

pytestmark = pytest.mark.slow
SENTINEL = "QZX7SENTINEL"
SECRET_COLUMN = "customer_secret_column"
NEVER_NAMED = "zz_never_named_column"  # no run config names it: it must never leave
EVIL_IMPORT = '''
import pathlib as _p
_p.Path({marker!r}).write_text("the bundle's code ran at the site")
'''
EVIL_TRAIN = '''
    import pathlib as _p, torch as _t  # would send the site's raw file back in the reply
    new_state["stolen"] = _t.tensor(list(_p.Path(site.facts.data_path).read_bytes()), dtype=_t.float32)
    return _reply(msg, site, arrays=ArrayRecord(new_state),'''


def _bundle(tmp: Path, name: str, *, marker: Path, version: str | None = None) -> Path:
    """A copy of this source tree with an evil ClientApp (and optionally another version)."""
    out = tmp / name
    for part in ("common", "client", "server", "fedtune"):
        shutil.copytree(ROOT / part, out / part, ignore=shutil.ignore_patterns("__pycache__"))
    pyproject = (ROOT / "pyproject.toml").read_text()
    if version:
        pyproject = pyproject.replace('version = "0.1.0"', f'version = "{version}"', 1)
    (out / "pyproject.toml").write_text(pyproject)
    (out / "README.md").write_text("evil\n")
    future = "from __future__ import annotations\n"
    evil = future + EVIL_IMPORT.format(marker=str(marker))
    app = (out / "client/app.py").read_text()
    app = app.replace("    return _reply(msg, site, arrays=ArrayRecord(new_state),", EVIL_TRAIN, 1)
    (out / "client/app.py").write_text(app.replace(future, evil, 1))
    sim = (out / "client/sim_app.py").read_text()
    (out / "client/sim_app.py").write_text(sim.replace(future, evil, 1))
    return out


@pytest.fixture(scope="module")
def fed(tmp_path_factory, tiny_model_dir):
    tmp = tmp_path_factory.mktemp("runtime")
    f = Federation(tmp, tiny_model_dir)
    try:
        texts, labels = make_texts(240, 4)
        for i, name in enumerate("ab"):
            frame = pd.DataFrame({"text": texts[i::2], "label": labels[i::2]})
            frame[SECRET_COLUMN] = [f"{SENTINEL} John Smith {k}" for k in range(len(frame))]
            frame.loc[0, "text"] = f"{SENTINEL} card lost"
            frame[NEVER_NAMED] = [f"{SENTINEL} account {k}" for k in range(len(frame))]
            frame["qzx_label_col"] = frame["label"]
            frame.loc[1, "qzx_label_col"] = f"{SENTINEL}_label"  # outside the federation's label space
            frame.to_csv(tmp / f"data-{name}.csv", index=False)
        f.spawn("coordinator", "coordinator", "start", "--insecure", "--port", str(f.port),
                "--state", str(tmp / "coord/state.db"))
        f.wait_for("coordinator", "coordinator listening", 90)
        shutil.copy(tmp / "data-a.csv", tmp / "data-c.csv")
        (tmp / "c-policy.toml").write_text(f'app-sha256 = ["{"0" * 64}"]\n')  # pins another bundle
        for name in "abc":
            policy = ["--policy", str(tmp / "c-policy.toml")] if name == "c" else []
            f.spawn(f"site-{name}", "site", "start", "--insecure", "--coordinator", f.coordinator,
                    "--data", str(tmp / f"data-{name}.csv"), "--site-dir", str(tmp / f"site-{name}"),
                    "--name", name, "--port", str(free_port()), *policy)
        for name in "abc":
            f.wait_for(f"site-{name}", f"site {name} connected to coordinator", 90)
        yield f
    finally:
        f.stop()


def _run(f: Federation, out: Path, *sets: str, app: Path | None = None) -> subprocess.CompletedProcess:
    env = dict(f.env, FEDTUNE_APP_DIR=str(app)) if app else f.env
    args = ["run", "--insecure", "--coordinator", f.coordinator, "--out", str(out),
            "--set", f"model.base={f.tiny}", "--set", "federation.rounds=1",
            "--set", "federation.min-sites=2", "--set", f"task.labels={','.join(LABELS)}",
            "--set", "model.max-length=32", "--set", "train.threads=1",
            "--set", "federation.round-retries=0"]
    for s in sets:
        args += ["--set", s]
    return simhelp.run(*args, env=env, timeout=400, stdin=subprocess.DEVNULL)


def _coordinator_side(f: Federation, out: Path, proc: subprocess.CompletedProcess) -> bytes:
    """Everything the coordinator received, stored or logged, and what the submitter saw."""
    blobs = [proc.stdout.encode(), proc.stderr.encode(), f.output("coordinator").encode()]
    for path in [*out.rglob("*"), *(f.tmp / "coord").rglob("*")]:
        if path.is_file():
            blobs.append(path.read_bytes())
    return b"\n".join(blobs)


def _assert_nothing_of_the_site(blob: bytes, f: Federation, *, named: tuple[str, ...] = ()) -> None:
    """No data value, no site path, no column the run configs did not name (the coordinator's
    state database keeps every run's config, so a column named by an earlier run may appear)."""
    for secret in (SENTINEL, NEVER_NAMED, SECRET_COLUMN, "qzx_label_col", str(f.tmp / "data-a.csv"),
                   str(f.tmp / "data-b.csv"), str(f.tmp / "site-a"), str(f.tmp / "site-b"),
                   "John Smith"):
        if secret not in named:
            assert secret.encode() not in blob, secret


def test_a_modified_bundle_never_runs_at_the_site(fed, tmp_path):
    marker = tmp_path / "EVIL-RAN"
    evil = _bundle(tmp_path, "evil", marker=marker)
    # the attack is real: importing the bundle's ClientApp does write the marker
    probe = subprocess.run([sys.executable, "-c", "import client.sim_app"], cwd=evil,
                           capture_output=True, text=True, timeout=120)
    assert marker.is_file(), probe.stderr[-2000:]
    marker.unlink()
    out = tmp_path / "run-evil"
    proc = _run(fed, out, app=evil)
    assert proc.returncode == 0, proc.stdout[-3000:] + proc.stderr[-3000:]
    assert not marker.exists()
    rows = [json.loads(line) for line in (out / "metrics.jsonl").read_text().splitlines()]
    assert rows[0]["sites_trained"] == ["a", "b"], rows[0]  # the sites' own ClientApp served it
    # site c pins another bundle's hash in its policy: refused with the bundle code, nothing run
    # (its train and its evaluate message are both refused)
    assert rows[0]["failures"] and all("bundle" in f for f in rows[0]["failures"]), rows[0]
    assert "is not pinned" in (fed.tmp / "site-c/runtime.log").read_text()
    _assert_nothing_of_the_site(_coordinator_side(fed, out, proc), fed)
    # ... and the same long-lived runtime served every message: warm state, one process
    timings = [json.loads(line) for line in (fed.tmp / "site-a/runtime-timing.jsonl").read_text()
               .splitlines()]
    assert {t["type"] for t in timings} >= {"train", "evaluate"}


def test_a_bundle_of_another_version_is_refused(fed, tmp_path):
    marker = tmp_path / "OTHER-RAN"
    other = _bundle(tmp_path, "other", marker=marker, version="0.0.9")
    out = tmp_path / "run-other"
    proc = _run(fed, out, "federation.rounds=3", app=other)
    assert not marker.exists()
    rows = [json.loads(line) for line in (out / "metrics.jsonl").read_text().splitlines()]
    assert len(rows) == 1 and rows[0]["sites_trained"] == [], rows  # too few remain: it stops
    assert "STOPPED" in proc.stdout and "no site sent a valid update" in proc.stdout
    assert "no site sent a valid update" in json.loads((out / "summary.json").read_text())["halted"]
    assert len(rows[0]["failures"]) >= 3 and all("bundle" in r for r in rows[0]["failures"]), rows
    for name in "ab":  # the operator sees why, at the site
        assert "REFUSED run" in fed.output(f"site-{name}")
        assert "0.0.9" in (fed.tmp / f"site-{name}/runtime.log").read_text()
    _assert_nothing_of_the_site(_coordinator_side(fed, out, proc), fed)


@pytest.mark.parametrize("case,sets", [
    ("regression-on-text", ["task.type=regression", f"data.label-column={SECRET_COLUMN}",
                            "task.labels="]),
    ("label-outside-space", ["data.label-column=qzx_label_col"]),
    ("wrong-column", ["data.text-column=no_such_column"]),
    ("missing-data-file", []),  # the warm site notices its file is gone and rebuilds
])
def test_data_errors_leave_only_codes(fed, tmp_path, case, sets):
    out = tmp_path / f"run-{case}"
    before = {n: (fed.tmp / f"site-{n}/runtime.log").read_text() for n in "ab"}
    moved = [fed.tmp / f"data-{n}.csv" for n in "ab"] if case == "missing-data-file" else []
    for path in moved:
        path.rename(path.with_suffix(".away"))
    try:
        proc = _run(fed, out, *sets)
    finally:
        for path in moved:
            path.with_suffix(".away").rename(path)
    blob = _coordinator_side(fed, out, proc)
    _assert_nothing_of_the_site(blob, fed, named=(SECRET_COLUMN, "qzx_label_col"))
    # the error did happen, and the site's own log holds the full message
    rows = [json.loads(line) for line in (out / "metrics.jsonl").read_text().splitlines()] \
        if (out / "metrics.jsonl").is_file() else []
    assert not rows or rows[0]["sites_trained"] == [], rows
    for n in "ab":
        new = (fed.tmp / f"site-{n}/runtime.log").read_text()[len(before[n]):]
        assert "failed (sent code" in new, new[-2000:]
