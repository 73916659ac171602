"""Update compression: round-trip bounds per mode, error feedback, malformed payloads, and the
site mod + coordinator wrapper together (with the outbound guard in between)."""

from __future__ import annotations

import dataclasses

import numpy as np
import pytest
import torch

from common.compress import INT8_BLOCK, decode, encode, encode_with_feedback, topk_count
from common.config import CompressionConfig, RunConfig
from common.errors import ConfigError, ModelError


def _state(seed: int = 0) -> dict[str, torch.Tensor]:
    g = torch.Generator().manual_seed(seed)
    return {"layer.lora_A.weight": torch.randn(8, 300, generator=g) * 0.01,
            "layer.lora_B.weight": torch.randn(40, 8, generator=g) * 0.001,
            "classifier.bias": torch.randn(7, generator=g)}


def _shapes(state):
    return {k: tuple(v.shape) for k, v in state.items()}


def _roundtrip(state, **kw):
    return decode(encode(state, **kw), template_shapes=_shapes(state))


def test_none_is_exact():
    s = _state()
    out = _roundtrip(s, mode="none")
    assert all(torch.equal(out[k], s[k]) for k in s)


def test_fp16_relative_error():
    s = _state()
    out = _roundtrip(s, mode="fp16")
    for k in s:
        assert torch.allclose(out[k], s[k], rtol=2 ** -10, atol=1e-7), k


def test_int8_error_within_half_a_step_per_block():
    s = _state()
    out = _roundtrip(s, mode="int8")
    for k, v in s.items():
        flat, err = v.reshape(-1), (out[k] - v).reshape(-1).abs()
        for start in range(0, flat.numel(), INT8_BLOCK):
            step = flat[start:start + INT8_BLOCK].abs().max() / 127
            assert err[start:start + INT8_BLOCK].max() <= step / 2 + 1e-9, k


def test_topk_keeps_the_largest_entries():
    s = _state()
    payload = encode(s, mode="topk", topk_fraction=0.05)
    out = decode(payload, template_shapes=_shapes(s))
    for k, v in s.items():
        k_kept = topk_count(v.numel(), 0.05)
        assert len(payload[f"{k}.idx"]) == k_kept
        kept = out[k] != 0
        assert int(kept.sum()) == k_kept
        assert torch.allclose(out[k][kept], v[kept], rtol=2 ** -10)  # fp16 values
        if k_kept < v.numel():
            assert v[~kept].abs().max() <= v[kept].abs().min()


def test_topk_is_small_on_the_wire():
    s = _state()
    full = sum(v.numel() * 4 for v in s.values())
    payload = encode(s, mode="topk", topk_fraction=0.01)
    assert sum(a.nbytes for a in payload.values()) < full / 40
    assert payload["layer.lora_A.weight.idx"].dtype == np.int16  # 2,400 entries fit int16


@pytest.mark.parametrize("mode,fraction", [("int8", 0.01), ("topk", 0.01), ("topk", 0.1)])
def test_error_feedback_shrinks_the_cumulative_error(mode, fraction):
    """Send the same update T times: with feedback, what arrived trails T x update by just the
    residual, so the relative cumulative error falls like 1/T; without it, it stays put."""
    update = _state(1)
    residual, sent_sum, plain_sum = {}, {k: torch.zeros_like(v) for k, v in update.items()}, None
    rel = []
    for t in range(1, 41):
        payload, residual = encode_with_feedback(update, mode=mode, topk_fraction=fraction,
                                                 residual=residual)
        got = decode(payload, template_shapes=_shapes(update))
        sent_sum = {k: sent_sum[k] + got[k] for k in got}
        true = torch.cat([(t * v).reshape(-1) for v in update.values()])
        err = true - torch.cat([sent_sum[k].reshape(-1) for k in update])
        rel.append(float(err.norm() / true.norm()))
        if t == 1:
            plain_sum = float(err.norm() / true.norm())  # one-shot error = error without feedback
    assert rel[-1] < rel[0] / 5
    assert rel[-1] < rel[9] and rel[9] < rel[0]
    assert plain_sum == pytest.approx(rel[0])


