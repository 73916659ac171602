"""Validation: check columns and labels of a raw table and build the (row, text, label, group) frame.

Errors are DataError naming the file, the 1-based data row (header not counted), the column,
the value and the fix. Pure: takes a DataFrame of strings, returns a new one plus counts.
"""

from __future__ import annotations

import difflib
import math
from typing import Any

import pandas as pd

from common.data.config import DataConfig, template_fields, text_columns
from common.data.load import row_ref
from common.errors import ConfigError, DataError

TASKS = ("classification", "regression")
MISSING_TOKENS = frozenset({"", "nan", "none", "null", "n/a", "#n/a", "na"})
_SHOW = 5  # rows quoted in one message


def _check_columns(columns: list[str], wanted: list[tuple[str, str]], source: str) -> None:
    for name, setting in wanted:
        if name in columns:
            continue
        close = difflib.get_close_matches(name, columns, n=3, cutoff=0.5)
        close += [c for c in columns if c.lower() == name.lower() and c not in close]
        hint = f" did you mean {', '.join(map(repr, close))}?" if close else ""
        raise DataError(f"{source}: column {name!r} (from data.{setting}) not found; the file has "
                        f"columns {columns}.{hint} fix: set data.{setting} to the right column name "
                        "or rename the header")


def _rows(rows: pd.Series) -> str:
    shown = ", ".join(str(r) for r in rows.iloc[:_SHOW])
    more = f" and {len(rows) - _SHOW} more" if len(rows) > _SHOW else ""
    return f"data rows {shown}{more} (1-based, header not counted)"


def render_text(raw: pd.DataFrame, cfg: DataConfig) -> list[str]:
    """The text of each row: the template filled from the row, or the text column(s) joined by " | "."""
    if cfg.template:
        names = template_fields(cfg.template)
        cols = [raw[n].tolist() for n in names]
        try:
            return [cfg.template.format_map(dict(zip(names, vals))) for vals in zip(*cols)]
        except (ValueError, KeyError, IndexError, AttributeError) as exc:
            raise ConfigError(f"data.template={cfg.template!r} cannot be filled ({exc}); fix: use plain "
                              "{column} placeholders (cell values are text, so no numeric formats)") from None
    cols = [raw[c].tolist() for c in text_columns(cfg)]
    if len(cols) == 1:
        return cols[0]
    return [" | ".join(v for v in vals if v) for vals in zip(*cols)]


def validate_frame(raw: pd.DataFrame, *, cfg: DataConfig, source: str,
                   label_names: list[str] | None = None, task: str = "classification",
                   fmt: str = "csv") -> tuple[pd.DataFrame, dict[str, int]]:
    """Check a raw string table and return (frame with row/text/label/group, counts).

    ``row`` is the 1-based data row (``fmt`` only changes how messages point at it). Labels
    become int ids into ``label_names`` when given, floats for task="regression", stripped
    strings otherwise.
    """
    if task not in TASKS:
        raise ConfigError(f"task={task!r} is invalid; fix: use one of {', '.join(TASKS)}")
    columns = [str(c) for c in raw.columns]
    text_cols = template_fields(cfg.template) if cfg.template else text_columns(cfg)
    setting = "template" if cfg.template else "text_column"
    wanted = [(c, setting) for c in text_cols] + [(cfg.label_column, "label_column")]
    if cfg.group_column:
        wanted.append((cfg.group_column, "group_column"))
    _check_columns(columns, wanted, source)
    if cfg.label_column in text_cols:
        raise ConfigError(f"data.{setting} uses the label column {cfg.label_column!r}: the model would "
                          "see the answer; fix: remove it from the text columns/template")

    frame = pd.DataFrame({
        "row": range(1, len(raw) + 1),
        "text": render_text(raw, cfg),
        "label": [v.strip() for v in raw[cfg.label_column].tolist()],
        "group": raw[cfg.group_column].tolist() if cfg.group_column else "",
    })
    counts: dict[str, int] = {"rows_in": len(frame)}
    frame = _missing_labels(frame, cfg=cfg, source=source, label_names=label_names, counts=counts)
    frame = _convert_labels(frame, source=source, column=cfg.label_column,
                            label_names=label_names, task=task, fmt=fmt)
    frame = _long_rows(frame, cfg=cfg, source=source, counts=counts, fmt=fmt)
    counts["rows_out"] = len(frame)
    return frame.reset_index(drop=True), counts


