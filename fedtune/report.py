"""`fedtune report RUN_DIR`: one self-contained HTML page about a run (plots embedded as base64
PNG, inline CSS, no external URLs), written atomically to RUN_DIR/report.html by default.

Sections, each shown only when the run has the data: global metrics per round, per-site metrics,
epsilon per site per round against its budget (per_site[site]["train"] keys epsilon / delta /
epsilon_budget), upload bytes per round, data-quality counts per site (<sites>/*/report.json,
counts only) and baselines from benchmark results (bench/results/*.json with a `baselines` key).
"""

from __future__ import annotations

import base64
import html
import json
import time
from pathlib import Path
from typing import Any

from common.config import load_toml
from common.atomic import atomic_write_bytes
from common.errors import DataError
from common.plots import METRICS, report_figures

CSS = """body{font:14px/1.45 system-ui,-apple-system,'Segoe UI',sans-serif;color:#1d2530;margin:0;background:#f4f6f9}
main{max-width:1080px;margin:0 auto;padding:24px 28px 48px;background:#fff;min-height:100vh}
h1{font-size:24px;margin:0 0 4px}h2{font-size:18px;margin:28px 0 8px;border-bottom:2px solid #e3e8ef;padding-bottom:4px}
.sub{color:#5b6675;margin:0 0 12px}.cards{display:flex;flex-wrap:wrap;gap:10px;margin:14px 0}
.card{border:1px solid #e3e8ef;border-radius:8px;padding:8px 14px;min-width:110px}
.card b{display:block;font-size:20px}.card span{color:#5b6675;font-size:12px}
table{border-collapse:collapse;margin:8px 0;font-size:13px}
th,td{border-bottom:1px solid #e3e8ef;padding:4px 10px;text-align:right}
th:first-child,td:first-child{text-align:left}th{background:#f4f6f9}.over{color:#b3261e;font-weight:600}
img{max-width:100%;display:block;margin:6px 0}footer{color:#8a94a3;font-size:12px;margin-top:32px}"""


def read_rows(run_dir: Path) -> list[dict]:
    """metrics.jsonl as a list of round rows; DataError when missing or corrupt."""
    path = run_dir / "metrics.jsonl"
    if not path.is_file():
        raise DataError(f"{path} does not exist: pass a run directory written by `fedtune simulate` or the coordinator")
    rows = []
    for n, line in enumerate(path.read_text(encoding="utf-8").splitlines(), start=1):
        if line.strip():
            try:
                rows.append(json.loads(line))
            except ValueError as err:
                raise DataError(f"{path}: line {n} is not JSON ({err}); fix: restore the file from the run") from None
    return rows


def sites_root(run_dir: Path) -> Path:
    """Where simulated sites live: RUN_DIR/sites when present (also after the run directory was
    moved or copied), else the config's simulation.sites-dir."""
    local = Path(run_dir) / "sites"
    toml = Path(run_dir) / "config.toml"
    configured = load_toml(toml).get("simulation.sites-dir", "") if toml.is_file() else ""
    return local if local.is_dir() or not configured else Path(str(configured))


def data_quality(run_dir: Path) -> dict[str, dict[str, int]]:
    """Counts per simulated site from each site's report.json (no text, no hashes)."""
    out: dict[str, dict[str, int]] = {}
    for path in sorted(sites_root(run_dir).glob("*/report.json")):
        try:
            rep = json.loads(path.read_text(encoding="utf-8"))
        except ValueError:
            continue
        steps = rep.get("steps", {})
        clean, split = steps.get("clean", {}), steps.get("split", {})
        out[path.parent.name] = {
            "rows_in": rep.get("input", {}).get("rows", 0),
            "after_validation": steps.get("validate", {}).get("rows_out", 0),
            "after_cleaning": clean.get("rows_out", 0),
            "duplicates_removed": clean.get("exact_duplicates_removed", 0)
            + clean.get("normalized_duplicates_removed", 0),
            "label_conflicts_removed": clean.get("conflict_rows_removed", 0),
            "rows_with_pii": steps.get("scrub", {}).get("rows_with_pii", 0),
            "pii_hits": sum(v for v in rep.get("pii", {}).values() if isinstance(v, int)),
            "train": split.get("train", 0), "val": split.get("val", 0), "test": split.get("test", 0)}
    return out