def test_feedback_residual_is_what_was_not_sent():
    update = _state(2)
    payload, residual = encode_with_feedback(update, mode="topk", topk_fraction=0.02)
    got = decode(payload, template_shapes=_shapes(update))
    for k in update:
        assert torch.allclose(got[k] + residual[k], update[k], atol=1e-7)
    _, none_residual = encode_with_feedback(update, mode="fp16")
    assert none_residual == {}


def _bad(payload: dict, key: str, value) -> dict:
    out = dict(payload)
    if value is None:
        out.pop(key)
    else:
        out[key] = value
    return out


K = "layer.lora_A.weight"


@pytest.mark.parametrize("mode,mutate,words", [
    ("topk", lambda p: _bad(p, f"{K}.idx", p[f"{K}.idx"] + 10_000), "outside"),
    ("topk", lambda p: _bad(p, f"{K}.idx", -p[f"{K}.idx"][::-1] - 1), "outside"),
    ("topk", lambda p: _bad(p, f"{K}.idx", np.sort(np.r_[p[f"{K}.idx"][:-1], p[f"{K}.idx"][:1]])),
     "strictly increasing"),
    ("topk", lambda p: _bad(p, f"{K}.val", np.full_like(p[f"{K}.val"], np.nan)), "NaN"),
    ("topk", lambda p: _bad(p, f"{K}.val", p[f"{K}.val"][:-1]), "shaped like idx"),
    ("topk", lambda p: _bad(p, f"{K}.idx", p[f"{K}.idx"].astype(np.float32)), "int"),
    ("topk", lambda p: _bad(p, f"{K}.val", None), "no known encoding"),
    ("int8", lambda p: _bad(p, f"{K}.q8", p[f"{K}.q8"].reshape(-1)), "shape"),
    ("int8", lambda p: _bad(p, f"{K}.q8", p[f"{K}.q8"].astype(np.int32)), "int8"),
    ("int8", lambda p: _bad(p, f"{K}.scale", p[f"{K}.scale"][:-1]), "scale"),
    ("int8", lambda p: _bad(p, f"{K}.scale", -p[f"{K}.scale"]), "negative"),
    ("int8", lambda p: _bad(p, f"{K}.scale", None), "no known encoding"),
    ("fp16", lambda p: _bad(p, f"{K}.f16", np.full((8, 300), np.inf, np.float16)), "Inf"),
    ("fp16", lambda p: _bad(p, f"{K}.f16", np.zeros((300, 8), np.float16)), "shape"),
    ("fp16", lambda p: _bad(p, f"{K}.f16", np.zeros((8, 300), np.float64)), "float16"),
    ("none", lambda p: _bad(p, K, np.zeros((8, 300), np.int32)), "float"),
])
def test_malformed_payloads_are_rejected_naming_the_key(mode, mutate, words):
    s = _state()
    payload = mutate(encode(s, mode=mode, topk_fraction=0.05))
    with pytest.raises(ModelError) as err:
        decode(payload, template_shapes=_shapes(s))
    assert K in str(err.value) and words in str(err.value)


def test_unknown_and_missing_keys_are_rejected():
    s = _state()
    payload = encode(s, mode="topk")
    with pytest.raises(ModelError, match="matches no adapter key"):
        decode({**payload, "evil.idx": np.zeros(1, np.int32)}, template_shapes=_shapes(s))
    with pytest.raises(ModelError, match="lacks 1 adapter key"):
        decode({k: v for k, v in payload.items() if not k.startswith("classifier")},
               template_shapes=_shapes(s))


