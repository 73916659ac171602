"""The README's table of every run-config key, generated from the dataclasses (default and help
text in one place: `key(default, help)` in common/sections*.py, DataConfig's metadata).
    python scripts/config_table.py          # rewrite the table in README.md
    python scripts/config_table.py --check  # exit 1 when README.md's table is stale
tests/test_config_table.py runs the check."""

from __future__ import annotations

import dataclasses
import json
import sys
from pathlib import Path

README = Path(__file__).resolve().parents[1] / "README.md"
START, END = "<!-- config-table:start (scripts/config_table.py) -->", "<!-- config-table:end -->"


def rows() -> list[tuple[str, object, str]]:
    """(section.key, default, help) of every key, in the config's own order."""
    from common.config import RunConfig

    cfg, out = RunConfig(), []
    for sec in dataclasses.fields(RunConfig):
        for f in dataclasses.fields(getattr(cfg, sec.name)):
            out.append((f"{sec.name}.{f.name.replace('_', '-')}", getattr(getattr(cfg, sec.name), f.name),
                        f.metadata.get("help", "")))
    return out


def table() -> str:
    def cell(text: str) -> str:
        return text.replace("|", "\\|").replace("\n", "\\n")

    lines = ["| key | default | what it does |", "|---|---|---|"]
    lines += [f"| `{name}` | `{cell(json.dumps(value) if isinstance(value, str) else repr(value))}` | "
              f"{cell(text)} |" for name, value, text in rows()]
    return "\n".join(lines)


def rendered(readme: str) -> str:
    """README text with the table between the markers replaced by the generated one."""
    head, sep, rest = readme.partition(START)
    if not sep or END not in rest:
        raise SystemExit(f"{README}: the markers {START!r} ... {END!r} are missing")
    return head + START + "\n" + table() + "\n" + END + rest.split(END, 1)[1]


def main(argv: list[str]) -> int:
    text = README.read_text(encoding="utf-8")
    new = rendered(text)
    if "--check" in argv:
        if new != text:
            print(f"{README}: the config table is stale: run `python scripts/config_table.py`",
                  file=sys.stderr)
            return 1
        return 0
    README.write_text(new, encoding="utf-8")
    print(f"updated the config table in {README}")
    return 0


if __name__ == "__main__":
    sys.path.insert(0, str(README.parent))
    sys.exit(main(sys.argv[1:]))
