"""The coordinator's fast path must give exactly what Flower's decoder and FedAvg give."""

from __future__ import annotations

import numpy as np
import pytest
from flwr.app import Array, ArrayRecord, ConfigRecord, Message, MetricRecord, RecordDict
from flwr.serverapp.strategy import FedAvg

from server.fastagg import Accumulator, check_arrays, decode
from server.strategy import Recorded

SHAPES = {"a.lora_A.weight": (4, 16), "a.lora_B.weight": (16, 4), "classifier.bias": (3,)}


@pytest.fixture(autouse=True)
def _task_identity():
    from flwr.supercore.task_identity import TaskIdentity

    TaskIdentity.task_id, TaskIdentity.run_id, TaskIdentity.node_id = 1, 4242, 1


def _record(rng, scale=1.0, dtype=np.float32):
    return ArrayRecord({k: Array((rng.standard_normal(s) * scale).astype(dtype)) for k, s in SHAPES.items()})


def _reply(i, rec, n):
    ins = Message(RecordDict(), dst_node_id=10 + i, message_type="train")
    return Message(RecordDict({"arrays": rec, "metrics": MetricRecord({"num-examples": n, "train_loss": 1.0}),
                               "site": ConfigRecord({"name": f"site-{i}"})}), reply_to=ins)


@pytest.mark.parametrize("value", [np.arange(12, dtype=np.float32).reshape(3, 4),
                                   np.ones((2, 3, 4), dtype=np.float16), np.float64(3.5) * np.ones(5),
                                   np.asfortranarray(np.arange(6, dtype=np.float32).reshape(2, 3)),
                                   np.zeros((0, 4), dtype=np.float32)])
def test_decode_matches_flower(value):
    arr = Array(value)
    got = decode(arr)
    assert got.dtype == arr.numpy().dtype and got.shape == arr.numpy().shape
    assert np.array_equal(got, arr.numpy())


def test_fast_mean_equals_flower_fedavg():
    rng = np.random.default_rng(0)
    current = _record(rng, 0.02)
    replies = [_reply(i, _record(rng), n) for i, n in enumerate([5, 17, 40, 3])]
    rec = Recorded(FedAvg(fraction_train=1.0), fast_mean=True, max_norm_factor=0)
    rec.current = Accumulator.from_record(current)
    fast, fast_metrics = rec.aggregate_train(1, replies)
    ref, ref_metrics = FedAvg(fraction_train=1.0).aggregate_train(1, replies)
    assert set(fast.keys()) == set(ref.keys())
    for k in ref.keys():
        np.testing.assert_allclose(fast[k].numpy(), ref[k].numpy(), rtol=1e-6, atol=1e-7)
        assert fast[k].numpy().dtype == ref[k].numpy().dtype
    assert dict(fast_metrics) == pytest.approx(dict(ref_metrics))


def test_check_arrays_rejects_bad_updates():
    rng = np.random.default_rng(1)
    current = {k: decode(a) for k, a in _record(rng).items()}
    ok, norm = check_arrays(_record(rng), current)
    assert ok == "" and norm > 0
    good = {k: np.asarray(decode(a)) for k, a in _record(rng).items()}
    for mutate, expect in [(lambda d: d["a.lora_B.weight"].__setitem__((0, 0), np.nan), "NaN or Inf"),
                           (lambda d: d["classifier.bias"].__setitem__(1, np.inf), "NaN or Inf"),
                           (lambda d: d.__setitem__("classifier.bias", np.ones(4, np.float32)), "shape"),
                           (lambda d: d.__setitem__("classifier.bias", np.ones(3, np.int32)), "dtype"),
                           (lambda d: d.pop("classifier.bias"), "wrong keys"),
                           (lambda d: d["a.lora_A.weight"].__setitem__((1, 1), 3e38), "overflows")]:
        bad = {k: v.copy() for k, v in good.items()}
        mutate(bad)
        reason, _ = check_arrays(ArrayRecord({k: Array(v) for k, v in bad.items()}), current)
        assert expect in reason, (expect, reason)
    # the norm is the update's distance to the global arrays
    same = ArrayRecord({k: Array(v.copy()) for k, v in current.items()})
    assert check_arrays(same, current)[1] == 0.0


def test_norm_outliers_matches_leave_one_out_median():
    from server.validate import norm_outliers

    def brute(norms, factor):
        out = set()
        for site, norm in norms.items():
            bound = factor * float(np.median([v for s, v in norms.items() if s != site]))
            if bound > 0 and norm > bound:
                out.add(site)
        return out

    rng = np.random.default_rng(0)
    flagged = 0
    for n in (3, 4, 5, 8, 31):
        for t in range(60):
            v = rng.lognormal(size=n)
            if t % 3 == 0:
                v[rng.integers(n)] *= 50
            if t % 5 == 0:
                v[:2] = v[2]
            norms = {f"site-{i}": float(x) for i, x in enumerate(v)}
            got = set(norm_outliers(norms, factor=3.0))
            assert got == brute(norms, 3.0)
            flagged += len(got)
    assert flagged > 0


