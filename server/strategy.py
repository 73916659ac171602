"""Strategy construction and the recording wrapper that gives fedtune its per-site view.

`Recorded` wraps any Flower Message-API strategy (FedAvg, FedProx, FedAdam, ...) without copying
its loop: it delegates every call and keeps what each site replied, so the coordinator can write
per-site metrics and show a per-round table."""

from __future__ import annotations

import time
from collections.abc import Iterable
from dataclasses import dataclass, field

from flwr.app import ArrayRecord, ConfigRecord, Message, MetricRecord
from flwr.serverapp import Grid
from flwr.serverapp.strategy import FedAdagrad, FedAdam, FedAvg, FedProx, FedYogi, Strategy

from common.config import RunConfig


def build_strategy(cfg: RunConfig, *, num_sites: int) -> Strategy:
    """The aggregation strategy named in federation.strategy, over adapter arrays only."""
    fed = cfg.federation
    common = dict(fraction_train=fed.fraction_train, fraction_evaluate=1.0,
                  min_train_nodes=fed.min_sites, min_evaluate_nodes=fed.min_sites,
                  min_available_nodes=max(fed.min_sites, num_sites))
    if fed.strategy == "fedavg":
        return FedAvg(**common)
    if fed.strategy == "fedprox":
        return FedProx(**common)
    return {"fedadam": FedAdam, "fedyogi": FedYogi, "fedadagrad": FedAdagrad}[fed.strategy](**common)


@dataclass
class RoundLog:
    """What the coordinator saw in one round (aggregate metrics only; never site data)."""

    round: int
    started: float = field(default_factory=time.time)
    train: dict[str, dict[str, float]] = field(default_factory=dict)  # site -> metrics
    evaluate: dict[str, dict[str, float]] = field(default_factory=dict)
    failures: list[str] = field(default_factory=list)
    upload_bytes: dict[str, int] = field(default_factory=dict)


def _site_name(msg: Message) -> str:
    if msg.has_content() and "site" in msg.content:
        return str(msg.content["site"]["name"])
    return f"node-{msg.metadata.src_node_id}"


def _metric_dict(msg: Message) -> dict[str, float]:
    rec = next(iter(msg.content.metric_records.values()), MetricRecord())
    return {k: float(v) for k, v in rec.items() if not isinstance(v, list)}


class Recorded(Strategy):
    """Delegates to `inner`; records per-site replies into `self.rounds`."""

    def __init__(self, inner: Strategy, *, evaluate_every: int = 1, num_rounds: int = 1):
        self.inner = inner
        self.evaluate_every = evaluate_every
        self.num_rounds = num_rounds
        self.rounds: dict[int, RoundLog] = {}

    def _log(self, server_round: int) -> RoundLog:
        return self.rounds.setdefault(server_round, RoundLog(round=server_round))

    def summary(self) -> None:
        self.inner.summary()

    def configure_train(self, server_round: int, arrays: ArrayRecord, config: ConfigRecord,
                        grid: Grid) -> Iterable[Message]:
        self._log(server_round)
        return self.inner.configure_train(server_round, arrays, config, grid)

    def aggregate_train(self, server_round: int, replies: Iterable[Message]):
        replies = list(replies)
        log = self._log(server_round)
        for msg in replies:
            name = _site_name(msg)
            if msg.has_error():
                log.failures.append(f"{name}: {msg.error.reason}")
                continue
            log.train[name] = _metric_dict(msg)
            log.upload_bytes[name] = sum(a.count_bytes() for a in msg.content.array_records.values())
        return self.inner.aggregate_train(server_round, replies)

    def configure_evaluate(self, server_round: int, arrays: ArrayRecord, config: ConfigRecord,
                           grid: Grid) -> Iterable[Message]:
        if server_round % self.evaluate_every and server_round != self.num_rounds:
            return []
        return self.inner.configure_evaluate(server_round, arrays, config, grid)

    def aggregate_evaluate(self, server_round: int, replies: Iterable[Message]):
        replies = list(replies)
        log = self._log(server_round)
        for msg in replies:
            if msg.has_error():
                log.failures.append(f"{_site_name(msg)} (evaluate): {msg.error.reason}")
            else:
                log.evaluate[_site_name(msg)] = _metric_dict(msg)
        if not replies:
            return None
        return self.inner.aggregate_evaluate(server_round, replies)
