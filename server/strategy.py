"""Strategy construction and the recording wrapper that gives fedtune its per-site view.

`Recorded` wraps any Flower Message-API strategy (FedAvg, FedProx, FedAdam, ...) without copying
its loop: it delegates every call and keeps what each site replied, so the coordinator can write
per-site metrics and show a per-round table."""

from __future__ import annotations

import time
from collections.abc import Iterable
from dataclasses import dataclass, field

from flwr.app import Array, ArrayRecord, ConfigRecord, Message, MetricRecord
from flwr.serverapp import Grid
from flwr.serverapp.strategy import (
    DifferentialPrivacyServerSideFixedClipping,
    FedAdagrad,
    FedAdam,
    FedAvg,
    FedProx,
    FedYogi,
    Strategy,
)

from common.config import RunConfig
from server.fastagg import Accumulator


def build_strategy(cfg: RunConfig, *, num_sites: int) -> Strategy:
    """The aggregation strategy named in federation.strategy, over adapter arrays only."""
    fed = cfg.federation
    common = dict(fraction_train=fed.fraction_train, fraction_evaluate=1.0,
                  min_train_nodes=fed.min_sites, min_evaluate_nodes=fed.min_sites,
                  min_available_nodes=fed.min_sites)
    if fed.strategy == "fedavg":
        strategy: Strategy = FedAvg(**common)
    elif fed.strategy == "fedprox":
        # aggregation is FedAvg's; each site adds mu/2 ||w - w_global||^2 to its local loss
        # (client/site.py reads federation.proximal-mu; Flower also sends it as "proximal-mu")
        strategy = FedProx(**common, proximal_mu=fed.proximal_mu)
    elif fed.strategy == "fedadagrad":
        strategy = FedAdagrad(**common, eta=fed.server_lr, tau=fed.server_tau)
    else:
        strategy = {"fedadam": FedAdam, "fedyogi": FedYogi}[fed.strategy](
            **common, eta=fed.server_lr, beta_1=fed.server_beta1, beta_2=fed.server_beta2,
            tau=fed.server_tau)
    if cfg.privacy.server_noise > 0:
        # Site-level DP at the coordinator: each site's update is clipped to server-clip and
        # Gaussian noise (server-noise x clip) is added to the aggregate (Flower's wrapper).
        strategy = DifferentialPrivacyServerSideFixedClipping(
            strategy, noise_multiplier=cfg.privacy.server_noise,
            clipping_norm=cfg.privacy.server_clip,
            num_sampled_clients=max(1, round(fed.fraction_train * num_sites)))
    return strategy


def server_dp_epsilon(*, noise_multiplier: float, rounds: int, num_sites: int) -> dict[str, float]:
    """Site-level (epsilon, delta) of server-side DP after `rounds`, by Opacus' RDP accountant.
    Every site takes part in every round, so no sampling amplification is claimed (q = 1)."""
    from opacus.accountants import RDPAccountant

    delta = 1.0 / (10 * max(1, num_sites))
    acc = RDPAccountant()
    acc.history = [(noise_multiplier, 1.0, rounds)]
    return {"epsilon": float(acc.get_epsilon(delta=delta)), "delta": delta,
            "noise_multiplier": noise_multiplier, "rounds": rounds}


@dataclass
class RoundLog:
    """What the coordinator saw in one round (aggregate metrics only; never site data)."""

    round: int
    started: float = field(default_factory=time.time)
    train: dict[str, dict[str, float]] = field(default_factory=dict)  # site -> metrics
    evaluate: dict[str, dict[str, float]] = field(default_factory=dict)
    failures: list[str] = field(default_factory=list)
    rejected: dict[str, str] = field(default_factory=dict)  # site -> why its update was left out
    upload_bytes: dict[str, int] = field(default_factory=dict)
    incomplete: bool = False  # fewer than min-sites valid updates: the round is retried


