"""prepare_site: load -> validate -> clean -> scrub -> split -> augment (train only).

Simulation and deployment run this same function. With ``site_dir`` the split is pinned by a
manifest (reused every round and after restarts; a changed input file is an error, never a
silent re-split) and the report is written next to it. The raw input file is only read.
"""

from __future__ import annotations

import hashlib
import json
import os
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import pandas as pd

from common.data.augment import Augmenter, augment_frame
from common.data.clean import clean_frame
from common.data.config import DataConfig, config_hash, split_config, split_fractions
from common.atomic import atomic_write_json
from common.data.load import RawTable, load_table, record_hashes
from common.data.report import REPORT_SCHEMA, label_summary, length_stats, pii_counts
from common.data.report import shareable_report  # noqa: F401  (part of this module's contract)
from common.data.scrub import scrub_frame
from common.data.split import (SPLITS, assign_splits, build_manifest, manifest_problems,
                               splits_from_manifest)
from common.data.validate import validate_frame
from common.errors import DataError

MANIFEST_NAME = "split_manifest.json"
REPORT_NAME = "report.json"
__all__ = ["PreparedSite", "prepare_site", "shareable_report", "fingerprint_frame"]


@dataclass
class PreparedSite:
    """A site's prepared data: three (text, label) frames, a counts-only report, a train fingerprint."""

    train: pd.DataFrame
    val: pd.DataFrame
    test: pd.DataFrame
    report: dict
    fingerprint: str
    # data.group-column: the group (person) of every train row, augmented copies included (a copy
    # belongs to its source's person); None without a group column. Person-level DP samples and
    # clips by it (client/dp_units.py).
    train_groups: list[str] | None = None


def fingerprint_frame(frame: pd.DataFrame) -> str:
    """sha256 over (text, label) rows in order; the privacy ledger keys on the TRAIN fingerprint."""
    h = hashlib.sha256()
    for text, label in zip(frame["text"].tolist(), frame["label"].tolist()):
        h.update(f"{text}\x1f{label!r}\x1e".encode())
    return h.hexdigest()


def _read_manifest(path: Path) -> dict[str, Any]:
    try:
        manifest = json.loads(path.read_text(encoding="utf-8"))
        manifest["records"]
    except (OSError, ValueError, KeyError, TypeError) as exc:
        raise DataError(f"{path}: split manifest is unreadable ({type(exc).__name__}: {exc}); fix: restore it "
                        "from backup, or delete it to make a NEW split (evaluation will not be comparable "
                        "with earlier rounds)") from None
    return manifest


def _choose_splits(frame: pd.DataFrame, *, hashes: Sequence[str], raw: RawTable, seed: int,
                   cfg: DataConfig, task: str, label_names: list[str] | None,
                   site_dir: Path | None, resplit: bool) -> tuple[list[str], str]:
    source, columns = str(raw.path), list(raw.frame.columns)
    scfg = split_config(cfg, task=task, label_names=label_names)
    manifest_path = site_dir / MANIFEST_NAME if site_dir is not None else None
    if manifest_path is not None and manifest_path.exists() and not resplit:
        manifest = _read_manifest(manifest_path)
        problems = manifest_problems(manifest, input_hashes=hashes, seed=seed, split_cfg=scfg, columns=columns)
        if problems:
            raise DataError(f"{source}: cannot reuse the split in {manifest_path}: " + "; ".join(problems)
                            + ". The split stays fixed for the federation's life so rounds stay comparable; "
                            "fix: restore the original data/settings, or start a NEW split by deleting the "
                            "manifest, using a new site dir, or passing resplit=True (CLI: --resplit)")
        found = splits_from_manifest(manifest, frame["rec"].tolist())
        pinned = sum(len(manifest["records"].get(name, ())) for name in SPLITS)
        if any(s is None for s in found) or len(found) != pinned:
            # same input and settings but different rows out: the pipeline code itself changed
            raise DataError(f"{source}: the pipeline now keeps {len(found)} rows, {found.count(None)} of them not "
                            f"in {manifest_path}, which pins {pinned}; fix: pin the earlier fedtune version, "
                            "or delete the manifest / pass resplit=True (CLI: --resplit) to start a new split")
        label = "manifest" if manifest.get("input_sha256") == raw.sha256 else "manifest (file re-saved, same rows)"
        return [str(s) for s in found], label

    assigned = assign_splits(frame["label"].tolist(), fractions=split_fractions(cfg.split), seed=seed,
                             groups=frame["group"].tolist() if cfg.group_column else None,
                             stratify=task != "regression")
    if manifest_path is not None:
        records: dict[str, list[str]] = {name: [] for name in (*SPLITS, "unused")}
        for rec, name in zip(frame["rec"].tolist(), assigned):
            records[name].append(rec)
        kept = set(frame["row"].tolist())
        records["unused"] = [h for i, h in enumerate(hashes, start=1) if i not in kept]
        manifest = build_manifest(records=records, input_sha256=raw.sha256, input_rows=len(hashes),
                                  columns=columns, seed=seed, split_cfg=scfg,
                                  config_hash=config_hash({**scfg, "seed": seed}))
        atomic_write_json(manifest_path, manifest)
    return assigned, "new"


