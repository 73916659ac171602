"""Issue #15, scenarios 2-4: what one site's reply can do to a run at the coordinator.

Replies are real Flower messages (built with Metadata, as the SuperLink delivers them) fed to the
real `Recorded` strategy. A site may lie about its name (2), its example count (3), send a huge
update with only two sites (3) or send garbage where numbers and arrays belong (4): the run goes
on, the reply is rejected with a reason, the honest sites' mean is untouched."""

from __future__ import annotations

import numpy as np
import pytest
import torch
from flwr.app import Array, ArrayRecord, ConfigRecord, Metadata, MetricRecord, RecordDict
from flwr.app.message.message import make_message

from common.config import resolve
from server.identity import REGISTRY_ENV, Enrolled, SiteIdentity, load_registry, save_enrolment
from server.strategy import Recorded, build_strategy, uses_fast_mean

GLOBAL = {"lora_B": torch.zeros(4, 3), "classifier.weight": torch.ones(2, 3)}


def _md(node: int, kind: str = "train") -> Metadata:
    return Metadata(run_id=1, message_id=f"m{node}", src_node_id=node, dst_node_id=0,
                    reply_to_message_id="x", group_id="1", created_at=0.0, ttl=60,
                    message_type=kind)


def reply(node: int, state: dict | None = None, *, n=100, name: str | None = None,
          arrays: ArrayRecord | None = None, metrics: MetricRecord | None = None,
          site: ConfigRecord | None = None, kind: str = "train"):
    content = {"metrics": metrics if metrics is not None else
               MetricRecord({"num-examples": n, "train_loss": 1.0})}
    if kind == "train":
        content["arrays"] = arrays if arrays is not None else \
            ArrayRecord({k: v.clone() for k, v in (state or honest(node)).items()})
    content["site"] = site if site is not None else ConfigRecord({"name": name or f"site-{node}"})
    return make_message(_md(node, kind), RecordDict(content))


def honest(seed: int) -> dict:
    g = torch.Generator().manual_seed(seed)
    return {k: v + 0.01 * torch.randn(v.shape, generator=g) for k, v in GLOBAL.items()}


def recorded(*sets: str, identity: SiteIdentity | None = None) -> Recorded:
    cfg = resolve(None, ["federation.min-sites=2", *sets])
    fed = cfg.federation
    rec = Recorded(build_strategy(cfg, num_sites=4), fast_mean=uses_fast_mean(cfg),
                   min_sites=2,
                   max_norm_factor=fed.max_norm_factor, max_examples=fed.max_examples,
                   max_update_norm=fed.max_update_norm, weighting=fed.weighting, identity=identity)
    rec.current = {k: v.numpy() for k, v in GLOBAL.items()}
    return rec


def aggregate(rec: Recorded, replies) -> dict | None:
    if hasattr(rec.inner, "current_arrays"):
        rec.inner.current_arrays = ArrayRecord(GLOBAL)
    arrays, _ = rec.aggregate_train(1, replies)
    return None if arrays is None else arrays.to_torch_state_dict()


def _array_with(data: bytes, stype: str = "numpy.ndarray", shape=(4, 3)) -> Array:
    return Array(dtype="float32", shape=tuple(shape), stype=stype, data=data)


def _corrupt_header() -> ArrayRecord:
    good = Array(np.zeros((4, 3), dtype=np.float32))
    data = bytearray(good.data)
    data[10:20] = b"{'descr': "[:10].replace(b"'", b"(")  # unparseable header dict
    return ArrayRecord({"lora_B": _array_with(bytes(data)),
                        "classifier.weight": Array(np.ones((2, 3), dtype=np.float32))})


# ---- scenario 4: one bad reply never aborts the run ---------------------------------------------
MALFORMED = {
    "num-examples as a list": lambda: reply(9, metrics=MetricRecord({"num-examples": [1, 2]})),
    "metric as a list": lambda: reply(9, metrics=MetricRecord({"num-examples": 5, "acc": [0.1]})),
    "non-numpy array type": lambda: reply(9, arrays=ArrayRecord({
        "lora_B": _array_with(b"\x00" * 48, stype="torch.Tensor"),
        "classifier.weight": Array(np.ones((2, 3), dtype=np.float32))})),
    "corrupt npy header": lambda: reply(9, arrays=_corrupt_header()),
    "truncated data": lambda: reply(9, arrays=ArrayRecord({
        "lora_B": _array_with(b"\x93NUMPY\x01\x00"),
        "classifier.weight": Array(np.ones((2, 3), dtype=np.float32))})),
    "integer dtype": lambda: reply(9, arrays=ArrayRecord({
        "lora_B": Array(np.zeros((4, 3), dtype=np.int32)),
        "classifier.weight": Array(np.ones((2, 3), dtype=np.float32))})),
    "two metric records": lambda: make_message(_md(9), RecordDict({
        "arrays": ArrayRecord(honest(9)), "metrics": MetricRecord({"num-examples": 5}),
        "more": MetricRecord({"num-examples": 5})})),
    "no metric record": lambda: make_message(_md(9), RecordDict({"arrays": ArrayRecord(honest(9))})),
}


