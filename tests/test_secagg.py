"""Secure aggregation (privacy.secure-aggregation=true) end to end: real Flower simulations of
3 sites x 2 rounds on the tiny model — plain FedAvg, SecAgg+, and SecAgg+ with FFA-LoRA, site-side
DP and a site that drops out mid-protocol — plus unit checks of the guard and the config."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pandas as pd
import pytest
from flwr.app import ArrayRecord, ConfigRecord, Message, Metadata, MetricRecord, RecordDict
from flwr.app.message.message import make_message
from flwr.app.message_type import MessageType
from flwr.common import Code, FitRes, Status, ndarray_to_bytes, ndarrays_to_parameters
from flwr.common.secure_aggregation.quantization import quantize
from flwr.compat.common import recorddict_compat as compat
from safetensors.numpy import load_file

from client.guard import SECAGG_RECORD, violations
from common.config import ModelConfig, resolve
from common.errors import ConfigError
from common.model import build_model
from server.secagg import QUANTIZATION_RANGE, check_secagg_config, error_bound
from tests.conftest import make_texts
from tests.simhelp import run_simulate

pytestmark = pytest.mark.slow  # real federations (deselect with -m "not slow")

CLIP, MAX_WEIGHT = 1.0, 1000.0


def _simulate(out: Path, sets: list[str], audit: Path | None = None) -> list[dict]:
    run_simulate(out, sets, extra_env={"FEDTUNE_AUDIT_DIR": str(audit)} if audit else None)
    return [json.loads(line) for line in (out / "metrics.jsonl").read_text().splitlines()]


@pytest.fixture(scope="module")
def runs(tmp_path_factory, tiny_model_dir):
    tmp = tmp_path_factory.mktemp("secagg")
    texts, labels = make_texts(240, 4)
    pd.DataFrame({"text": texts, "label": labels}).to_csv(tmp / "pooled.csv", index=False)
    base = [f"model.base={tiny_model_dir}", f"simulation.data={tmp / 'pooled.csv'}",
            "simulation.sites=3", "simulation.partition=iid", "federation.rounds=2",
            "federation.min-sites=2", "model.max-length=32",
            "privacy.secagg-shares=3", "privacy.secagg-threshold=2",
            f"privacy.secagg-clip={CLIP}", f"privacy.secagg-max-weight={MAX_WEIGHT}"]
    # SGD for the FedAvg comparison: Adam's first steps are ~ +-lr x sign(gradient), so a 1e-5
    # difference after round 1 can flip a near-zero gradient's sign and grow to lr in round 2
    lora = base + ["model.lora-variant=lora", "train.optimizer=sgd", "train.learning-rate=0.05"]
    return {
        "tmp": tmp, "base": base,
        "plain": _simulate(tmp / "plain", lora),
        "secagg": _simulate(tmp / "secagg", lora + ["privacy.secure-aggregation=true"],
                            audit=tmp / "audit"),
        # DP-SGD over the FFA adapter (a DP knob set: not the size rule's head-only probing,
        # whose large steps on the head would defeat the unmask check below)
        "dp": _simulate(tmp / "dp", base + ["privacy.secure-aggregation=true", "privacy.dp=true",
                                            "privacy.epsilon=8", "privacy.max-grad-norm=1.0",
                                            "simulation.attack=dropout"]),
    }


def _adapter(run: Path) -> dict[str, np.ndarray]:
    return load_file(str(run / "adapter" / "adapter_model.safetensors"))


def test_secagg_equals_fedavg_within_quantization_error(runs):
    plain, secagg = _adapter(runs["tmp"] / "plain"), _adapter(runs["tmp"] / "secagg")
    assert plain.keys() == secagg.keys()
    total = sum(v["train"]["num-examples"] for v in runs["plain"][0]["per_site"].values())
    # per round, per entry: 2 x 3 sites x clip 1 x max-weight 1000 / (2**22 x ~170) ~ 8e-6
    bound = error_bound(sites=3, clip=CLIP, max_weight=MAX_WEIGHT, total_examples=total)
    diff = max(float(np.abs(plain[k] - secagg[k]).max()) for k in plain)
    print(f"max |secagg - fedavg| = {diff:.3g}; quantization bound per round {bound:.3g}")
    # two rounds of quantization error, each within the bound; SGD carries round 1's forward
    assert diff <= 3 * bound
    assert any(np.abs(secagg[k]).max() > 0 for k in secagg if "lora_B" in k)  # it learned
    assert [r["sites_trained"] for r in runs["secagg"]] == [["site-0", "site-1", "site-2"]] * 2
    assert all(r["evaluate"]["accuracy"] >= 0 for r in runs["secagg"])


def test_no_plaintext_update_leaves_a_site(runs):
    entries = [json.loads(line) for f in (runs["tmp"] / "audit").glob("*.jsonl")
               for line in f.read_text().splitlines()]
    train = [e for e in entries if e["type"] == "train"]
    assert all(e["violations"] == [] for e in entries)
    stages = [e["records"][SECAGG_RECORD]["stage"] for e in train]
    assert sorted(set(stages)) == ["collect_masked_vectors", "setup", "share_keys", "unmask"]
    assert len(train) == 3 * 2 * 4  # 3 sites x 2 rounds x 4 stages, nothing else
    for e in train:
        arrays = [r for r in e["records"].values() if r["kind"] == "arrays"]
        assert all(r["arrays"] == {} for r in arrays)  # fitres.parameters, cleared
        masked = e["records"][SECAGG_RECORD].get("masked")
        if masked:
            assert masked["dtypes"] and all(d.startswith(("int", "uint")) for d in masked["dtypes"])
            # an unmasked quantized vector lies entirely below 2**22; masks spread it over 2**32
            assert masked["share_at_or_above_quantization_range"] > 0.99


def test_coordinator_holds_only_the_aggregate(runs, tiny_model_dir):
    rows = [json.loads(line) for line in
            (runs["tmp"] / "secagg" / "secagg_audit.jsonl").read_text().splitlines()]
    train = [r for r in rows if r.get("type") == "train"]
    assert train and all(r["array_bytes"] == 0 for r in train)
    masked = [r["masked"] for r in train if "masked" in r]
    assert len(masked) == 6
    assert all(m["share_at_or_above_quantization_range"] > 0.99 for m in masked)
    # what aggregate_fit received: 3 results, all carrying the one unmasked aggregate
    agg = [r for r in rows if r.get("event") == "aggregate_fit"]
    assert [(r["results"], r["distinct_parameters"]) for r in agg] == [(3, 1), (3, 1)]
    # contrast: this adapter, quantized but unmasked, has no entry at or above 2**22
    model = build_model(ModelConfig(base=str(tiny_model_dir), max_length=32, lora_variant="lora"),
                        num_labels=4).model
    from common.adapter import get_state

    q = quantize([v.numpy() for v in get_state(model).values()], CLIP, QUANTIZATION_RANGE)
    assert max(int(a.max()) for a in q) <= QUANTIZATION_RANGE


def test_ffa_dp_and_a_dropout_within_threshold(runs, tiny_model_dir):
    rows, run = runs["dp"], runs["tmp"] / "dp"
    for r in rows:  # site-2 leaves at the collect stage each round; 2 = threshold still unmask
        assert r["sites_trained"] == ["site-0", "site-1"]
        # only the code's fixed reason leaves the site (no name in it: the coordinator names it)
        assert any("dropped out at the collect-masked-vectors stage" in f for f in r["failures"]), \
            r["failures"]
        # under DP a site evaluates only rounds of a run it holds a privacy plan for: site-2 never
        # trained, so it refuses (the coordinator cannot query its test split for free)
        assert set(r["per_site"]) == {"site-0", "site-1"}
        assert any("eval-once-per-round" in f for f in r["failures"]), r["failures"]
    summary = json.loads((run / "summary.json").read_text())
    assert summary["lora_variant"] == "ffa"
    assert 0 < summary["privacy"]["site-0"]["epsilon"] <= 8 + 1e-6
    adapter = _adapter(run)
    model = build_model(ModelConfig(base=str(tiny_model_dir), max_length=32, lora_variant="ffa"),
                        num_labels=4).model
    from common.adapter import get_state

    init = {k: v.numpy() for k, v in get_state(model).items()}
    for k, v in adapter.items():
        assert np.isfinite(v).all()
        # a failed unmask leaves values spread over +-clip x max-weight / n (~ +-6): far above
        assert np.abs(v).max() < 1.0, k
    a_keys = [k for k in adapter if "lora_A" in k]
    b_keys = [k for k in adapter if "lora_B" in k]
    assert a_keys and b_keys
    init_by_suffix = {k.replace(".default", ""): v for k, v in init.items()}
    for k in a_keys:  # FFA: A never travels and stays at the shared seeded init
        np.testing.assert_array_equal(adapter[k], init_by_suffix[k.replace(".default", "")])
    assert max(np.abs(adapter[k]).max() for k in b_keys) > 0  # B was trained and aggregated
    from peft import PeftModel
    from transformers import AutoModelForSequenceClassification

    base = AutoModelForSequenceClassification.from_pretrained(str(tiny_model_dir), num_labels=4)
    PeftModel.from_pretrained(base, str(run / "adapter"))  # stock peft reads it
    assert all(np.isfinite(r["evaluate"]["loss"]) for r in rows)


# ---- unit checks (no simulation) ---------------------------------------------------------------
def _reply(content: RecordDict) -> Message:
    md = Metadata(run_id=1, message_id="m1", src_node_id=1, dst_node_id=0, reply_to_message_id="x",
                  group_id="1", created_at=0.0, ttl=60, message_type=MessageType.TRAIN)
    return make_message(md, content)


def _collect(parameters: list[np.ndarray], masked: list[np.ndarray]) -> RecordDict:
    res = FitRes(status=Status(code=Code.OK, message="OK"),
                 parameters=ndarrays_to_parameters(parameters), num_examples=1,
                 metrics={"site": "site-0", "epsilon": 1.0})
    content = compat.fitres_to_recorddict(res, keep_input=False)
    content[SECAGG_RECORD] = ConfigRecord({"masked_params": [ndarray_to_bytes(m) for m in masked]})
    return content


def test_guard_lets_protocol_records_through_and_blocks_plaintext():
    setup = RecordDict({SECAGG_RECORD: ConfigRecord({"pk1": b"k1", "pk2": b"k2"})})
    assert violations(_reply(setup)) == []
    masked = [np.arange(4, dtype=np.int64) + 2**31]
    ok = _collect([], masked)
    ok["fitres.parameters"] = ArrayRecord()  # what secaggplus_mod leaves: cleared
    assert violations(_reply(ok)) == []
    leak = _collect([np.ones(3, dtype=np.float32)], masked)  # parameters NOT cleared
    assert any("plaintext" in v for v in violations(_reply(leak)))
    floats = _collect([], [np.ones(4, dtype=np.float32)])  # a float vector posing as masked
    floats["fitres.parameters"] = ArrayRecord()
    assert any("integer" in v for v in violations(_reply(floats)))
    bare = compat.fitres_to_recorddict(FitRes(Status(Code.OK, "OK"), ndarrays_to_parameters(
        [np.ones(3, dtype=np.float32)]), 5, {}), keep_input=False)  # legacy FitRes, no SecAgg+
    assert violations(_reply(bare))
    extra = RecordDict({SECAGG_RECORD: ConfigRecord({"pk1": b"k1", "pk2": b"k2"}),
                        "metrics": MetricRecord({"accuracy": 0.5})})
    assert violations(_reply(extra))


def test_config_rules():
    with pytest.raises(ConfigError, match="more than half"):
        resolve(None, ["privacy.secagg-shares=5", "privacy.secagg-threshold=2"])
    with pytest.raises(ConfigError, match="federation.aggregation"):
        check_secagg_config(resolve(None, ["privacy.secure-aggregation=true",
                                           "federation.aggregation=median"]))
    check_secagg_config(resolve(None, ["privacy.secure-aggregation=true", "privacy.dp=true"]))
