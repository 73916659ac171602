"""The coordinator's fast path must give exactly what Flower's decoder and FedAvg give."""

from __future__ import annotations

import numpy as np
import pytest
import torch
from flwr.app import Array, ArrayRecord, ConfigRecord, Message, MetricRecord, RecordDict
from flwr.serverapp.strategy import FedAvg

from server.fastagg import as_tensors, check_arrays, decode
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
    rec = Recorded(FedAvg(fraction_train=1.0), max_norm_factor=0)
    rec.current = as_tensors(current)
    fast, fast_metrics = rec.aggregate_train(1, replies)
    ref, ref_metrics = FedAvg(fraction_train=1.0).aggregate_train(1, replies)
    assert set(fast.keys()) == set(ref.keys())
    for k in ref.keys():
        np.testing.assert_allclose(fast[k].numpy(), ref[k].numpy(), rtol=1e-6, atol=1e-7)
        assert fast[k].numpy().dtype == ref[k].numpy().dtype
    assert dict(fast_metrics) == pytest.approx(dict(ref_metrics))


def test_check_arrays_rejects_bad_updates():
    rng = np.random.default_rng(1)
    current = as_tensors(_record(rng))
    ok, norm, tensors = check_arrays(_record(rng), current)
    assert ok == "" and norm > 0 and set(tensors) == set(SHAPES)
    good = {k: np.asarray(decode(a)) for k, a in _record(rng).items()}
    for mutate, expect in [(lambda d: d["a.lora_B.weight"].__setitem__((0, 0), np.nan), "NaN or Inf"),
                           (lambda d: d["classifier.bias"].__setitem__(1, np.inf), "NaN or Inf"),
                           (lambda d: d.__setitem__("classifier.bias", np.ones(4, np.float32)), "shape"),
                           (lambda d: d.__setitem__("classifier.bias", np.ones(3, np.int32)), "dtype"),
                           (lambda d: d.pop("classifier.bias"), "wrong keys"),
                           (lambda d: d["a.lora_A.weight"].__setitem__((1, 1), 3e38), "overflows")]:
        bad = {k: v.copy() for k, v in good.items()}
        mutate(bad)
        reason, _, _ = check_arrays(ArrayRecord({k: Array(v) for k, v in bad.items()}), current)
        assert expect in reason, (expect, reason)
    # the norm is the update's distance to the global arrays
    same = ArrayRecord({k: Array(v.numpy().copy()) for k, v in current.items()})
    assert check_arrays(same, current)[1] == 0.0
    assert isinstance(tensors["classifier.bias"], torch.Tensor)


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
