"""Strategy construction and the recording wrapper that gives fedtune its per-site view.

`Recorded` wraps any Flower Message-API strategy (FedAvg, FedProx, FedAdam, ...) without copying
its loop: it delegates every call and keeps what each site replied, so the coordinator can write
per-site metrics and show a per-round table."""

from __future__ import annotations

import time
from collections.abc import Iterable
from dataclasses import dataclass, field

from flwr.app import Array, ArrayRecord, ConfigRecord, Message, MetricRecord, RecordDict
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
from server.identity import SiteIdentity


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


def _failure(name: str, reason: str, *, phase: str = "train") -> str:
    """A site's refusal names the site itself ("site-1 refused: ..."); other errors get the node.
    `name` is the coordinator's name for the sender; a reason naming someone else is prefixed."""
    reason = (reason or "unknown error").strip() or "unknown error"
    first = reason.splitlines()[0]
    if first.startswith(f"{name} refused: "):
        return first
    if " refused: " in first:  # names another site than the one that sent it: keep ours first
        return f"{name} ({phase}): {first}"
    return f"{name} ({phase}): {reason.splitlines()[-1] if reason else reason}"


def _failure_reason(msg: Message) -> str:
    try:
        return str(msg.error.reason)[:2000]
    except Exception:  # noqa: BLE001 - a reply's error frame is input like any other
        return "unreadable error reply"


def _canonical(msg: Message, *, metrics: dict, weight: float, arrays: ArrayRecord | None) -> None:
    """Replace a checked reply's content by exactly what the strategy needs: its one ArrayRecord
    and its numeric metrics with num-examples set to the weight it may have. Nothing else a site
    put in its reply (record names, extra records) reaches Flower's aggregation."""
    content = {"metrics": MetricRecord({**metrics, "num-examples": weight})}
    if arrays is not None:
        content["arrays"] = arrays
    msg.content = RecordDict(content)


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
                 max_examples: int = 10_000_000, max_update_norm: float = 0.0,
                 weighting: str = "examples", identity: SiteIdentity | None = None):
        self.inner = inner
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
        from server.validate import check_reply, norm_outliers

        server_round += self.offset
        log = self._log(server_round)
        acc = self.current if isinstance(self.current, Accumulator) else Accumulator(self.current)
        # FedAvg / FedProx (exactly: their aggregate is the weighted mean): sum while validating
        fast = type(self.inner) in (FedAvg, FedProx)
        acc.reset()
        accepted, norms, weights = [], {}, {}
        claimed: dict[str, dict] = {}
        for msg in list(replies):
            name = self.identity.name(msg)
            if msg.has_error():
                log.failures.append(_failure(name, _failure_reason(msg)))
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
            _canonical(msg, metrics=verdict.metrics, weight=weights[name],
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
        from server.validate import guarded_metrics

        server_round += self.offset
        replies = list(replies)
        log = self._log(server_round)
        valid = []
        for msg in replies:
            name = self.identity.name(msg)
            if msg.has_error():
                log.failures.append(_failure(name, _failure_reason(msg), phase="evaluate"))
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
            _canonical(msg, metrics=metrics, weight=self._weight(metrics), arrays=None)
            valid.append(msg)
        replies = valid
        if not replies:
            return None
        _common_metric_keys(replies)
        return self.inner.aggregate_evaluate(server_round, replies)
