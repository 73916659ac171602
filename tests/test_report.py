"""`fedtune report`: one self-contained HTML page, rendered in headless Chromium."""

from __future__ import annotations

import json
import re
import subprocess
from pathlib import Path

import pytest

from fedtune.cli import main
from tests.chromium import find as find_chromium
from tests.test_export_predict import copy_run, shared_run

pytestmark = pytest.mark.slow  # a real simulated federation (shared_run) (deselect with -m "not slow")

IMG = re.compile(r'<img [^>]*src="data:image/png;base64,[A-Za-z0-9+/=]{200,}"')


@pytest.fixture(scope="module")
def run_dir(tmp_path_factory, tiny_model_dir) -> Path:
    return shared_run(tmp_path_factory, tiny_model_dir)


@pytest.fixture(scope="module")
def dp_run(run_dir, tmp_path_factory) -> Path:
    """A copy whose rows carry the privacy keys the DP work will add, plus a bench baseline."""
    run = copy_run(run_dir, tmp_path_factory.mktemp("dp") / "run")
    rows = [json.loads(line) for line in (run / "metrics.jsonl").read_text().splitlines()]
    for row in rows:
        for i, per in enumerate(row["per_site"].values()):
            per["train"].update(epsilon=0.9 * row["round"] * (i + 1), delta=1e-5, epsilon_budget=3.0)
    (run / "metrics.jsonl").write_text("".join(json.dumps(r) + "\n" for r in rows))
    (run / "bench" / "results").mkdir(parents=True)
    (run / "bench" / "results" / "baselines.json").write_text(json.dumps(
        {"baselines": {"centralized": {"accuracy": 0.81}, "local only": {"accuracy": 0.52}}}))
    return run


@pytest.fixture(scope="module")
def chromium() -> str:
    """The machine's chromium; `bash run.sh setup` installs it (as root) like every other test
    dependency, so a test never installs software itself."""
    exe = find_chromium()
    if exe is None:
        pytest.skip("chromium is not installed: `apt-get install chromium` (bash run.sh setup does it as root)")
    return exe


def test_report_with_privacy_and_baselines(dp_run, capsys):
    out = dp_run / "report.html"
    assert main(["report", str(dp_run)]) == 0
    assert "4 plots" in capsys.readouterr().out
    page = out.read_text(encoding="utf-8")
    assert len(IMG.findall(page)) == 4  # global, per-site, privacy, bytes
    for section in ("Global metrics per round", "Per-site metrics", "Differential privacy", "Communication",
                    "Data quality per site", "Baselines (baselines.json)", "centralized"):
        assert section in page, section
    assert "class='over'" in page  # site-1 ends at 3.6 > budget 3.0: flagged
    assert not re.search(r"(?:src|href)=[\"']?(?:https?:)?//", page) and "http://" not in page \
        and "https://" not in page  # self-contained


def test_report_without_privacy(run_dir, tmp_path):
    out = tmp_path / "r.html"
    assert main(["report", str(run_dir), "--out", str(out)]) == 0
    page = out.read_text(encoding="utf-8")
    assert len(IMG.findall(page)) == 3 and "Differential privacy" not in page
    assert "Data quality per site" in page and "jane.doe" not in page  # counts only, never text
    assert not (run_dir / "report.html").exists()


def test_report_renders_in_chromium(dp_run, chromium, tmp_path):
    from matplotlib.image import imread

    page = dp_run / "report.html"
    if not page.is_file():
        assert main(["report", str(dp_run)]) == 0
    shot = tmp_path / "report.png"
    cmd = [chromium, "--headless", "--no-sandbox", "--disable-gpu", "--disable-quic", "--no-first-run",
           "--disable-background-networking", "--disable-component-update", "--disable-sync",
           f"--user-data-dir={tmp_path / 'profile'}", f"--screenshot={shot}", "--window-size=1200,2400",
           page.resolve().as_uri()]
    proc = subprocess.run(cmd, capture_output=True, text=True, timeout=120)
    assert proc.returncode == 0 and shot.is_file(), proc.stderr[-2000:]
    assert shot.stat().st_size > 30_000
    pixels = imread(str(shot))[..., :3]
    assert pixels.shape[:2] == (2400, 1200)
    non_white = (pixels.min(axis=2) < 0.9).mean()
    assert non_white > 0.05 and pixels.std() > 0.05  # plots and tables drawn, not a blank page
