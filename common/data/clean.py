"""Cleaning: normalise text, drop empty/short rows, remove duplicates, resolve label conflicts.

Pure functions over a (row, text, label, group) frame; every step is counted for the report.
"""

from __future__ import annotations

import html
import re
import unicodedata

import pandas as pd

from common.data.config import DataConfig

# C0/C1 controls become spaces; zero-width/format characters vanish (they are meant invisible).
_CONTROL = re.compile(r"[\x00-\x08\x0b\x0c\x0e-\x1f\x7f-\x9f]")
_INVISIBLE = re.compile("[\u00ad\u200b-\u200f\u202a-\u202e\u2060-\u2064\ufeff]")
_NOT_WORD = re.compile(r"[\W_]+")
# East Asian scripts (ideographs, kana, hangul, CJK symbols and punctuation) and full-width
# punctuation: a full-width punctuation mark next to one of these is CJK punctuation and stays.
_EAST_ASIAN = re.compile("[\u3000-\u30ff\u3400-\u4dbf\u4e00-\u9fff\uac00-\ud7af\uf900-\ufaff"
                         "\u201c\u201d\u2018\u2019\uff01-\uff0f\uff1a-\uff20\uff3b-\uff40\uff5b-\uff65]")
_FULL_PUNCT = re.compile("[\uff01-\uff0f\uff1a-\uff20\uff3b-\uff40\uff5b-\uff5e]")
_FULL_BRACKETS = frozenset("（）［］｛｝＂＇")  # kept in CJK text even when they wrap ASCII: pairs stay alike
_CJK_HINT = re.compile("[\u3000-\u30ff\u3400-\u9fff\uac00-\ud7af\uf900-\ufaff]")


def normalize_width(text: str) -> str:
    """NFKC, except that full-width punctuation next to East Asian text stays full-width.

    Full-width letters, digits and symbols become ASCII ("１３８" -> "138", "ｅｍａｉｌ＠ｘ．ｃｏｍ"
    -> "email@x.com") so the PII patterns and the tokenizer see one form. A full-width mark between
    ASCII characters ("１，２００" -> "1,200") is ASCII too; one touching CJK text ("你好，世界！")
    is Chinese punctuation, which Chinese vocabularies (bert-base-chinese) hold as its own token,
    so it is kept, and so are full-width brackets and quotes anywhere in CJK text (a pair stays
    alike: "（p=0.05）"). Half-width CJK punctuation ("｡" "､" "｢") becomes full-width (plain NFKC).
    """
    if not _CJK_HINT.search(text):
        return unicodedata.normalize("NFKC", text)
    out, start = [], 0
    for m in _FULL_PUNCT.finditer(text):
        i = m.start()
        before = text[:i].rstrip()[-1:]
        after = text[i + 1:].lstrip()[:1]
        if text[i] in _FULL_BRACKETS or _EAST_ASIAN.match(before or "a") or _EAST_ASIAN.match(after or "a"):
            out.append(unicodedata.normalize("NFKC", text[start:i]) + text[i])
            start = i + 1
    out.append(unicodedata.normalize("NFKC", text[start:]))
    return "".join(out)


def clean_text(text: str) -> str:
    """HTML-unescape, NFKC-normalise (CJK punctuation kept: normalize_width), strip control
    characters and collapse whitespace."""
    if "&" in text:
        text = html.unescape(text)
    if not text.isascii():
        text = normalize_width(text)
        text = _INVISIBLE.sub("", text)
    text = _CONTROL.sub(" ", text)
    return " ".join(text.split())


def dedupe_key(text: str) -> str:
    """Case-, punctuation- and whitespace-insensitive key for near-duplicate detection."""
    return " ".join(_NOT_WORD.sub(" ", text.casefold()).split())


def clean_frame(frame: pd.DataFrame, *, cfg: DataConfig) -> tuple[pd.DataFrame, dict[str, int]]:
    """Normalise texts, then drop empty/short rows, duplicates and conflicting labels.

    Duplicates with the same label keep their first row; a text that carries different labels
    (exact or normalised match) is resolved by ``cfg.conflict_policy``: "drop" removes every copy,
    "majority" keeps the first row of the most frequent label (ties: the label seen first),
    "first" keeps the first row.
    """
    counts: dict[str, int] = {"rows_in": len(frame)}
    before = frame["text"].tolist()
    after = [clean_text(t) for t in before]
    counts["texts_normalised"] = sum(a != b for a, b in zip(after, before))
    frame = frame.assign(text=after)

    empty = frame["text"].str.len() == 0
    counts["empty_dropped"] = int(empty.sum())
    short = ~empty & (frame["text"].str.len() < cfg.min_chars)
    counts["too_short_dropped"] = int(short.sum())
    frame = frame[~(empty | short)]

    frame, dup_counts = resolve_duplicates(frame, policy=cfg.conflict_policy)
    counts.update(dup_counts)
    counts["rows_out"] = len(frame)
    return frame.reset_index(drop=True), counts


def resolve_duplicates(frame: pd.DataFrame, *, policy: str) -> tuple[pd.DataFrame, dict[str, int]]:
    """Remove exact and normalised duplicates and apply the conflict policy; returns (frame, counts)."""
    keys = pd.Series([dedupe_key(t) for t in frame["text"].tolist()], index=frame.index)
    labels = frame["label"].astype(str)
    n_labels = labels.groupby(keys).transform("nunique")
    conflict = n_labels > 1
    counts = {"conflict_groups": int(keys[conflict].nunique()), "conflict_rows": int(conflict.sum())}

    plain = frame[~conflict]
    exact = plain.duplicated(["text", "label"])
    counts["exact_duplicates_removed"] = int(exact.sum())
    plain = plain[~exact]
    near = keys[plain.index].duplicated()
    counts["normalized_duplicates_removed"] = int(near.sum())
    plain = plain[~near.to_numpy()]

    kept = _resolve_conflicts(frame[conflict], keys[conflict], labels[conflict], policy)
    counts["conflict_rows_removed"] = counts["conflict_rows"] - len(kept)
    out = pd.concat([plain, kept]).sort_index()
    return out, counts


def _resolve_conflicts(frame: pd.DataFrame, keys: pd.Series, labels: pd.Series, policy: str) -> pd.DataFrame:
    if frame.empty or policy == "drop":
        return frame.iloc[:0]
    if policy == "first":
        return frame[~keys.duplicated()]
    keep = []
    for _, idx in keys.groupby(keys, sort=False).groups.items():
        group = labels[idx]
        freq = group.value_counts(sort=False)  # first-seen order breaks ties
        winner = freq.idxmax()
        keep.append(group.index[group == winner][0])
    return frame.loc[sorted(keep)]