def _missing_labels(frame: pd.DataFrame, *, cfg: DataConfig, source: str,
                    label_names: list[str] | None, counts: dict[str, int]) -> pd.DataFrame:
    known = set(label_names or ())
    missing = frame["label"].map(lambda v: v.lower() in MISSING_TOKENS and v not in known).astype(bool)
    counts["missing_labels"] = int(missing.sum())
    counts["missing_labels_dropped"] = 0
    if not missing.any():
        return frame
    if cfg.bad_label_policy == "fail":
        raise DataError(f"{source}: column {cfg.label_column!r} is empty/NaN in {_rows(frame.row[missing])}; "
                        "fix: fill in the labels, or set data.bad_label_policy=drop to skip those rows")
    counts["missing_labels_dropped"] = int(missing.sum())
    return frame[~missing]


def _convert_labels(frame: pd.DataFrame, *, source: str, column: str,
                    label_names: list[str] | None, task: str, fmt: str) -> pd.DataFrame:
    labels = frame["label"].tolist()
    if task == "regression":
        values = []
        for row, v in zip(frame["row"].tolist(), labels):
            try:
                x = float(v)
            except ValueError:
                x = math.nan
            if not math.isfinite(x):
                raise DataError(f"{source}: {row_ref(row, fmt)}, column {column!r}: value {v!r} is not a "
                                "finite number; fix: correct the value or drop the row (task=regression)")
            values.append(x)
        return frame.assign(label=pd.Series(values, index=frame.index, dtype="float64"))
    if label_names is None:
        return frame
    ids = {name: i for i, name in enumerate(label_names)}
    for row, v in zip(frame["row"].tolist(), labels):
        if v not in ids:
            close = difflib.get_close_matches(v, list(ids), n=1)
            hint = f" (did you mean {close[0]!r}?)" if close else ""
            raise DataError(f"{source}: {row_ref(row, fmt)}, column {column!r}: label {v!r} is not in the "
                            f"federation's label space of {len(ids)} labels{hint}; fix: correct the label, "
                            "or ask the coordinator to add it to the label list")
    return frame.assign(label=pd.Series([ids[v] for v in labels], index=frame.index, dtype="int64"))


def _long_rows(frame: pd.DataFrame, *, cfg: DataConfig, source: str, counts: dict[str, int],
               fmt: str) -> pd.DataFrame:
    lengths = frame["text"].str.len()
    long = lengths > cfg.max_chars
    counts["long_rows"] = int(long.sum())
    counts["long_rows_dropped"] = counts["long_rows_truncated"] = 0
    if not long.any():
        return frame
    if cfg.long_row_policy == "fail":
        row = int(frame.row[long].iloc[0])
        raise DataError(f"{source}: {row_ref(row, fmt)} has {int(lengths[long].iloc[0])} characters, over "
                        f"data.max_chars={cfg.max_chars} ({counts['long_rows']} such rows: "
                        f"{_rows(frame.row[long])}); fix: raise data.max_chars or set "
                        "data.long_row_policy to drop or truncate")
    if cfg.long_row_policy == "drop":
        counts["long_rows_dropped"] = counts["long_rows"]
        return frame[~long]
    counts["long_rows_truncated"] = counts["long_rows"]
    return frame.assign(text=[t[:cfg.max_chars] for t in frame["text"].tolist()])


def summarize_labels(labels: Any) -> dict[str, int]:
    """Label -> row count (keys as strings, sorted) for the report."""
    counts = pd.Series(labels).astype(str).value_counts()
    return {k: int(counts[k]) for k in sorted(counts.index)}
