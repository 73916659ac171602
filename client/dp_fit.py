"""One DP round at a site: resolve its DP recipe (common/dp_recipe.py) for its privacy unit
(client/dp_units.py), plan -> check -> train -> record under the ledger's lock, and return the
statistics a DP site may release.

A round of DP linear probing (the recipe's first `probe_rounds`) trains only the head over the
inputs the frozen model feeds it, computed once and kept while the rest of the model is
unchanged (client/dp_head.py); any other round runs Opacus DP-SGD over every trainable
parameter (client/dp_trainer.py). Both spend the same planned steps at the same sample rate and
noise multiplier, so the ledger's accounting does not depend on which ran."""

from __future__ import annotations

import hashlib
import os
import sys

import numpy as np
import torch

from client.accounting import calibrate_noise
from client.dp_head import find_head, head_inputs, train_head_dp
from common.dp_recipe import Recipe, resolve_recipe
from client.dp_trainer import train_dp
from client.dp_units import Units, units_of
from client.trainer import Schedule
from common.adapter import get_state


def site_units(site) -> Units:
    """The site's privacy units: persons when its data names them (data.group-column)."""
    return units_of(getattr(site, "train_groups", None), len(site.splits["train"]))


def site_recipe(site, *, ledger=None) -> tuple[Recipe, Units]:
    """The site's recipe (the size rule asks the site's own accountant, at its ledger's delta, for
    the noise of the candidate step counts), said once in its log (stderr). Pass the `ledger`
    when the caller holds (or will hold) its lock: a second ledger object would wait on it."""
    cfg, units = site.cfg, site_units(site)
    ledger = ledger or site.ledger()
    delta = ledger.fixed_delta()
    key = (cfg.hash(), units.kind, units.count, delta, ledger.accountant)
    cache = site.dp_cache
    if cache.get("recipe_key") != key:
        def sigma_of(q: float, steps: int) -> float:
            return calibrate_noise([], sample_rate=q, steps=steps, target_epsilon=cfg.privacy.epsilon,
                                   delta=delta, accountant=ledger.accountant)

        recipe = resolve_recipe(cfg, units=units.count, unit=units.kind, sigma_of=sigma_of)
        cache.update(recipe_key=key, recipe=recipe)
        print(f"fedtune {site.facts.name}: DP recipe — {recipe.describe(cfg.federation.rounds)}",
              file=sys.stderr, flush=True)
    return cache["recipe"], units


def fit_dp(site, *, server_round: int, run: str, rng: np.random.Generator,
           progress: bool = False) -> dict[str, float]:
    """Train round `server_round` of `run` under DP (the global state is already loaded)."""
    cfg = site.cfg
    ledger = site.ledger()
    recipe, units = site_recipe(site, ledger=ledger)
    steps, rounds = recipe.steps_per_round, cfg.federation.rounds
    total = steps * rounds
    sched = Schedule(start_step=(server_round - 1) * steps, total_steps=total,
                     warmup_steps=0 if recipe.head_only(server_round) else int(cfg.train.warmup_ratio * total))
    with ledger.locked():  # plan -> check -> train -> record: one critical section per site
        plan = ledger.plan(run, sample_rate=recipe.sample_rate, steps_per_round=steps, rounds=rounds,
                           run_epsilon=cfg.privacy.epsilon, unit=recipe.unit)
        ledger.check(run, server_round)
        if recipe.head_only(server_round):
            stats = _probe(site, recipe, units, sched, rng, plan.noise_multiplier)
        else:
            stats = train_dp(site.model, site.splits["train"], cfg=cfg.train, schedule=sched, rng=rng,
                             steps=steps, sample_rate=recipe.sample_rate,
                             noise_multiplier=plan.noise_multiplier, max_grad_norm=recipe.clip,
                             pad_id=site.pad_id, progress=progress, loss=site.loss, units=units)
        eps = ledger.record(run, server_round)
    for key in ("train_loss", "empty_batches"):  # raw train-split statistics: not DP, not released
        stats.pop(key, None)
    # weight by the expected batch total, not the random Poisson count
    stats["num_examples"] = max(1, round(steps * recipe.sample_rate * units.count))
    stats.update(epsilon=eps, delta=ledger.delta, epsilon_budget=ledger.budget,
                 noise_multiplier=plan.noise_multiplier,
                 privacy_unit_person=1.0 if recipe.unit == "person" else 0.0)
    return stats


def _probe(site, recipe: Recipe, units: Units, sched: Schedule, rng, sigma: float) -> dict[str, float]:
    """One round of DP linear probing on the site's model (its head is updated in place)."""
    head = find_head(site.model)
    x = _cached_inputs(site)
    y = torch.tensor(np.asarray(site.splits["train"].labels))
    opt = torch.optim.SGD(head.parameters(), lr=recipe.learning_rate, momentum=0.9)
    for g in opt.param_groups:
        g["base_lr"] = recipe.learning_rate
    generator = torch.Generator(device=head.weight.device)  # noise seeded by the OS CSPRNG
    generator.manual_seed(int.from_bytes(os.urandom(8), "little") & (2**63 - 1))
    with torch.enable_grad():
        return train_head_dp(head, x.to(head.weight.device), y.to(head.weight.device), optimizer=opt,
                             schedule=sched, kind="constant", steps=recipe.steps_per_round, units=units,
                             sample_rate=recipe.sample_rate, rng=rng, noise_multiplier=sigma,
                             clip=recipe.clip, generator=generator, loss=site.loss)


def _cached_inputs(site) -> torch.Tensor:
    """The head's inputs for the train split, recomputed only when anything below the head
    changed (the received global state) — under probing, once per run."""
    state = get_state(site.model, exclude=site.exclude)
    digest = hashlib.sha256()
    for key in sorted(state):
        if "classifier" not in key and ".score." not in key:  # the head itself changes each step
            digest.update(key.encode())
            digest.update(state[key].detach().cpu().contiguous().numpy().tobytes())
    key = digest.hexdigest()
    cache = site.dp_cache
    if cache.get("inputs_key") != key:
        cache["inputs"] = head_inputs(site.model, site.splits["train"], pad_id=site.pad_id)
        cache["inputs_key"] = key
    return cache["inputs"]
