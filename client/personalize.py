"""Personalization: after the last round a site fine-tunes the final global adapter for
`federation.personalize-epochs` on its own train split (its own cosine schedule from the run's
learning rates, no FedProx term), keeps the result on its own disk and reports only its test
metrics. Chosen over FedSA-LoRA-style splitting (share A, keep B and the head local) because it
needs nothing from the coordinator, works with every strategy and aggregation rule, and is
measured in bench/bench_skew.py (README "What joining buys each site").

The personalized adapter is a run-shaped directory, so `fedtune export` reads it like a run:

    <site-dir>/personalized/run-<id>/config.toml       the run's resolved config
    <site-dir>/personalized/run-<id>/adapter/           PEFT adapter + labels.json + fedtune.json
    <site-dir>/personalized/run-<id>/personalized.json  site, run, epochs, config hash, metrics

Under DP the fine-tuning is DP-SGD with its own plan in the site's ledger (run `<id>-personal`,
one round, epsilon = the run's epsilon x personalize-epochs / (rounds x local-epochs))."""

from __future__ import annotations

import dataclasses
import json
from pathlib import Path

import numpy as np
import torch

from client.dp_fit import site_recipe
from client.dp_trainer import train_dp
from client.privacy import secure_rng, secure_seed
from client.site import Site
from client.trainer import Schedule, steps_per_round, train
from common.adapter import get_state, save_adapter, set_state
from common.atomic import atomic_dir
from common.config import RunConfig, from_flat, load_toml
from common.errors import ModelError

ROOT = "personalized"


def finetune(site: Site, state: dict[str, torch.Tensor], *, epochs: float, run: str,
             lr_scale: float = 1.0) -> dict[str, torch.Tensor]:
    """`epochs` of this site's train split on top of `state`; returns the new adapter state."""
    cfg = site.cfg  # the site's resolved config (batch size probed)
    tcfg = dataclasses.replace(cfg.train, local_epochs=epochs,
                               learning_rate=cfg.train.learning_rate * lr_scale,
                               head_learning_rate=cfg.train.head_learning_rate * lr_scale)
    data = site.splits["train"]
    steps = steps_per_round(len(data), tcfg)
    sched = Schedule(start_step=0, total_steps=steps, warmup_steps=0)
    set_state(site.model, state, exclude=site.exclude)
    if cfg.privacy.dp:
        _finetune_dp(site, tcfg, sched, steps=steps, run=run, epochs=epochs)
    else:
        torch.manual_seed(hash((cfg.train.seed, site.facts.index, 7_000_001)) % 2**31)
        rng = np.random.default_rng([cfg.train.seed, site.facts.index, 7_000_001])
        train(site.model, data, cfg=tcfg, schedule=sched, rng=rng, pad_id=site.pad_id,
              loss=site.loss, desc=f"{site.facts.name} personalize")
    return get_state(site.model, exclude=site.exclude)


def _finetune_dp(site: Site, tcfg, sched: Schedule, *, steps: int, run: str, epochs: float) -> None:
    cfg, data = site.cfg, site.splits["train"]
    q = min(1.0, tcfg.batch_size / max(1, len(data)))
    share = epochs / (cfg.federation.rounds * cfg.train.local_epochs)
    ledger = site.ledger()
    clip = site_recipe(site, ledger=ledger)[0].clip  # the DP recipe's clip (0 in the config = not set)
    torch.manual_seed(secure_seed())
    with ledger.locked():  # plan -> check -> train -> record, as Site._fit_dp
        plan = ledger.plan(run, sample_rate=q, steps_per_round=steps, rounds=1,
                           run_epsilon=cfg.privacy.epsilon * share)
        ledger.check(run, 1)
        train_dp(site.model, data, cfg=tcfg, schedule=sched, rng=secure_rng(), steps=steps,
                 sample_rate=q, noise_multiplier=plan.noise_multiplier,
                 max_grad_norm=clip, pad_id=site.pad_id, loss=site.loss)
        ledger.record(run, 1)


def personalize(site: Site, cfg: RunConfig, *, state: dict[str, torch.Tensor], run: str,
                key: str) -> dict[str, float]:
    """Fine-tune the final global `state` at this site, keep the adapter under the site dir
    (`key`: the run's file-name-safe id), return its metrics on the site's own test split."""
    from client.policy import base_fingerprint

    epochs = cfg.federation.personalize_epochs
    new = finetune(site, state, epochs=epochs, run=f"{run}-personal")
    metrics = site.evaluate(new, split="test", run=f"{run}-personal", server_round=1)
    with atomic_dir(Path(site.facts.site_dir) / ROOT / f"run-{key}") as tmp:
        save_adapter(site.model, tmp / "adapter", label_names=site.label_names,
                     base_fingerprint=base_fingerprint(cfg))
        (tmp / "config.toml").write_text(f"# config hash {cfg.hash()}\n" + cfg.to_toml(),
                                         encoding="utf-8")
        meta = {"site": site.facts.name, "run": run, "epochs": epochs, "config_hash": cfg.hash(),
                "test": {k: float(v) for k, v in metrics.items()}}
        (tmp / "personalized.json").write_text(json.dumps(meta, indent=1), encoding="utf-8")
    return metrics


def find_personalized(site_dir: str | Path, *, config_hash: str = "") -> Path:
    """The newest personalized adapter directory under a site dir (of the run whose config hash
    is `config_hash`, when given); ModelError naming the fix when there is none."""
    root = Path(site_dir) / ROOT
    found = []
    for d in root.glob("run-*"):
        try:
            meta = json.loads((d / "personalized.json").read_text(encoding="utf-8"))
        except (OSError, ValueError):
            continue
        if not config_hash or meta.get("config_hash") == config_hash:
            found.append((d.stat().st_mtime_ns, d))
    if not found:
        what = f" for the run with config hash {config_hash}" if config_hash else ""
        raise ModelError(f"no personalized adapter{what} under {root}: run the federation with "
                         "federation.personalize-epochs > 0 (the site keeps it after the last round)")
    return max(found)[1]


def run_config_hash(run_dir: str | Path) -> str:
    """The config hash of a run directory's config.toml (what its personalized adapters carry)."""
    path = Path(run_dir) / "config.toml"
    return from_flat(load_toml(path), origin=str(path)).hash() if path.is_file() else ""
