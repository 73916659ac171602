"""Update validation at the coordinator: nothing a site sends may corrupt the global adapter.

Each training reply is checked against the arrays the coordinator sent (expected keys, shapes,
float dtypes, finite values), its update norm against the other sites' (a bound relative to
their median), and its example count for plausibility. A rejected reply is logged with the site
and the reason and left out of aggregation."""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np
from flwr.app import ArrayRecord, Message


@dataclass
class Verdict:
    ok: bool
    reason: str = ""
    norm: float = 0.0


def _arrays(msg: Message) -> ArrayRecord | None:
    recs = list(msg.content.array_records.values())
    return recs[0] if len(recs) == 1 else None


def _num_examples(msg: Message) -> float | None:
    for rec in msg.content.metric_records.values():
        if "num-examples" in rec:
            return rec["num-examples"]
    return None


def check_reply(msg: Message, current: dict[str, np.ndarray], *, max_examples: int) -> Verdict:
    """Structural checks of one reply against the current global arrays."""
    arrays = _arrays(msg)
    if arrays is None:
        return Verdict(False, "reply carries no single ArrayRecord")
    got = set(arrays.keys())
    if got != set(current):
        missing, extra = sorted(set(current) - got), sorted(got - set(current))
        return Verdict(False, f"wrong keys: missing {missing[:2]}, unexpected {extra[:2]}")
    sq = 0.0
    for key, arr in arrays.items():
        value = arr.numpy()
        if value.shape != current[key].shape:
            return Verdict(False, f"{key} has shape {value.shape}, expected {current[key].shape}")
        if value.dtype.kind != "f":
            return Verdict(False, f"{key} has dtype {value.dtype}, expected a float array")
        if not np.isfinite(value).all():
            return Verdict(False, f"{key} holds NaN or Inf")
        sq += float(((value.astype(np.float64) - current[key]) ** 2).sum())
    n = _num_examples(msg)
    if n is None or not np.isfinite(n) or n <= 0 or n > max_examples:
        return Verdict(False, f"implausible num-examples {n!r} (allowed 1..{max_examples})")
    return Verdict(True, norm=float(np.sqrt(sq)))


def norm_outliers(norms: dict[str, float], *, factor: float) -> dict[str, str]:
    """Sites whose update norm exceeds `factor` x the median of the OTHER sites' norms."""
    out = {}
    if factor <= 0 or len(norms) < 3:
        return out
    for site, norm in norms.items():
        others = [v for s, v in norms.items() if s != site]
        bound = factor * float(np.median(others))
        if bound > 0 and norm > bound:
            out[site] = f"update norm {norm:.3g} exceeds {factor:g} x the other sites' median ({bound:.3g})"
    return out
