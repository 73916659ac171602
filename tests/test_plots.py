"""The run directory's plots: written from the round records, and a plotting failure is said on
the terminal with its fix (never hidden), while the run's results are still written."""

from __future__ import annotations

import sys

from common.config import resolve
from server.rundir import RunDir


def _rows():
    return [{"round": r, "evaluate": {"accuracy": 0.5 + 0.1 * r, "loss": 1.0 / r},
             "per_site": {s: {"evaluate": {"accuracy": 0.4 + 0.1 * r + d, "loss": 1.0 / r}}
                          for s, d in (("a", 0.0), ("b", 0.05))}} for r in (1, 2, 3)]


def test_plots_are_written_per_metric(tmp_path):
    run = RunDir(tmp_path / "run", resolve(None, []))
    run.history = _rows()
    assert run.write_plots() == ""
    for metric in ("accuracy", "loss"):
        assert (tmp_path / "run" / "plots" / f"{metric}.png").read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"
    assert not (tmp_path / "run" / "plots" / "rmse.png").exists()


def test_a_missing_matplotlib_is_said_with_its_fix(tmp_path, monkeypatch, capsys):
    run = RunDir(tmp_path / "run", resolve(None, []))
    run.history = _rows()
    for name in [m for m in sys.modules if m == "matplotlib" or m.startswith("matplotlib.")]:
        monkeypatch.delitem(sys.modules, name)
    monkeypatch.setitem(sys.modules, "matplotlib", None)  # import matplotlib -> ImportError
    problem = run.write_plots()
    assert "matplotlib" in problem and "pip install matplotlib" in problem
    assert "WARNING plots not written" in capsys.readouterr().out
    assert not (tmp_path / "run" / "plots").exists()
    summary = run.write_summary({"final_round": 3})
    assert summary["accuracy"] == 0.8 and (tmp_path / "run" / "summary.json").is_file()