def privacy_series(rows: list[dict]) -> dict[str, list[dict[str, float]]]:
    """{site: [{round, epsilon, delta, epsilon_budget}]} from rows that carry `epsilon`."""
    out: dict[str, list[dict[str, float]]] = {}
    for row in rows:
        for site, per in row.get("per_site", {}).items():
            train = per.get("train", {})
            if "epsilon" in train:
                out.setdefault(site, []).append({"round": row["round"], **{
                    k: train[k] for k in ("epsilon", "delta", "epsilon_budget", "noise_multiplier") if k in train}})
    return out


def baselines(dirs: list[Path]) -> dict[str, Any]:
    """{file name: baselines value} from bench result JSON files that have a `baselines` key."""
    found: dict[str, Any] = {}
    for d in dirs:
        for path in sorted(Path(d).glob("*.json")):
            try:
                doc = json.loads(path.read_text(encoding="utf-8"))
            except (OSError, ValueError):
                continue
            if isinstance(doc, dict) and "baselines" in doc:
                found[path.name] = doc["baselines"]
    return found


# ---- rendering ---------------------------------------------------------------------------------
def _esc(x: Any) -> str:
    if isinstance(x, float):
        return f"{x:,.0f}" if x.is_integer() or abs(x) >= 1e4 else f"{x:.4g}"
    if isinstance(x, int) and not isinstance(x, bool):
        return f"{x:,}"
    return html.escape(str(x))


def _table(header: list[str], rows: list[list[Any]], classes: dict[tuple[int, int], str] | None = None) -> str:
    head = "".join(f"<th>{_esc(h)}</th>" for h in header)
    body = "".join("<tr>" + "".join(
        f"<td class='{(classes or {}).get((i, j), '')}'>{_esc(c)}</td>" for j, c in enumerate(r)) + "</tr>"
        for i, r in enumerate(rows))
    return f"<table><tr>{head}</tr>{body}</table>"


def _img(png: bytes) -> str:
    return f"<img alt='plot' src=\"data:image/png;base64,{base64.b64encode(png).decode()}\">"


def render_report(run_dir: str | Path, *, bench_dirs: list[Path] | None = None) -> tuple[str, int]:
    """The HTML page and the number of plots in it."""
    run = Path(run_dir)
    rows = read_rows(run)
    flat = load_toml(run / "config.toml") if (run / "config.toml").is_file() else {}
    summary_path = run / "summary.json"
    summary = json.loads(summary_path.read_text(encoding="utf-8")) if summary_path.is_file() else {}
    privacy = privacy_series(rows)
    plots = {k: _img(v) for k, v in report_figures(rows, privacy).items()}
    quality = data_quality(run)
    found = baselines(bench_dirs if bench_dirs is not None else [run / "bench" / "results"])
    final = {k: summary[k] for k in METRICS if isinstance(summary.get(k), (int, float))}
    cards = {"rounds": len(rows), "sites": len(summary.get("sites", [])) or len(
        {s for r in rows for s in r.get("per_site", {})}), **final,
        "wall time (s)": summary.get("wall_s", rows[-1]["elapsed_s"] if rows else 0),
        "MB uploaded": sum(r.get("upload_bytes", 0) for r in rows) / 1e6}
    base = flat.get("model.base") or "all-MiniLM-L6-v2 (default)"
    parts = [f"<h1>Run report: {_esc(run.resolve().name)}</h1><p class='sub'>{_esc(flat.get('task.type', '?'))} · "
             f"{_esc(flat.get('model.finetune', '?'))} (r={_esc(flat.get('model.lora-r', '?'))}) on "
             f"{_esc(Path(str(base)).name)} · {_esc(flat.get('federation.strategy', '?'))} · "
             f"partition {_esc(flat.get('simulation.partition', '?'))}</p>",
             "<div class='cards'>" + "".join(f"<div class='card'><b>{_esc(v)}</b><span>{_esc(k)}</span></div>"
                                             for k, v in cards.items()) + "</div>"]
    if rows:
        metrics = [m for m in METRICS if any(m in r.get("evaluate", {}) for r in rows)]
        parts += ["<h2>Global metrics per round</h2>", plots.get("global", ""), _table(
            ["round", "train loss", *[f"test {m}" for m in metrics], "round s", "failures"],
            [[r["round"], r.get("train", {}).get("train_loss", "–"),
              *[r.get("evaluate", {}).get(m, "–") for m in metrics],
              r.get("round_s", "–"), len(r.get("failures", []))] for r in rows])]
        last = rows[-1].get("per_site", {})
        site_metrics = [m for m in METRICS if any(m in v.get("evaluate", {}) for v in last.values())]
        parts += ["<h2>Per-site metrics (last round)</h2>", plots.get("sites", ""), _table(
            ["site", "train examples", "test examples", *site_metrics],
            [[s, v.get("train", {}).get("num-examples", "–"), v.get("evaluate", {}).get("num-examples", "–"),
              *[v.get("evaluate", {}).get(m, "–") for m in site_metrics]] for s, v in sorted(last.items())])]
    parts += _across_sites(summary)
    if privacy:
        table, over = [], {}
        for i, (s, pts) in enumerate(sorted(privacy.items())):
            budget = pts[-1].get("epsilon_budget")
            if budget is not None and pts[-1]["epsilon"] > budget:
                over[(i, 1)] = "over"
            table.append([s, pts[-1]["epsilon"], budget if budget is not None else "–", pts[-1].get("delta", "–"),
                          f"{100 * pts[-1]['epsilon'] / budget:.0f} %" if budget else "–"])
        parts += ["<h2>Differential privacy: ε spent per site</h2>", plots["privacy"],
                  _table(["site", "ε spent", "ε budget", "δ", "budget used"], table, over)]
    if "bytes" in plots:
        parts += ["<h2>Communication</h2>", plots["bytes"], _table(
            ["round", "bytes uploaded"], [[r["round"], r.get("upload_bytes", 0)] for r in rows])]
    if quality:
        keys = list(next(iter(quality.values())))
        parts += ["<h2>Data quality per site (counts only)</h2>",
                  _table(["site", *[k.replace("_", " ") for k in keys]],
                         [[s, *q.values()] for s, q in quality.items()])]
    for name, value in found.items():
        parts += [f"<h2>Baselines ({_esc(name)})</h2>", _baseline_table(value)]
    page = ("<!DOCTYPE html><html lang='en'><head><meta charset='utf-8'><title>fedtune report "
            f"{_esc(run.resolve().name)}</title><style>{CSS}</style></head><body><main>{''.join(parts)}"
            f"<footer>generated {time.strftime('%Y-%m-%d %H:%M')} by fedtune report from {_esc(run.resolve())}"
            "</footer></main></body></html>")
    return page, len(plots)


