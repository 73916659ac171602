"""Update validation and robust aggregation at the coordinator, on real Flower messages and the
real strategies (no Flower processes needed: replies are built with Metadata, as the SuperLink
delivers them)."""

from __future__ import annotations

import numpy as np
import pytest
import torch
from flwr.app import ArrayRecord, ConfigRecord, Metadata, MetricRecord, RecordDict
from flwr.app.message.message import make_message

from common.config import resolve
from server.strategy import Recorded, build_strategy, uses_fast_mean

GLOBAL = {"lora_B": torch.zeros(4, 3), "classifier.weight": torch.ones(2, 3)}


def reply(node: int, state: dict, *, n: int = 100, name: str | None = None):
    md = Metadata(run_id=1, message_id=f"m{node}", src_node_id=node, dst_node_id=0,
                  reply_to_message_id="x", group_id="1", created_at=0.0, ttl=60,
                  message_type="train")
    content = RecordDict({"arrays": ArrayRecord({k: v.clone() for k, v in state.items()}),
                          "metrics": MetricRecord({"num-examples": n, "train_loss": 1.0}),
                          "site": ConfigRecord({"name": name or f"site-{node}"})})
    return make_message(md, content)


def honest(seed: int) -> dict:
    g = torch.Generator().manual_seed(seed)
    return {k: v + 0.01 * torch.randn(v.shape, generator=g) for k, v in GLOBAL.items()}


def _recorded(*sets: str) -> Recorded:
    cfg = resolve(None, ["federation.min-sites=2", *sets])
    rec = Recorded(build_strategy(cfg, num_sites=4), fast_mean=uses_fast_mean(cfg),
                   min_sites=2,
                   max_norm_factor=cfg.federation.max_norm_factor)
    rec.current = {k: v.numpy() for k, v in GLOBAL.items()}  # what configure_train records
    return rec


def _aggregate(rec: Recorded, replies):
    if hasattr(rec.inner, "current_arrays"):  # wrappers that compute updates keep the sent arrays
        rec.inner.current_arrays = ArrayRecord(GLOBAL)
    arrays, _ = rec.aggregate_train(1, replies)
    return arrays


BAD = {
    "nan": lambda: {k: torch.full_like(v, float("nan")) for k, v in GLOBAL.items()},
    "inf": lambda: {k: torch.full_like(v, float("inf")) for k, v in GLOBAL.items()},
    "wrong shape": lambda: {"lora_B": torch.zeros(5, 3), "classifier.weight": torch.ones(2, 3)},
    "wrong key": lambda: {"lora_X": torch.zeros(4, 3), "classifier.weight": torch.ones(2, 3)},
    "huge norm": lambda: {k: v + 1e4 for k, v in GLOBAL.items()},
}


@pytest.mark.parametrize("kind", sorted(BAD))
def test_bad_update_rejected_and_global_unaffected(kind):
    clean = [reply(i, honest(i)) for i in range(1, 4)]
    rec = _recorded()
    expected = _aggregate(rec, clean).to_torch_state_dict()
    rec = _recorded()
    got = _aggregate(rec, clean + [reply(9, BAD[kind](), name="mallory")]).to_torch_state_dict()
    assert "mallory" in rec.rounds[1].rejected, rec.rounds[1].rejected
    for k in expected:
        assert torch.equal(got[k], expected[k])


def test_implausible_example_count_rejected():
    rec = _recorded()
    _aggregate(rec, [reply(1, honest(1)), reply(2, honest(2)), reply(3, honest(3), n=10**12)])
    assert "site-3" in rec.rounds[1].rejected
    assert "num-examples" in rec.rounds[1].rejected["site-3"]


def test_too_few_valid_updates_marks_round_incomplete():
    rec = _recorded()
    arrays, _ = rec.aggregate_train(1, [reply(1, honest(1)), reply(2, BAD["nan"]())])
    assert arrays is None and rec.rounds[1].incomplete


@pytest.mark.parametrize("mode", ["median", "trimmed-mean", "norm-clip"])
def test_robust_aggregation_bounds_a_scaled_attacker(mode):
    """A scaled (but finite, in-shape) update that slips past a lax norm bound: the robust modes
    keep the global adapter near the honest mean, plain FedAvg does not."""
    replies = [reply(i, honest(i)) for i in range(1, 5)]
    attacker = {k: GLOBAL[k] + 50 * (honest(9)[k] - GLOBAL[k]) for k in GLOBAL}
    honest_mean = _aggregate(_recorded("federation.max-norm-factor=0"), replies).to_torch_state_dict()
    plain = _aggregate(_recorded("federation.max-norm-factor=0"),
                       replies + [reply(9, attacker)]).to_torch_state_dict()
    robust = _aggregate(_recorded("federation.max-norm-factor=0", f"federation.aggregation={mode}",
                                  "federation.clip-norm=0.05", "federation.trim-fraction=0.2"),
                        replies + [reply(9, attacker)]).to_torch_state_dict()

    def dist(a):
        return float(sum(((a[k] - honest_mean[k]) ** 2).sum() for k in a) ** 0.5)

    assert dist(robust) < 0.5 * dist(plain)
    assert np.isfinite(dist(robust))
