"""Robust aggregation choices, composed from Flower's own strategies and wrappers:
median (FedMedian), trimmed mean (FedTrimmedAvg), and norm clipping (each site's update clipped
to federation.clip-norm before averaging: Flower's server-side fixed clipping with zero noise)."""

from __future__ import annotations

from flwr.serverapp.strategy import (
    DifferentialPrivacyServerSideFixedClipping,
    FedMedian,
    FedTrimmedAvg,
    Strategy,
)

from common.config import RunConfig
from common.errors import ConfigError
from server.strategy import build_strategy


def build_aggregator(cfg: RunConfig, *, num_sites: int) -> Strategy:
    """The strategy for federation.strategy, made robust as federation.aggregation asks."""
    fed = cfg.federation
    mode = fed.aggregation
    if mode in ("median", "trimmed-mean"):
        if fed.strategy != "fedavg":
            raise ConfigError(f"federation.aggregation = {mode!r} replaces FedAvg's mean and cannot be "
                              f"combined with federation.strategy = {fed.strategy!r}: use fedavg")
        if cfg.privacy.server_noise > 0:
            raise ConfigError("server-side DP (privacy.server-noise) needs aggregation = mean or "
                              "norm-clip: a median's sensitivity is not bounded by the clip")
        common = dict(fraction_train=fed.fraction_train, fraction_evaluate=1.0,
                      min_train_nodes=fed.min_sites, min_evaluate_nodes=fed.min_sites,
                      min_available_nodes=max(fed.min_sites, 1))
        if mode == "median":
            return FedMedian(**common)
        return FedTrimmedAvg(beta=fed.trim_fraction, **common)
    strategy = build_strategy(cfg, num_sites=num_sites)
    if mode == "norm-clip" and cfg.privacy.server_noise == 0:
        strategy = DifferentialPrivacyServerSideFixedClipping(
            strategy, noise_multiplier=0.0, clipping_norm=fed.clip_norm,
            num_sampled_clients=max(1, round(fed.fraction_train * num_sites)))
    return strategy
