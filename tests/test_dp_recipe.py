"""DP defaults (#18): when privacy.dp is on and the run sets none of the DP training knobs, each
site picks the size rule's recipe (common/dp_recipe.py) and says so; when the run sets any, the
rule stays out of it. Real sites on a tiny model, real ledgers."""

from __future__ import annotations

import pytest
import torch

from client.site import Site, SiteFacts
from common import dp_recipe
from common.adapter import get_state
from common.config import from_flat, resolve
from tests.test_dp_person import _customer_csv
from tests.test_privacy import journal_entries

KNOBS = ["privacy.batch-size=64", "privacy.local-epochs=2", "privacy.learning-rate=5",
         "privacy.max-grad-norm=0.5", "privacy.probe-rounds=1", "privacy.probe-rounds=0"]


def _cfg(*sets):
    return resolve(None, ["privacy.dp=true", "federation.rounds=4", "train.batch-size=32",
                          "train.local-epochs=1", *sets])


def _sigma_of(eps: float, n: int):
    from client.accounting import calibrate_noise, default_delta

    return lambda q, steps: calibrate_noise([], sample_rate=q, steps=steps, target_epsilon=eps,
                                            delta=default_delta(n), accountant="rdp")


def test_rule_applies_only_when_no_dp_knob_is_set():
    with pytest.raises(ValueError):  # the rule needs the site's accountant
        dp_recipe.resolve_recipe(_cfg(), units=1152)
    auto = dp_recipe.resolve_recipe(_cfg(), units=1152, sigma_of=_sigma_of(8.0, 1152))
    assert auto.source == "auto" and auto.probe_rounds == 4 and auto.batch == 1152
    assert auto.clip == dp_recipe.AUTO_CLIP
    for knob in KNOBS:  # any one knob set: the rule is out, the rest keep the old settings
        r = dp_recipe.resolve_recipe(_cfg(knob), units=1152)  # no accountant asked
        assert r.source == "run", knob
        assert r.batch == (64 if "batch-size" in knob else 32)
        assert r.clip == (0.5 if "max-grad-norm" in knob else 1.0)
        assert r.probe_rounds == (1 if knob == "privacy.probe-rounds=1" else 0)
        assert r.steps_per_round == -(-(2 if "epochs" in knob else 1) * 1152 // r.batch)


def test_rule_covers_classification_only():
    """Regression and causal-LM runs have no class head to probe: DP-SGD over the adapter."""
    for task in ("regression", "causal-lm"):
        r = dp_recipe.resolve_recipe(_cfg(f"task.type={task}"), units=500)
        assert r.source == "default" and r.probe_rounds == 0 and r.clip == 1.0
        assert "covers classification" in r.describe(4)
        assert "covers" in dp_recipe.announce(_cfg(f"task.type={task}"))


@pytest.mark.parametrize("n,eps,per_round", [(1152, 8.0, 8), (1152, 3.0, 8), (1152, 1.0, 2),
                                             (576, 3.0, 4), (288, 8.0, 4)])
def test_size_rule_steps_and_noise_travel(n, eps, per_round):
    """The rule's numbers on the screened sizes (bench/dp_screen.py: the best step counts there),
    and the learning rate that keeps the run's noise travel at NOISE_TRAVEL."""
    import math

    sigma_of = _sigma_of(eps, n)
    r = dp_recipe.auto_recipe(units=n, unit="record", rounds=6, sigma_of=sigma_of)
    assert r.sample_rate == 1.0 and r.steps_per_round == per_round
    steps = per_round * 6
    travel = r.learning_rate * sigma_of(1.0, steps) * r.clip * math.sqrt(steps) / n
    assert travel == pytest.approx(dp_recipe.NOISE_TRAVEL, rel=1e-6)
    bigger = dp_recipe.auto_recipe(units=4 * n, unit="record", rounds=6, sigma_of=_sigma_of(eps, 4 * n))
    assert bigger.learning_rate > r.learning_rate  # a bigger site takes longer strides


def test_not_set_values_survive_flowers_flat_config():
    flat = resolve(None, ["privacy.dp=true"]).to_flat()  # what reaches a site through Flower
    assert not dp_recipe.user_set(from_flat(flat))
    flat["privacy.max-grad-norm"] = 1.0  # an explicit value, even the old default, counts as set
    assert dp_recipe.user_set(from_flat(flat))


def test_pooling_auto_is_mean_under_dp_only():
    assert resolve(None, ["privacy.dp=true"]).model.pooling == "mean"
    assert resolve(None, []).model.pooling == "auto"  # = the [CLS] pooler, as before
    assert resolve(None, ["privacy.dp=true", "model.pooling=cls"]).model.pooling == "cls"
    again = from_flat(resolve(None, ["privacy.dp=true"]).to_flat())
    assert again.model.pooling == "mean" and again.hash() == resolve(None, ["privacy.dp=true"]).hash()


@pytest.mark.parametrize("sets,auto", [([], True), (["privacy.batch-size=16"], False)])
def test_site_uses_and_says_the_recipe(tmp_path, tiny_model_dir, capsys, sets, auto):
    csv = _customer_csv(tmp_path / "site.csv")
    cfg = resolve(None, [f"model.base={tiny_model_dir}", "model.max-length=24", "model.lora-r=4",
                         "task.labels=intent_0,intent_1,intent_2,intent_3", "federation.rounds=1",
                         "simulation.sites=2", "privacy.dp=true", "privacy.epsilon=2",
                         "train.batch-size=8", *sets])
    site = Site(cfg, SiteFacts(name="site-0", index=0, data_path=str(csv), site_dir=str(tmp_path / "s")))
    before = get_state(site.model, exclude=site.exclude)
    new, _ = site.fit(before, server_round=1, run="r")
    n = len(site.splits["train"])
    plan = [e for e in journal_entries(tmp_path / "s") if e["kind"] == "plan"][0]
    changed = {k for k in new if not torch.equal(new[k], before[k])}
    err = capsys.readouterr().err
    if auto:  # the rule: DP linear probing, every unit of this small site each step
        assert plan["sample_rate"] == pytest.approx(1.0) and "[the size rule]" in err
        assert changed and all("classifier" in k for k in changed)
    else:  # the run set privacy.batch-size: that batch, the adapter trained, nothing of the rule
        assert plan["sample_rate"] == pytest.approx(16 / n) and "[run config]" in err
        assert any("lora_B" in k for k in changed)


def test_coordinator_announces_the_rule_or_the_run_settings():
    """server/app.py's first lines carry common/dp_recipe.announce (the ServerApp cannot import client/)."""
    import inspect

    from server import app

    assert "dp_recipe.announce(cfg)" in inspect.getsource(app._announce)
    for sets, expect in (([], "size rule"), (["privacy.learning-rate=5"], "from the run config: learning-rate 5")):
        assert expect in dp_recipe.announce(resolve(None, ["privacy.dp=true", *sets]))
