"""Packed messages on the deployment engine (common/packing.py, client/wire.py,
server/transport.py): lossless both ways, and a malformed manifest or blob from either side is
refused before any array is built — a site's reply becomes an error reply at the coordinator, a
coordinator's message an error at the site with only the fixed reason on the wire."""

from __future__ import annotations

import json
import time

import numpy as np
import pytest
from flwr.app import Array, ArrayRecord, ConfigRecord, Message, Metadata, MetricRecord, RecordDict
from flwr.app.message import make_message

from client.wire import is_packed, pack_reply, unpack_message
from common.errors import wire
from common.packing import PackingError, pack, unpack
from server.transport import MALFORMED, pack_message, unpack_reply


def _arrays(seed: int = 0) -> dict[str, np.ndarray]:
    rng = np.random.default_rng(seed)
    return {"layer.0.lora_A": rng.standard_normal((4, 8)).astype(np.float32),
            "layer.0.lora_B": np.asfortranarray(rng.standard_normal((8, 3))).astype(np.float32),
            "head.bias": rng.standard_normal(5).astype(np.float64),
            "codes": rng.integers(-128, 127, size=(2, 3, 2), dtype=np.int8),
            "scale": np.float16(0.5) * np.ones(1, np.float16),
            "empty": np.zeros((0, 4), np.float32)}


def test_pack_unpack_round_trip_is_exact_and_keeps_order():
    records = {"arrays": _arrays(), "other": {"x": np.arange(6, dtype=np.int64).reshape(2, 3)}}
    blob, manifest = pack(records)
    assert blob.dtype == np.uint8 and blob.ndim == 1
    back = unpack(blob, manifest)
    assert list(back) == list(records)
    for name in records:
        assert list(back[name]) == list(records[name])  # order kept (aggregation lays out by it)
        for key, a in records[name].items():
            assert back[name][key].dtype == a.dtype and back[name][key].shape == a.shape
            assert np.array_equal(back[name][key], a)


def _attacks(blob: np.ndarray, manifest: str):
    entries = json.loads(manifest)
    first = entries[0]
    yield "sizes", blob[:-1], manifest
    yield "bigger", np.concatenate([blob, np.zeros(4, np.uint8)]), manifest
    yield "negative dim", blob, json.dumps([[*first[:3], [-4, 8]], *entries[1:]])
    yield "float dim", blob, json.dumps([[*first[:3], [4.0, 8]], *entries[1:]])
    yield "object dtype", blob, json.dumps([[*first[:2], "|O", first[3]], *entries[1:]])
    yield "big-endian", blob, json.dumps([[*first[:2], ">f4", first[3]], *entries[1:]])
    yield "repeat", blob, json.dumps([first, first, *entries[2:]])
    yield "long key", blob, json.dumps([[first[0], "k" * 600, *first[2:]], *entries[1:]])
    yield "not json", blob, "{" + manifest
    yield "not a list", blob, json.dumps({"a": 1})
    yield "short entry", blob, json.dumps([first[:3], *entries[1:]])
    yield "too many dims", blob, json.dumps([[*first[:3], [1] * 9], *entries[1:]])
    yield "blob dtype", blob.view(np.int8), manifest
    yield "blob 2-D", blob.reshape(1, -1), manifest


@pytest.mark.parametrize("case", range(14))
def test_unpack_refuses_every_malformed_input(case):
    blob, manifest = pack({"arrays": _arrays()})
    name, bad_blob, bad_manifest = list(_attacks(blob, manifest))[case]
    with pytest.raises(PackingError) as info:
        unpack(bad_blob, bad_manifest)
    code, reason = wire(info.value)
    assert reason == PackingError.public, name  # the fixed reason only: nothing of the input
    assert "lora" not in reason and "600" not in reason


def _message(content: RecordDict, message_type: str = "train") -> Message:
    """A message as the coordinator sends it (and as the site receives it: with an id)."""
    md = Metadata(run_id=1, message_id="m1", src_node_id=0, dst_node_id=7, reply_to_message_id="",
                  group_id="1", created_at=time.time(), ttl=600, message_type=message_type)
    return make_message(metadata=md, content=content)


