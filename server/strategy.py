"""Strategy construction (`build_strategy`: the one factory of aggregation rules, robust rules and
the server-side DP wrapper) and the recording wrapper that gives fedtune its per-site view.

`Recorded` wraps any Flower Message-API strategy (FedAvg, FedProx, FedAdam, ...) without copying
its loop: it delegates every call and keeps what each site replied, so the coordinator can write
per-site metrics and show a per-round table."""

from __future__ import annotations

from collections.abc import Iterable

from flwr.app import Array, ArrayRecord, ConfigRecord, Message
from flwr.serverapp import Grid
from flwr.serverapp.strategy import (
    DifferentialPrivacyServerSideFixedClipping,
    FedAdagrad,
    FedAdam,
    FedAvg,
    FedMedian,
    FedProx,
    FedTrimmedAvg,
    FedYogi,
    Strategy,
)

from common.config import RunConfig
from common.errors import ConfigError
from server.fastagg import Accumulator
from server.identity import SiteIdentity
from server.roundlog import RoundLog, error_code, error_reason, note_error
from server.validate import (
    canonical,
    check_reply,
    common_metric_keys,
    guarded_metrics,
    norm_outliers,
)


def build_coordinator(cfg: RunConfig, *, num_sites: int, identity: SiteIdentity) -> Recorded:
    """The coordinator's strategy: `build_strategy`'s rule inside `Recorded` (validation, weights,
    per-site record), with the FedAvg/FedProx mean taken by fastagg when `uses_fast_mean`."""
    fed = cfg.federation
    return Recorded(build_strategy(cfg, num_sites=num_sites), fast_mean=uses_fast_mean(cfg),
                    evaluate_every=fed.evaluate_every, num_rounds=fed.rounds,
                    min_sites=fed.min_sites, max_norm_factor=fed.max_norm_factor,
                    max_examples=fed.max_examples, max_update_norm=fed.max_update_norm,
                    weighting=fed.weighting, identity=identity)


def uses_fast_mean(cfg: RunConfig) -> bool:
    """The fast path, by name: FedAvg and FedProx aggregate by the weighted mean, which `Recorded`
    sums in server/fastagg.py while it validates (tests/test_fastagg.py: equal to Flower's) —
    their own `aggregate_train` is then NOT called. So a change to how FedAvg/FedProx aggregate
    must switch this off. A robust rule or a clipping/DP wrapper always uses its own code."""
    fed = cfg.federation
    return (fed.strategy in ("fedavg", "fedprox") and fed.aggregation == "mean"
            and cfg.privacy.server_noise == 0)


def build_strategy(cfg: RunConfig, *, num_sites: int) -> Strategy:
    """The one factory of aggregation rules: federation.strategy over adapter arrays, made robust
    as federation.aggregation asks, wrapped for server-side DP (privacy.server-noise)."""
    fed = cfg.federation
    if fed.aggregation in ("median", "trimmed-mean"):
        return _robust(cfg)
    strategy = _optimiser(cfg)
    if cfg.privacy.server_noise > 0:
        # Site-level DP at the coordinator: each site's update is clipped to server-clip and
        # Gaussian noise (server-noise x clip) is added to the aggregate (Flower's wrapper).
        return _clipped(strategy, cfg, noise=cfg.privacy.server_noise, clip=cfg.privacy.server_clip,
                        num_sites=num_sites)
    if fed.aggregation == "norm-clip":  # each update clipped to clip-norm, then averaged: no noise
        return _clipped(strategy, cfg, noise=0.0, clip=fed.clip_norm, num_sites=num_sites)
    return strategy


def _selection(cfg: RunConfig) -> dict:
    """What every Flower strategy is told about site selection: all sites evaluate."""
    fed = cfg.federation
    return dict(fraction_train=fed.fraction_train, fraction_evaluate=1.0,
                min_train_nodes=fed.min_sites, min_evaluate_nodes=fed.min_sites,
                min_available_nodes=fed.min_sites)


