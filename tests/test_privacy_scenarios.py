"""Issue #14, one test per scenario: the privacy budget is a real bound whatever the coordinator
sends. Real sites on a tiny model, real Opacus accounting, real files; each test failed on the
per-fingerprint ledger (commit 29aa86b) and passes on the per-lineage one."""

from __future__ import annotations

import pandas as pd
import pytest
import torch

from client.policy import PolicyViolation, SitePolicy, check_policy, enforce_policy
from client.site import Site, SiteFacts
from common.adapter import get_state
from common.config import resolve
from common.errors import PrivacyBudgetExceeded
from tests.conftest import make_texts
from tests.test_privacy import _independent_epsilon, journal_entries

LABELS4 = "task.labels=intent_0,intent_1,intent_2,intent_3"


def _cfg(tiny_model_dir, *sets, labels=LABELS4):
    return resolve(None, [f"model.base={tiny_model_dir}", "model.max-length=24", "model.lora-r=4",
                          labels, "train.batch-size=16", "federation.rounds=1", "simulation.sites=2",
                          "privacy.dp=true", "privacy.epsilon=2", *sets])


@pytest.fixture
def site_csv(tmp_path):
    texts, labels = make_texts(120, 4)
    texts = [t + (f" write to user{i}@example.com before 2024-03-0{i % 9 + 1}" if i % 4 == 0 else "")
             for i, t in enumerate(texts)]  # some PII, so scrubbing and date policy change the split
    pd.DataFrame({"text": texts, "label": labels}).to_csv(tmp_path / "site.csv", index=False)
    return tmp_path / "site.csv"


def _site(cfg, csv, site_dir, **facts):
    return Site(cfg, SiteFacts(name="site-0", index=0, data_path=str(csv), site_dir=str(site_dir), **facts))


def test_s1_changed_settings_and_appended_rows_share_one_ledger(tmp_path, tiny_model_dir, site_csv):
    """Scenario 1: budget 3, two runs of epsilon 2 toggling scrub-pii spent 4.0 before."""
    sd = tmp_path / "s"
    first = _site(_cfg(tiny_model_dir), site_csv, sd, privacy_budget=3.0)
    first.fit(get_state(first.model, exclude=first.exclude), server_round=1, run="run-1")
    second = _site(_cfg(tiny_model_dir, "data.scrub-pii=false"), site_csv, sd, privacy_budget=3.0)
    _, stats = second.fit(get_state(second.model, exclude=second.exclude), server_round=1, run="run-2")
    assert 2.0 < stats["epsilon"] <= 3.0 + 1e-6  # run-2 added only what was left
    with site_csv.open("a") as fh:  # one appended row; the operator re-splits
        fh.write("a brand new customer query,intent_1\n")
    (sd / "split_manifest.json").unlink()
    third = _site(_cfg(tiny_model_dir, "data.date-policy=shift"), site_csv, sd, privacy_budget=3.0)
    assert len({first.fingerprint, second.fingerprint, third.fingerprint}) == 3  # old keys: 3 ledgers
    with pytest.raises(PrivacyBudgetExceeded):
        third.fit(get_state(third.model, exclude=third.exclude), server_round=1, run="run-3")
    assert third.ledger().spent() <= 3.0 + 1e-6
    assert third.ledger().spent() == pytest.approx(_independent_epsilon(sd), rel=1e-6)
    kinds = [(e["kind"], e.get("run")) for e in journal_entries(sd)]
    assert ("round", "run-1") in kinds and ("round", "run-2") in kinds


def test_s2_augmented_copies_refused_under_dp_and_min_rows_counts_people(tmp_path, tiny_model_dir,
                                                                          site_csv):
    """Scenario 2: copies of a record are the same person; min-rows was met by the copies."""
    cfg = _cfg(tiny_model_dir, "data.augment=swap:0.5,delete:0.3", "data.augment-copies=5")
    site = _site(cfg, site_csv, tmp_path / "s")
    assert len(site.splits["train"]) > 3 * site.records()  # the copies are there...
    with pytest.raises(PolicyViolation) as err:  # ...and no policy file means no copies under DP
        enforce_policy({"data-path": str(site_csv)}, cfg, rows=site.records())
    assert "allow-augment-under-dp" in err.value.public
    allowing = SitePolicy(allow_augment_under_dp=True, min_rows=len(site.splits["train"]))
    with pytest.raises(PolicyViolation, match="min-rows"):  # people, not rows, count
        check_policy(allowing, cfg, base_fingerprint="", rows=site.records())


def test_s3_a_run_trains_only_its_planned_rounds_each_once(tmp_path, tiny_model_dir, site_csv):
    """Scenario 3: a run advertising epsilon 1 could send 30 train messages and retries."""
    cfg = _cfg(tiny_model_dir, "privacy.epsilon=1", "federation.rounds=2")
    site = _site(cfg, site_csv, tmp_path / "s", privacy_budget=20.0)
    state = get_state(site.model, exclude=site.exclude)
    site.fit(state, server_round=1, run="r")
    with pytest.raises(PolicyViolation, match="already trained"):
        site.fit(state, server_round=1, run="r")  # a retry of a trained round
    _, stats = site.fit(state, server_round=2, run="r")
    for bad in (3, 0, "2", True, 2.0):  # beyond the plan / not an int
        with pytest.raises(PolicyViolation):
            site.fit(state, server_round=bad, run="r")
    stretched = _site(_cfg(tiny_model_dir, "privacy.epsilon=1", "federation.rounds=30"), site_csv,
                      tmp_path / "s", privacy_budget=20.0)
    with pytest.raises(PolicyViolation, match="plan"):  # same run, 30 rounds now: refused
        stretched.fit(state, server_round=3, run="r")
    assert stats["epsilon"] <= 1.0 + 1e-3 and site.ledger().spent() == pytest.approx(stats["epsilon"])


