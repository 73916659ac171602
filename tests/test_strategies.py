"""Strategies: FedProx's proximal term in the local loss (mu=0 is bit-identical to FedAvg), and the
server optimiser options of FedAdam / FedYogi / FedAdagrad reaching Flower's strategies."""

from __future__ import annotations

import numpy as np
import pandas as pd
import pytest
import torch
from flwr.app import ArrayRecord, Metadata, MetricRecord, RecordDict
from flwr.app.message.message import make_message
from flwr.serverapp.strategy import FedAdagrad, FedAdam, FedAvg, FedProx, FedYogi

from client.site import Site, SiteFacts
from common.adapter import get_state
from common.config import resolve
from common.errors import ConfigError
from server.strategy import build_strategy
from tests.conftest import make_texts


def _cfg(tiny_model_dir, tmp_path, *sets):
    return resolve(None, [f"model.base={tiny_model_dir}", "model.max-length=24", "model.lora-r=4",
                          "task.labels=intent_0,intent_1,intent_2,intent_3", "train.batch-size=16",
                          "federation.rounds=2", "simulation.sites=2", *sets])


@pytest.fixture
def site_csv(tmp_path):
    texts, labels = make_texts(120, 4)
    pd.DataFrame({"text": texts, "label": labels}).to_csv(tmp_path / "site.csv", index=False)
    return tmp_path / "site.csv"


def _fit(cfg, csv, tmp_path, tag):
    site = Site(cfg, SiteFacts(name="site-0", index=0, data_path=str(csv),
                               site_dir=str(tmp_path / f"site-{tag}")))
    start = get_state(site.model)
    new, _ = site.fit(start, server_round=1)
    return start, new


def test_fedprox_mu0_is_bit_identical_to_fedavg(tiny_model_dir, tmp_path, site_csv):
    start, avg = _fit(_cfg(tiny_model_dir, tmp_path), site_csv, tmp_path, "avg")
    _, prox0 = _fit(_cfg(tiny_model_dir, tmp_path, "federation.strategy=fedprox",
                         "federation.proximal-mu=0"), site_csv, tmp_path, "prox0")
    assert all(torch.equal(avg[k], prox0[k]) for k in avg)
    assert any(not torch.equal(avg[k], start[k]) for k in avg)
    # and the coordinator aggregates them the same way
    replies = [avg, {k: v * 0.5 for k, v in avg.items()}]
    agg = [_aggregate(build_strategy(_cfg(tiny_model_dir, tmp_path, *s), num_sites=2), start, replies)
           for s in ([], ["federation.strategy=fedprox", "federation.proximal-mu=0"])]
    assert all(np.array_equal(agg[0][k].numpy(), agg[1][k].numpy()) for k in agg[0])


def test_proximal_term_pulls_towards_the_global_state(tiny_model_dir, tmp_path, site_csv):
    start, avg = _fit(_cfg(tiny_model_dir, tmp_path), site_csv, tmp_path, "avg")
    _, prox = _fit(_cfg(tiny_model_dir, tmp_path, "federation.strategy=fedprox",
                        "federation.proximal-mu=5"), site_csv, tmp_path, "prox")

    def drift(state):
        return sum(float(((state[k] - start[k]) ** 2).sum()) for k in state)

    assert drift(prox) < drift(avg)


def test_fedprox_with_dp_is_refused(tiny_model_dir, tmp_path, site_csv):
    cfg = _cfg(tiny_model_dir, tmp_path, "federation.strategy=fedprox", "privacy.dp=true")
    with pytest.raises(ConfigError, match="proximal"):
        Site(cfg, SiteFacts(name="s", index=0, data_path=str(site_csv), site_dir=str(tmp_path / "s")))


def test_build_strategy_passes_server_optimiser_options(tiny_model_dir, tmp_path):
    opts = ["federation.server-lr=0.003", "federation.server-beta1=0.8",
            "federation.server-beta2=0.95", "federation.server-tau=0.0001"]
    for name, cls in (("fedadam", FedAdam), ("fedyogi", FedYogi), ("fedadagrad", FedAdagrad)):
        s = build_strategy(_cfg(tiny_model_dir, tmp_path, f"federation.strategy={name}", *opts), num_sites=2)
        assert type(s) is cls and s.eta == 0.003 and s.tau == 0.0001
        if cls is not FedAdagrad:
            assert (s.beta_1, s.beta_2) == (0.8, 0.95)
    prox = build_strategy(_cfg(tiny_model_dir, tmp_path, "federation.strategy=fedprox",
                               "federation.proximal-mu=0.05"), num_sites=2)
    assert type(prox) is FedProx and prox.proximal_mu == 0.05
    assert type(build_strategy(_cfg(tiny_model_dir, tmp_path), num_sites=2)) is FedAvg
    with pytest.raises(ConfigError, match="server-lr"):
        resolve(None, ["federation.server-lr=0"])


def _aggregate(strategy, start, replies):
    """One aggregation on real Flower reply messages (built as the SuperLink delivers them)."""
    if hasattr(strategy, "current_arrays"):  # FedOpt family: what configure_train records
        strategy.current_arrays = {k: v.numpy() for k, v in start.items()}
    out = []
    for i, state in enumerate(replies):
        md = Metadata(run_id=1, message_id=f"m{i}", src_node_id=i + 1, dst_node_id=0,
                      reply_to_message_id="x", group_id="1", created_at=0.0, ttl=60,
                      message_type="train")
        out.append(make_message(md, RecordDict({
            "arrays": ArrayRecord({k: v.clone() for k, v in state.items()}),
            "metrics": MetricRecord({"num-examples": 10 * (i + 1)})})))
    arrays, _ = strategy.aggregate_train(1, out)
    return arrays.to_torch_state_dict()


@pytest.mark.parametrize("name", ["fedadam", "fedyogi", "fedadagrad"])
def test_adaptive_strategies_step_by_server_lr(tiny_model_dir, tmp_path, name):
    """One round on fixed updates: the step is bounded by about server-lr per coordinate and moves
    in the direction of the averaged update."""
    start = {"w": torch.zeros(6), "b": torch.ones(3)}
    replies = [{"w": torch.full((6,), 0.2), "b": torch.full((3,), 0.9)},
               {"w": torch.full((6,), 0.1), "b": torch.full((3,), 1.3)}]
    for lr in (0.01, 0.001):
        cfg = _cfg(tiny_model_dir, tmp_path, f"federation.strategy={name}", f"federation.server-lr={lr}")
        new = _aggregate(build_strategy(cfg, num_sites=2), start, replies)
        step_w, step_b = new["w"] - start["w"], new["b"] - start["b"]
        assert (step_w > 0).all() and (step_b > 0).all()  # b's weighted mean is 1.1667 > 1
        assert float(step_w.abs().max()) <= 1.5 * lr