@pytest.mark.parametrize("mode", ["mean", "median"])  # the fast path, and Flower's own aggregate
@pytest.mark.parametrize("kind", sorted(MALFORMED))
def test_malformed_reply_is_rejected_and_the_round_goes_on(kind, mode):
    clean = [reply(i) for i in (1, 2, 3)]
    expected = aggregate(recorded(f"federation.aggregation={mode}"), clean)
    rec = recorded(f"federation.aggregation={mode}")
    got = aggregate(rec, [reply(i) for i in (1, 2, 3)] + [MALFORMED[kind]()])
    assert got is not None
    bad = [k for k in rec.rounds[1].rejected if "9" in k or "node" in k]
    assert bad, rec.rounds[1].rejected
    for k in expected:
        assert torch.allclose(got[k], expected[k])


def test_site_record_without_name_does_not_crash():
    rec = recorded()
    assert aggregate(rec, [reply(1), reply(2), reply(9, site=ConfigRecord({"nom": "x"}))]) is not None
    assert set(rec.rounds[1].train) == {"site-1", "site-2", "node-9"}


def test_malformed_evaluate_reply_is_left_out():
    rec = recorded()
    rec.aggregate_train(1, [reply(i) for i in (1, 2)])
    good = [reply(i, kind="evaluate", metrics=MetricRecord({"num-examples": 10, "accuracy": 0.5}))
            for i in (1, 2)]
    bad = reply(9, kind="evaluate", metrics=MetricRecord({"num-examples": [1], "accuracy": 0.1}))
    rec.aggregate_evaluate(1, good + [bad])
    assert set(rec.rounds[1].evaluate) == {"site-1", "site-2"}
    assert any("rejected at the coordinator" in f for f in rec.rounds[1].failures)


# ---- scenario 2: names come from the node id, not from the reply ---------------------------------
def _registry(tmp_path, **caps) -> SiteIdentity:
    path = tmp_path / "sites.json"
    for node, name in ((1, "bank-a"), (2, "bank-b"), (3, "bank-c")):
        save_enrolment(path, Enrolled(node, name, "sha", caps.get(name.replace("-", "_"))))
    return SiteIdentity(load_registry(path), path)


def test_a_site_cannot_claim_another_sites_name(tmp_path, capsys):
    ident = _registry(tmp_path)
    rec = recorded(identity=ident)
    liar = reply(2, {k: v + 1e3 for k, v in GLOBAL.items()}, name="bank-a")  # rejected as bank-b
    aggregate(rec, [reply(1, name="bank-a"), liar, reply(3, name="bank-c")])
    log = rec.rounds[1]
    assert set(log.train) == {"bank-a", "bank-c"} and "bank-b" in log.rejected
    assert "bank-a" not in log.rejected
    assert any("claims to be 'bank-a'" in w for w in ident.warnings)
    assert "claims to be" in capsys.readouterr().out


def test_forged_metrics_are_recorded_under_the_real_sender(tmp_path):
    rec = recorded(identity=_registry(tmp_path))
    forged = reply(2, name="bank-a", metrics=MetricRecord({"num-examples": 100, "epsilon": 0.01}))
    aggregate(rec, [reply(1, name="bank-a"), forged])
    assert rec.rounds[1].train["bank-b"]["epsilon"] == 0.01
    assert "epsilon" not in rec.rounds[1].train["bank-a"]


def test_unenrolled_node_is_rejected(tmp_path):
    rec = recorded(identity=_registry(tmp_path))
    aggregate(rec, [reply(1), reply(2), reply(77, name="bank-a")])
    assert "unenrolled-node-77" in rec.rounds[1].rejected
    assert set(rec.rounds[1].train) == {"bank-a", "bank-b"}


def test_without_registry_a_name_is_bound_to_its_first_node():
    rec = recorded()
    aggregate(rec, [reply(1, name="site-0"), reply(2, name="site-0"), reply(3, name="site-2")])
    assert set(rec.rounds[1].train) == {"site-0", "node-2", "site-2"}


def test_identity_from_env(tmp_path, monkeypatch):
    ident = _registry(tmp_path)
    monkeypatch.setenv(REGISTRY_ENV, str(ident.path))
    assert SiteIdentity.from_env().registry[2].name == "bank-b"
    assert (ident.path.stat().st_mode & 0o077) == 0


# ---- scenario 3: no site dominates the weights ---------------------------------------------------
def test_claimed_examples_bounded_by_enrolment(tmp_path):
    rec = recorded(identity=_registry(tmp_path, bank_c=1000))
    aggregate(rec, [reply(1), reply(2), reply(3, n=9_000_000)])
    assert "num-examples" in rec.rounds[1].rejected["bank-c"]


def test_uniform_weighting_ignores_claimed_counts():
    replies = [reply(1, n=10), reply(2, n=9_999_999)]
    got = aggregate(recorded("federation.weighting=uniform"), replies)
    want = {k: (honest(1)[k] + honest(2)[k]) / 2 for k in GLOBAL}
    for k in GLOBAL:
        assert torch.allclose(got[k], want[k], atol=1e-6)


def test_per_run_example_cap():
    rec = recorded("federation.max-examples=5000")
    aggregate(rec, [reply(1), reply(2), reply(3, n=5001)])
    assert "site-3" in rec.rounds[1].rejected


def test_absolute_norm_bound_works_with_two_sites():
    big = {k: v + 50.0 for k, v in GLOBAL.items()}
    rec = recorded("federation.max-update-norm=1.0")
    aggregate(rec, [reply(1), reply(2, big), reply(3)])
    assert "max-update-norm" in rec.rounds[1].rejected["site-2"]
    rec = recorded("federation.max-update-norm=1.0")  # two sites: the median rule cannot act
    assert aggregate(rec, [reply(1), reply(2, big)]) is None and rec.rounds[1].incomplete
