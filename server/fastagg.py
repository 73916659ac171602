"""The coordinator's hot path: decode, validate and average adapter updates without copies.

Flower's `Array.numpy()` re-parses the .npy header and copies the bytes on every call, and its
FedAvg decodes every array again and averages with two passes and a temporary per array. On the
bench's 1,000 updates of 2.8 MB that was 9 s. Here each array is decoded once as a zero-copy
view of the received bytes (headers parsed once per distinct header), validated with one fused
pass per array (`torch.dist`: NaN/Inf anywhere makes the norm non-finite), and summed with one
fused in-place multiply-add per array. The result is the same weighted mean as Flower's FedAvg
(tests/test_fastagg.py compares them)."""

from __future__ import annotations

import io
import math
import warnings
from functools import lru_cache

import numpy as np
import torch
from flwr.app import Array, ArrayRecord

_MAGIC = b"\x93NUMPY"


@lru_cache(maxsize=4096)
def _header(head: bytes) -> tuple[tuple[int, ...], np.dtype, int] | None:
    """(shape, dtype, data offset) of a C-order .npy header, None for anything unusual."""
    f = io.BytesIO(head)
    try:
        major, _ = np.lib.format.read_magic(f)
        read = np.lib.format.read_array_header_1_0 if major == 1 else np.lib.format.read_array_header_2_0
        shape, fortran, dtype = read(f)
    except ValueError:
        return None
    if fortran or dtype.hasobject:
        return None
    return tuple(shape), dtype, f.tell()


def decode(arr: Array) -> np.ndarray:
    """A read-only view of the array's bytes (falls back to Flower's decoder when unusual)."""
    data = arr.data
    if arr.stype == "numpy.ndarray" and data[:6] == _MAGIC and len(data) >= 12:
        major = data[6]
        size = 10 + int.from_bytes(data[8:10], "little") if major == 1 else \
            12 + int.from_bytes(data[8:12], "little")
        meta = _header(bytes(data[:size]))
        if meta is not None:
            shape, dtype, offset = meta
            count = math.prod(shape)
            if len(data) - offset == count * dtype.itemsize:
                return np.frombuffer(data, dtype=dtype, count=count, offset=offset).reshape(shape)
    return arr.numpy()


def _tensor(a: np.ndarray) -> torch.Tensor:
    with warnings.catch_warnings():  # read-only views are only ever read here
        warnings.simplefilter("ignore", UserWarning)
        return torch.from_numpy(a)


def check_arrays(arrays: ArrayRecord, current: dict[str, torch.Tensor]
                 ) -> tuple[str, float, dict[str, torch.Tensor]]:
    """(reason or "", update norm, decoded tensors) of one reply against the global arrays."""
    got = set(arrays.keys())
    if got != set(current):
        missing, extra = sorted(set(current) - got), sorted(got - set(current))
        return f"wrong keys: missing {missing[:2]}, unexpected {extra[:2]}", 0.0, {}
    out, sq = {}, 0.0
    for key, arr in arrays.items():
        ref = current[key]
        if tuple(arr.shape) != tuple(ref.shape):
            return f"{key} has shape {tuple(arr.shape)}, expected {tuple(ref.shape)}", 0.0, {}
        value = decode(arr)
        if value.dtype.kind != "f":
            return f"{key} has dtype {value.dtype}, expected a float array", 0.0, {}
        t = _tensor(value)
        d = float(torch.dist(t.to(ref.dtype), ref)) if t.dtype != ref.dtype else float(torch.dist(t, ref))
        if not np.isfinite(d):
            if not np.isfinite(value).all():
                return f"{key} holds NaN or Inf", 0.0, {}
            return f"{key} update overflows (norm not finite)", 0.0, {}
        sq += d * d
        out[key] = t
    return "", float(np.sqrt(sq)), out


def weighted_mean(updates: list[tuple[dict[str, torch.Tensor], float]]) -> dict[str, np.ndarray]:
    """Sum_i w_i x_i / Sum_i w_i per key, float32, one fused multiply-add per array."""
    total = float(sum(w for _, w in updates))
    acc: dict[str, torch.Tensor] = {}
    for tensors, w in updates:
        f = w / total
        for key, t in tensors.items():
            if key in acc:
                acc[key].add_(t, alpha=f)
            else:
                acc[key] = t.to(torch.float32) * f
    return {k: v.numpy() for k, v in acc.items()}


def as_tensors(arrays: ArrayRecord) -> dict[str, torch.Tensor]:
    """The global arrays the replies are checked against (decoded once per round)."""
    return {k: _tensor(np.ascontiguousarray(decode(a))) for k, a in arrays.items()}
