"""Every config key has help text in its dataclass, and the README's config table is the one
scripts/config_table.py generates from them (so adding a key without help, or without
regenerating the README, fails here)."""

from __future__ import annotations

import runpy
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
GEN = runpy.run_path(str(ROOT / "scripts" / "config_table.py"), run_name="config_table")


def test_every_key_has_help():
    assert [name for name, _, text in GEN["rows"]() if not text.strip()] == []


def test_readme_table_is_current():
    readme = (ROOT / "README.md").read_text(encoding="utf-8")
    assert GEN["rendered"](readme) == readme, "README.md's config table is stale: run `python scripts/config_table.py`"