def test_encode_refuses_non_finite_and_fp16_overflow():
    with pytest.raises(ModelError, match="x.*NaN"):
        encode({"x": torch.tensor([1.0, float("nan")])}, mode="int8")
    with pytest.raises(ModelError, match="x.*float16 range"):
        encode({"x": torch.tensor([1e6])}, mode="fp16")


def test_config_section():
    cfg = RunConfig()
    assert cfg.compression.mode == "none" and cfg.to_flat()["compression.topk-fraction"] == 0.01
    with pytest.raises(ConfigError, match="compression.mode"):
        CompressionConfig(mode="zip")
    with pytest.raises(ConfigError, match="compression.topk-fraction"):
        CompressionConfig(topk_fraction=0.0)


# ---- the mod at the site and the wrapper at the coordinator -----------------------------------

@pytest.fixture
def task_identity():
    from flwr.supercore.task_identity import TaskIdentity

    saved = (TaskIdentity._task_id, TaskIdentity._run_id, TaskIdentity._node_id)
    TaskIdentity.task_id, TaskIdentity.run_id, TaskIdentity.node_id = 1, 77, 1
    yield
    TaskIdentity._task_id, TaskIdentity._run_id, TaskIdentity._node_id = saved


class _Sink:
    """A stand-in inner strategy that keeps the replies it is given."""

    def __init__(self):
        self.got = []

    def configure_train(self, server_round, arrays, config, grid):
        return []

    def aggregate_train(self, server_round, replies):
        self.got = list(replies)
        return None, None


def _exchange(tmp_path, mode: str, global_state, trained, *, rounds: int = 1):
    from flwr.app import ArrayRecord, ConfigRecord, Context, Message, MetricRecord, RecordDict

    from client.compress_mod import compression_mod, residual_path
    from client.guard import violations
    from server.compress import Decompressing

    cfg = RunConfig()
    cfg = dataclasses.replace(cfg, compression=CompressionConfig(mode=mode, topk_fraction=0.05),
                              output=dataclasses.replace(cfg.output, run_dir=str(tmp_path)))
    ctx = Context(run_id=77, node_id=3, node_config={"partition-id": 0}, state=RecordDict(),
                  run_config=cfg.to_flat())
    sink = _Sink()
    wrapper = Decompressing(sink)

    def handler(msg, _ctx):
        return Message(RecordDict({"arrays": ArrayRecord(trained),
                                   "metrics": MetricRecord({"num-examples": 10}),
                                   "site": ConfigRecord({"name": "site-0"})}), reply_to=msg)

    for _ in range(rounds):
        wrapper.configure_train(1, ArrayRecord(global_state), ConfigRecord(), None)
        msg = Message(RecordDict({"arrays": ArrayRecord(global_state)}), dst_node_id=3,
                      message_type="train")
        reply = compression_mod(msg, ctx, handler)
        assert violations(reply) == []
        wrapper.aggregate_train(1, [reply])
    return reply, sink.got[0], wrapper, residual_path(tmp_path / "sites" / "site-0", 77)


@pytest.mark.parametrize("mode", ["fp16", "int8", "topk"])
def test_mod_and_wrapper_round_trip(tmp_path, task_identity, mode):
    g = _state(0)
    trained = {k: v + 0.01 * torch.randn_like(v) for k, v in g.items()}
    reply, decoded, wrapper, residual = _exchange(tmp_path, mode, g, trained)
    sent_keys = list(reply.content["arrays"].keys())
    assert all(k.endswith((".f16", ".q8", ".scale", ".idx", ".val")) for k in sent_keys)
    out = decoded.content["arrays"].to_torch_state_dict()
    assert set(out) == set(g) and all(out[k].dtype == torch.float32 for k in out)
    tol = {"fp16": 1e-4, "int8": 2e-3, "topk": 0.05}[mode]
    assert max(float((out[k] - trained[k]).abs().max()) for k in g) < tol
    assert wrapper.wire_bytes["site-0"] == reply.content["arrays"].count_bytes()
    assert residual.is_file() == (mode in ("int8", "topk"))


