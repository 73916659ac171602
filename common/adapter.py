"""What travels: the adapter state (LoRA matrices + head), its key-set check, and the PEFT-format
save that stock `PeftModel.from_pretrained` reads back."""

from __future__ import annotations

import json
from collections import OrderedDict
from pathlib import Path

import numpy as np
import torch

from common.atomic import atomic_dir
from common.device import to_wire
from common.errors import ModelError


def is_peft(model: torch.nn.Module) -> bool:
    return hasattr(model, "peft_config")


FFA_FROZEN = ("lora_A",)  # under FFA-LoRA these stay at the shared seeded init and never travel


def get_state(model: torch.nn.Module, *, exclude: tuple[str, ...] = ()) -> "OrderedDict[str, torch.Tensor]":
    """The trainable state that leaves a site: the PEFT adapter (LoRA + head), or every trainable
    parameter under full fine-tuning; keys containing any `exclude` part are left out (FFA-LoRA's
    frozen A). Tensors are detached CPU float32 copies whatever device and dtype the model ran in
    (a GPU site and a CPU site send the same thing; the coordinator never needs a GPU)."""
    if is_peft(model):
        from peft import get_peft_model_state_dict

        state = get_peft_model_state_dict(model)
    else:
        state = {n: p for n, p in model.named_parameters() if p.requires_grad}
    return OrderedDict((k, to_wire(v)) for k, v in state.items()
                       if not any(part in k for part in exclude))


def set_state(model: torch.nn.Module, state: dict[str, torch.Tensor], *,
              exclude: tuple[str, ...] = ()) -> None:
    """Load a received state; the key set (less `exclude`) and shapes must match exactly."""
    expected = get_state(model, exclude=exclude)
    check_keys(expected, state)
    if is_peft(model):
        from peft import set_peft_model_state_dict

        if exclude:  # keep the local (shared-init) values of the excluded keys
            full = get_state(model)
            full.update(state)
            state = full
        set_peft_model_state_dict(model, state)
    else:
        params = dict(model.named_parameters())
        with torch.no_grad():
            for k, v in state.items():
                params[k].copy_(v)


def check_keys(expected: dict[str, torch.Tensor], got: dict[str, torch.Tensor]) -> None:
    """Raise ModelError when `got` is not exactly the expected keys with the expected shapes."""
    missing = sorted(set(expected) - set(got))
    extra = sorted(set(got) - set(expected))
    if missing or extra:
        raise ModelError(f"adapter keys do not match the model: missing {missing[:3]}, unexpected "
                         f"{extra[:3]} — the adapter was made for another base model or LoRA config")
    for k, v in expected.items():
        if tuple(got[k].shape) != tuple(v.shape):
            raise ModelError(f"adapter tensor {k} has shape {tuple(got[k].shape)}, the model expects "
                             f"{tuple(v.shape)}: check model.lora-r and the label count")


def state_to_numpy(state: dict[str, torch.Tensor]) -> "OrderedDict[str, np.ndarray]":
    return OrderedDict((k, v.numpy()) for k, v in state.items())


def state_nbytes(state: dict[str, torch.Tensor]) -> int:
    return sum(v.numel() * v.element_size() for v in state.values())


def save_adapter(model: torch.nn.Module, out: Path, *, label_names: list[str],
                 base_fingerprint: str = "") -> None:
    """Write `out/` atomically: PEFT `save_pretrained` output + labels.json (+ fedtune.json)."""
    with atomic_dir(out) as tmp:
        if is_peft(model):
            model.save_pretrained(str(tmp))
        else:
            model.save_pretrained(str(tmp), safe_serialization=True)
        (tmp / "labels.json").write_text(json.dumps(label_names, indent=1), encoding="utf-8")
        meta = {"base_model_sha256": base_fingerprint, "num_labels": len(label_names)}
        (tmp / "fedtune.json").write_text(json.dumps(meta, indent=1), encoding="utf-8")


def read_labels(adapter_dir: Path) -> list[str]:
    path = Path(adapter_dir) / "labels.json"
    if not path.is_file():
        raise ModelError(f"{adapter_dir} has no labels.json: it is not a fedtune adapter directory")
    return json.loads(path.read_text(encoding="utf-8"))