def _across_sites(summary: dict) -> list[str]:
    """Worst site and spread per metric; what joining bought each site (server/worst.py)."""
    parts = []
    spread = summary.get("worst_site") or {}
    if spread:
        parts += ["<h2>Across sites: weighted mean, worst site, spread</h2>", _table(
            ["metric", "weighted mean", "worst", "worst site", "min", "max", "spread"],
            [[m, v.get("weighted_mean", "–"), v["worst"], v["worst_site"], v["min"], v["max"], v["spread"]]
             for m, v in spread.items()])]
    join = summary.get("joining") or {}
    if join.get("sites"):
        rows = [[s, v.get("local_only", "–"), v.get("global", "–"), v.get("gain", "–"),
                 v.get("personalized", "–"), v.get("personalized_gain", "–")] for s, v in join["sites"].items()]
        below = {(i, j): "over" for i, r in enumerate(rows) for j in (3, 5)
                 if isinstance(r[j], float) and r[j] < 0}
        parts += [f"<h2>What joining bought each site (own test {_esc(join.get('metric'))})</h2>", _table(
            ["site", "local-only", "global", "gain", "personalized", "gain (personalized)"], rows, below)]
    return parts


def _baseline_table(value: Any) -> str:
    """A table from {name: {metric: v}}, {name: v} or [{...}] — whatever shape a bench wrote."""
    if isinstance(value, dict) and all(isinstance(v, dict) for v in value.values()):
        cols = list(dict.fromkeys(k for v in value.values() for k in v))
        return _table(["baseline", *cols], [[n, *[v.get(c, "–") for c in cols]] for n, v in value.items()])
    if isinstance(value, dict):
        return _table(["baseline", "value"], [[k, v] for k, v in value.items()])
    if isinstance(value, list) and all(isinstance(v, dict) for v in value):
        cols = list(dict.fromkeys(k for v in value for k in v))
        return _table(cols, [[v.get(c, "–") for c in cols] for v in value])
    return f"<pre>{_esc(json.dumps(value, indent=1))}</pre>"


def write_report(run_dir: str | Path, *, out: str | Path | None = None,
                 bench_dirs: list[Path] | None = None) -> tuple[Path, int]:
    """Render and write the page atomically (default RUN_DIR/report.html); returns (path, plots)."""
    page, n_plots = render_report(run_dir, bench_dirs=bench_dirs)
    path = Path(out) if out else Path(run_dir) / "report.html"
    atomic_write_bytes(path, page.encode("utf-8"))
    return path, n_plots
