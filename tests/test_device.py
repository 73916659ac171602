"""train.device / train.precision / model.quantize on a CPU-only machine: auto means the CPU,
CUDA and 4-bit are refused with errors that name the key and the fix, and whatever dtype a model
ran in, what crosses the wire is CPU float32."""

from __future__ import annotations

import numpy as np
import pandas as pd
import pytest
import torch

from client.dp_trainer import train_dp
from client.site import Site, SiteFacts
from client.trainer import Schedule, encode, train
from common.adapter import get_state, set_state
from common.config import ModelConfig, TrainConfig, from_flat, resolve
from common.device import accel_for, resolve_device, resolve_precision, to_wire
from common.errors import ConfigError, ModelError
from common.model import build_model, quantization
from tests.conftest import make_texts

no_cuda = pytest.mark.skipif(torch.cuda.is_available(), reason="checks a CPU-only machine")


@no_cuda
def test_auto_is_the_cpu_here_and_fp32():
    assert resolve_device("auto") == torch.device("cpu")
    accel = accel_for(TrainConfig())
    assert accel.device.type == "cpu" and accel.dtype is None and accel.precision == "fp32"
    assert resolve_precision("auto", torch.device("cpu")) is None
    assert resolve_precision("bf16", torch.device("cpu")) is torch.bfloat16  # CPU autocast


@no_cuda
@pytest.mark.parametrize("spec", ["cuda", "cuda:0", "cuda:3"])
def test_cuda_refused_without_a_gpu(spec):
    with pytest.raises(ConfigError) as err:
        resolve_device(spec)
    msg = str(err.value)
    assert "train.device" in msg and spec in msg and "train.device=auto" in msg


def test_fp16_needs_cuda():
    with pytest.raises(ConfigError, match="train.precision.*fp16.*bf16 or fp32"):
        resolve_precision("fp16", torch.device("cpu"))


@pytest.mark.parametrize("pair,needle", [
    ("train.device=gpu", "train.device"), ("train.device=cuda:x", "cuda:N"),
    ("train.precision=fp8", "train.precision"), ("train.grad-accum=0", "train.grad-accum"),
    ("train.batch-size=0", "train.batch-size"), ("train.batch-size=big", "auto"),
    ("model.quantize=2bit", "model.quantize"),
])
def test_bad_values_rejected(pair, needle):
    with pytest.raises(ConfigError, match=needle):
        resolve(None, [pair])


def test_batch_size_auto_from_cli_toml_and_flat(tmp_path):
    assert resolve(None, ["train.batch-size=auto"]).train.batch_size == "auto"
    assert resolve(None, ["train.batch-size=64"]).train.batch_size == 64  # a number stays an int
    (tmp_path / "c.toml").write_text('[train]\nbatch-size = "auto"\ndevice = "cpu"\n')
    cfg = resolve(tmp_path / "c.toml")
    assert cfg.train.batch_size == "auto" and cfg.train.device == "cpu"
    assert from_flat(cfg.to_flat()) == cfg  # Flower's flat run config carries it as a string


def test_wire_state_is_cpu_float32_from_a_bf16_model(tiny_model_dir):
    model = build_model(ModelConfig(base=str(tiny_model_dir), lora_r=4), num_labels=3).model
    fp32 = get_state(model)
    model.to(torch.bfloat16)
    state = get_state(model)
    assert state.keys() == fp32.keys()
    for k, v in state.items():
        assert v.dtype == torch.float32 and v.device.type == "cpu", k
        torch.testing.assert_close(v, fp32[k], atol=1e-2, rtol=1e-2)
    set_state(model, fp32)  # a float32 state loads into a bf16 model (and back out as float32)
    assert all(v.dtype == torch.float32 for v in get_state(model).values())
    assert to_wire(torch.ones(2, dtype=torch.long)).dtype == torch.long  # only floats are cast


def test_bf16_autocast_training_on_cpu_sends_float32(tiny_model_dir):
    built = build_model(ModelConfig(base=str(tiny_model_dir), lora_r=4, max_length=24), num_labels=4)
    texts, labels = make_texts(48, 4)
    data = encode(built.tokenizer, texts, np.array([int(x[-1]) for x in labels]), max_length=24)
    before = get_state(built.model)
    cfg = TrainConfig(batch_size=16, precision="bf16", device="cpu")
    stats = train(built.model, data, cfg=cfg, schedule=Schedule(0, 3, 0), rng=np.random.default_rng(0))
    assert stats["steps"] == 3 and np.isfinite(stats["train_loss"])
    after = get_state(built.model)
    assert all(v.dtype == torch.float32 and v.device.type == "cpu" for v in after.values())
    assert any(not torch.equal(before[k], after[k]) for k in before)