def _site_name(msg: Message) -> str:
    if msg.has_content() and "site" in msg.content:
        return str(msg.content["site"]["name"])
    return f"node-{msg.metadata.src_node_id}"


def _failure(name: str, reason: str, *, phase: str = "train") -> str:
    """A site's refusal names the site itself ("site-1 refused: ..."); other errors get the node."""
    reason = (reason or "unknown error").strip()
    if " refused: " in reason.split("\n", 1)[0]:
        return reason.splitlines()[0]
    return f"{name} ({phase}): {reason.splitlines()[-1] if reason else reason}"


def _metric_dict(msg: Message) -> dict[str, float]:
    rec = next(iter(msg.content.metric_records.values()), MetricRecord())
    return {k: float(v) for k, v in rec.items() if not isinstance(v, list)}


def _common_metric_keys(replies: list[Message]) -> None:
    """Keep only the metric keys every valid reply has (a site may share fewer metrics by policy,
    or report epsilon under DP), so Flower's consistency check and weighted averages hold.
    The full per-site metrics were recorded before this."""
    records = [next(iter(m.content.metric_records.values())) for m in replies
               if not m.has_error() and m.content.metric_records]
    if not records:
        return
    common = set(records[0]).intersection(*map(set, records[1:]))
    for rec in records:
        for key in [k for k in rec if k not in common]:
            del rec[key]


class Recorded(Strategy):
    """Delegates to `inner`; records per-site replies into `self.rounds`, validates every training
    reply before aggregation, and numbers rounds from `offset` + 1 (the coordinator calls
    `start(num_rounds=1)` once per round so that it can checkpoint, retry and resume)."""

    def __init__(self, inner: Strategy, *, evaluate_every: int = 1, num_rounds: int = 1,
                 min_sites: int = 1, max_norm_factor: float = 10.0,
                 max_examples: int = 10_000_000):
        self.inner = inner
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
        self.current = Accumulator.from_record(arrays)
        return self.inner.configure_train(server_round, arrays, config, grid)

    def aggregate_train(self, server_round: int, replies: Iterable[Message]):
        from server.validate import check_reply, norm_outliers

        server_round += self.offset
        log = self._log(server_round)
        acc = self.current if isinstance(self.current, Accumulator) else Accumulator(self.current)
        # FedAvg / FedProx (exactly: their aggregate is the weighted mean): sum while validating
        fast = type(self.inner) in (FedAvg, FedProx)
        acc.reset()
        accepted, norms, weights = [], {}, {}
        for msg in list(replies):
            name = _site_name(msg)
            if msg.has_error():
                log.failures.append(_failure(name, msg.error.reason))
                continue
            verdict = check_reply(msg, acc, max_examples=self.max_examples)
            if not verdict.ok:
                log.rejected[name] = verdict.reason
                continue
            norms[name] = verdict.norm
            accepted.append((name, msg))
            if fast:
                weights[name] = float(_metric_dict(msg)[self.inner.weighted_by_key])
                acc.add(weights[name])
        for name, reason in norm_outliers(norms, factor=self.max_norm_factor).items():
            log.rejected[name] = reason
        accepted = [(n, m) for n, m in accepted if n not in log.rejected]
        for name, msg in accepted:
            log.train[name] = _metric_dict(msg)
            log.upload_bytes[name] = sum(a.count_bytes() for a in msg.content.array_records.values())
        if len(accepted) < self.min_sites:
            log.incomplete = True
            return None, None
        replies = [m for _, m in accepted]
        _common_metric_keys(replies)
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
        for msg in replies:
            if msg.has_error():
                log.failures.append(_failure(_site_name(msg), msg.error.reason, phase="evaluate"))
            else:
                log.evaluate[_site_name(msg)] = _metric_dict(msg)
        replies = [m for m in replies if not m.has_error()]
        if not replies:
            return None
        _common_metric_keys(replies)
        return self.inner.aggregate_evaluate(server_round, replies)
