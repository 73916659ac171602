"""Update compression between a site and the coordinator: pure encode/decode functions.

A compressed payload carries the site's UPDATE (new adapter state minus the global state it
received), never the absolute weights, so sparsifying or quantising it loses little; the
coordinator adds the global arrays back after decoding. Array names are the adapter keys with a
suffix that says how they were encoded:

    none   k                      float32, the plain tensor (no suffix)
    fp16   k.f16                  float16, same shape
    int8   k.q8 + k.scale         int8 (same shape) + float32 per block of INT8_BLOCK values
                                  (symmetric max-abs scaling, round to nearest)
    topk   k.idx + k.val          the ceil(fraction * numel) largest-magnitude entries: flat
                                  indices (smallest signed int type that holds numel, strictly
                                  increasing) and float16 values

int8 and topk are lossy enough to need error feedback: the site adds what it failed to send last
time (the residual) to this round's update before encoding, and keeps the new residual
(`encode_with_feedback`). Everything received is checked in `decode`: key set, dtypes, shapes,
finite values, index ranges. Errors raise ModelError naming the key.
"""

from __future__ import annotations

import math

import numpy as np
import torch

from common.errors import ModelError

MODES = ("none", "fp16", "int8", "topk")
FEEDBACK_MODES = ("int8", "topk")  # lossy enough that the site keeps an error-feedback residual
INT8_BLOCK = 256  # values per int8 scale: an outlier only coarsens its own block
SUFFIXES = {"fp16": (".f16",), "int8": (".q8", ".scale"), "topk": (".idx", ".val")}
ALL_SUFFIXES = tuple(s for parts in SUFFIXES.values() for s in parts)
# Integer arrays a site may send, by suffix (client/guard.py allows exactly these).
INT_DTYPES = {".q8": ("int8",), ".idx": ("int16", "int32", "int64")}
FP16_MAX = float(np.finfo(np.float16).max)


def _check_mode(mode: str) -> None:
    if mode not in MODES:
        raise ModelError(f"compression.mode = {mode!r} is not known: use one of {', '.join(MODES)}")


def topk_count(numel: int, fraction: float) -> int:
    """How many entries top-k keeps of a tensor with `numel` entries (at least one)."""
    return max(1, min(numel, math.ceil(fraction * numel)))


def _index_dtype(numel: int) -> np.dtype:
    for dt in (np.int16, np.int32):
        if numel <= np.iinfo(dt).max:
            return np.dtype(dt)
    return np.dtype(np.int64)


def _to_fp16(key: str, values: np.ndarray) -> np.ndarray:
    if values.size and float(np.abs(values).max()) > FP16_MAX:
        raise ModelError(f"update {key} has values beyond the float16 range (max "
                         f"{float(np.abs(values).max()):.3g}): the update diverged; use "
                         "compression.mode=int8 or none, or lower train.learning-rate")
    return values.astype(np.float16)


