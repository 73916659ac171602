"""Deterministic, stratified, optionally group-aware train/val/test split and its manifest.

Pure functions: the seed is an argument, I/O happens in prepare.py. The manifest pins split
membership by raw-record hash so a site trains and evaluates on the same rows every round.
"""

from __future__ import annotations

from collections import Counter
from collections.abc import Mapping, Sequence
from typing import Any

import numpy as np

SPLITS = ("train", "val", "test")
MANIFEST_SCHEMA = 1


def assign_splits(labels: Sequence[Any], *, fractions: Sequence[float], seed: int,
                  groups: Sequence[str] | None = None, stratify: bool = True) -> list[str]:
    """Return "train"/"val"/"test" for each row.

    Rows sharing a non-empty group never land in two splits. Units (groups, or single rows)
    are stratified by their most common label, shuffled with ``seed`` and dealt greedily to the
    split furthest below its target share, so tiny classes (1-2 rows) go to train and the
    7:2:1 ratio holds per label.
    """
    n = len(labels)
    keys = [f"\x00row{i}" if groups is None or not groups[i] else str(groups[i]) for i in range(n)]
    members: dict[str, list[int]] = {}
    for i, key in enumerate(keys):
        members.setdefault(key, []).append(i)
    strata: dict[str, list[str]] = {}
    for key, rows in members.items():
        stratum = ""
        if stratify:
            freq = Counter(str(labels[i]) for i in rows)
            stratum = min(freq, key=lambda lab: (-freq[lab], lab))
        strata.setdefault(stratum, []).append(key)

    rng = np.random.default_rng(seed)
    frac = np.asarray(fractions, dtype=float)
    out = [""] * n
    for stratum in sorted(strata):
        units = sorted(strata[stratum])
        assigned = np.zeros(3)
        tiny = sum(len(members[u]) for u in units) < 3  # 1-2 rows cannot be split usefully: train
        for j in rng.permutation(len(units)):
            rows = members[units[j]]
            deficit = np.round(frac * (assigned.sum() + len(rows)) - assigned, 9)
            k = 0 if tiny else int(np.argmax(deficit))  # ties go to the earlier split (train first)
            assigned[k] += len(rows)
            for i in rows:
                out[i] = SPLITS[k]
    return out


def build_manifest(*, records: Mapping[str, Sequence[str]], input_sha256: str, input_rows: int,
                   columns: Sequence[str], seed: int, split_cfg: Mapping[str, Any],
                   config_hash: str) -> dict[str, Any]:
    """The split manifest: raw-record hashes per split ("unused" = rows the pipeline dropped)."""
    return {
        "schema": MANIFEST_SCHEMA,
        "input_sha256": input_sha256,
        "input_rows": input_rows,
        "columns": sorted(columns),
        "seed": seed,
        "config_hash": config_hash,
        "split_config": dict(split_cfg),
        "records": {name: sorted(records.get(name, ())) for name in (*SPLITS, "unused")},
    }


def manifest_problems(manifest: Mapping[str, Any], *, input_hashes: Sequence[str], seed: int,
                      split_cfg: Mapping[str, Any], columns: Sequence[str] | None = None) -> list[str]:
    """Why a manifest cannot be reused for this input/seed/config; [] when it can.

    Reordered rows or columns and re-encoded line endings are not changes: records are compared
    as a multiset of per-row hashes, not as file bytes.
    """
    problems = []
    old_cols = set(manifest.get("columns", ()))
    if columns is not None and old_cols and old_cols != set(columns):
        problems.append(f"columns changed: added {sorted(set(columns) - old_cols)}, "
                        f"removed {sorted(old_cols - set(columns))}")
    recorded = Counter(h for name in (*SPLITS, "unused") for h in manifest["records"].get(name, ()))
    current = Counter(input_hashes)
    added, removed = sum((current - recorded).values()), sum((recorded - current).values())
    if added or removed:
        problems.append(f"the data changed since the manifest was written: {added} row(s) added, "
                        f"{removed} row(s) removed (an edited row counts as one removed plus one added; "
                        f"file sha256 {manifest['input_sha256'][:12]}... -> now different)")
    if manifest.get("seed") != seed:
        problems.append(f"seed changed: manifest has {manifest.get('seed')!r}, this call passes {seed!r}")
    old_cfg = manifest.get("split_config", {})
    changed = [f"{k}: {old_cfg.get(k)!r} -> {v!r}" for k, v in split_cfg.items() if old_cfg.get(k) != v]
    if changed:
        problems.append("split settings changed: " + "; ".join(changed))
    return problems


def splits_from_manifest(manifest: Mapping[str, Any], row_hashes: Sequence[str]) -> list[str | None]:
    """Each prepared row's split as recorded in the manifest (None if the manifest lacks it)."""
    where = {h: name for name in SPLITS for h in manifest["records"].get(name, ())}
    return [where.get(h) for h in row_hashes]
