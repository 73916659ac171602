"""`fedtune prepare`: run the site data pipeline offline and write the splits and the report.

    fedtune prepare --data FILE --out DIR [--config FILE] [--labels FILE_OR_COMMA_LIST]
                    [--seed N] [--set data.key=value ...] [--task classification|regression] [--resplit]

Writes DIR/train.csv, val.csv, test.csv (columns text,label; label ids when --labels is given),
DIR/report.json (counts only; stays at the site), DIR/report_shareable.json (small counts
suppressed below data.min_count_shared) and DIR/split_manifest.json, all atomically. Exit code 2 on a FedtuneError.
Also runnable as ``python -m common.data.cli prepare ...``.
"""

from __future__ import annotations

import argparse
import json
import sys
import tomllib
from pathlib import Path
from typing import Any

from common.data.config import DataConfig, data_config_from_mapping
from common.atomic import atomic_write_csv, atomic_write_json
from common.data.prepare import prepare_site
from common.data.report import format_report, shareable_report
from common.data.validate import TASKS
from common.errors import ConfigError, FedtuneError


def add_prepare_parser(subparsers: Any) -> argparse.ArgumentParser:
    """Register the ``prepare`` sub-command on an argparse subparsers object."""
    p = subparsers.add_parser("prepare", help="clean, scrub and split a site's data file",
                              description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--data", required=True, help="CSV/TSV/JSONL/Parquet file (never modified)")
    p.add_argument("--out", required=True, help="output dir (also holds the split manifest)")
    p.add_argument("--config", help="TOML file with a [data] table of DataConfig fields")
    p.add_argument("--labels", help="label space: a file (one per line, or a JSON list) or a comma list")
    p.add_argument("--seed", type=int, default=0, help="seed for split/augment/date shift (default 0)")
    p.add_argument("--set", action="append", default=[], metavar="data.KEY=VALUE",
                   help="override one DataConfig field; repeatable")
    p.add_argument("--task", choices=TASKS, default="classification")
    p.add_argument("--resplit", action="store_true",
                   help="discard an existing split manifest in --out and make a new split")
    p.set_defaults(func=run_prepare)
    return p


def load_data_config(config_path: str | None, overrides: list[str]) -> DataConfig:
    """DataConfig from an optional TOML ``[data]`` table plus ``data.key=value`` overrides."""
    values: dict[str, Any] = {}
    source = "defaults"
    if config_path:
        path = Path(config_path)
        try:
            doc = tomllib.loads(path.read_text(encoding="utf-8"))
        except OSError as exc:
            raise ConfigError(f"{path}: cannot read config ({exc.strerror}); fix: check the --config path") from None
        except tomllib.TOMLDecodeError as exc:
            raise ConfigError(f"{path}: invalid TOML ({exc}); fix: correct the syntax") from None
        table = doc.get("data", {})
        if not isinstance(table, dict):
            raise ConfigError(f"{path}: 'data' must be a table ([data]); fix: put the fields under [data]")
        values.update(table)
        source = str(path)
    for item in overrides:
        key, sep, value = item.partition("=")
        if not sep or not key.startswith("data."):
            raise ConfigError(f"--set {item!r} is invalid; fix: write --set data.KEY=VALUE, "
                              "e.g. --set data.min_chars=5")
        values[key[len("data."):].strip()] = value
        source = f"{source} + --set"
    return data_config_from_mapping(values, source=source)


def parse_labels(spec: str | None) -> list[str] | None:
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


def run_prepare(args: argparse.Namespace) -> int:
    """Run the pipeline for parsed ``prepare`` arguments; 0 on success, 2 on a FedtuneError."""
    try:
        cfg = load_data_config(args.config, args.set)
        site = prepare_site(args.data, cfg=cfg, seed=args.seed, label_names=parse_labels(args.labels),
                            task=args.task, site_dir=args.out, resplit=args.resplit)
        out = Path(args.out)
        for name in ("train", "val", "test"):
            atomic_write_csv(out / f"{name}.csv", getattr(site, name))
        atomic_write_json(out / "report_shareable.json",
                          shareable_report(site.report, min_count=cfg.min_count_shared))
    except FedtuneError as exc:
        print(f"error: {exc}", file=sys.stderr)
        return 2
    print(format_report(site.report))
    print(f"wrote {out}/: train.csv val.csv test.csv report.json report_shareable.json split_manifest.json")
    return 0


def main(argv: list[str] | None = None) -> int:
    """Stand-alone entry point: ``python -m common.data.cli prepare ...``."""
    parser = argparse.ArgumentParser(prog="fedtune")
    sub = parser.add_subparsers(dest="command", required=True)
    add_prepare_parser(sub)
    args = parser.parse_args(argv)
    return int(args.func(args))


if __name__ == "__main__":
    sys.exit(main())
