"""Site policy: load + validate the site's TOML, carry it as node config, refuse violating runs."""

from __future__ import annotations

from pathlib import Path

import pytest

from client.policy import (PolicyViolation, SitePolicy, check_policy, enforce_policy, load_policy,
                           policy_from_node_config, redact_metrics, run_epsilon,
                           site_policy)
from common.config import resolve
from common.errors import ConfigError, FedtuneError
from common.model import model_fingerprint

ROOT = Path(__file__).resolve().parents[1]
SHA = "ab" * 32


def _write(tmp_path: Path, text: str) -> Path:
    path = tmp_path / "policy.toml"
    path.write_text(text)
    return path


def test_example_policy_loads_and_round_trips_through_node_config():
    policy = load_policy(ROOT / "deploy/site-policy.example.toml")
    node = policy.to_node_config()
    assert all(isinstance(v, (str, int, float, bool)) for v in node.values())  # Flower: scalars only
    back = policy_from_node_config({**node, "site-name": "bank-a"})
    assert back.site == "bank-a"
    assert back == SitePolicy(**{**policy.__dict__, "site": "bank-a"})


def test_no_policy_keys_means_safe_defaults():
    assert policy_from_node_config({"data-path": "/x.csv", "site-name": "a"}) is None
    default = site_policy({"data-path": "/x.csv", "site-name": "a"})
    assert default == SitePolicy(site="a")
    assert (default.require_scrub, default.allow_augment_under_dp, default.max_delta,
            default.secagg_min_cohort, default.secagg_min_threshold) == (True, False, None, 3, 0.5)
    assert enforce_policy({"data-path": "/x.csv"}, resolve()) == SitePolicy()


def test_privacy_and_secagg_keys_round_trip_through_node_config(tmp_path):
    policy = load_policy(_write(tmp_path, "max-delta = 1e-6\nrequire-scrub = false\n"
                                "allow-augment-under-dp = true\nmax-rounds-per-run = 4\n"
                                "allow-full-finetune = false\nsecagg-min-cohort = 5\n"
                                "secagg-min-threshold = 0.6\n"))
    node = policy.to_node_config()
    assert all(isinstance(v, (str, int, float, bool)) for v in node.values())
    back = policy_from_node_config(node)
    assert back == policy
    assert (back.max_delta, back.require_scrub, back.allow_augment_under_dp, back.max_rounds_per_run,
            back.allow_full_finetune, back.secagg_min_cohort, back.secagg_min_threshold) == (
        1e-6, False, True, 4, False, 5, 0.6)
    # Flower may hand a string boolean; a junk one is an error, never "true"
    assert policy_from_node_config({**node, "policy-require-scrub": "true"}).require_scrub is True
    with pytest.raises(ConfigError, match="not a boolean"):
        policy_from_node_config({**node, "policy-require-scrub": "yes"})


@pytest.mark.parametrize("text, match", [
    ("max-delta = 1.5\n", "max-delta"), ("max-rounds-per-run = -1\n", "max-rounds-per-run"),
    ("secagg-min-cohort = 1\n", "secagg-min-cohort"),
    ("secagg-min-threshold = 1.0\n", "secagg-min-threshold"),
    ("require-scrub = \"no\"\n", "require-scrub"),
])
def test_bad_privacy_keys_name_the_key(tmp_path, text, match):
    with pytest.raises(ConfigError, match=match):
        load_policy(_write(tmp_path, text))


@pytest.mark.parametrize("overrides, policy, rule", [
    (["data.scrub-pii=false"], SitePolicy(), "require-scrub"),
    (["privacy.dp=true", "data.augment=swap:0.1", "data.augment-copies=3"], SitePolicy(),
     "allow-augment-under-dp"),
    (["privacy.dp=true", "privacy.delta=0.001"], SitePolicy(max_delta=1e-5), "max-delta"),
    (["privacy.dp=true", "privacy.delta=0.5"], SitePolicy(), "delta-below-one-over-n"),
    (["federation.rounds=9"], SitePolicy(max_rounds_per_run=4), "max-rounds-per-run"),
    (["model.finetune=full"], SitePolicy(allow_full_finetune=False), "allow-full-finetune"),
    # a loss shaped by the site's own train counts makes every record's gradient depend on the
    # others (one record can flip a class from present to absent): outside DP-SGD's per-record bound
    (["privacy.dp=true", "train.absent-class-scale=0.5"], SitePolicy(), "dp-loss-from-counts"),
    (["privacy.dp=true", "train.class-weights=balanced"], SitePolicy(), "dp-loss-from-counts"),
])
def test_privacy_rules_refuse_with_a_fixed_public_reason(overrides, policy, rule):
    """Scenario 4 and 8: delta, scrubbing, augmentation, rounds and full fine-tuning are the
    site's decisions; the run config cannot override them."""
    cfg = resolve(None, overrides)
    with pytest.raises(PolicyViolation) as err:
        check_policy(policy, cfg, base_fingerprint="", rows=10**6 if rule == "max-delta" else 1000)
    assert rule in str(err.value) or rule in err.value.public
    assert f"rule {rule}" in err.value.public and not any(c.isdigit() for c in err.value.public)


