"""Augmentation: seeded, placeholder-safe, train-only (see test_data_prepare), with a hook."""

import random

import pandas as pd
import pytest

from common.data.augment import (augment_frame, augment_text, load_synonyms, random_delete, random_swap,
                                 synonym_replace)
from common.errors import ConfigError


def test_synonym_table_is_offline_and_sizeable():
    table = load_synonyms()
    assert len(table) >= 200 and all(isinstance(v, list) and v for v in table.values())


def test_synonym_keeps_case_and_punctuation():
    out = synonym_replace(["Money,", "please"], p=1.0, rng=random.Random(0), table={"money": ["cash"]})
    assert out == ["Cash,", "please"]


def test_placeholders_survive_delete_and_synonym():
    words = ["[EMAIL]", "card", "[CARD].", "money"]
    for seed in range(20):
        rng = random.Random(seed)
        assert {"[EMAIL]", "[CARD]."} <= set(random_delete(words, p=0.9, rng=rng))
        assert {"[EMAIL]", "[CARD]."} <= set(synonym_replace(words, p=1.0, rng=rng, table=load_synonyms()))
    assert sorted(random_swap(words, p=0.5, rng=random.Random(1))) == sorted(words)
    assert random_delete(["only"], p=1.0, rng=random.Random(0)) == ["only"]


def test_augment_frame_is_seeded():
    frame = pd.DataFrame({"text": ["I need help with my card payment", "where is my money"], "label": [0, 1]})
    a, counts = augment_frame(frame, spec="synonym:0.3,swap:0.2", copies=2, seed=1)
    b, _ = augment_frame(frame, spec="synonym:0.3,swap:0.2", copies=2, seed=1)
    c, _ = augment_frame(frame, spec="synonym:0.3,swap:0.2", copies=2, seed=2)
    assert a.equals(b) and not a.equals(c)
    assert counts["rows_added"] + counts["unchanged_skipped"] == 4 and len(a) == 2 + counts["rows_added"]
    assert str(a["label"].dtype) == "int64"
    same, counts = augment_frame(frame, spec="", copies=1, seed=1)
    assert same is frame and counts["rows_added"] == 0


def test_backtranslation_hook():
    calls = []

    def fake_backtranslate(text, *, p, rng):
        calls.append(p)
        return text.upper()

    out = augment_text("hello there", ops=[("backtranslate", 0.5)], rng=random.Random(0), table={},
                       augmenters={"backtranslate": fake_backtranslate})
    assert out == "HELLO THERE" and calls == [0.5]
    with pytest.raises(ConfigError, match="backtranslate.*augmenters"):
        augment_text("hello", ops=[("backtranslate", 0.5)], rng=random.Random(0), table={})