def _optimiser(cfg: RunConfig) -> Strategy:
    fed, common = cfg.federation, _selection(cfg)
    if fed.strategy == "fedavg":
        return FedAvg(**common)
    if fed.strategy == "fedprox":
        # aggregation is FedAvg's; each site adds mu/2 ||w - w_global||^2 to its local loss
        # (client/site.py reads federation.proximal-mu; Flower also sends it as "proximal-mu")
        return FedProx(**common, proximal_mu=fed.proximal_mu)
    if fed.strategy == "fedadagrad":
        return FedAdagrad(**common, eta=fed.server_lr, tau=fed.server_tau)
    return {"fedadam": FedAdam, "fedyogi": FedYogi}[fed.strategy](
        **common, eta=fed.server_lr, beta_1=fed.server_beta1, beta_2=fed.server_beta2,
        tau=fed.server_tau)


def _robust(cfg: RunConfig) -> Strategy:
    """Median (FedMedian) or trimmed mean (FedTrimmedAvg) in place of FedAvg's mean."""
    fed, mode = cfg.federation, cfg.federation.aggregation
    if fed.strategy != "fedavg":
        raise ConfigError(f"federation.aggregation = {mode!r} replaces FedAvg's mean and cannot be "
                          f"combined with federation.strategy = {fed.strategy!r}: use fedavg")
    if cfg.privacy.server_noise > 0:
        raise ConfigError("server-side DP (privacy.server-noise) needs aggregation = mean or "
                          "norm-clip: a median's sensitivity is not bounded by the clip")
    if mode == "median":
        return FedMedian(**_selection(cfg))
    return FedTrimmedAvg(beta=fed.trim_fraction, **_selection(cfg))


def _clipped(strategy: Strategy, cfg: RunConfig, *, noise: float, clip: float,
             num_sites: int) -> Strategy:
    """Flower's server-side fixed clipping around `strategy` (noise 0: plain norm clipping)."""
    return DifferentialPrivacyServerSideFixedClipping(
        strategy, noise_multiplier=noise, clipping_norm=clip,
        num_sampled_clients=max(1, round(cfg.federation.fraction_train * num_sites)))


def server_dp_epsilon(*, noise_multiplier: float, rounds: int, num_sites: int) -> dict[str, float]:
    """Site-level (epsilon, delta) of server-side DP after `rounds`, by Opacus' RDP accountant.
    Every site takes part in every round, so no sampling amplification is claimed (q = 1)."""
    from opacus.accountants import RDPAccountant

    delta = 1.0 / (10 * max(1, num_sites))
    acc = RDPAccountant()
    acc.history = [(noise_multiplier, 1.0, rounds)]
    return {"epsilon": float(acc.get_epsilon(delta=delta)), "delta": delta,
            "noise_multiplier": noise_multiplier, "rounds": rounds}


