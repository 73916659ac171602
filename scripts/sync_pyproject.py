"""Rewrite pyproject.toml's [tool.flwr.app.config] tables from the run config's defaults (the
dataclasses in common/sections*.py). Run after adding a config key:
`python scripts/sync_pyproject.py` (tests/test_config.py checks the two agree)."""

from pathlib import Path

from common.config import RunConfig

MARK = "# Mirrors common/config.py's defaults"
path = Path(__file__).resolve().parents[1] / "pyproject.toml"
head = path.read_text().split(MARK)[0]
body = f"{MARK} (tests/test_config.py keeps the two equal).\n\n"
path.write_text(head + body + RunConfig().to_toml(table_prefix="tool.flwr.app.config."))
print(f"updated {path}")
