"""`fedtune prepare`: run the site data pipeline offline and write the splits and the report.

    fedtune prepare --data FILE --out DIR [--config FILE] [--labels FILE_OR_COMMA_LIST]
                    [--seed N] [--set data.key=value ...] [--task classification|regression] [--resplit]

Writes DIR/train.csv, val.csv, test.csv (columns text,label; label ids when --labels is given),
DIR/report.json (counts only; stays at the site), DIR/report_shareable.json (small counts
suppressed below data.min-count-shared) and DIR/split_manifest.json, all atomically."""

import json
from pathlib import Path
from typing import Optional

import click
import typer

from common.errors import ConfigError
from fedtune.commands.common import opt

app = typer.Typer()
from common.data.validate import TASKS  # noqa: E402 - the data pipeline's tasks


@app.command(rich_help_panel="Data", help="clean, scrub and split a site's data file")
def prepare(data: str = opt(..., "--data", help="CSV/TSV/JSONL/Parquet file (never modified)"),
            out: str = opt(..., "--out", help="output dir (also holds the split manifest)"),
            config: Optional[str] = opt(None, "--config", help="TOML file with a [data] table of the data fields"),
            labels: Optional[str] = opt(None, "--labels",
                                        help="label space: a file (one per line, or a JSON list) or a comma list"),
            seed: int = opt(0, "--seed", help="seed for split/augment/date shift (default 0)"),
            set: list[str] = opt([], "--set", metavar="data.KEY=VALUE",  # noqa: A002
                                 help="override one [data] field; repeatable"),
            task: str = opt("classification", "--task", click_type=click.Choice(TASKS)),
            resplit: bool = opt(False, "--resplit",
                                help="discard an existing split manifest in --out and make a new split")) -> int:
    from common.atomic import atomic_write_csv, atomic_write_json
    from common.data.prepare import prepare_site
    from common.data.report import format_report, shareable_report

    cfg = load_data_config(config, set)
    site = prepare_site(data, cfg=cfg, seed=seed, label_names=parse_labels(labels), task=task,
                        site_dir=out, resplit=resplit)
    folder = Path(out)
    for name in ("train", "val", "test"):
        atomic_write_csv(folder / f"{name}.csv", getattr(site, name))
    atomic_write_json(folder / "report_shareable.json",
                      shareable_report(site.report, min_count=cfg.min_count_shared))
    print(format_report(site.report))
    print(f"wrote {folder}/: train.csv val.csv test.csv report.json report_shareable.json split_manifest.json")
    return 0


def load_data_config(config_path: Optional[str], overrides: list[str]):
    """The [data] section from an optional TOML file's [data] table plus `data.key=value`
    overrides, parsed like every run config (common/config.py: one dialect, one coercion)."""
    from common.config import from_flat, load_toml, parse_sets

    flat = {}
    if config_path:
        flat = {k: v for k, v in load_toml(config_path).items() if k.startswith("data.")}
    for key in parse_sets(overrides):
        if not key.startswith("data."):
            raise ConfigError(f"--set {key!r} is not a data field; fix: write --set data.KEY=VALUE, "
                              "e.g. --set data.min-chars=5")
    cfg = from_flat(flat, origin=str(config_path)) if flat else None
    return from_flat(parse_sets(overrides), base=cfg, origin="--set").data


def parse_labels(spec: Optional[str]) -> Optional[list[str]]:
    """A label list from a file (JSON list or one label per line) or a comma-separated string."""
    if not spec:
        return None
    path = Path(spec)
    if path.is_file():
        text = path.read_text(encoding="utf-8")
        if path.suffix.lower() == ".json":
            try:
                labels = json.loads(text)
            except ValueError as exc:
                raise ConfigError(f"{path}: invalid JSON label list ({exc}); "
                                  "fix: write a JSON list of strings") from None
        else:
            labels = [line.strip() for line in text.splitlines() if line.strip()]
    else:
        labels = [s.strip() for s in spec.split(",") if s.strip()]
    if not isinstance(labels, list) or not labels or not all(isinstance(x, str) for x in labels):
        raise ConfigError(f"--labels {spec!r} gives no labels; fix: pass a file or a comma list like a,b,c")
    if len(set(labels)) != len(labels):
        dup = next(x for x in labels if labels.count(x) > 1)
        raise ConfigError(f"--labels lists {dup!r} twice; fix: make the label list unique")
    return labels
