"""Update validation at the coordinator: nothing a site sends may corrupt the global adapter.

Each training reply is checked against the arrays the coordinator sent (expected keys, shapes,
float dtypes, finite values), its update norm against the other sites' (a bound relative to
their median, and an absolute bound), and its example count for plausibility. A rejected reply
is logged with the site and the reason and left out of aggregation; no reply, however malformed,
can raise out of here and stop the run."""

from __future__ import annotations

import math
from dataclasses import dataclass, field

import numpy as np
from flwr.app import ArrayRecord, Message, MetricRecord, RecordDict

from server.fastagg import Accumulator


@dataclass
class Verdict:
    ok: bool
    reason: str = ""
    norm: float = 0.0
    metrics: dict = field(default_factory=dict)  # the reply's numeric metrics, as claimed


def _arrays(msg: Message) -> ArrayRecord | None:
    recs = list(msg.content.array_records.values())
    return recs[0] if len(recs) == 1 else None


def check_metrics(msg: Message, *, max_examples: int) -> tuple[str, dict]:
    """(reason or "", metrics): exactly one MetricRecord of finite numbers (no lists, no bools)
    with a num-examples in 1..max_examples."""
    recs = list(msg.content.metric_records.values())
    if len(recs) != 1:
        return f"reply carries {len(recs)} MetricRecords, expected 1", {}
    metrics = {}
    for key, value in recs[0].items():
        if isinstance(value, bool) or not isinstance(value, (int, float)):
            return f"metric {str(key)[:40]!r} is a {type(value).__name__}, not a number", {}
        if not math.isfinite(value):
            return f"metric {str(key)[:40]!r} is not finite", {}
        metrics[str(key)] = value
    n = metrics.get("num-examples")
    if n is None or not 0 < n <= max_examples:
        return f"implausible num-examples {n!r} (allowed 1..{max_examples})", {}
    return "", metrics


def _check_reply(msg: Message, current: dict | Accumulator, *, max_examples: int,
                 max_update_norm: float) -> Verdict:
    arrays = _arrays(msg)
    if arrays is None:
        return Verdict(False, "reply carries no single ArrayRecord")
    odd = [k for k, a in arrays.items() if a.stype != "numpy.ndarray"]
    if odd:
        return Verdict(False, f"{str(odd[0])[:80]} is serialized as {arrays[odd[0]].stype!r}, "
                              "expected numpy.ndarray")
    reason, metrics = check_metrics(msg, max_examples=max_examples)
    if reason:
        return Verdict(False, reason)
    acc = current if isinstance(current, Accumulator) else Accumulator(current)
    reason, norm = acc.check(arrays)
    if reason:
        return Verdict(False, reason)
    if max_update_norm > 0 and norm > max_update_norm:
        return Verdict(False, f"update norm {norm:.3g} exceeds federation.max-update-norm "
                              f"{max_update_norm:g}")
    return Verdict(True, norm=norm, metrics=metrics)


def check_reply(msg: Message, current: dict | Accumulator, *, max_examples: int,
                max_update_norm: float = 0.0) -> Verdict:
    """Structural checks of one reply against the current global arrays (a dict of arrays, or
    an Accumulator, whose buffer then holds the checked update, ready to be added).

    Never raises: whatever a reply holds (a list for a number, an unknown serialization, a
    corrupt .npy header), the worst outcome is that this one reply is rejected with a reason."""
    try:
        return _check_reply(msg, current, max_examples=max_examples,
                            max_update_norm=max_update_norm)
    except Exception as err:  # noqa: BLE001 - the trust boundary: any failure rejects the reply
        return Verdict(False, f"malformed reply ({type(err).__name__}: {str(err)[:160]})")


def guarded_metrics(msg: Message, *, max_examples: int) -> tuple[str, dict]:
    """check_metrics that turns any exception into a reason (evaluate replies)."""
    try:
        return check_metrics(msg, max_examples=max_examples)
    except Exception as err:  # noqa: BLE001 - see check_reply
        return f"malformed reply ({type(err).__name__}: {str(err)[:160]})", {}


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


def canonical(msg: Message, *, metrics: dict, weight: float, arrays: ArrayRecord | None) -> None:
    """Replace a checked reply's content by exactly what the strategy needs: its one ArrayRecord
    and its numeric metrics with num-examples set to the weight it may have. Nothing else a site
    put in its reply (record names, extra records) reaches Flower's aggregation."""
    content = {"metrics": MetricRecord({**metrics, "num-examples": weight})}
    if arrays is not None:
        content["arrays"] = arrays
    msg.content = RecordDict(content)


def common_metric_keys(replies: list[Message]) -> None:
    """Keep only the metric keys every valid reply has (a site may share fewer metrics by policy,
    or report epsilon under DP), so Flower's consistency check and weighted averages hold.
    The full per-site metrics were recorded before this."""
    records = [next(iter(m.content.metric_records.values())) for m in replies
               if not m.has_error() and m.content.metric_records]
    if not records:
        return
    common = set(records[0]).intersection(*map(set, records[1:]))
    for rec in records:
        for key in [k for k in rec if k not in common]:
            del rec[key]