def test_residual_survives_across_rounds(tmp_path, task_identity):
    from client.compress_mod import load_residual

    g = _state(0)
    trained = {k: v + 0.01 * torch.randn_like(v) for k, v in g.items()}
    *_, path = _exchange(tmp_path, "topk", g, trained, rounds=1)
    first = load_residual(path)
    *_, path = _exchange(tmp_path, "topk", g, trained, rounds=1)
    second = load_residual(path)
    # the second round re-sent part of the first round's residual on top of the same update
    assert set(first) == set(g)
    assert any(not torch.equal(first[k], second[k]) for k in g)


def test_wrapper_turns_a_corrupt_payload_into_an_error_reply(tmp_path, task_identity):
    from flwr.app import Array

    g = _state(0)
    reply, _, wrapper, _ = _exchange(tmp_path, "topk", g, {k: v + 0.01 for k, v in g.items()})
    rec = reply.content["arrays"]
    rec[f"{K}.idx"] = Array(rec[f"{K}.idx"].numpy() + 10_000)
    out = wrapper.decompress(reply)
    assert out.has_error() and "site-0" in out.error.reason and K in out.error.reason
    assert out.metadata.src_node_id == reply.metadata.src_node_id


def test_guard_still_blocks_integer_arrays_without_a_compression_suffix(task_identity):
    from flwr.app import Array, ArrayRecord, Message, RecordDict

    from client.guard import violations

    msg = Message(RecordDict({"arrays": ArrayRecord({"ids": Array(np.arange(4, dtype=np.int64)),
                                                     "w.q8": Array(np.ones(3, np.int64))})}),
                  dst_node_id=3, message_type="train")
    reply = Message(msg.content, reply_to=msg)
    bad = violations(reply)
    assert len(bad) == 2 and "ids" in bad[0] and "w.q8" in bad[1]


def test_mod_passes_messages_without_adapter_arrays(tmp_path, task_identity):
    """SecAgg+'s legacy train messages and evaluate messages are not touched."""
    from flwr.app import ConfigRecord, Context, Message, RecordDict

    from client.compress_mod import compression_mod

    cfg = dataclasses.replace(RunConfig(), compression=CompressionConfig(mode="topk"))
    ctx = Context(run_id=77, node_id=3, node_config={"partition-id": 0}, state=RecordDict(),
                  run_config=cfg.to_flat())
    for mtype in ("train", "evaluate"):
        msg = Message(RecordDict({"config": ConfigRecord({"x": 1})}), dst_node_id=3, message_type=mtype)
        sentinel = Message(RecordDict({"site": ConfigRecord({"name": "s"})}), reply_to=msg)
        assert compression_mod(msg, ctx, lambda m, c: sentinel) is sentinel


@pytest.mark.parametrize("garbage", [b"", b"not an npz at all", b"PK\x03\x04truncated zip"])
def test_a_corrupt_residual_is_said_and_moved_aside(tmp_path, caplog, garbage):
    """A residual file that cannot be read is not dropped silently: the site's log names it, the
    file is kept aside for the operator, and feedback restarts from zero."""
    import logging

    from client.compress_mod import load_residual, residual_path, save_residual

    path = residual_path(tmp_path, 7)
    assert load_residual(path) == {}  # none yet: nothing to say
    save_residual(path, {"w": torch.ones(3)})
    assert torch.equal(load_residual(path)["w"], torch.ones(3))
    path.write_bytes(garbage)
    with caplog.at_level(logging.WARNING, logger="fedtune.site"):
        assert load_residual(path) == {}
    assert "unreadable" in caplog.text and str(path) in caplog.text
    aside = [p for p in path.parent.iterdir() if p.name.startswith(f"{path.name}.corrupt-")]
    assert len(aside) == 1 and aside[0].read_bytes() == garbage and not path.exists()