def test_a_site_rejected_for_its_norm_is_left_out_of_the_mean():
    """Updates are summed while they are validated; a later norm rejection must undo that."""
    rng = np.random.default_rng(2)
    current = _record(rng, 0.02)
    base = {k: decode(a) for k, a in current.items()}
    good = [ArrayRecord({k: Array(v + rng.standard_normal(v.shape).astype(np.float32) * 1e-2)
                         for k, v in base.items()}) for _ in range(4)]
    poisoned = ArrayRecord({k: Array(v + 50.0) for k, v in base.items()})
    replies = [_reply(i, r, 10 + i) for i, r in enumerate(good + [poisoned])]
    rec = Recorded(FedAvg(fraction_train=1.0), fast_mean=True, max_norm_factor=10.0)
    rec.current = Accumulator.from_record(current)
    fast, _ = rec.aggregate_train(1, replies)
    assert list(rec.rounds[1].rejected) == ["site-4"]
    ref, _ = FedAvg(fraction_train=1.0).aggregate_train(1, replies[:4])
    for k in ref.keys():
        np.testing.assert_allclose(fast[k].numpy(), ref[k].numpy(), rtol=1e-6, atol=1e-7)


def test_one_piece_and_per_array_paths_agree():
    """Replies serialized differently (float64, float16, Fortran order) take the per-array path
    and must give the same update norm as plain numpy on Flower's decoded arrays."""
    rng = np.random.default_rng(3)
    base = {k: decode(a) for k, a in _record(rng, 0.02).items()}
    acc = Accumulator(base)
    upd = {k: (v + rng.standard_normal(v.shape).astype(np.float32) * 0.1) for k, v in base.items()}
    variants = [upd, {k: v.astype(np.float64) for k, v in upd.items()},
                {k: np.asfortranarray(v) for k, v in upd.items()},
                {k: v.astype(np.float16) for k, v in upd.items()}]
    for arrays in variants:
        rec = ArrayRecord({k: Array(v) for k, v in arrays.items()})
        expect = np.sqrt(sum(float(((a.numpy().astype(np.float64) - base[k]) ** 2).sum())
                             for k, a in rec.items()))
        reason, norm = acc.check(rec)
        assert reason == "" and norm == pytest.approx(expect, rel=1e-5)
        acc.reset()
        acc.add(2.0)
        for k, v in acc.mean().items():
            np.testing.assert_allclose(v, rec[k].numpy().astype(np.float32), rtol=1e-5, atol=1e-6)


def test_the_fast_path_is_named_and_a_changed_fedavg_is_never_bypassed():
    """The fast mean is chosen by name (`uses_fast_mean` → `Recorded(fast_mean=...)`), never by
    looking at the inner strategy's type: an edited FedAvg runs its own aggregate_train, and asking
    for the fast mean over anything but FedAvg/FedProx is an error, not a silent bypass."""
    from common.config import resolve
    from server.identity import SiteIdentity
    from server.strategy import build_coordinator, uses_fast_mean

    assert uses_fast_mean(resolve(None, []))
    assert uses_fast_mean(resolve(None, ["federation.strategy=fedprox"]))
    for sets in (["federation.strategy=fedadam"], ["federation.aggregation=median"],
                 ["federation.aggregation=norm-clip"], ["privacy.server-noise=0.5"]):
        assert not uses_fast_mean(resolve(None, sets)), sets
    coordinator = build_coordinator(resolve(None, []), num_sites=2, identity=SiteIdentity())
    assert coordinator.fast_mean and type(coordinator.inner) is FedAvg

    class HalfAvg(FedAvg):
        def aggregate_train(self, server_round, replies):
            arrays, metrics = super().aggregate_train(server_round, replies)
            return ArrayRecord({k: Array(a.numpy() * 0.5) for k, a in arrays.items()}), metrics

    with pytest.raises(ValueError, match="fast_mean"):
        Recorded(HalfAvg(fraction_train=1.0), fast_mean=True)
    rng = np.random.default_rng(4)
    current = _record(rng, 0.02)
    replies = [_reply(i, _record(rng), n) for i, n in enumerate([5, 17])]
    rec = Recorded(HalfAvg(fraction_train=1.0), max_norm_factor=0)
    rec.current = Accumulator.from_record(current)
    got, _ = rec.aggregate_train(1, replies)
    ref, _ = FedAvg(fraction_train=1.0).aggregate_train(1, replies)
    for k in ref.keys():
        np.testing.assert_allclose(got[k].numpy(), 0.5 * ref[k].numpy(), rtol=1e-6, atol=1e-7)
