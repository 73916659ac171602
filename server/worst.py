"""Across sites: a weighted mean hides the site the federation does not serve. From one round's
per-site evaluate metrics (what the sites reported, already validated) this computes, per
metric, the minimum and maximum over sites with their names, the spread and the worst site; and,
when the sites report their local-only / personalized models (client/baseline.py), what joining
bought each site. Pure functions: the round record (server/rundir.py) stores their output."""

from __future__ import annotations

LOWER_IS_BETTER = ("loss", "mae", "rmse", "perplexity")
NOT_COMPARED = ("num-examples", "eval_seconds", "threshold")
HEADLINES = ("accuracy", "rmse", "loss", "perplexity")


def lower_is_better(metric: str) -> bool:
    base = metric.split("_", 1)[1] if metric.startswith(("local_", "personal_", "val_")) else metric
    return base in LOWER_IS_BETTER


def across_sites(per_site: dict[str, dict[str, float]],
                 weighted: dict[str, float] | None = None) -> dict[str, dict]:
    """{metric: {min, min_site, max, max_site, spread, worst, worst_site, sites, weighted_mean}}
    for every metric some site reported (worst = min, or max where lower is better)."""
    out: dict[str, dict] = {}
    keys = sorted({k for m in per_site.values() for k in m if k not in NOT_COMPARED})
    for key in keys:
        vals = {s: float(m[key]) for s, m in per_site.items() if key in m}
        lo, hi = min(vals, key=vals.get), max(vals, key=vals.get)
        worst = hi if lower_is_better(key) else lo
        entry = {"min": vals[lo], "min_site": lo, "max": vals[hi], "max_site": hi,
                 "spread": vals[hi] - vals[lo], "worst": vals[worst], "worst_site": worst,
                 "sites": len(vals)}
        if weighted and key in weighted:
            entry["weighted_mean"] = weighted[key]
        out[key] = entry
    return out


def headline(metrics: dict[str, float]) -> str | None:
    return next((m for m in HEADLINES if m in metrics), None)


def joining(per_site: dict[str, dict[str, float]]) -> dict:
    """What joining bought each site, on its own test split and its headline metric: the global
    model vs its local-only model (`gain`, positive = joining helped) and, when personalized,
    the personalized adapter vs local-only. {} when no site reported a local-only model."""
    sites: dict[str, dict] = {}
    metric = None
    for site, m in sorted(per_site.items()):
        metric = metric or headline(m)
        if metric is None or f"local_{metric}" not in m and f"personal_{metric}" not in m:
            continue
        sign = -1.0 if lower_is_better(metric) else 1.0
        row: dict[str, float] = {"global": m[metric]} if metric in m else {}
        if f"local_{metric}" in m:
            row["local_only"] = m[f"local_{metric}"]
            if "global" in row:
                row["gain"] = sign * (row["global"] - row["local_only"])
        if f"personal_{metric}" in m:
            row["personalized"] = m[f"personal_{metric}"]
            if "local_only" in row:
                row["personalized_gain"] = sign * (row["personalized"] - row["local_only"])
        sites[site] = row
    if not sites:
        return {}
    return {"metric": metric, "sites": sites,
            "global_below_local_only": sorted(s for s, r in sites.items() if r.get("gain", 0) < 0),
            "personalized_below_local_only": sorted(
                s for s, r in sites.items() if r.get("personalized_gain", 0) < 0)}


def describe_site(site: str, metrics: dict[str, float]) -> str:
    """`site-0:0.812 (local 0.790 +0.022, pers 0.845)` — the terminal's per-site cell."""
    metric = headline(metrics) or "accuracy"
    text = f"{site}:{metrics.get(metric, float('nan')):.3f}"
    sign = -1.0 if lower_is_better(metric) else 1.0
    extra = []
    if f"local_{metric}" in metrics:
        local = metrics[f"local_{metric}"]
        gain = sign * (metrics.get(metric, float("nan")) - local)
        extra.append(f"local {local:.3f} {gain:+.3f}")
    if f"personal_{metric}" in metrics:
        extra.append(f"pers {metrics[f'personal_{metric}']:.3f}")
    return text + (f" ({', '.join(extra)})" if extra else "")


def describe_spread(spread: dict[str, dict], metrics: tuple[str, ...]) -> str:
    """`worst accuracy 0.712 site-2, spread 0.101` for each of `metrics` that has 2+ sites."""
    parts = [f"worst {m} {spread[m]['worst']:.4f} {spread[m]['worst_site']}, spread "
             f"{spread[m]['spread']:.4f}" for m in metrics if spread.get(m, {}).get("sites", 0) > 1]
    return "; ".join(parts)
