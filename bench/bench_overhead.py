"""Section 3 — federation overhead: a real `fedtune simulate` run of the Banking77 sites
(SuperLink + Ray, default settings: every round evaluated) vs centralized training on the union
of the same train splits for the same samples x epochs (bench/baselines.py: model load +
tokenisation + training + one evaluation).

Where the federated wall time goes, from the run itself: the sites' own train_seconds and
eval_seconds (metrics.jsonl, summed: sites run one at a time with concurrency 1), the
coordinator's wall time (summary.json wall_s) and the rest of the `simulate` call (process
start: SuperLink, Ray, the ServerApp; submission; teardown). Model load and site data
preparation + tokenisation are not reported by the sites; they are measured once in this process
(bench/baselines.py) and multiplied by the number of model loads (coordinator + each site)."""

from __future__ import annotations


def run(h) -> dict:
    name = "banking77"
    sim = h.simulate(name, ["federation.evaluate-every=1"], tag="overhead")
    base = h.baselines(name)["centralized"]
    rows = sim["metrics"]
    train = sum(s["train"].get("train_seconds", 0.0) for r in rows for s in r["per_site"].values())
    evals = sum(s["evaluate"].get("eval_seconds", 0.0) for r in rows for s in r["per_site"].values())
    sites = h.specs[name]["sites"]
    wall, coord = sim["wall_s"], float(sim["summary"].get("wall_s", 0.0))
    model_loads = (sites + 1) * base["model_load_s"]
    prep = base["prep_tokenize_s"]  # all sites' data together, measured once
    rest = max(0.0, coord - train - evals - model_loads - prep)
    parts = {"site training (sum of train_seconds)": train,
             "site evaluation (sum of eval_seconds)": evals,
             f"model loads (coordinator + {sites} sites, est.)": model_loads,
             "site data prep + tokenisation (est.)": prep,
             "messaging, aggregation, checkpoints, Ray scheduling (rest of coordinator time)": rest,
             "process start + SuperLink/Ray start + submit + teardown (outside coordinator)":
                 max(0.0, wall - coord)}
    return {
        "federated": {"wall_s": wall, "coordinator_wall_s": coord, "sites": sites,
                      "rounds": len(rows), "accuracy": sim["summary"].get("accuracy"),
                      "memory": sim["memory"]},
        "centralized": {k: base[k] for k in ("wall_s", "model_load_s", "prep_tokenize_s",
                                             "train_s", "eval_s", "pooled_accuracy")},
        "breakdown_s": parts,
        "ratios": {"wall_fed_over_central": wall / base["wall_s"],
                   "train_fed_over_central": train / base["train_s"] if base["train_s"] else 0.0,
                   "wall_fed_minus_eval_over_central": (wall - evals) / base["wall_s"]},
    }


def table(res: dict) -> str:
    f, c, r = res["federated"], res["centralized"], res["ratios"]
    lines = [f"{f['sites']} sites x {f['rounds']} rounds (`fedtune simulate`, every round evaluated): "
             f"**{f['wall_s']:.0f} s** wall, accuracy {f['accuracy']:.4f}, peak RSS of the process "
             f"tree {f['memory']['peak_rss_bytes'] / 2**30:.2f} GiB (PSS "
             f"{f['memory']['peak_pss_bytes'] / 2**30:.2f} GiB). Centralized: **{c['wall_s']:.0f} s** "
             f"(model {c['model_load_s']:.1f} + data {c['prep_tokenize_s']:.1f} + train "
             f"{c['train_s']:.1f} + eval {c['eval_s']:.1f}), accuracy {c['pooled_accuracy']:.4f}.", "",
             "| federated wall time | seconds | share |", "|---|---:|---:|"]
    for k, v in res["breakdown_s"].items():
        lines.append(f"| {k} | {v:.1f} | {100 * v / f['wall_s']:.0f} % |")
    lines += ["", f"federated / centralized wall = **{r['wall_fed_over_central']:.2f}x** "
              f"(training alone {r['train_fed_over_central']:.2f}x; without per-round evaluation "
              f"{r['wall_fed_minus_eval_over_central']:.2f}x)."]
    return "\n".join(lines)