def test_site_may_allow_what_the_defaults_refuse():
    cfg = resolve(None, ["data.scrub-pii=false", "privacy.dp=true", "data.augment=swap:0.1"])
    check_policy(SitePolicy(require_scrub=False, allow_augment_under_dp=True), cfg,
                 base_fingerprint="", rows=1000)
    check_policy(SitePolicy(), resolve(None, ["privacy.dp=true", "privacy.delta=0.0001"]),
                 base_fingerprint="", rows=1000)


@pytest.mark.parametrize("text, match", [
    ("max-epsilom = 3.0\n", "unknown key `max-epsilom`"),
    ("max-epsilon = -1.0\n", "max-epsilon"),
    ("task-types = [\"translation\"]\n", "task-types"),
    ("base-model-sha256 = [\"abc\"]\n", "64-digit"),
    ("min-rows = \"ten\"\n", "min-rows"),
    ("share-metrics = 1\n", "share-metrics"),
    ("max-epsilon = \n", "not valid TOML"),
])
def test_bad_policy_files_name_the_key(tmp_path, text, match):
    with pytest.raises(ConfigError, match=match) as err:
        load_policy(_write(tmp_path, text))
    assert "policy.toml" in str(err.value)


def test_missing_file(tmp_path):
    with pytest.raises(ConfigError, match="does not exist"):
        load_policy(tmp_path / "nope.toml")


def test_allowed_run_passes():
    policy = SitePolicy(base_sha256=(SHA,), task_types=("classification",), min_rows=10)
    check_policy(policy, resolve(), base_fingerprint=SHA, rows=10)


def test_each_violation_is_named_with_a_fix():
    policy = SitePolicy(max_epsilon=4.0, base_sha256=(SHA,), task_types=("regression",), min_rows=500,
                        source="/etc/fedtune/policy.toml", site="bank-a")
    with pytest.raises(PolicyViolation) as err:
        check_policy(policy, resolve(), base_fingerprint="cd" * 32, rows=20)
    text = str(err.value)
    assert isinstance(err.value, FedtuneError)
    assert "site 'bank-a' refuses this run (policy.toml)" in text and "/etc" not in text
    assert "task.type = 'classification'" in text and "task-types" in text
    assert "sha256 cdcdcdcd" in text and "pinned" in text
    assert "without differential privacy" in text and "epsilon <= 4" in text
    assert "20 training rows" in text and "min-rows = 500" in text


def test_epsilon_limit_against_run_privacy():
    policy = SitePolicy(max_epsilon=4.0)
    dp8 = resolve(None, ["privacy.dp=true", "privacy.epsilon=8"])
    dp2 = resolve(None, ["privacy.dp=true", "privacy.epsilon=2"])
    assert run_epsilon(resolve()) is None and run_epsilon(dp8) == 8.0
    with pytest.raises(PolicyViolation, match="epsilon 8 exceeds the site's max-epsilon 4"):
        check_policy(policy, dp8, base_fingerprint="")
    check_policy(policy, dp2, base_fingerprint="")


def test_enforce_policy_fingerprints_the_base_model(tiny_model_dir):
    cfg = resolve(None, [f"model.base={tiny_model_dir}"])
    good = model_fingerprint(str(tiny_model_dir))
    node = {"site-name": "a", **SitePolicy(base_sha256=(good,), source="p.toml").to_node_config()}
    assert enforce_policy(node, cfg) is not None
    node = {"site-name": "a", **SitePolicy(base_sha256=(SHA,), source="p.toml").to_node_config()}
    with pytest.raises(PolicyViolation, match="not one of the pinned base-model-sha256"):
        enforce_policy(node, cfg)


def test_redact_metrics():
    metrics = {"num_examples": 12, "accuracy": 0.9, "loss": 0.3}
    assert redact_metrics(None, metrics) == metrics
    assert redact_metrics(SitePolicy(), metrics) == metrics
    assert redact_metrics(SitePolicy(share_metrics=False), metrics) == {"num_examples": 12}


def test_site_start_writes_policy_into_node_config(tmp_path):
    from fedtune.ops.site import node_config, write_node_config

    data = tmp_path / "d.csv"
    data.write_text("text,label\nhello,a\n")
    policy = _write(tmp_path, f'base-model-sha256 = ["{SHA}"]\nmin-rows = 5\nprivacy-budget = 3.0\n')
    values = node_config(data=data, site_dir=tmp_path / "s", name="a", index=7, policy=policy)
    write_node_config(tmp_path / "node.toml", values)
    # Flower reads `--node-config FILE.toml` with its own parser: check it yields the same dict
    from flwr.common.config import parse_config_args

    parsed = parse_config_args([str(tmp_path / "node.toml")])
    assert parsed == values
    assert parsed["privacy-budget"] == 3.0 and parsed["data-path"] == str(data)
    assert policy_from_node_config(parsed).base_sha256 == (SHA,)
