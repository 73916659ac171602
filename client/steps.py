"""The pieces both handler flavours share (plain Message API in client/app.py, SecAgg+'s legacy
format in client/secagg.py): validating the round number the coordinator sent, and the final
membership-inference audit."""

from __future__ import annotations

from client.audit import loss_threshold_auc
from client.site import Site
from common.config import RunConfig
from common.errors import ConfigError, reason

BAD_ROUND = reason("the coordinator's message carries no valid server-round (an integer from 1 "
                   "to federation.rounds); run the coordinator and the site on the same fedtune")


def server_round(config) -> int:
    """The round number the coordinator sent, validated as input (never trusted)."""
    value = config.get("server-round") if config is not None else None
    if type(value) is not int or value < 0:
        raise ConfigError(f"server-round = {value!r} is not a round number", public=BAD_ROUND)
    return value


def final_audit(site: Site, cfg: RunConfig, rnd: int) -> dict[str, float]:
    """Membership-inference audit of the final global model on this site's own data (a
    loss-threshold attack, train vs test split; only the AUC leaves). Not under DP: it is a
    statistic of the train split that the privacy ledger does not account for."""
    if rnd != cfg.federation.rounds or cfg.task.type == "causal-lm" or cfg.privacy.dp \
            or not len(site.splits["test"]):
        return {}
    return {"mia_auc": loss_threshold_auc(site.model, site.splits["train"], site.splits["test"],
                                          num_labels=site.num_labels, pad_id=site.pad_id)}
