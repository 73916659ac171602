"""The I/O edge of the data pipeline: read a site's raw file once, write outputs atomically.

The raw file is only ever opened for reading. Row numbers in messages are 1-based data rows
(the header is not counted), so in a CSV "data row 3" is spreadsheet row 4; in JSONL it is line 3.
"""

from __future__ import annotations

import hashlib
import io
import os
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import pandas as pd

from common.errors import DataError

FORMATS = {".csv": "csv", ".tsv": "tsv", ".tab": "tsv", ".jsonl": "jsonl", ".ndjson": "jsonl",
           ".parquet": "parquet", ".pq": "parquet"}


@dataclass(frozen=True)
class RawTable:
    """A loaded raw file: every column as strings ("" for missing) plus the file's sha256."""

    frame: pd.DataFrame
    path: Path
    sha256: str
    fmt: str


def row_ref(row: int, fmt: str = "csv") -> str:
    """How a row is named in messages: the 1-based data row, plus where a user finds it."""
    if fmt == "jsonl":
        return f"data row {row} (1-based; line {row} of the file)"
    if fmt == "parquet":
        return f"data row {row} (1-based; 0-based index {row - 1})"
    return f"data row {row} (1-based, header not counted; spreadsheet row {row + 1})"


def load_table(path: str | os.PathLike[str]) -> RawTable:
    """Read a CSV/TSV/JSONL/Parquet file (by extension) into string columns.

    Raises DataError for a missing/empty/unparseable file or bytes that are not UTF-8.
    """
    p = Path(path)
    fmt = FORMATS.get(p.suffix.lower())
    if fmt is None:
        raise DataError(f"{p}: unsupported file type {p.suffix!r}; fix: save it as one of "
                        f"{', '.join(sorted(FORMATS))}")
    if not p.is_file():
        what = "is a directory" if p.is_dir() else "does not exist"
        raise DataError(f"{p}: data file {what}; fix: check the --data path / the site's data-path setting")
    data = p.read_bytes()
    digest = hashlib.sha256(data).hexdigest()
    if not data.strip():
        raise DataError(f"{p}: file is empty ({len(data)} bytes); fix: export the data again with a header row")
    frame = _parse_parquet(p, data) if fmt == "parquet" else _parse_text(p, _decode(p, data, fmt), fmt)
    if len(frame) == 0:
        raise DataError(f"{p}: has a header but no data rows; fix: export the data rows as well")
    return RawTable(frame=_as_strings(frame), path=p, sha256=digest, fmt=fmt)


def _decode(p: Path, data: bytes, fmt: str) -> str:
    try:
        return data.decode("utf-8-sig")
    except UnicodeDecodeError as exc:
        bad = data[exc.start:exc.start + 1]
        line = data.count(b"\n", 0, exc.start) + 1
        guess = bad.decode("cp1252", errors="replace")
        where = row_ref(line if fmt == "jsonl" else line - 1, fmt)
        raise DataError(
            f"{p}: not valid UTF-8: byte 0x{bad.hex()} at byte offset {exc.start}, file line {line} "
            f"(~{where}); it looks like Windows-1252/Latin-1 ({guess!r}); fix: re-save the file "
            f"as UTF-8 (Excel: 'CSV UTF-8'; or `iconv -f cp1252 -t utf-8 in.csv > out.csv`)") from None


def _parse_text(p: Path, text: str, fmt: str) -> pd.DataFrame:
    try:
        if fmt == "jsonl":
            return pd.read_json(io.StringIO(text), lines=True, dtype=False)
        return pd.read_csv(io.StringIO(text), sep="\t" if fmt == "tsv" else ",", dtype=str,
                           keep_default_na=False, na_filter=False)
    except pd.errors.EmptyDataError:
        raise DataError(f"{p}: no columns found; fix: the first line must be a header row") from None
    except (pd.errors.ParserError, ValueError) as exc:
        fix = ("quote fields that contain the separator or newlines" if fmt != "jsonl"
               else "write one JSON object per line")
        raise DataError(f"{p}: cannot parse as {fmt}: {str(exc).strip()}; fix: {fix}") from None


def _parse_parquet(p: Path, data: bytes) -> pd.DataFrame:
    try:
        return pd.read_parquet(io.BytesIO(data))
    except Exception as exc:  # pyarrow raises several unrelated types for corrupt files
        raise DataError(f"{p}: cannot read as Parquet ({type(exc).__name__}: {exc}); "
                        "fix: re-export the file, or save it as CSV") from None


def _cell(value: Any) -> str:
    if value is None or (isinstance(value, float) and value != value):
        return ""
    if isinstance(value, float) and value.is_integer():
        return str(int(value))  # an int column with gaps comes back as float
    return value if isinstance(value, str) else str(value)


def _as_strings(frame: pd.DataFrame) -> pd.DataFrame:
    frame = frame.rename(columns=lambda c: str(c).strip()).reset_index(drop=True)
    out = {}
    for col in frame.columns:
        values = frame[col].tolist()
        out[col] = values if all(type(v) is str for v in values) else [_cell(v) for v in values]
    return pd.DataFrame(out, dtype=object)


def record_hashes(frame: pd.DataFrame) -> list[str]:
    """One short sha256 per raw row over all its cells (columns in sorted order).

    The split manifest stores these, so reordering rows or columns is not a data change.
    """
    cols = sorted(frame.columns)
    rows = zip(*(frame[c].tolist() for c in cols)) if cols else iter(())
    return [hashlib.sha256("\x1f".join(r).encode()).hexdigest()[:20] for r in rows]
