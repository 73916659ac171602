"""What a DP site trains, and how: its DP recipe, resolved at each site from the run config and its
own size (number of privacy units); the coordinator only announces the rule (`announce`).

DP-SGD has its own knobs, in [privacy], separate from train.* (which tune non-DP training): a
setting that is good without DP — batch 32, one pass, AdamW over the whole adapter — is what
makes DP-SGD useless at these data sizes (bench/dp_snr.py: the update's noise is ~80x its signal).

    privacy.probe-rounds   first N rounds train only the head (DP linear probing)   -1 = not set
    privacy.batch-size     expected Poisson batch, in units (records or persons)     0 = not set
    privacy.local-epochs   passes over the units per round (steps = epochs x U / B)  0 = not set
    privacy.learning-rate  DP linear probing's rate (SGD, momentum 0.9)              0 = not set
    privacy.max-grad-norm  per-unit clipping norm C                                  0 = not set

When the run sets NONE of them, the site takes the sweep's winner for its size (`auto_recipe`,
the rule documented in README "What DP costs, measured" and measured in
bench/results/dp_sweep.md). When the run sets any, the unset ones keep the settings fedtune had
before the rule existed (train.batch-size, train.local-epochs, train.head-learning-rate, clip
1.0, no probing), so a hand-tuned run is never half-overridden.

Whatever is picked, the site's ledger (client/privacy.py) plans the noise for the run's epsilon
and refuses what its budget cannot pay: the recipe changes what the noise buys, never how much
privacy is spent."""

from __future__ import annotations

import math
from dataclasses import dataclass

from common.config import RunConfig

# The rule (from bench/results/dp_sweep.md, demo partition, ~1,100-1,260 records per site):
AUTO_CLIP = 0.3  # per-unit clip: small enough that most units are clipped (their direction counts)
AUTO_STEP = 30.0  # learning rate x clip: the size of a step of the mean clipped gradient
AUTO_BATCH_SHARE = 0.45  # expected batch = this share of the site's units ...
AUTO_MIN_BATCH = 256  # ... but at least this many (all units when the site has fewer)
AUTO_EPOCHS = 1.0  # passes over the units per round


@dataclass(frozen=True)
class Recipe:
    """A site's resolved DP training settings for one run."""

    source: str  # "auto" (the rule picked them) | "run" (the run config set some)
    unit: str  # "record" | "person"
    units: int  # privacy units at this site (records, or persons)
    batch: int  # expected Poisson batch, in units
    steps_per_round: int
    probe_rounds: int  # rounds 1..probe_rounds train only the head
    learning_rate: float  # DP linear probing's SGD rate
    clip: float

    @property
    def sample_rate(self) -> float:
        return min(1.0, self.batch / max(1, self.units))

    def head_only(self, server_round: int) -> bool:
        return server_round <= self.probe_rounds

    def describe(self, rounds: int) -> str:
        what = ("DP linear probing (head only)" if self.probe_rounds >= rounds else
                f"DP linear probing for {self.probe_rounds} rounds, then the adapter" if self.probe_rounds
                else "the adapter (DP-SGD)")
        return (f"{what}; unit {self.unit} ({self.units:,} at this site); expected batch {self.batch} "
                f"(q={self.sample_rate:.3f}), {self.steps_per_round} steps a round, clip {self.clip:g}, "
                f"probe learning rate {self.learning_rate:g} [{'the size rule' if self.source == 'auto' else 'run config'}]")


def user_set(cfg: RunConfig) -> bool:
    """Whether the run config set any of the DP training knobs (each has a 'not set' value)."""
    p = cfg.privacy
    return (p.probe_rounds >= 0 or p.batch_size > 0 or p.local_epochs > 0 or p.learning_rate > 0
            or p.max_grad_norm > 0)


def auto_recipe(*, units: int, unit: str, rounds: int) -> Recipe:
    """The size rule: DP linear probing for the whole run, with a large expected batch."""
    batch = min(units, max(AUTO_MIN_BATCH, round(AUTO_BATCH_SHARE * units)))
    steps = max(1, math.ceil(AUTO_EPOCHS * units / batch))
    return Recipe(source="auto", unit=unit, units=units, batch=batch, steps_per_round=steps,
                  probe_rounds=rounds, learning_rate=AUTO_STEP / AUTO_CLIP, clip=AUTO_CLIP)


def resolve_recipe(cfg: RunConfig, *, units: int, unit: str = "record") -> Recipe:
    """The recipe of this run at a site with `units` privacy units."""
    if not user_set(cfg):
        return auto_recipe(units=units, unit=unit, rounds=cfg.federation.rounds)
    p, t = cfg.privacy, cfg.train
    if not isinstance(t.batch_size, int) and p.batch_size <= 0:
        batch = 32  # train.batch-size = auto sizes non-DP batches to a GPU; DP keeps the old 32
    else:
        batch = p.batch_size or t.batch_size
    batch = max(1, min(units, batch))
    epochs = p.local_epochs or t.local_epochs
    return Recipe(source="run", unit=unit, units=units, batch=batch,
                  steps_per_round=max(1, math.ceil(epochs * units / batch)),
                  probe_rounds=max(0, p.probe_rounds),
                  learning_rate=p.learning_rate or t.head_learning_rate or t.learning_rate,
                  clip=p.max_grad_norm or 1.0)


def announce(cfg: RunConfig) -> str:
    """What the run's first lines say about the DP recipe (each site logs its own numbers)."""
    if user_set(cfg):
        p = cfg.privacy
        return ("DP recipe from the run config: " + ", ".join(
            f"{k} {v:g}" for k, v in (("probe-rounds", p.probe_rounds), ("batch-size", p.batch_size),
                                      ("local-epochs", p.local_epochs), ("learning-rate", p.learning_rate),
                                      ("max-grad-norm", p.max_grad_norm)) if v > 0 or (k == "probe-rounds" and v >= 0))
                + " (unset ones: train.* and clip 1.0, no probing)")
    return (f"DP recipe by the size rule (no privacy.batch-size/local-epochs/learning-rate/max-grad-norm/"
            f"probe-rounds set): DP linear probing of the head for all {cfg.federation.rounds} rounds on "
            f"{cfg.model.pooling}-pooled features, expected batch max({AUTO_MIN_BATCH}, "
            f"{AUTO_BATCH_SHARE:g} x the site's units) capped at all of them, {AUTO_EPOCHS:g} pass a round, "
            f"clip {AUTO_CLIP:g}, rate {AUTO_STEP / AUTO_CLIP:g}; each site logs its numbers")