def test_s4_delta_is_the_sites_not_the_coordinators(tmp_path, tiny_model_dir, site_csv):
    """Scenario 4: any delta in [0, 1) was accepted and fixed in the ledger; 0.5 is vacuous."""
    vacuous = _cfg(tiny_model_dir, "privacy.delta=0.5")
    site = _site(vacuous, site_csv, tmp_path / "s")
    with pytest.raises(PolicyViolation) as err:
        enforce_policy({}, vacuous, rows=site.records())
    assert "delta" in err.value.public
    chosen = _cfg(tiny_model_dir, "privacy.delta=0.001")
    site = _site(chosen, site_csv, tmp_path / "s2", max_delta=1e-5)
    _, stats = site.fit(get_state(site.model, exclude=site.exclude), server_round=1, run="r")
    assert stats["delta"] == site.ledger().delta == pytest.approx(min(1e-5, 1 / (10 * site.records())))
    loose = _cfg(tiny_model_dir, "privacy.delta=0.01")  # below 1/n, above the site's 1/(10 n)
    default = _site(loose, site_csv, tmp_path / "s3")
    enforce_policy({}, loose, rows=default.records())
    default.fit(get_state(default.model, exclude=default.exclude), server_round=1, run="r")
    assert default.ledger().delta == pytest.approx(1 / (10 * default.records()))  # not 0.01
    stricter = _site(_cfg(tiny_model_dir, "privacy.delta=1e-9"), site_csv, tmp_path / "s3")
    with pytest.raises(PolicyViolation, match="below the delta"):  # cannot be met: refused
        stricter.fit(get_state(stricter.model, exclude=stricter.exclude), server_round=1, run="r2")


def test_s5_dp_randomness_is_not_predictable_from_the_seed(tmp_path, tiny_model_dir, site_csv,
                                                           monkeypatch):
    """Scenario 5: Poisson sampling and noise came from train.seed, the site index and the round."""
    from opacus.optimizers import DPOptimizer

    seen, real_init = [], DPOptimizer.__init__

    def spy(self, *args, **kwargs):  # records how the real optimizer is built, then builds it
        seen.append(kwargs)
        real_init(self, *args, **kwargs)

    monkeypatch.setattr(DPOptimizer, "__init__", spy)
    def once(tag, *sets):
        site = _site(_cfg(tiny_model_dir, *sets), site_csv, tmp_path / tag)
        torch.manual_seed(0)
        new, _ = site.fit(get_state(site.model, exclude=site.exclude), server_round=1, run="r")
        return new

    # the adapter under Opacus (DP linear probing's randomness: tests/test_dp_person.py)
    dp = [once(f"dp{i}", "privacy.probe-rounds=0") for i in range(2)]
    assert any(not torch.equal(dp[0][k], dp[1][k]) for k in dp[0])
    assert len(seen) == 2 and all(k["secure_mode"] and k["generator"] is not None for k in seen)
    assert seen[0]["generator"].initial_seed() != seen[1]["generator"].initial_seed()
    plain = [once(f"plain{i}", "privacy.dp=false") for i in range(2)]
    assert all(torch.equal(plain[0][k], plain[1][k]) for k in plain[0])  # non-DP stays reproducible


def test_s6_dp_site_releases_no_raw_statistics_and_evaluates_once(tmp_path, tiny_model_dir):
    """Scenario 6: raw train_loss, the tuned threshold and evaluations on demand left a DP site."""
    texts, labels = make_texts(120, 2)
    pd.DataFrame({"text": texts, "label": labels}).to_csv(tmp_path / "bin.csv", index=False)
    cfg = _cfg(tiny_model_dir, "federation.rounds=2", "train.tune-threshold=true",
               labels="task.labels=intent_0,intent_1")
    site = _site(cfg, tmp_path / "bin.csv", tmp_path / "s")
    state, stats = site.fit(get_state(site.model, exclude=site.exclude), server_round=1, run="r")
    assert not {"train_loss", "empty_batches", "train_seconds"} & set(stats)
    metrics = site.evaluate(state, split="test", run="r", server_round=1)
    assert "threshold" not in metrics and "accuracy" in metrics
    with pytest.raises(PolicyViolation, match="once per planned round"):
        site.evaluate(state, split="test", run="r", server_round=1)
    site.evaluate(state, split="val", run="r", server_round=1)  # the val split once too
    for run, rnd in (("r", 3), ("never-planned", 1)):
        with pytest.raises(PolicyViolation):
            site.evaluate(state, split="test", run=run, server_round=rnd)


def test_s8_run_config_cannot_switch_scrubbing_off(tmp_path, tiny_model_dir):
    """Scenario 8: data.scrub-pii=false from the coordinator turned scrubbing off at any site."""
    cfg = _cfg(tiny_model_dir, "data.scrub-pii=false")
    with pytest.raises(PolicyViolation) as err:
        enforce_policy({"data-path": "x.csv"}, cfg, rows=1000)
    assert "require-scrub" in err.value.public
    node = SitePolicy(require_scrub=False, source="p.toml").to_node_config()
    assert enforce_policy(node, cfg, rows=1000).require_scrub is False  # the site's own choice
