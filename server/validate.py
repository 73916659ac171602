"""Update validation at the coordinator: nothing a site sends may corrupt the global adapter.

Each training reply is checked against the arrays the coordinator sent (expected keys, shapes,
float dtypes, finite values), its update norm against the other sites' (a bound relative to
their median), and its example count for plausibility. A rejected reply is logged with the site
and the reason and left out of aggregation."""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np
from flwr.app import ArrayRecord, Message

from server.fastagg import Accumulator


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


def check_reply(msg: Message, current: dict | Accumulator, *, max_examples: int) -> Verdict:
    """Structural checks of one reply against the current global arrays (a dict of arrays, or
    an Accumulator, whose buffer then holds the checked update, ready to be added)."""
    arrays = _arrays(msg)
    if arrays is None:
        return Verdict(False, "reply carries no single ArrayRecord")
    acc = current if isinstance(current, Accumulator) else Accumulator(current)
    reason, norm = acc.check(arrays)
    if reason:
        return Verdict(False, reason)
    n = _num_examples(msg)
    if n is None or not np.isfinite(n) or n <= 0 or n > max_examples:
        return Verdict(False, f"implausible num-examples {n!r} (allowed 1..{max_examples})")
    return Verdict(True, norm=norm)


def norm_outliers(norms: dict[str, float], *, factor: float) -> dict[str, str]:
    """Sites whose update norm exceeds `factor` x the median of the OTHER sites' norms
    (O(n log n): each leave-one-out median is read off the sorted norms)."""
    out: dict[str, str] = {}
    n = len(norms)
    if factor <= 0 or n < 3:
        return out
    names = list(norms)
    values = np.array([norms[k] for k in names], dtype=np.float64)
    order = np.argsort(values, kind="stable")
    srt = values[order]
    pos = np.empty(n, dtype=np.int64)
    pos[order] = np.arange(n)
    m = n - 1  # how many others

    def others(i: int) -> float:  # i-th smallest of the sorted norms without position p
        return float(srt[i] if i < p else srt[i + 1])

    for j, site in enumerate(names):
        p = int(pos[j])
        med = others(m // 2) if m % 2 else 0.5 * (others(m // 2 - 1) + others(m // 2))
        bound = factor * med
        if bound > 0 and values[j] > bound:
            out[site] = f"update norm {values[j]:.3g} exceeds {factor:g} x the other sites' median ({bound:.3g})"
    return out
