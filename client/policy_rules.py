"""The site policy's privacy rules (client/policy.py calls them from check_policy).

Each is a decision the site makes, never the coordinator: a run config that switches scrubbing
off, augments records under DP, shapes the loss by the site's counts under DP, picks a large
delta, runs many rounds or fine-tunes the whole model is refused here. Each rule returns the full text (values included) for the site's log and
a FIXED public reason, the only thing that crosses the wire (common/errors.py)."""

from __future__ import annotations

from typing import Any

from common.config import RunConfig


def privacy_rules(policy: Any, cfg: RunConfig, rows: int | None) -> list[tuple[str, str]]:
    """(message for the site's log, fixed public reason) for each privacy rule the run breaks."""
    out: list[tuple[str, str]] = []
    dp = bool(cfg.privacy.dp)
    if policy.require_scrub and not cfg.data.scrub_pii:
        out.append(("the run sets data.scrub-pii = false, but the site requires PII scrubbing "
                    "(require-scrub): turn scrubbing on, or the site sets require-scrub = false",
                    "refused by site policy rule require-scrub: the run may not switch data.scrub-pii off"))
    if dp and not policy.allow_augment_under_dp and (cfg.data.augment or cfg.data.augment_copies > 1):
        out.append((f"the run augments the train split (data.augment = {cfg.data.augment!r}, copies = "
                    f"{cfg.data.augment_copies}) under DP: copies of one record are the same person, so "
                    "per-record epsilon grows with copies; set data.augment=\"\" and data.augment-copies=1,"
                    " or the site sets allow-augment-under-dp = true",
                    "refused by site policy rule allow-augment-under-dp: turn data augmentation off under DP"))
    if dp and (cfg.train.class_weights != "none" or cfg.train.absent_class_scale < 1):
        out.append((f"the run shapes the loss by the site's own train counts under DP (train.class-weights "
                    f"= {cfg.train.class_weights!r}, train.absent-class-scale = {cfg.train.absent_class_scale:g}):"
                    " one record can change every other record's gradient, outside DP-SGD's per-record "
                    "bound; set train.class-weights=none and train.absent-class-scale=1",
                    "refused by site rule dp-loss-from-counts: no class weights or absent-class scaling "
                    "under DP"))
    if dp and cfg.privacy.delta:
        if policy.max_delta is not None and cfg.privacy.delta > policy.max_delta:
            out.append((f"the run's privacy.delta {cfg.privacy.delta:g} is above the site's max-delta "
                        f"{policy.max_delta:g}: lower privacy.delta, or use 0 (the site's own delta)",
                        "refused by site policy rule max-delta: the run's privacy.delta is above the "
                        "site's maximum"))
        if rows is not None and cfg.privacy.delta >= 1.0 / max(1, rows):
            out.append((f"the run's privacy.delta {cfg.privacy.delta:g} is not below 1/n for this "
                        f"site's {rows} training rows (a delta >= 1/n allows releasing a record "
                        "outright): lower privacy.delta, or use 0",
                        "refused by site rule delta-below-one-over-n: the run's privacy.delta is too large "
                        "for the site's data"))
    if policy.max_rounds_per_run and cfg.federation.rounds > policy.max_rounds_per_run:
        out.append((f"the run has federation.rounds = {cfg.federation.rounds}, more than the site's "
                    f"max-rounds-per-run = {policy.max_rounds_per_run}: run fewer rounds",
                    "refused by site policy rule max-rounds-per-run: the run has too many rounds"))
    if not policy.allow_full_finetune and cfg.model.finetune == "full":
        out.append(("the run fine-tunes the whole model (model.finetune = full), which the site does "
                    "not allow (allow-full-finetune = false): use model.finetune = lora",
                    "refused by site policy rule allow-full-finetune: use model.finetune = lora"))
    return out
