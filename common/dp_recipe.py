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

When the run sets NONE of them, the site applies the size rule (`auto_recipe`; measured in
bench/results/dp_screen.md and bench/results/dp_sweep.md, documented in README "What DP costs,
measured"): DP linear probing of the head for the whole run, every unit in every step (q = 1:
DP gradient descent), clip 0.2, and two numbers from the site's size U and the run's epsilon,
through the accountant's noise multiplier sigma(S) for S full-batch steps:

  * steps: the largest total S of 48, 24, 12 (spread over the run's rounds) whose noise per
    step relative to the units, sigma(S) / U, is at most 0.012 (else 12) — more, smaller steps
    while each step's noise is small against the summed signal;
  * learning rate: lr x C = 0.2 U / (sigma(S) sqrt(S)), so that the noise the whole run adds
    to a head weight (SGD: lr sigma C sqrt(S) / U) has the same standard deviation, 0.2, at
    every size and epsilon. A bigger site or a larger epsilon therefore takes longer strides.

On the demo's 3 banks (~1,150 records each, 6 rounds) this is 8 steps a round at epsilon 8 and
3, 2 at epsilon 1. When the run sets any knob, the unset ones keep the settings fedtune had
before the rule existed (train.batch-size, train.local-epochs, train.head-learning-rate, clip
1.0, no probing), so a hand-tuned run is never half-overridden.

Whatever is picked, the site's ledger (client/privacy.py) plans the noise for the run's epsilon
and refuses what its budget cannot pay: the recipe changes what the noise buys, never how much
privacy is spent."""

from __future__ import annotations

import math
from collections.abc import Callable
from dataclasses import dataclass

from common.config import RunConfig
from common.errors import PrivacyBudgetExceeded

# The size rule (bench/dp_screen.py's grids on the demo partition at 1/4, 1/2 and all of each
# site's records, epsilon 8, 3 and 1; see the module docstring):
AUTO_CLIP = 0.2  # per-unit clip: below most units' gradient norm, so each unit counts by direction
NOISE_TRAVEL = 0.2  # std of the noise the run adds to one head weight: lr sigma C sqrt(S) / U
STEP_NOISE = 0.012  # take more steps while sigma / U stays at or below this
TOTAL_STEPS = (48, 24, 12)  # candidate steps over the whole run, most first


SOURCES = {"auto": "the size rule", "run": "run config",
           "default": "fedtune's DP defaults: the size rule covers classification only"}


@dataclass(frozen=True)
class Recipe:
    """A site's resolved DP training settings for one run."""

    source: str  # "auto" (the size rule) | "run" (the run config set some) | "default" (not classification)
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
                f"probe learning rate {self.learning_rate:.4g} [{SOURCES[self.source]}]")


def user_set(cfg: RunConfig) -> bool:
    """Whether the run config set any of the DP training knobs (each has a 'not set' value)."""
    p = cfg.privacy
    return (p.probe_rounds >= 0 or p.batch_size > 0 or p.local_epochs > 0 or p.learning_rate > 0
            or p.max_grad_norm > 0)


def auto_recipe(*, units: int, unit: str, rounds: int,
                sigma_of: Callable[[float, int], float]) -> Recipe:
    """The size rule. `sigma_of(q, steps)` is the accountant's noise multiplier for `steps` steps
    at sample rate q within the run's epsilon at the site's delta (PrivacyBudgetExceeded when
    even the most noise the site accepts cannot pay for them)."""
    chosen = None
    for total in TOTAL_STEPS:
        steps = max(1, round(total / rounds))
        try:
            sigma = sigma_of(1.0, steps * rounds)
        except PrivacyBudgetExceeded:
            continue
        chosen = (steps, sigma)
        if sigma / units <= STEP_NOISE:
            break
    if chosen is None:  # nothing affordable: the ledger will refuse the smallest, with its reason
        steps, sigma = max(1, round(TOTAL_STEPS[-1] / rounds)), math.inf
    else:
        steps, sigma = chosen
    eta = NOISE_TRAVEL * units / (sigma * math.sqrt(steps * rounds)) if math.isfinite(sigma) else 1.0
    return Recipe(source="auto", unit=unit, units=units, batch=units, steps_per_round=steps,
                  probe_rounds=rounds, learning_rate=eta / AUTO_CLIP, clip=AUTO_CLIP)


def resolve_recipe(cfg: RunConfig, *, units: int, unit: str = "record",
                   sigma_of: Callable[[float, int], float] | None = None) -> Recipe:
    """The recipe of this run at a site with `units` privacy units (`sigma_of`: see auto_recipe;
    needed only when the rule applies)."""
    if not user_set(cfg) and cfg.task.type == "classification":  # probing needs a class head
        if sigma_of is None:
            raise ValueError("the DP size rule needs the site's accountant (sigma_of)")
        return auto_recipe(units=units, unit=unit, rounds=cfg.federation.rounds, sigma_of=sigma_of)
    p, t = cfg.privacy, cfg.train
    if not isinstance(t.batch_size, int) and p.batch_size <= 0:
        batch = 32  # train.batch-size = auto sizes non-DP batches to a GPU; DP keeps the old 32
    else:
        batch = p.batch_size or t.batch_size
    batch = max(1, min(units, batch))
    epochs = p.local_epochs or t.local_epochs
    return Recipe(source="run" if user_set(cfg) else "default", unit=unit, units=units, batch=batch,
                  steps_per_round=max(1, math.ceil(epochs * units / batch)),
                  probe_rounds=max(0, p.probe_rounds),
                  learning_rate=p.learning_rate or t.head_learning_rate or t.learning_rate,
                  clip=p.max_grad_norm or 1.0)


def announce(cfg: RunConfig) -> str:
    """What the run's first lines say about the DP recipe (each site logs its own numbers)."""
    if not user_set(cfg) and cfg.task.type != "classification":
        return (f"DP-SGD over the adapter with train.* settings and clip 1.0 (the size rule covers "
                f"classification; this run is {cfg.task.type})")
    if user_set(cfg):
        p = cfg.privacy
        return ("DP recipe from the run config: " + ", ".join(
            f"{k} {v:g}" for k, v in (("probe-rounds", p.probe_rounds), ("batch-size", p.batch_size),
                                      ("local-epochs", p.local_epochs), ("learning-rate", p.learning_rate),
                                      ("max-grad-norm", p.max_grad_norm)) if v > 0 or (k == "probe-rounds" and v >= 0))
                + " (unset ones: train.* and clip 1.0, no probing)")
    return ("DP recipe by the size rule (no privacy.batch-size/local-epochs/learning-rate/"
            f"max-grad-norm/probe-rounds set): DP linear probing of the head for all "
            f"{cfg.federation.rounds} rounds on {cfg.model.pooling}-pooled features, every unit each "
            f"step, clip {AUTO_CLIP:g}; steps and learning rate from each site's size and epsilon "
            f"{cfg.privacy.epsilon:g} (the most of {'/'.join(map(str, TOTAL_STEPS))} steps with "
            f"sigma/units <= {STEP_NOISE:g}; noise travel {NOISE_TRAVEL:g}); each site logs its numbers")
