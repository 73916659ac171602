"""Every figure fedtune draws, from round records (metrics.jsonl rows): the run directory's
per-metric PNGs (server/rundir.py) and the report's plots (fedtune/report.py). Figures come back
as PNG bytes; the callers decide where they go. matplotlib is imported here only (Agg backend),
so an ImportError names the one missing piece."""

from __future__ import annotations

import io

METRICS = ("accuracy", "macro_f1", "auc_roc", "loss", "mae", "rmse", "r2")


def pyplot():
    """matplotlib.pyplot on the Agg backend (no display needed)."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    return plt


def png(fig, *, dpi: int) -> bytes:
    """The figure as PNG bytes (laid out tight); the figure is closed."""
    plt = pyplot()
    buf = io.BytesIO()
    fig.tight_layout()
    fig.savefig(buf, format="png", dpi=dpi)
    plt.close(fig)
    return buf.getvalue()


def metric_per_round(rows: list[dict], metric: str) -> bytes:
    """The run directory's plot of one test metric: weighted, and each site's, per round."""
    plt = pyplot()
    fig, ax = plt.subplots(figsize=(6, 4))
    ax.plot([r["round"] for r in rows], [r["evaluate"][metric] for r in rows], "k-o",
            label="weighted", linewidth=2)
    for site in rows[-1]["per_site"]:
        pts = [(r["round"], r["per_site"].get(site, {}).get("evaluate", {}).get(metric))
               for r in rows]
        pts = [p for p in pts if p[1] is not None]
        ax.plot([p[0] for p in pts], [p[1] for p in pts], "--", alpha=0.7, label=site)
    ax.set_xlabel("round")
    ax.set_ylabel(f"test {metric}")
    ax.grid(alpha=0.3)
    ax.legend(fontsize=8)
    return png(fig, dpi=100)


def _finish(ax, **labels) -> None:
    import matplotlib.ticker

    ax.set(xlabel="round", **labels)
    ax.xaxis.set_major_locator(matplotlib.ticker.MaxNLocator(integer=True))
    ax.grid(alpha=0.3)
    ax.legend(fontsize=8, framealpha=0.9)


def report_figures(rows: list[dict], privacy: dict[str, list[dict]]) -> dict[str, bytes]:
    """The report's plots, by section name, each only when the run has its data: global metrics,
    the headline metric per site, epsilon per site against its budget, bytes uploaded."""
    plt = pyplot()
    out: dict[str, bytes] = {}
    ev = [r for r in rows if r.get("evaluate")]
    sites = sorted({s for r in rows for s in r.get("per_site", {})})
    colors = {s: plt.cm.tab10(i % 10) for i, s in enumerate(sites)}
    if ev:
        out["global"] = _global(plt, rows, ev)
        out["sites"] = _sites(plt, ev, sites, colors)
    if privacy:
        fig, ax = plt.subplots(figsize=(10, 3.4))
        for s, pts in sorted(privacy.items()):
            ax.plot([p["round"] for p in pts], [p["epsilon"] for p in pts], "-o", color=colors.get(s),
                    label=f"{s} ε")
            if "epsilon_budget" in pts[-1]:
                ax.axhline(pts[-1]["epsilon_budget"], color=colors.get(s), ls=":", label=f"{s} budget")
        ax.set_ylim(bottom=0)
        _finish(ax, ylabel="ε spent (cumulative)", title="privacy budget per site")
        out["privacy"] = png(fig, dpi=96)
    if any(r.get("upload_bytes") for r in rows):
        out["bytes"] = _bytes(plt, rows, sites, colors)
    return out


def _global(plt, rows: list[dict], ev: list[dict]) -> bytes:
    fig, (left, right) = plt.subplots(1, 2, figsize=(10, 3.4))
    for m in ("accuracy", "macro_f1", "auc_roc", "r2"):
        if m in ev[-1]["evaluate"]:
            left.plot([r["round"] for r in ev], [r["evaluate"].get(m) for r in ev], "-o", label=m)
    for m in ("loss", "rmse", "mae"):
        if m in ev[-1]["evaluate"]:
            right.plot([r["round"] for r in ev], [r["evaluate"].get(m) for r in ev], "-o",
                       label=f"test {m}")
    if any("train_loss" in r.get("train", {}) for r in rows):
        right.plot([r["round"] for r in rows], [r.get("train", {}).get("train_loss") for r in rows],
                   "--s", label="train loss")
    _finish(left, title="weighted test metrics")
    _finish(right, title="loss / error")
    return png(fig, dpi=96)


def _sites(plt, ev: list[dict], sites: list[str], colors: dict) -> bytes:
    headline = next(m for m in ("accuracy", "rmse", "loss", *METRICS) if m in ev[-1]["evaluate"])
    fig, ax = plt.subplots(figsize=(10, 3.4))
    for s in sites:
        pts = [(r["round"], r["per_site"].get(s, {}).get("evaluate", {}).get(headline)) for r in ev]
        pts = [p for p in pts if p[1] is not None]
        ax.plot([p[0] for p in pts], [p[1] for p in pts], "-o", color=colors[s], label=s)
    ax.plot([r["round"] for r in ev], [r["evaluate"][headline] for r in ev], "k--", label="weighted")
    _finish(ax, ylabel=f"test {headline}", title=f"test {headline} per site")
    return png(fig, dpi=96)


def _bytes(plt, rows: list[dict], sites: list[str], colors: dict) -> bytes:
    rounds = [r["round"] for r in rows]
    fig, ax = plt.subplots(figsize=(10, 3.0))
    bottom = [0.0] * len(rows)
    for s in sites:
        vals = [r.get("per_site", {}).get(s, {}).get("upload_bytes", 0) / 1e6 for r in rows]
        ax.bar(rounds, vals, bottom=bottom, color=colors[s], label=s)
        bottom = [b + v for b, v in zip(bottom, vals)]
    ax.set_ylim(0, max(bottom) * 1.3 or 1)
    _finish(ax, ylabel="MB uploaded", title="bytes sent to the coordinator per round")
    return png(fig, dpi=96)