class Recorded(Strategy):
    """Delegates to `inner`; records per-site replies into `self.rounds`, validates every training
    reply before aggregation, and numbers rounds from `offset` + 1 (the coordinator calls
    `start(num_rounds=1)` once per round so that it can checkpoint, retry and resume)."""

    def __init__(self, inner: Strategy, *, fast_mean: bool = False, evaluate_every: int = 1,
                 num_rounds: int = 1, min_sites: int = 1, max_norm_factor: float = 10.0,
                 max_examples: int = 10_000_000, max_update_norm: float = 0.0,
                 weighting: str = "examples", identity: SiteIdentity | None = None):
        if fast_mean and type(inner) not in (FedAvg, FedProx):
            raise ValueError(f"fast_mean takes FedAvg's weighted mean, but {type(inner).__name__} "
                             "aggregates its own way: pass fast_mean=False (see uses_fast_mean)")
        self.inner = inner
        self.fast_mean = fast_mean  # aggregate by server/fastagg.py's mean, not inner's
        self.max_update_norm = max_update_norm
        self.weighting = weighting
        # who sent a reply: the enrolled name for its Flower node id, never its own claim
        self.identity = identity if identity is not None else SiteIdentity()
        self.evaluate_every = evaluate_every
        self.num_rounds = num_rounds
        self.min_sites = min_sites
        self.max_norm_factor = max_norm_factor
        self.max_examples = max_examples
        self.offset = 0
        self.current: dict = {}
        self.rounds: dict[int, RoundLog] = {}

    def _log(self, server_round: int) -> RoundLog:
        return self.rounds.setdefault(server_round, RoundLog(round=server_round))

    def summary(self) -> None:
        self.inner.summary()

    def configure_train(self, server_round: int, arrays: ArrayRecord, config: ConfigRecord,
                        grid: Grid) -> Iterable[Message]:
        server_round += self.offset
        self.rounds[server_round] = RoundLog(round=server_round)  # a retried round starts afresh
        self.identity.refresh()
        self.current = Accumulator.from_record(arrays)
        return self.inner.configure_train(server_round, arrays, config, grid)

    def aggregate_train(self, server_round: int, replies: Iterable[Message]):
        server_round += self.offset
        log = self._log(server_round)
        acc = self.current if isinstance(self.current, Accumulator) else Accumulator(self.current)
        fast = self.fast_mean  # sum while validating (uses_fast_mean)
        acc.reset()
        accepted, norms, weights = [], {}, {}
        claimed: dict[str, dict] = {}
        for msg in list(replies):
            name = self.identity.name(msg)
            if msg.has_error():
                note_error(log, name, reason=error_reason(msg), code=error_code(msg), phase="train")
                continue
            reason = self._refusal(msg, name, seen=claimed)
            verdict = None if reason else check_reply(
                msg, acc, max_examples=self.identity.max_examples(msg, self.max_examples),
                max_update_norm=self.max_update_norm)
            if reason or not verdict.ok:
                log.rejected[name if name not in claimed else f"{name} (node "
                             f"{msg.metadata.src_node_id})"] = reason or verdict.reason
                continue
            norms[name], claimed[name] = verdict.norm, verdict.metrics
            weights[name] = self._weight(verdict.metrics)
            canonical(msg, metrics=verdict.metrics, weight=weights[name],
                       arrays=next(iter(msg.content.array_records.values())))
            accepted.append((name, msg))
            if fast:
                acc.add(weights[name])
        for name, reason in norm_outliers(norms, factor=self.max_norm_factor).items():
            log.rejected[name] = reason
        accepted = [(n, m) for n, m in accepted if n not in log.rejected]
        for name, msg in accepted:
            log.train[name] = {k: float(v) for k, v in claimed[name].items()}
            log.upload_bytes[name] = sum(a.count_bytes() for a in msg.content.array_records.values())
        if len(accepted) < self.min_sites:
            log.incomplete = True
            return None, None
        replies = [m for _, m in accepted]
        common_metric_keys(replies)
        if fast:
            if any(name in log.rejected for name in weights):  # summed, then rejected: redo
                acc.reset()
                for name, msg in accepted:
                    acc.load(next(iter(msg.content.array_records.values())))
                    acc.add(weights[name])
            metrics = self.inner.train_metrics_aggr_fn([m.content for m in replies],
                                                       self.inner.weighted_by_key)
            return ArrayRecord({k: Array(v) for k, v in acc.mean().items()}), metrics
        return self.inner.aggregate_train(server_round, replies)

    def _refusal(self, msg: Message, name: str, *, seen: dict) -> str:
        if name in seen:
            return f"a second reply for site {name!r} in this round (node {msg.metadata.src_node_id})"
        return self.identity.refusal(msg)

    def _weight(self, metrics: dict) -> float:
        """federation.weighting: the (bounded) example count, or 1 for every site."""
        return 1.0 if self.weighting == "uniform" else float(metrics["num-examples"])

    def configure_evaluate(self, server_round: int, arrays: ArrayRecord, config: ConfigRecord,
                           grid: Grid) -> Iterable[Message]:
        server_round += self.offset
        if self._log(server_round).incomplete:
            return []
        if server_round % self.evaluate_every and server_round != self.num_rounds:
            return []
        return self.inner.configure_evaluate(server_round, arrays, config, grid)

    def aggregate_evaluate(self, server_round: int, replies: Iterable[Message]):
        server_round += self.offset
        replies = list(replies)
        log = self._log(server_round)
        valid = []
        for msg in replies:
            name = self.identity.name(msg)
            if msg.has_error():
                note_error(log, name, reason=error_reason(msg), code=error_code(msg),
                           phase="evaluate")
                continue
            reason = self._refusal(msg, name, seen=log.evaluate)
            metrics = {}
            if not reason:
                reason, metrics = guarded_metrics(
                    msg, max_examples=self.identity.max_examples(msg, self.max_examples))
            if reason:
                log.failures.append(f"{name} (evaluate): rejected at the coordinator: {reason}")
                continue
            log.evaluate[name] = {k: float(v) for k, v in metrics.items()}
            canonical(msg, metrics=metrics, weight=self._weight(metrics), arrays=None)
            valid.append(msg)
        replies = valid
        if not replies:
            return None
        common_metric_keys(replies)
        return self.inner.aggregate_evaluate(server_round, replies)
