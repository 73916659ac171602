"""The site data pipeline's typed config: defaults, help text and validation.

Every field is a scalar (str/int/float/bool) so the config mirrors 1:1 into Flower's flat run
config as `data.<field>` (kebab-case, parsed like every section by common/config.py). Bad values
raise ConfigError naming the field, the value and the fix.
"""

from __future__ import annotations

import dataclasses
import difflib
import hashlib
import json
import string
from collections.abc import Mapping
from dataclasses import dataclass, field
from typing import Any

from common.errors import ConfigError

LONG_ROW_POLICIES = ("drop", "fail", "truncate")
BAD_LABEL_POLICIES = ("fail", "drop")
CONFLICT_POLICIES = ("drop", "majority", "first")
DATE_POLICIES = ("mask", "shift")
# "backtranslate" is a hook only: prepare_site(augmenters={"backtranslate": fn}) supplies the model.
AUGMENT_OPS = ("synonym", "swap", "delete", "backtranslate")

# Fields that decide which rows exist and where they land; the split manifest pins these.
SPLIT_FIELDS = (
    "text_column", "label_column", "group_column", "template", "split", "min_chars",
    "max_chars", "long_row_policy", "bad_label_policy", "conflict_policy",
)


def _help(default: Any, text: str) -> Any:
    return field(default=default, metadata={"help": text})


@dataclass
class DataConfig:
    """How one site turns its raw file into train/val/test text. Validated on construction.

    Each field's help text is in ``dataclasses.fields(DataConfig)[i].metadata["help"]``.
    """

    text_column: str = _help("text", 'text column, or several comma-separated (joined with " | ")')
    label_column: str = _help("label", "label column (class name, or a number for task=regression)")
    group_column: str = _help("", 'customer/patient id column: no id spans two splits; "" = none')
    template: str = _help("", 'renders tabular rows, e.g. "amount: {amount}; merchant: {merchant}"; '
                              '"" = use text_column')
    split: str = _help("0.7,0.2,0.1", "train,val,test fractions summing to 1")
    min_chars: int = _help(1, "rows shorter than this after cleaning are dropped")
    max_chars: int = _help(20000, "rows longer than this are handled by long_row_policy")
    long_row_policy: str = _help("drop", "drop | fail | truncate")
    bad_label_policy: str = _help("fail", "NaN/empty labels: fail | drop")
    conflict_policy: str = _help("drop", "same text, different labels: drop (all copies) | majority | first")
    scrub_pii: bool = _help(True, "replace PII/PHI with typed placeholders such as [EMAIL]")
    date_policy: str = _help("mask", "mask ([DATE]) | shift (per-group day offset, format kept)")
    augment: str = _help("", 'train-only augmentation, e.g. "synonym:0.1,swap:0.1,delete:0.1"; "" = off')
    augment_copies: int = _help(1, "augmented copies per train row")
    min_count_shared: int = _help(5, "counts below this are suppressed in the shareable report")

    def __post_init__(self) -> None:
        for f in dataclasses.fields(self):
            value = getattr(self, f.name)
            want = {"str": str, "int": int, "float": float, "bool": bool}[str(f.type)]
            if want is int and isinstance(value, bool) or not isinstance(value, want):
                _bad(f.name, value, f"expected {want.__name__}, got {type(value).__name__}",
                     f"write it as a {want.__name__}")
        if not self.template.strip() and not text_columns(self):
            _bad("text_column", self.text_column, "no column named",
                 "name the text column (or several, comma-separated), or set `template`")
        if not self.label_column.strip():
            _bad("label_column", self.label_column, "empty", "name the label column")
        if self.template:
            template_fields(self.template)
        split_fractions(self.split)
        if self.min_chars < 0:
            _bad("min_chars", self.min_chars, "negative", "use 0 or more")
        if self.max_chars <= max(self.min_chars, 0):
            _bad("max_chars", self.max_chars, f"not above min_chars={self.min_chars}",
                 "set max_chars larger than min_chars")
        for name, allowed in (("long_row_policy", LONG_ROW_POLICIES),
                              ("bad_label_policy", BAD_LABEL_POLICIES),
                              ("conflict_policy", CONFLICT_POLICIES),
                              ("date_policy", DATE_POLICIES)):
            _choice(name, getattr(self, name), allowed)
        augment_ops(self.augment)
        if not 1 <= self.augment_copies <= 50:
            _bad("augment_copies", self.augment_copies, "out of range", "use 1..50")
        if self.min_count_shared < 1:
            _bad("min_count_shared", self.min_count_shared, "below 1", "use 1 or more (e.g. 5, 10)")