def _int8(flat: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    pad = (-flat.size) % INT8_BLOCK
    blocks = np.pad(flat, (0, pad)).reshape(-1, INT8_BLOCK)
    scale = (np.abs(blocks).max(axis=1) / 127.0).astype(np.float32)
    safe = np.where(scale > 0, scale, 1.0)[:, None]
    q = np.clip(np.rint(blocks / safe), -127, 127).astype(np.int8).reshape(-1)[:flat.size]
    return q, scale


def encode(state: dict[str, torch.Tensor], *, mode: str,
           topk_fraction: float = 0.01) -> dict[str, np.ndarray]:
    """Encode each tensor of `state` (an update) for the wire; see the module docstring."""
    _check_mode(mode)
    if not 0 < topk_fraction <= 1:
        raise ModelError(f"compression.topk-fraction = {topk_fraction!r} is invalid: use (0, 1]")
    out: dict[str, np.ndarray] = {}
    for key, tensor in state.items():
        values = tensor.detach().cpu().float().numpy()
        if not np.isfinite(values).all():
            raise ModelError(f"update {key} holds NaN or Inf: the site's training diverged; "
                             "lower train.learning-rate")
        if mode == "none":
            out[key] = values
        elif mode == "fp16":
            out[f"{key}.f16"] = _to_fp16(key, values)
        elif mode == "int8":
            out[f"{key}.q8"], out[f"{key}.scale"] = _int8(values.reshape(-1))
            out[f"{key}.q8"] = out[f"{key}.q8"].reshape(values.shape)
        else:
            flat = values.reshape(-1)
            k = topk_count(flat.size, topk_fraction)
            idx = np.sort(np.argpartition(np.abs(flat), flat.size - k)[flat.size - k:])
            out[f"{key}.idx"] = idx.astype(_index_dtype(flat.size))
            out[f"{key}.val"] = _to_fp16(key, flat[idx])
    return out


def _split(name: str, template: dict) -> tuple[str, str]:
    """(adapter key, suffix) of a payload array name; suffix "" = a plain tensor."""
    if name in template:
        return name, ""
    for suffix in ALL_SUFFIXES:
        if name.endswith(suffix) and name[:-len(suffix)] in template:
            return name[:-len(suffix)], suffix
    raise ModelError(f"payload array {name!r} matches no adapter key (with or without a "
                     f"compression suffix {', '.join(ALL_SUFFIXES)}): the site runs another model "
                     "or adapter config")


def _need(cond: bool, key: str, problem: str) -> None:
    if not cond:
        raise ModelError(f"compressed update {key}: {problem} — the payload is corrupt or was "
                         "encoded for another adapter; the reply is rejected")


def _decode_one(key: str, parts: dict[str, np.ndarray], shape: tuple[int, ...]) -> np.ndarray:
    numel = math.prod(shape)
    kinds = tuple(sorted(parts))
    if kinds in (("",), (".f16",)):
        arr = parts[kinds[0]]
        if kinds == ("",):
            _need(arr.dtype.kind == "f", key, f"dtype {arr.dtype}, expected a float type")
        else:
            _need(arr.dtype == np.float16, key, f"dtype {arr.dtype}, expected float16")
        _need(tuple(arr.shape) == shape, key, f"shape {tuple(arr.shape)}, expected {shape}")
        _need(bool(np.isfinite(arr).all()), key, "holds NaN or Inf")
        return arr.astype(np.float32)
    if kinds == (".q8", ".scale"):
        q, scale = parts[".q8"], parts[".scale"]
        _need(q.dtype == np.int8, key, f"q8 dtype {q.dtype}, expected int8")
        _need(tuple(q.shape) == shape, key, f"q8 shape {tuple(q.shape)}, expected {shape}")
        nblocks = -(-numel // INT8_BLOCK)
        _need(scale.dtype == np.float32 and scale.shape == (nblocks,), key,
              f"scale {scale.dtype}{tuple(scale.shape)}, expected float32 ({nblocks},)")
        _need(bool(np.isfinite(scale).all() and (scale >= 0).all()), key,
              "scale holds NaN, Inf or a negative value")
        _need(bool((q != -128).all()), key, "q8 holds -128 (outside the symmetric range)")
        flat = np.pad(q.reshape(-1).astype(np.float32), (0, nblocks * INT8_BLOCK - numel))
        return (flat.reshape(nblocks, INT8_BLOCK) * scale[:, None]).reshape(-1)[:numel].reshape(shape)
    if kinds == (".idx", ".val"):
        idx, val = parts[".idx"], parts[".val"]
        _need(idx.dtype.name in INT_DTYPES[".idx"] and idx.ndim == 1, key,
              f"idx {idx.dtype}{tuple(idx.shape)}, expected a 1-D int16/int32/int64 array")
        _need(val.dtype.kind == "f" and val.shape == idx.shape, key,
              f"val {val.dtype}{tuple(val.shape)}, expected floats shaped like idx {tuple(idx.shape)}")
        _need(idx.size <= numel, key, f"{idx.size} entries for a tensor of {numel}")
        if idx.size:
            _need(int(idx[0]) >= 0 and int(idx[-1]) < numel, key,
                  f"indices outside [0, {numel}) (first {int(idx[0])}, last {int(idx[-1])})")
            _need(bool((np.diff(idx.astype(np.int64)) > 0).all()), key,
                  "indices not strictly increasing (repeated or unsorted)")
        _need(bool(np.isfinite(val).all()), key, "val holds NaN or Inf")
        flat = np.zeros(numel, dtype=np.float32)
        flat[idx.astype(np.int64)] = val.astype(np.float32)
        return flat.reshape(shape)
    raise ModelError(f"compressed update {key}: parts {list(kinds)} form no known encoding "
                     f"(expected one of: plain, .f16, .q8+.scale, .idx+.val)")


def decode(arrays: dict[str, np.ndarray], *,
           template_shapes: dict[str, tuple[int, ...]]) -> dict[str, torch.Tensor]:
    """Decode a payload back to float32 tensors shaped like `template_shapes`, checking every
    array; raises ModelError naming the first bad key."""
    template = {k: tuple(int(d) for d in s) for k, s in template_shapes.items()}
    grouped: dict[str, dict[str, np.ndarray]] = {}
    for name, arr in arrays.items():
        key, suffix = _split(name, template)
        grouped.setdefault(key, {})[suffix] = np.asarray(arr)
    missing = [k for k in template if k not in grouped]
    if missing:
        raise ModelError(f"compressed update lacks {len(missing)} adapter key(s), e.g. "
                         f"{missing[0]!r}: the site runs another adapter config")
    return {k: torch.from_numpy(np.ascontiguousarray(_decode_one(k, grouped[k], template[k])))
            for k in template}


def is_compressed(names) -> bool:
    """Whether a payload's array names carry compression suffixes."""
    return any(str(n).endswith(ALL_SUFFIXES) for n in names)


def payload_nbytes(arrays: dict[str, np.ndarray]) -> int:
    """Raw bytes of the payload's values (Flower adds ~128 header bytes + the key per array)."""
    return int(sum(np.asarray(a).nbytes for a in arrays.values()))


def encode_with_feedback(update: dict[str, torch.Tensor], *, mode: str, topk_fraction: float = 0.01,
                         residual: dict[str, torch.Tensor] | None = None,
                         ) -> tuple[dict[str, np.ndarray], dict[str, torch.Tensor]]:
    """Encode `update + residual` and return (payload, new residual = what was not sent).

    Over rounds the residual re-enters the update, so nothing is lost for good: the sum of what
    the coordinator decoded trails the sum of the true updates by just the last residual.
    Modes without feedback return an empty residual."""
    if mode not in FEEDBACK_MODES:
        return encode(update, mode=mode, topk_fraction=topk_fraction), {}
    residual = residual or {}
    compensated = {}
    for k, v in update.items():
        r = residual.get(k)
        usable = r is not None and tuple(r.shape) == tuple(v.shape)
        compensated[k] = v.detach().float() + (r.float() if usable else 0.0)
    payload = encode(compensated, mode=mode, topk_fraction=topk_fraction)
    sent = decode(payload, template_shapes={k: tuple(v.shape) for k, v in compensated.items()})
    return payload, {k: compensated[k] - sent[k] for k in compensated}
