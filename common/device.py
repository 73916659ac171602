"""Where a site's tensors live and in what precision (train.device, train.precision).

Pure resolution and small tensor helpers, no I/O. The rule that lets a GPU site and a CPU site
federate: whatever the device and dtype a model runs in, what leaves it is a CPU float32 copy
(`to_wire`), so the coordinator never needs a GPU. On a CPU with the defaults (device auto ->
cpu, precision auto -> fp32) every helper here is a no-op: training stays bit-for-bit the same.
"""

from __future__ import annotations

import contextlib
from dataclasses import dataclass

import torch

from common.errors import ConfigError

_DTYPES = {"fp32": None, "bf16": torch.bfloat16, "fp16": torch.float16}


def resolve_device(spec: str = "auto") -> torch.device:
    """train.device -> a torch.device; ConfigError when CUDA is asked for and not usable."""
    if spec == "auto":
        return torch.device("cuda" if torch.cuda.is_available() else "cpu")
    if spec == "cpu":
        return torch.device("cpu")
    if not torch.cuda.is_available():
        raise ConfigError(
            f"config key `train.device` = {spec!r} but this machine has no usable CUDA device "
            f"(torch {torch.__version__}, CUDA build {torch.version.cuda or 'none'}): set "
            "train.device=auto (or cpu) to train on the CPU, or install a CUDA build of torch")
    dev = torch.device(spec)
    count = torch.cuda.device_count()
    if dev.index is not None and dev.index >= count:
        raise ConfigError(f"config key `train.device` = {spec!r} but this machine has {count} CUDA "
                          f"device(s) (cuda:0..cuda:{count - 1}): pick one of them, or use cuda")
    return dev


def resolve_precision(spec: str, device: torch.device) -> torch.dtype | None:
    """train.precision -> the autocast dtype, None = plain float32 (no autocast)."""
    cuda = device.type == "cuda"
    if spec == "auto":
        return torch.bfloat16 if cuda and torch.cuda.is_bf16_supported() else None
    if spec == "fp16" and not cuda:
        raise ConfigError("config key `train.precision` = 'fp16' needs a CUDA device (float16 "
                          "autocast with a GradScaler): use bf16 or fp32 on a CPU, or auto")
    if spec == "bf16" and cuda and not torch.cuda.is_bf16_supported():
        raise ConfigError(f"config key `train.precision` = 'bf16' but {torch.cuda.get_device_name(device)} "
                          "has no bfloat16 support: use fp16 (with loss scaling), fp32 or auto")
    if spec not in _DTYPES:
        raise ConfigError(f"config key `train.precision` = {spec!r} is invalid: use auto, fp32, bf16 or fp16")
    return _DTYPES[spec]


@dataclass(frozen=True)
class Accel:
    """A resolved device + autocast dtype, and what a training loop needs from them."""

    device: torch.device = torch.device("cpu")
    dtype: torch.dtype | None = None  # autocast dtype; None = float32

    @property
    def precision(self) -> str:
        return {None: "fp32", torch.bfloat16: "bf16", torch.float16: "fp16"}[self.dtype]

    def autocast(self):
        """Mixed-precision context (a no-op context for float32)."""
        if self.dtype is None:
            return contextlib.nullcontext()
        return torch.autocast(device_type=self.device.type, dtype=self.dtype)

    def scaler(self) -> torch.amp.GradScaler | None:
        """fp16 needs loss scaling (bf16 has float32's range and does not)."""
        return torch.amp.GradScaler("cuda") if self.dtype is torch.float16 else None

    def move(self, *tensors: torch.Tensor) -> tuple[torch.Tensor, ...]:
        if self.device.type == "cpu":
            return tensors
        return tuple(t.to(self.device, non_blocking=True) for t in tensors)

    def describe(self) -> str:
        name = torch.cuda.get_device_name(self.device) if self.device.type == "cuda" else "CPU"
        return f"{self.device} ({name}), {self.precision}"


def accel_for(cfg) -> Accel:
    """train.device + train.precision of a TrainConfig, resolved on this machine."""
    device = resolve_device(cfg.device)
    return Accel(device=device, dtype=resolve_precision(cfg.precision, device))


def is_quantized(model: torch.nn.Module) -> bool:
    """A bitsandbytes-loaded base: placed by its device_map, and `.to()` is refused."""
    return any(bool(getattr(model, name, False))
               for name in ("is_loaded_in_4bit", "is_loaded_in_8bit", "is_quantized"))


def place(model: torch.nn.Module, device: torch.device) -> torch.nn.Module:
    """Move `model` to `device` (no-op when it is there already, or when it is quantized)."""
    if not is_quantized(model) and model_device(model) != device:
        model.to(device)
    return model


def model_device(model: torch.nn.Module) -> torch.device:
    """The device of the model's first parameter (CPU for a model without parameters)."""
    for p in model.parameters():
        return p.device
    return torch.device("cpu")


def to_wire(t: torch.Tensor) -> torch.Tensor:
    """A detached CPU copy; floating point tensors as float32 whatever dtype they ran in."""
    t = t.detach()
    if t.is_floating_point():
        return t.to(device="cpu", dtype=torch.float32).clone()
    return t.cpu().clone()
