"""DataConfig validation, mapping/flat parsing and hashing."""

import dataclasses

import pytest

from common.config import RunConfig, from_flat
from common.data.config import DataConfig, augment_ops, config_hash, split_fractions
from common.errors import ConfigError


def test_defaults_are_valid_and_scalar():
    cfg = DataConfig()
    assert split_fractions(cfg.split) == (0.7, 0.2, 0.1)
    assert all(isinstance(v, (str, int, float, bool)) for v in dataclasses.asdict(cfg).values())


@pytest.mark.parametrize("field,value,needle", [
    ("text_column", "", "text_column"),
    ("text_column", " , ", "text_column"),
    ("label_column", "", "label_column"),
    ("split", "0.7,0.2", "split"),
    ("split", "0.7,0.2,0.2", "split"),
    ("split", "0,0.5,0.5", "split"),
    ("split", "a,b,c", "split"),
    ("min_chars", -1, "min_chars"),
    ("max_chars", 0, "max_chars"),
    ("long_row_policy", "dorp", "did you mean 'drop'"),
    ("bad_label_policy", "skip", "bad_label_policy"),
    ("conflict_policy", "vote", "conflict_policy"),
    ("date_policy", "blur", "date_policy"),
    ("augment", "synonym", "augment"),
    ("augment", "synonym:2", "augment"),
    ("augment", "rotate:0.1", "augment"),
    ("augment_copies", 0, "augment_copies"),
    ("min_count_shared", 0, "min_count_shared"),
    ("template", "no fields here", "template"),
    ("template", "{0} positional", "template"),
    ("scrub_pii", "yes", "scrub_pii"),
    ("min_chars", 1.5, "min_chars"),
    ("max_chars", True, "max_chars"),
])
def test_invalid_field_names_field_value_and_fix(field, value, needle):
    with pytest.raises(ConfigError) as err:
        DataConfig(**{field: value})
    msg = str(err.value)
    assert needle in msg and f"data.{field}=" in msg and "fix:" in msg


def test_template_alone_is_enough():
    cfg = DataConfig(text_column="", template="amount: {amount}; merchant: {merchant}")
    assert cfg.template


def test_augment_spec_parses():
    assert augment_ops("synonym:0.1, swap:0.2,delete:0.05") == [("synonym", 0.1), ("swap", 0.2), ("delete", 0.05)]
    assert augment_ops("") == []


def test_mapping_coerces_strings_and_rejects_unknown_keys():
    """[data] is parsed like every section (common/config.py): one dialect, one coercion."""
    cfg = from_flat({"data.min-chars": "3", "data.scrub-pii": "false", "data.split": "0.8,0.1,0.1"}).data
    assert cfg.min_chars == 3 and cfg.scrub_pii is False
    with pytest.raises(ConfigError) as err:
        from_flat({"data.text-colum": "x"})
    assert "text-colum" in str(err.value) and "text-column" in str(err.value) and "label-column" in str(err.value)
    with pytest.raises(ConfigError, match="min-chars"):
        from_flat({"data.min-chars": "three"})


def test_flat_round_trip_and_hash_stability():
    cfg = DataConfig(group_column="patient", augment="swap:0.1")
    flat = RunConfig(data=cfg).to_flat()
    assert flat["data.group-column"] == "patient"
    assert from_flat(flat).data == cfg
    copy = DataConfig(**dataclasses.asdict(cfg))
    assert config_hash(dataclasses.asdict(cfg)) == config_hash(dataclasses.asdict(copy))
    assert config_hash({"a": 1}) != config_hash({"a": 2})
