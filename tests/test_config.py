import tomllib
from pathlib import Path

import pytest

from common.config import RunConfig, from_flat, from_run_config, load_toml, resolve
from common.errors import ConfigError

ROOT = Path(__file__).resolve().parents[1]


def test_defaults_round_trip_through_toml(tmp_path):
    cfg = resolve(None, ["train.learning-rate=0.01", "federation.rounds=7", "data.scrub-pii=false"])
    path = tmp_path / "c.toml"
    path.write_text(cfg.to_toml())
    again = resolve(path)
    assert again == cfg
    assert again.train.learning_rate == 0.01 and again.federation.rounds == 7
    assert again.data.scrub_pii is False
    assert again.hash() == cfg.hash()


def test_flat_run_config_round_trip():
    cfg = resolve(None, ["model.lora-r=4", "simulation.partition=iid"])
    assert from_run_config(cfg.to_flat()) == cfg


def test_pyproject_mirrors_defaults():
    """[tool.flwr.app.config] must equal the dataclass defaults, key for key."""
    py = tomllib.loads((ROOT / "pyproject.toml").read_text())
    mirrored = py["tool"]["flwr"]["app"]["config"]
    assert mirrored == RunConfig().to_nested()


@pytest.mark.parametrize("key", ["train.learnig-rate", "trian.rounds", "rounds", "model.nope"])
def test_unknown_keys_rejected_with_fix(key):
    with pytest.raises(ConfigError) as err:
        resolve(None, [f"{key}=1"])
    assert key in str(err.value)


def test_typo_gets_suggestion():
    with pytest.raises(ConfigError, match="learning-rate"):
        resolve(None, ["train.learnig-rate=0.1"])


@pytest.mark.parametrize("pair,needle", [
    ("train.batch-size=big", "expected int"),
    ("train.learning-rate=-1", "learning-rate"),
    ("federation.strategy=fedsgd", "fedavg"),
    ("simulation.partition=dirichlet:x", "alpha"),
    ("model.finetune=qlora", "lora"),
    ("data.conflict-policy=maybe", "conflict_policy"),
])
def test_bad_values_rejected(pair, needle):
    with pytest.raises(ConfigError, match=needle):
        resolve(None, [pair])


def test_wrong_type_in_toml_file(tmp_path):
    path = tmp_path / "c.toml"
    path.write_text('[federation]\nrounds = "three"\n')
    with pytest.raises(ConfigError, match="federation.rounds"):
        resolve(path)


def test_bad_toml_and_missing_file(tmp_path):
    with pytest.raises(ConfigError, match="does not exist"):
        load_toml(tmp_path / "missing.toml")
    bad = tmp_path / "bad.toml"
    bad.write_text("[train\nx=1")
    with pytest.raises(ConfigError, match="not valid TOML"):
        load_toml(bad)


def test_labels_from_file_and_list(tmp_path):
    (tmp_path / "l.txt").write_text("a\nb\n\nc\n")
    cfg = from_flat({"task.labels": f"@{tmp_path / 'l.txt'}"})
    assert cfg.task.label_names() == ["a", "b", "c"]
    assert from_flat({"task.labels": "x, y"}).task.label_names() == ["x", "y"]
    with pytest.raises(ConfigError, match="twice"):
        from_flat({"task.labels": "x,x"}).task.label_names()


def test_contradictory_options():
    with pytest.raises(ConfigError, match="min-sites"):
        resolve(None, ["federation.min-sites=5", "simulation.sites=3"])
