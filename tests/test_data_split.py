"""Split: stratified, group-aware, deterministic; tiny classes go to train; manifest helpers."""

from collections import Counter

from common.data.split import assign_splits, build_manifest, manifest_problems, splits_from_manifest

FRACS = (0.7, 0.2, 0.1)


def test_stratified_ratio_per_label():
    labels = ["a"] * 100 + ["b"] * 50
    out = assign_splits(labels, fractions=FRACS, seed=0)
    for lab, n in (("a", 100), ("b", 50)):
        c = Counter(s for s, l in zip(out, labels) if l == lab)
        assert c == {"train": round(0.7 * n), "val": round(0.2 * n), "test": round(0.1 * n)}


def test_tiny_classes_go_to_train():
    labels = ["big"] * 30 + ["one"] + ["two"] * 2
    out = assign_splits(labels, fractions=FRACS, seed=3)
    assert out[30] == "train" and out[31] == out[32] == "train"


def test_deterministic_and_seed_sensitive():
    labels = [i % 4 for i in range(200)]
    a = assign_splits(labels, fractions=FRACS, seed=1)
    assert a == assign_splits(labels, fractions=FRACS, seed=1)
    assert a != assign_splits(labels, fractions=FRACS, seed=2)


def test_group_aware_no_group_in_two_splits():
    groups = [f"g{i // 3}" for i in range(300)] + [""] * 10   # 100 groups of 3, plus ungrouped rows
    labels = [i % 3 for i in range(310)]
    out = assign_splits(labels, fractions=FRACS, seed=5, groups=groups)
    where = {}
    for g, s in zip(groups, out):
        if g:
            assert where.setdefault(g, s) == s
    c = Counter(out)
    assert 0.6 < c["train"] / 310 < 0.8 and c["val"] > 30 and c["test"] > 10
    assert out == assign_splits(labels, fractions=FRACS, seed=5, groups=groups)


def test_zero_fraction_split_stays_empty_and_regression_unstratified():
    out = assign_splits([0.1 * i for i in range(50)], fractions=(0.8, 0.2, 0.0), seed=0, stratify=False)
    assert Counter(out) == {"train": 40, "val": 10}


def test_manifest_problems_counts_added_and_removed():
    m = build_manifest(records={"train": ["h1", "h2"], "val": ["h3"], "test": [], "unused": ["h4"]},
                       input_sha256="abc" * 20, input_rows=4, columns=["text", "label"], seed=1,
                       split_cfg={"split": "x"}, config_hash="c")
    assert manifest_problems(m, input_hashes=["h4", "h3", "h2", "h1"], seed=1, split_cfg={"split": "x"}) == []
    probs = manifest_problems(m, input_hashes=["h1", "h2", "h3", "h4", "h5"], seed=1, split_cfg={"split": "x"})
    assert "1 row(s) added, 0 row(s) removed" in probs[0]
    probs = manifest_problems(m, input_hashes=["h1", "h9"], seed=2, split_cfg={"split": "y"})
    assert "1 row(s) added, 3 row(s) removed" in probs[0]
    assert any("seed" in p for p in probs) and any("split: 'x' -> 'y'" in p for p in probs)
    assert splits_from_manifest(m, ["h3", "h1", "h4"]) == ["val", "train", None]
    probs = manifest_problems(m, input_hashes=["h4", "h3", "h2", "h1"], seed=1, split_cfg={"split": "x"},
                              columns=["text", "label", "notes"])
    assert probs == ["columns changed: added ['notes'], removed []"]
