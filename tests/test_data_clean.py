"""Cleaning: normalisation, empty/short rows, exact and normalised duplicates, label conflicts."""

import pandas as pd
import pytest

from common.data.clean import clean_frame, clean_text, dedupe_key
from common.data.config import DataConfig


@pytest.mark.parametrize("raw,want", [
    ("  hello \t\n world  ", "hello world"),              # whitespace collapse
    ("ＡＢＣ １２３", "ABC 123"),                           # NFKC full-width
    ("ﬁnance", "finance"),                                # NFKC ligature
    ("Tom &amp; Jerry &lt;3", "Tom & Jerry <3"),            # HTML entities
    ("non&nbsp;breaking", "non breaking"),                # entity -> NBSP -> space
    ("bell\x07char\x00s", "bell char s"),                 # control characters
    ("zero\u200bwidth\ufeff", "zerowidth"),               # invisible format characters
    ("café £25 €10", "café £25 €10"),                     # ordinary non-ASCII stays
])
def test_clean_text(raw, want):
    assert clean_text(raw) == want


def test_dedupe_key_ignores_case_punctuation_whitespace():
    assert dedupe_key("Has my top-up gone through?") == dedupe_key("has my  top up gone through")


def frame(rows):
    return pd.DataFrame({"row": range(1, len(rows) + 1), "text": [t for t, _ in rows],
                         "label": [lab for _, lab in rows], "group": ""})


def test_empty_and_short_rows_dropped():
    out, counts = clean_frame(frame([("ok text", "a"), ("   ", "a"), ("\u200b", "b"), ("ab", "a")]),
                              cfg=DataConfig(min_chars=3))
    assert out["text"].tolist() == ["ok text"]
    assert counts["empty_dropped"] == 2 and counts["too_short_dropped"] == 1 and counts["rows_out"] == 1


def test_exact_and_normalised_duplicates_keep_first():
    rows = [("Where is my card?", "a"), ("Where is my card?", "a"), ("where is my card", "a"),
            ("WHERE  is my card!!", "a"), ("Other text", "b")]
    out, counts = clean_frame(frame(rows), cfg=DataConfig())
    assert out["row"].tolist() == [1, 5]
    assert counts["exact_duplicates_removed"] == 1 and counts["normalized_duplicates_removed"] == 2
    assert counts["conflict_groups"] == 0 and counts["texts_normalised"] == 1


CONFLICT = [("Has my top up gone through?", "x"), ("other", "c"), ("has my top-up gone through", "y"),
            ("Has my top up gone through?", "y"), ("unique", "d")]


@pytest.mark.parametrize("policy,rows", [("drop", [2, 5]), ("first", [1, 2, 5]), ("majority", [2, 3, 5])])
def test_conflict_policies(policy, rows):
    out, counts = clean_frame(frame(CONFLICT), cfg=DataConfig(conflict_policy=policy))
    assert out["row"].tolist() == rows
    assert counts["conflict_groups"] == 1 and counts["conflict_rows"] == 3
    assert counts["conflict_rows_removed"] == 3 - (len(rows) - 2)


def test_majority_tie_keeps_first_seen_label():
    out, _ = clean_frame(frame([("same", "b"), ("same", "a")]), cfg=DataConfig(conflict_policy="majority"))
    assert out["label"].tolist() == ["b"]


def test_int_labels_conflict_too():
    f = frame([("same", 0), ("same", 1), ("x", 1)])
    f["label"] = f["label"].astype("int64")
    out, counts = clean_frame(f, cfg=DataConfig())
    assert out["row"].tolist() == [3] and counts["conflict_rows_removed"] == 2
