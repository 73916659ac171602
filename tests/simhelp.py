"""Helper for the end-to-end tests: run `fedtune simulate` on a tiny model, return the run."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]


def simulate(out: Path, sets: list[str], *, timeout: int = 600) -> tuple[dict, list[dict], str]:
    """Run a 2-site simulation; returns (summary.json, metrics.jsonl rows, stdout+stderr)."""
    cmd = [sys.executable, "-m", "fedtune.cli", "simulate", "--out", str(out)]
    for s in ["simulation.sites=2", "simulation.partition=iid", "federation.rounds=2", *sets]:
        cmd += ["--set", s]
    env = dict(os.environ, PATH=f"{Path(sys.executable).parent}{os.pathsep}{os.environ['PATH']}")
    proc = subprocess.run(cmd, cwd=ROOT, env=env, capture_output=True, text=True, timeout=timeout,
                          check=False)
    log = proc.stdout + proc.stderr
    assert proc.returncode == 0, log[-4000:]
    summary = json.loads((out / "summary.json").read_text())
    rows = [json.loads(line) for line in (out / "metrics.jsonl").read_text().splitlines()]
    return summary, rows, log
