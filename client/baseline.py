"""What joining bought this site, measured at the site and nowhere else.

With `federation.baselines` each site keeps a LOCAL-ONLY model beside the federation: the same
initial adapter as the coordinator's (the same model builder and seed), trained only on the
site's own train split with the run's schedule — one round's local epochs for each federated
round, so after round r both have seen r rounds' worth of epochs. At each evaluation the site
brings its local-only model up to the evaluated round and reports its metrics on its own test
split as `local_<metric>`. With `federation.personalize-epochs` the site also fine-tunes the
final global adapter on its own data (client/personalize.py) and reports `personal_<metric>`.

Only these metrics leave (client/guard.py whitelists them); the local-only state lives in
`<site-dir>/local/run-<id>.pt` and the personalized adapter in `<site-dir>/personalized/`.
Under DP both train on the site's data again, so they spend epsilon in the site's ledger (their
own plans: run `<id>-local`, `<id>-personal`) and run only where the site's policy sets
`allow-local-models-under-dp`, and only at the last round's evaluation, after the federation's
own rounds (so they never take budget those need: the site's budget must cover them too); when
the ledger refuses they are skipped and the federation's own evaluation goes on."""

from __future__ import annotations

import hashlib
import logging
import re
from pathlib import Path

import torch

from client.guard import COMPARED
from client.personalize import personalize
from client.policy import PolicyViolation, SitePolicy
from client.site import Site
from common.adapter import get_state
from common.atomic import atomic_replace
from common.config import RunConfig
from common.errors import PrivacyBudgetExceeded

log = logging.getLogger("fedtune.site")


def run_key(run: str) -> str:
    """A file-name-safe key for a run id (the coordinator's input: never used as a path as is)."""
    return run if re.fullmatch(r"[0-9A-Za-z_-]{1,40}", run) else \
        "x" + hashlib.sha256(run.encode()).hexdigest()[:16]


def prefixed(prefix: str, metrics: dict[str, float]) -> dict[str, float]:
    """`<prefix>_<metric>` for the compared metrics only (accuracy, loss, ...; never counts)."""
    return {f"{prefix}_{k}": float(v) for k, v in metrics.items() if k in COMPARED}


def initial_state(site: Site) -> dict[str, torch.Tensor]:
    """The adapter the federation starts from, built here exactly as the coordinator builds it
    (server/app.py: same builder, seed and label names), never taken from a message."""
    from common.model import build_model

    cfg = site.cfg
    labels = site.label_names
    num_labels = 1 if cfg.task.type == "regression" else len(labels)
    built = build_model(cfg.model, num_labels=num_labels, seed=cfg.train.seed,
                        labels=labels if cfg.task.type == "classification" else None)
    return get_state(built.model, exclude=site.exclude)


def _store(site: Site, run: str) -> Path:
    return Path(site.facts.site_dir) / "local" / f"run-{run_key(run)}.pt"


def _load(path: Path, config_hash: str) -> tuple[dict[str, torch.Tensor], int] | None:
    if not path.is_file():
        return None
    saved = torch.load(path, weights_only=True)
    if saved.get("config_hash") != config_hash:  # another config under the same run id: restart
        return None
    return saved["state"], int(saved["round"])


def _save(path: Path, state: dict[str, torch.Tensor], rnd: int, config_hash: str) -> None:
    with atomic_replace(path) as fh:
        torch.save({"state": state, "round": rnd, "config_hash": config_hash}, fh)


def local_only(site: Site, cfg: RunConfig, *, run: str, upto: int) -> dict[str, float]:
    """Train the local-only model up to round `upto` (the rounds it lacks), then its metrics on
    this site's test split. Its state is kept on the site's disk between messages."""
    if cfg.privacy.dp and upto < cfg.federation.rounds:
        return {}  # under DP it trains after the federation's last round: never on its budget
    path, h = _store(site, run), cfg.hash()
    state, done = _load(path, h) or (initial_state(site), 0)
    for rnd in range(done + 1, upto + 1):
        state, _ = site.fit(state, server_round=rnd, run=f"{run}-local", proximal=False)
        _save(path, state, rnd, h)
        done = rnd
    return site.evaluate(state, split="test", run=f"{run}-local", server_round=max(1, done))


def allowed(cfg: RunConfig, policy: SitePolicy) -> bool:
    """Local models train on the site's data again: under DP only where the site allows it;
    with share-metrics = false nothing of them could leave, so they are not trained."""
    return policy.share_metrics and (not cfg.privacy.dp or policy.allow_local_models_under_dp)


def joined_metrics(site: Site, cfg: RunConfig, *, state: dict[str, torch.Tensor], rnd: int,
                   run: str, policy: SitePolicy) -> dict[str, float]:
    """The evaluate handler's one call: `local_*` (federation.baselines) and, at the last round,
    `personal_*` (federation.personalize-epochs) for this site; {} when neither is asked for or
    the site does not allow them. A refusal by the site's ledger skips only these metrics."""
    fed = cfg.federation
    if not (fed.baselines or fed.personalize_epochs) or cfg.privacy.secure_aggregation:
        return {}
    if not allowed(cfg, policy):
        log.warning("%s: federation.baselines / personalize-epochs skipped: %s", site.facts.name,
                    "share-metrics = false" if not policy.share_metrics else
                    "the run uses DP and the site policy does not set allow-local-models-under-dp")
        return {}
    out: dict[str, float] = {}
    if fed.baselines:
        out.update(_unless_refused(site, "local-only", lambda: prefixed(
            "local", local_only(site, cfg, run=run, upto=min(rnd, fed.rounds)))))
    if fed.personalize_epochs and rnd == fed.rounds:
        out.update(_unless_refused(site, "personalized", lambda: prefixed(
            "personal", personalize(site, cfg, state=state, run=run, key=run_key(run)))))
    return out


def _unless_refused(site: Site, what: str, fn) -> dict[str, float]:
    """fn(), or {} when the site's ledger refuses (budget spent): the federation's own
    evaluation still leaves; the site's log says why."""
    try:
        return fn()
    except (PolicyViolation, PrivacyBudgetExceeded) as err:
        log.warning("%s: %s model skipped: %s", site.facts.name, what, err)
        return {}
