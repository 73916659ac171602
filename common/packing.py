"""Packing a message's arrays into one blob for the deployment engine's transport.

Flower 1.42 moves every array of a message as separate objects (an Array and its chunk), each
fetched with its own HTTP request: the demo's LoRA adapter is 74 arrays, so one message cost
~150 requests per hop and 2-5 s of waiting on two busy cores (bench/bench_deploy.py). Packed, a
message's arrays are ONE uint8 array (their bytes, C order, one after another) plus a manifest
(record name, key, dtype, shape per array, in order): a handful of requests, the same values.

The packer is lossless and order-preserving. The unpacker treats both parts as untrusted input —
a site unpacks what a coordinator sent and the coordinator what a site sent — so every field is
checked (types, dtype allow-list, shapes, sizes adding up exactly to the blob) before any array is
built, and a violation raises `PackingError` naming the rule, never echoing the content.
Numpy only: the Flower adapters are server/transport.py and client/wire.py."""

from __future__ import annotations

import json
import math

import numpy as np

from common.errors import FedtuneError, reason

# dtypes a fedtune message carries: adapter weights (float32; float16/64 possible), compression
# codecs (int8 values, float scales, int32/int64 indices), flags
DTYPES = frozenset({"<f2", "<f4", "<f8", "|i1", "|u1", "<i2", "<i4", "<i8", "<u2", "<u4",
                    "<u8", "|b1"})
MAX_ARRAYS = 100_000
MAX_NAME = 512
MAX_DIMS = 8
MAX_MANIFEST = 16 * 2**20  # bytes of JSON


class PackingError(FedtuneError, ValueError):
    """A packed message whose manifest and blob do not describe a valid set of arrays."""

    public = reason("the message's packed arrays are malformed (manifest and data disagree); "
                    "run the coordinator and the sites on the same fedtune release")


def pack(records: dict[str, dict[str, np.ndarray]]) -> tuple[np.ndarray, str]:
    """{record: {key: array}} -> (uint8 blob, manifest JSON)."""
    entries, parts = [], []
    for name, arrays in records.items():
        for key, arr in arrays.items():
            a = np.ascontiguousarray(arr)
            if a.dtype.str not in DTYPES:
                raise PackingError(f"{name}/{key}: dtype {a.dtype} cannot be packed")
            entries.append([name, key, a.dtype.str, list(a.shape)])
            parts.append(a.reshape(-1).view(np.uint8))
    blob = np.concatenate(parts) if parts else np.zeros(0, np.uint8)
    return blob, json.dumps(entries, separators=(",", ":"))


def _entries(manifest: str) -> list[tuple[str, str, np.dtype, tuple[int, ...]]]:
    if not isinstance(manifest, str) or len(manifest) > MAX_MANIFEST:
        raise PackingError("the manifest is not a string of bounded size")
    try:
        raw = json.loads(manifest)
    except ValueError:
        raise PackingError("the manifest is not valid JSON") from None
    if not isinstance(raw, list) or len(raw) > MAX_ARRAYS:
        raise PackingError("the manifest is not a list of at most MAX_ARRAYS entries")
    out, seen = [], set()
    for entry in raw:
        if not (isinstance(entry, list) and len(entry) == 4):
            raise PackingError("a manifest entry is not [record, key, dtype, shape]")
        name, key, dtype, shape = entry
        if not (isinstance(name, str) and isinstance(key, str) and 0 < len(name) <= MAX_NAME
                and 0 < len(key) <= MAX_NAME):
            raise PackingError("a manifest entry has an invalid record name or key")
        if (name, key) in seen:
            raise PackingError("a manifest entry repeats a record name and key")
        seen.add((name, key))
        if dtype not in DTYPES:
            raise PackingError("a manifest entry names a dtype outside the allowed set")
        if not (isinstance(shape, list) and len(shape) <= MAX_DIMS
                and all(type(d) is int and d >= 0 for d in shape)):
            raise PackingError("a manifest entry has an invalid shape")
        out.append((name, key, np.dtype(dtype), tuple(shape)))
    return out


def unpack(blob: np.ndarray, manifest: str) -> dict[str, dict[str, np.ndarray]]:
    """(uint8 blob, manifest JSON) -> {record: {key: array}}, checked (see the module docstring)."""
    if not isinstance(blob, np.ndarray) or blob.dtype != np.uint8 or blob.ndim != 1:
        raise PackingError("the packed blob is not a 1-D uint8 array")
    entries, offset = _entries(manifest), 0
    sizes = [math.prod(shape) * dtype.itemsize for _, _, dtype, shape in entries]
    if sum(sizes) != blob.size:
        raise PackingError("the manifest's array sizes do not add up to the blob's size")
    out: dict[str, dict[str, np.ndarray]] = {}
    for (name, key, dtype, shape), size in zip(entries, sizes):
        part = blob[offset:offset + size]
        out.setdefault(name, {})[key] = part.view(dtype).reshape(shape).copy()
        offset += size
    return out