def _content(arrays: dict[str, np.ndarray]) -> RecordDict:
    return RecordDict({"arrays": ArrayRecord({k: Array(v) for k, v in arrays.items()}),
                       "config": ConfigRecord({"server-round": 3}),
                       "metrics": MetricRecord({"num-examples": 10})})


def _numpy(rec: ArrayRecord) -> dict[str, np.ndarray]:
    return {k: a.numpy() for k, a in rec.items()}


def test_coordinator_to_site_and_back_is_lossless():
    arrays = _arrays(1)
    msg = _message(_content(arrays))
    pack_message(msg)  # the coordinator, before pushing
    assert is_packed(msg) and "arrays" not in msg.content.array_records
    assert len(msg.content.array_records["fedtune.packed"]) == 1  # one array, whatever the count
    unpack_message(msg)  # the site runtime, before its ClientApp
    got = _numpy(msg.content.array_records["arrays"])
    assert list(got) == list(arrays) and all(np.array_equal(got[k], arrays[k]) for k in arrays)
    assert msg.content.config_records["config"]["server-round"] == 3
    reply = Message(content=_content(_arrays(2)), reply_to=msg)
    reply_id = reply.metadata.reply_to_message_id
    packed = pack_reply(reply)  # the site runtime, after the guard
    assert "arrays" not in packed.content.array_records
    back = unpack_reply(packed)  # the coordinator, before any strategy
    assert not back.has_error() and back.metadata.reply_to_message_id == reply_id
    got = _numpy(back.content.array_records["arrays"])
    assert all(np.array_equal(got[k], v) for k, v in _arrays(2).items())
    assert back.content.metric_records["metrics"]["num-examples"] == 10


def test_unpacked_messages_pass_as_they_are():
    msg = _message(_content(_arrays()))
    assert not is_packed(msg)
    reply = Message(content=RecordDict({"metrics": MetricRecord({"num-examples": 1})}), reply_to=msg)
    assert unpack_reply(pack_reply(reply)).content.metric_records["metrics"]["num-examples"] == 1


def _lying_reply(blob: np.ndarray, manifest: str, extra: dict | None = None) -> Message:
    msg = _message(_content(_arrays()))
    content = RecordDict({"fedtune.packed": ArrayRecord({"blob": Array(blob)}),
                          "fedtune.manifest": ConfigRecord({"arrays": manifest}),
                          "metrics": MetricRecord({"num-examples": 10}), **(extra or {})})
    return Message(content=content, reply_to=msg)


def test_a_site_lying_in_its_packing_is_an_error_reply_not_a_crash():
    blob, manifest = pack({"arrays": _arrays()})
    for _name, bad_blob, bad_manifest in _attacks(blob, manifest):
        out = unpack_reply(_lying_reply(bad_blob, bad_manifest))
        assert out.has_error() and out.error.reason == MALFORMED
    # a packed record that would overwrite the reply's own metrics record
    blob, manifest = pack({"metrics": {"x": np.zeros(2, np.float32)}})
    assert unpack_reply(_lying_reply(blob, manifest)).has_error()
    # the manifest record missing altogether
    msg = _lying_reply(blob, manifest)
    content = RecordDict({k: v for k, v in msg.content.items() if k != "fedtune.manifest"})
    assert unpack_reply(Message(content=content, reply_to=_message(_content(_arrays())))).has_error()


def test_a_coordinator_lying_in_its_packing_is_refused_at_the_site():
    msg = _message(_content(_arrays()))
    pack_message(msg)
    blob = msg.content.array_records["fedtune.packed"]["blob"].numpy()
    msg.content.array_records["fedtune.packed"]["blob"] = Array(blob[:-4])
    with pytest.raises(PackingError):
        unpack_message(msg)
    missing = _message(RecordDict({"fedtune.packed": ArrayRecord({"blob": Array(blob)})}))
    with pytest.raises(PackingError):
        unpack_message(missing)
