"""Centralized and local-only baselines on exactly the federated runs' data: the same partition
(`fedtune.simulate.prepare_sites`, same seed) and the same per-site train/test splits (each site's
split manifest), trained with `fedtune.FineTuner` (the one-site API: the same model builder and
client/trainer.py as a site) for the same samples x epochs as the federation (rounds x local
epochs, same learning rates and schedule shape, no validation split = no early stopping),
evaluated on each site's test split and on the pooled test split (the union of the sites' test
splits)."""

from __future__ import annotations

import dataclasses
import time
from pathlib import Path

import numpy as np
import torch

from common.config import RunConfig
from common.data import prepare_site


def _tuner(cfg: RunConfig, labels: list[str]):
    from fedtune import FineTuner

    epochs = cfg.federation.rounds * cfg.train.local_epochs
    if epochs != int(epochs):
        raise ValueError(f"rounds x local-epochs = {epochs} is not a whole number of epochs")
    m = cfg.model
    train = {k: v for k, v in dataclasses.asdict(cfg.train).items() if k != "local_epochs"}
    return FineTuner(base_model=m.base or None, labels=labels).set_params(
        max_length=m.max_length, finetune=m.finetune, lora_r=m.lora_r, lora_alpha=m.lora_alpha,
        lora_dropout=m.lora_dropout, target_modules=m.target_modules, freeze_layers=m.freeze_layers,
        head_init=m.head_init, epochs=int(epochs), verbose=False, **train)


def _texts(frames: list, labels: list[str]) -> tuple[list[str], list[str]]:
    texts = [t for f in frames for t in f["text"].tolist()]
    return texts, [labels[int(i)] for f in frames for i in f["label"].tolist()]


def run_baselines(cfg: RunConfig, *, out: Path) -> dict:
    """{"centralized": ..., "local_only": ...} with accuracies and phase timings."""
    from common.model import build_model
    from fedtune.simulate import prepare_sites

    out.mkdir(parents=True, exist_ok=True)
    cfg = prepare_sites(cfg, out.resolve())
    torch.set_num_threads(cfg.train.threads)
    labels = cfg.task.label_names()
    sites = Path(cfg.simulation.sites_dir)
    t0 = time.perf_counter()
    splits = [prepare_site(sites / f"site-{i}" / "data.csv", cfg=cfg.data, seed=cfg.train.seed,
                           label_names=labels, task=cfg.task.type, site_dir=sites / f"site-{i}")
              for i in range(cfg.simulation.sites)]
    t_prep = time.perf_counter() - t0
    # what one model load and the sites' tokenisation cost (section 3 attributes them)
    t0 = time.perf_counter()
    tok = build_model(cfg.model, num_labels=len(labels), seed=cfg.train.seed).tokenizer
    t_model = time.perf_counter() - t0
    t0 = time.perf_counter()
    for s in splits:
        for part in (s.train, s.val, s.test):
            tok(part["text"].tolist(), truncation=True, max_length=cfg.model.max_length)
    t_tok = time.perf_counter() - t0
    tests = [_texts([s.test], labels) for s in splits]
    pooled = _texts([s.test for s in splits], labels)

    t0 = time.perf_counter()
    tuner = _tuner(cfg, labels).fit(*_texts([s.train for s in splits], labels))
    t_fit = time.perf_counter() - t0
    t0 = time.perf_counter()
    pool = tuner.evaluate(*pooled)
    site_acc = [tuner.evaluate(*t)["accuracy"] for t in tests]
    t_eval = time.perf_counter() - t0
    central = {"pooled_accuracy": pool["accuracy"], "pooled_macro_f1": pool["macro_f1"],
               "site_accuracy": site_acc, "train_rows": sum(len(s.train) for s in splits),
               "test_rows": len(pooled[0]), "epochs": cfg.federation.rounds * cfg.train.local_epochs,
               "prep_s": t_prep, "model_load_s": t_model, "prep_tokenize_s": t_prep + t_tok,
               "fit_s": t_fit, "train_s": max(0.0, t_fit - t_model - t_tok), "eval_s": t_eval,
               "wall_s": t_prep + t_fit + t_eval}
    del tuner

    local = []
    for i, s in enumerate(splits):
        t0 = time.perf_counter()
        tuner = _tuner(cfg, labels).fit(*_texts([s.train], labels))
        secs = time.perf_counter() - t0
        local.append({"site": f"site-{i}", "train_rows": len(s.train), "fit_s": secs,
                      "own_test_accuracy": tuner.evaluate(*tests[i])["accuracy"],
                      "pooled_accuracy": tuner.evaluate(*pooled)["accuracy"]})
    return {
        "trainer": "fedtune.FineTuner (client/trainer.py underneath)",
        "centralized": central,
        "local_only": {"sites": local,
                       "mean_own_test_accuracy": float(np.mean([x["own_test_accuracy"] for x in local])),
                       "mean_pooled_accuracy": float(np.mean([x["pooled_accuracy"] for x in local]))},
    }