def prepare_site(path: str | os.PathLike[str], *, cfg: DataConfig, seed: int,
                 label_names: list[str] | None = None, task: str = "classification",
                 site_dir: str | os.PathLike[str] | None = None, resplit: bool = False,
                 augmenters: Mapping[str, Augmenter] | None = None) -> PreparedSite:
    """Run the whole pipeline on one site's file and return its prepared splits.

    Args:
        path: CSV, TSV, JSONL or Parquet file (chosen by extension); never modified.
        cfg: the site's DataConfig.
        seed: seeds the split, the augmentation and the date-shift offsets.
        label_names: the federation's label space; labels become int ids into it, and a label
            outside it raises DataError. None keeps string labels.
        task: "classification" or "regression" (labels parsed as float, split not stratified).
        site_dir: where split_manifest.json and report.json live; the manifest pins the split.
        resplit: ignore (and overwrite) an existing manifest, making a new split.
        augmenters: extra augmentation functions by op name, e.g. {"backtranslate": fn}; see
            common.data.augment.
    """
    raw = load_table(path)
    source = str(raw.path)
    hashes = record_hashes(raw.frame)
    frame, v_counts = validate_frame(raw.frame, cfg=cfg, source=source, label_names=label_names, task=task,
                                     fmt=raw.fmt)
    frame, c_counts = clean_frame(frame, cfg=cfg)
    if frame.empty:
        raise DataError(f"{source}: no rows left after validation and cleaning (validate: {v_counts}; "
                        f"clean: {c_counts}); fix: check data.text_column/min_chars/max_chars and the policies")
    if cfg.scrub_pii:
        frame, pii = scrub_frame(frame, date_policy=cfg.date_policy, seed=seed)
    else:
        pii = {"rows_with_pii": 0}
    frame = frame.assign(rec=[hashes[r - 1] for r in frame["row"].tolist()])

    site = Path(site_dir) if site_dir is not None else None
    assigned, split_source = _choose_splits(frame, hashes=hashes, raw=raw, seed=seed, cfg=cfg, task=task,
                                            label_names=label_names, site_dir=site, resplit=resplit)
    where = pd.Series(assigned, index=frame.index)
    cols = ["text", "label", "group"] if cfg.group_column else ["text", "label"]
    parts = {name: frame.loc[where == name, cols].reset_index(drop=True) for name in SPLITS}
    parts["train"], a_counts = augment_frame(parts["train"], spec=cfg.augment, copies=cfg.augment_copies,
                                             seed=seed, augmenters=augmenters)
    groups = ([("" if pd.isna(g) else str(g).strip()) for g in parts["train"]["group"]]
              if cfg.group_column else None)  # "" = no person named: the row is its own unit
    parts = {name: p[["text", "label"]] for name, p in parts.items()}
    fingerprint = fingerprint_frame(parts["train"])

    split_counts: dict[str, Any] = {"rows_in": len(frame), "rows_out": len(frame), "source": split_source}
    split_counts.update({name: int((where == name).sum()) for name in SPLITS})
    if cfg.group_column:
        split_counts.update({f"groups_{name}": int(frame.loc[where == name, "group"].nunique()) for name in SPLITS})
    report: dict[str, Any] = {
        "schema": REPORT_SCHEMA,
        "task": task,
        "seed": seed,
        "input": {"format": raw.fmt, "sha256": raw.sha256, "rows": len(raw.frame), "columns": raw.frame.shape[1]},
        "steps": {
            "load": {"rows_in": len(raw.frame), "rows_out": len(raw.frame)},
            "validate": v_counts,
            "clean": c_counts,
            "scrub": {"rows_in": len(frame), "rows_out": len(frame), "rows_with_pii": pii.get("rows_with_pii", 0)},
            "split": split_counts,
            "augment": a_counts,
        },
        "pii": pii_counts(pii),
        "labels": {n: label_summary(p["label"].tolist(), task=task, label_names=label_names) for n, p in parts.items()},
        "lengths": {n: length_stats(p["text"].tolist()) for n, p in parts.items()},
        "fingerprint": fingerprint,
        "config_hash": config_hash(vars(cfg)),
    }
    if site is not None:
        atomic_write_json(site / REPORT_NAME, report)
    return PreparedSite(train=parts["train"], val=parts["val"], test=parts["test"],
                        report=report, fingerprint=fingerprint, train_groups=groups)