def test_dp_refuses_reduced_precision_and_runs_on_the_cpu_device(tiny_model_dir):
    built = build_model(ModelConfig(base=str(tiny_model_dir), lora_r=4, max_length=24), num_labels=4)
    texts, labels = make_texts(40, 4)
    data = encode(built.tokenizer, texts, np.array([int(x[-1]) for x in labels]), max_length=24)
    kw = dict(schedule=Schedule(0, 2, 0), rng=np.random.default_rng(0), steps=2, sample_rate=0.3,
              noise_multiplier=1.0, max_grad_norm=1.0)
    with pytest.raises(ConfigError, match="privacy.dp.*float32"):
        train_dp(built.model, data, cfg=TrainConfig(precision="bf16"), **kw)
    stats = train_dp(built.model, data, cfg=TrainConfig(device="cpu"), **kw)
    assert stats["steps"] == 2
    assert all(v.dtype == torch.float32 for v in get_state(built.model).values())


def test_quantize_4bit_refused_on_cpu(tiny_lm_dir, tiny_model_dir):
    cfg = ModelConfig(base=str(tiny_lm_dir), quantize="4bit")
    with pytest.raises(ModelError) as err:
        build_model(cfg, num_labels=0, device=torch.device("cpu"))
    assert "model.quantize" in str(err.value) and "CUDA" in str(err.value)
    assert "model.quantize=none" in str(err.value)
    # the coordinator (no device) builds the same LoRA shapes on a full-precision base
    plain = get_state(build_model(ModelConfig(base=str(tiny_lm_dir)), num_labels=0).model)
    coord = get_state(build_model(cfg, num_labels=0).model)
    assert {k: v.shape for k, v in plain.items()} == {k: v.shape for k, v in coord.items()}
    with pytest.raises(ModelError, match="causal-lm"):
        build_model(ModelConfig(base=str(tiny_model_dir), quantize="8bit"), num_labels=2,
                    device=torch.device("cpu"))


def test_quantize_without_bitsandbytes_names_the_extra():
    pytest.importorskip("transformers")
    try:
        import bitsandbytes  # noqa: F401
        pytest.skip("bitsandbytes is installed here")
    except ImportError:
        pass
    # a CUDA device object needs no GPU to exist; the check stops at the missing package
    with pytest.raises(ModelError, match=r"pip install 'fedtune\[gpu\]'"):
        quantization(ModelConfig(quantize="4bit"), task="causal-lm", device=torch.device("cuda"))


@pytest.fixture
def site_csv(tmp_path):
    texts, labels = make_texts(96, 4)
    pd.DataFrame({"text": texts, "label": labels}).to_csv(tmp_path / "site.csv", index=False)
    return tmp_path / "site.csv"


def _site_cfg(tiny_model_dir, *sets):
    return resolve(None, [f"model.base={tiny_model_dir}", "model.max-length=24", "model.lora-r=4",
                          "task.labels=intent_0,intent_1,intent_2,intent_3", "federation.rounds=1",
                          "simulation.sites=2", *sets])


@no_cuda
def test_site_refuses_cuda_and_grad_accum_under_dp(tiny_model_dir, tmp_path, site_csv):
    facts = SiteFacts(name="s", index=0, data_path=str(site_csv), site_dir=str(tmp_path / "s"))
    with pytest.raises(ConfigError, match="train.device"):
        Site(_site_cfg(tiny_model_dir, "train.device=cuda"), facts)
    with pytest.raises(ConfigError, match="grad-accum"):
        Site(_site_cfg(tiny_model_dir, "privacy.dp=true", "train.grad-accum=2"), facts)
    with pytest.raises(ConfigError, match="privacy.dp"):  # DP-SGD clips in float32
        Site(_site_cfg(tiny_model_dir, "privacy.dp=true", "train.precision=bf16"), facts)


@no_cuda
def test_site_batch_size_auto_is_32_on_cpu_and_reported(tiny_model_dir, tmp_path, site_csv, capsys):
    facts = SiteFacts(name="site-0", index=0, data_path=str(site_csv), site_dir=str(tmp_path / "s"))
    site = Site(_site_cfg(tiny_model_dir, "train.batch-size=auto"), facts)
    assert site.cfg.train.batch_size == 32
    assert "batch size 32 (auto on CPU)" in capsys.readouterr().err
    state, stats = site.fit(get_state(site.model), server_round=1)
    # the resolved number drives the schedule
    assert stats["steps"] == -(-len(site.splits["train"]) // 32)
    assert all(v.dtype == torch.float32 and v.device.type == "cpu" for v in state.values())
