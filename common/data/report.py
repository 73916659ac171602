"""The data report: counts only (never text), a readable table, and a small-count-suppressed copy.

``report.json`` stays at the site; ``shareable_report`` is what may be sent to the coordinator.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from typing import Any

import numpy as np

from common.data.scrub import PII_TYPES

REPORT_SCHEMA = 1
# Per-record extremes and the seed (it keys the date shift) never leave the site.
_PRIVATE_KEYS = frozenset({"seed", "min_chars", "max_chars", "min", "max"})


def length_stats(texts: Sequence[str]) -> dict[str, Any]:
    """Rows and character/word length statistics of a list of texts."""
    if not len(texts):
        return {"rows": 0}
    chars = np.fromiter((len(t) for t in texts), dtype=np.int64, count=len(texts))
    words = np.fromiter((len(t.split()) for t in texts), dtype=np.int64, count=len(texts))
    return {
        "rows": int(len(chars)),
        "mean_chars": round(float(chars.mean()), 1),
        "p50_chars": int(np.percentile(chars, 50)),
        "p95_chars": int(np.percentile(chars, 95)),
        "min_chars": int(chars.min()),
        "max_chars": int(chars.max()),
        "mean_words": round(float(words.mean()), 1),
    }


def label_summary(labels: Sequence[Any], *, task: str, label_names: Sequence[str] | None) -> dict[str, Any]:
    """Rows per label (names when a label space is given), or mean/std/min/max for regression."""
    values = list(labels)
    if task == "regression":
        arr = np.asarray(values, dtype=float)
        if not len(arr):
            return {"rows": 0}
        return {"rows": len(arr), "mean": round(float(arr.mean()), 4), "std": round(float(arr.std()), 4),
                "min": float(arr.min()), "max": float(arr.max())}
    names = [label_names[v] for v in values] if label_names is not None else [str(v) for v in values]
    out: dict[str, int] = dict.fromkeys(label_names, 0) if label_names is not None else {}
    for name in names:
        out[name] = out.get(name, 0) + 1
    return dict(sorted(out.items()))


def pii_counts(counts: Mapping[str, int] | None = None) -> dict[str, int]:
    """Hits per placeholder type, every type present (zeros included)."""
    return {k: int((counts or {}).get(k, 0)) for k in PII_TYPES}


def shareable_report(report: Mapping[str, Any], *, min_count: int) -> dict[str, Any]:
    """A copy safe to share: every integer count below ``min_count`` becomes f"<{min_count}".

    The seed and per-record extremes (min/max lengths, regression min/max) are removed, and
    length/label statistics of a split with fewer than ``min_count`` rows are dropped.
    """
    def walk(node: Any) -> Any:
        if isinstance(node, Mapping):
            rows = node.get("rows")
            small = isinstance(rows, int) and not isinstance(rows, bool) and rows < min_count
            out = {}
            for key, value in node.items():
                if key in _PRIVATE_KEYS or (small and key != "rows"):
                    continue
                out[key] = walk(value)
            return out
        if isinstance(node, list):
            return [walk(v) for v in node]
        if isinstance(node, int) and not isinstance(node, bool) and node < min_count:
            return f"<{min_count}"
        return node

    shared = walk(report)
    shared.pop("schema", None)
    shared["schema"] = REPORT_SCHEMA
    shared["suppressed_below"] = min_count
    return shared


def _details(counts: Mapping[str, Any]) -> str:
    skip = {"rows_in", "rows_out"}
    return "  ".join(f"{k}={v}" for k, v in counts.items() if k not in skip and v not in (0, None, ""))


def format_report(report: Mapping[str, Any]) -> str:
    """A human-readable table of a report (or of a shareable report)."""
    lines = [f"fedtune data report  task={report.get('task', '?')}  "
             f"fingerprint={str(report.get('fingerprint', ''))[:16]}"]
    inp = report.get("input", {})
    if inp:
        lines.append(f"input: {inp.get('format')}  rows={inp.get('rows')}  sha256={str(inp.get('sha256'))[:16]}")
    lines.append(f"{'step':<10}{'rows_in':>9}{'rows_out':>10}  details")
    for step, counts in report.get("steps", {}).items():
        lines.append(f"{step:<10}{counts.get('rows_in', ''):>9}{counts.get('rows_out', ''):>10}  {_details(counts)}")
    pii = report.get("pii", {})
    if pii:
        lines.append("PII hits: " + "  ".join(f"{k}={v}" for k, v in pii.items()))
    labels = report.get("labels", {})
    if labels:
        splits = list(labels)
        keys = list(dict.fromkeys(k for s in splits for k in labels[s]))
        width = max([len("label")] + [len(k) for k in keys])
        lines.append(f"{'label':<{width}}" + "".join(f"{s:>9}" for s in splits))
        for key in keys:
            lines.append(f"{key:<{width}}" + "".join(f"{str(labels[s].get(key, 0)):>9}" for s in splits))
    for split, stats in report.get("lengths", {}).items():
        lines.append(f"lengths {split:<6} " + "  ".join(f"{k}={v}" for k, v in stats.items()))
    return "\n".join(lines)
