"""Run every bad-input case through the real `fedtune` CLI and print the README's table:
the case, the command, the exit code and the first line the user sees. Usage:
    python scripts/bad_input_table.py > /tmp/table.md"""

from __future__ import annotations

import subprocess
import sys
import tempfile
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]


def run(args: list[str], cwd: Path) -> tuple[int, str]:
    proc = subprocess.run([sys.executable, "-m", "fedtune.cli", *args], cwd=cwd, capture_output=True,
                          text=True, timeout=300)
    lines = [ln for ln in proc.stderr.splitlines() if ln.startswith("error:")] or proc.stderr.splitlines()[-1:]
    return proc.returncode, (lines[0] if lines else "").replace("|", "\\|")


def main() -> None:
    tmp = Path(tempfile.mkdtemp())
    (tmp / "good.csv").write_text("text,label\nhello there,a\nbye now,b\n")
    (tmp / "empty.csv").write_text("")
    (tmp / "nolabel.csv").write_text("text,lable\nhello,a\n")
    (tmp / "nanlabel.csv").write_text("text,label\nhello,a\nworld,\n")
    (tmp / "latin1.csv").write_bytes("text,label\ncaf\xe9 au lait,a\n".encode("latin-1"))
    (tmp / "bad.toml").write_text("[train\nlearning-rate = 1\n")
    (tmp / "typo.toml").write_text("[train]\nlearnig-rate = 0.1\n")
    (tmp / "wrongtype.toml").write_text('[federation]\nrounds = "three"\n')
    (tmp / "nomodel").mkdir()
    (tmp / "notrun").mkdir()
    cases = [
        ("unknown config key (CLI)", ["simulate", "--set", "train.learnig-rate=0.1"]),
        ("unknown config key (file)", ["simulate", "--config", str(tmp / "typo.toml")]),
        ("wrong type", ["simulate", "--config", str(tmp / "wrongtype.toml")]),
        ("out-of-range value", ["simulate", "--set", "train.learning-rate=-1"]),
        ("unknown choice", ["simulate", "--set", "federation.strategy=fedsgd"]),
        ("contradictory options", ["simulate", "--set", "federation.min-sites=5"]),
        ("invalid TOML", ["simulate", "--config", str(tmp / "bad.toml")]),
        ("missing config file", ["simulate", "--config", str(tmp / "nope.toml")]),
        ("missing data file", ["prepare", "--data", str(tmp / "nope.csv"), "--out", str(tmp / "o1")]),
        ("empty data file", ["prepare", "--data", str(tmp / "empty.csv"), "--out", str(tmp / "o2")]),
        ("misnamed label column", ["prepare", "--data", str(tmp / "nolabel.csv"), "--out", str(tmp / "o3")]),
        ("empty label", ["prepare", "--data", str(tmp / "nanlabel.csv"), "--out", str(tmp / "o4")]),
        ("not UTF-8", ["prepare", "--data", str(tmp / "latin1.csv"), "--out", str(tmp / "o5")]),
        ("label outside the label space", ["prepare", "--data", str(tmp / "good.csv"), "--out",
                                           str(tmp / "o6"), "--labels", "a,c"]),
        ("missing model directory", ["simulate", "--out", str(tmp / "r1"), "--set",
                                     f"model.base={tmp / 'missing'}", "--set",
                                     f"simulation.data={tmp / 'good.csv'}", "--set", "simulation.sites=1",
                                     "--set", "federation.min-sites=1"]),
        ("resume a directory that is not a run", ["simulate", "--resume", str(tmp / "notrun")]),
        ("privacy ledger missing", ["ledger", "--site-dir", str(tmp / "notrun")]),
        ("export a non-run directory", ["export", str(tmp / "notrun"), "--out", str(tmp / "e")]),
    ]
    print("| case | command | exit | what the user sees |")
    print("|---|---|---|---|")
    for name, args in cases:
        code, line = run(args, ROOT)
        shown = " ".join(args).replace(str(tmp), "…")
        print(f"| {name} | `fedtune {shown}` | {code} | {line.replace(str(tmp), '…')} |")


if __name__ == "__main__":
    main()
