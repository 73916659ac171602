"""Rewrite pyproject.toml's [tool.flwr.app.config] tables from common/config.py's defaults.
Run after adding a config key: `python scripts/sync_pyproject.py` (tests/test_config.py checks)."""

from pathlib import Path

from common.config import RunConfig, _toml_value

MARK = "# Mirrors common/config.py's defaults"
path = Path(__file__).resolve().parents[1] / "pyproject.toml"
head = path.read_text().split(MARK)[0]
body = [f"{MARK} (tests/test_config.py keeps the two equal).", ""]
for sec, kv in RunConfig().to_nested().items():
    body.append(f"[tool.flwr.app.config.{sec}]")
    body += [f"{k} = {_toml_value(v)}" for k, v in kv.items()]
    body.append("")
path.write_text(head + "\n".join(body))
print(f"updated {path}")