def _bad(name: str, value: Any, why: str, fix: str) -> None:
    raise ConfigError(f"data.{name}={value!r} is invalid ({why}); fix: {fix}")


def _choice(name: str, value: str, allowed: tuple[str, ...]) -> None:
    if value not in allowed:
        close = difflib.get_close_matches(value, allowed, n=1)
        hint = f" (did you mean {close[0]!r}?)" if close else ""
        _bad(name, value, f"not one of {', '.join(allowed)}", f"use one of {', '.join(allowed)}{hint}")


def text_columns(cfg: DataConfig) -> list[str]:
    """The text column names, split on commas (several are joined with " | ")."""
    return [c.strip() for c in cfg.text_column.split(",") if c.strip()]


def template_fields(template: str) -> list[str]:
    """Column names a ``{column}`` template refers to; ConfigError on malformed templates."""
    try:
        parsed = list(string.Formatter().parse(template))
    except ValueError as exc:
        _bad("template", template, str(exc), "use {column} placeholders and double {{ }} braces")
    names = [name for _, name, _, _ in parsed if name is not None]
    if not names or any(not n or n.isdigit() for n in names):
        _bad("template", template, "needs at least one named {column} placeholder",
             'write e.g. "amount: {amount}; merchant: {merchant}"')
    return list(dict.fromkeys(names))


def split_fractions(spec: str) -> tuple[float, float, float]:
    """Parse "train,val,test" fractions; they must be >= 0, train > 0, summing to 1."""
    try:
        parts = tuple(float(p) for p in spec.split(","))
    except ValueError:
        parts = ()
    if len(parts) != 3 or min(parts) < 0 or parts[0] <= 0 or abs(sum(parts) - 1) > 1e-6:
        _bad("split", spec, "need three fractions train,val,test >= 0 with train > 0 summing to 1",
             'write e.g. "0.7,0.2,0.1" or "0.8,0.2,0"')
    return parts  # type: ignore[return-value]


def augment_ops(spec: str) -> list[tuple[str, float]]:
    """Parse "synonym:0.1,swap:0.1" into [(op, probability)]; "" means augmentation is off."""
    ops: list[tuple[str, float]] = []
    for item in filter(None, (s.strip() for s in spec.split(","))):
        name, _, prob = item.partition(":")
        _choice("augment", name.strip(), AUGMENT_OPS)
        try:
            p = float(prob)
        except ValueError:
            p = -1.0
        if not 0 < p <= 1:
            _bad("augment", spec, f"{item!r} needs a probability in (0, 1]", 'write e.g. "synonym:0.1,swap:0.1"')
        ops.append((name.strip(), p))
    return ops


def split_config(cfg: DataConfig, *, task: str, label_names: list[str] | None) -> dict[str, Any]:
    """The settings that decide split membership (recorded in the split manifest)."""
    out: dict[str, Any] = {k: getattr(cfg, k) for k in SPLIT_FIELDS}
    out["task"] = task
    out["label_names"] = list(label_names) if label_names is not None else None
    return out


def config_hash(values: Mapping[str, Any]) -> str:
    """Stable sha256 of a JSON-able mapping (sorted keys)."""
    blob = json.dumps(dict(values), sort_keys=True, separators=(",", ":")).encode()
    return hashlib.sha256(blob).hexdigest()
