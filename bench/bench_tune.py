"""`fedtune tune` on the demo data: an 8-trial federated search against the demo's own settings.

    python bench/bench_tune.py [--trials 8] [--rounds 2] [--work DIR] [--out bench/results]

The demo config (3 banks, Dirichlet 0.5 over data/banking77_demo.csv, all-MiniLM-L6-v2, LoRA,
head from the label names) with `federation.rounds` = --rounds for every trial; the space is
docs/tune.md's (learning rate, head learning rate, LoRA rank, local epochs, batch size). Trial 0
is the demo's own values. Trials run in-process (`--runner inproc`: fedtune's coordinator and
ClientApp, no Flower transport) and are scored on the weighted VALIDATION accuracy only; the
held-out figure is each trial's weighted accuracy on the sites' TEST splits after its last round
(summary.json), which the search never saw. Writes <out>/tune.json and <out>/tune.md."""

from __future__ import annotations

import argparse
import json
import os
import sys
import tempfile
import time
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO))
os.environ.setdefault("HF_HUB_OFFLINE", "1")

SPACE = """[tune]
trials = {trials}
metric = "accuracy"
seed = 0
prune-after = 1

[tune.space."train.learning-rate"]
low = 1e-4
high = 1e-2
log = true

[tune.space."train.head-learning-rate"]
low = 1e-3
high = 5e-2
log = true

[tune.space."model.lora-r"]
choices = [4, 8, 16]

[tune.space."train.local-epochs"]
choices = [1.0, 2.0]

[tune.space."train.batch-size"]
choices = [16, 32]
"""


def _test_metrics(trial_dir: Path) -> dict:
    path = trial_dir / "summary.json"
    if not path.is_file():  # pruned: no final evaluation
        return {}
    s = json.loads(path.read_text())
    return {"test_accuracy": s.get("accuracy"), "test_macro_f1": s.get("macro_f1")}


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--trials", type=int, default=8)
    ap.add_argument("--rounds", type=int, default=2)
    ap.add_argument("--work", default="")
    ap.add_argument("--out", default=str(REPO / "bench/results"))
    args = ap.parse_args()
    from fedtune.tune import load_space, tune

    work = Path(args.work or tempfile.mkdtemp(prefix="fedtune-bench-tune-"))
    work.mkdir(parents=True, exist_ok=True)
    (work / "space.toml").write_text(SPACE.format(trials=args.trials))
    os.chdir(REPO)  # the demo config names its data relative to the checkout
    t0 = time.perf_counter()
    res = tune(load_space(work / "space.toml"), config="configs/demo.toml",
               sets=[f"federation.rounds={args.rounds}"], out=work / "search", runner="inproc")
    wall = time.perf_counter() - t0
    rows = []
    for rec in res["trials"]:
        rows.append({**rec, **_test_metrics(work / "search/trials" / f"trial-{rec['trial']}")})
    done = [r for r in rows if r["state"] == "complete"]
    best = max(done, key=lambda r: r["val_accuracy"])
    default = rows[0]
    result = {"config": "configs/demo.toml", "rounds_per_trial": args.rounds, "trials": rows,
              "best": res["best"], "best_trial": best["trial"], "wall_s": wall,
              "defaults": {k: default.get(k) for k in ("val_accuracy", "test_accuracy", "test_macro_f1")},
              "best_scores": {k: best.get(k) for k in ("val_accuracy", "test_accuracy", "test_macro_f1")}}
    result["gain"] = {k: (result["best_scores"][k] - result["defaults"][k])
                      if None not in (result["best_scores"][k], result["defaults"][k]) else None
                      for k in ("val_accuracy", "test_accuracy", "test_macro_f1")}
    out = Path(args.out)
    out.mkdir(parents=True, exist_ok=True)
    (out / "tune.json").write_text(json.dumps(result, indent=2) + "\n")
    (out / "tune.md").write_text(markdown(result))
    print(markdown(result))
    return 0


def _fmt(v, spec: str = ".4f") -> str:
    return "—" if v is None else format(v, spec)


def markdown(res: dict) -> str:
    keys = ["train.learning-rate", "train.head-learning-rate", "model.lora-r", "train.local-epochs",
            "train.batch-size"]
    lines = [f"# `fedtune tune` on the demo data ({len(res['trials'])} trials, "
             f"{res['rounds_per_trial']} rounds each, in-process federations)", "",
             "| trial | lr | head lr | LoRA r | local epochs | batch | val accuracy | test accuracy | test macro-F1 | state |",
             "|---:|---:|---:|---:|---:|---:|---:|---:|---:|---|"]
    for r in res["trials"]:
        mark = " (defaults)" if r["trial"] == 0 else (" **best**" if r["trial"] == res["best_trial"] else "")
        lines.append(f"| {r['trial']}{mark} | {r[keys[0]]:.2e} | {r[keys[1]]:.2e} | {r[keys[2]]} | "
                     f"{r[keys[3]]:g} | {r[keys[4]]} | {_fmt(r.get('val_accuracy'))} | "
                     f"{_fmt(r.get('test_accuracy'))} | {_fmt(r.get('test_macro_f1'))} | {r['state']} |")
    d, b, g = res["defaults"], res["best_scores"], res["gain"]
    lines += ["", f"Chosen on validation only: trial {res['best_trial']}. Over the demo's own settings "
              f"(trial 0): validation accuracy {_fmt(d['val_accuracy'])} -> {_fmt(b['val_accuracy'])} "
              f"({_fmt(g['val_accuracy'], '+.4f')}); held-out test accuracy {_fmt(d['test_accuracy'])} -> "
              f"{_fmt(b['test_accuracy'])} ({_fmt(g['test_accuracy'], '+.4f')}); test macro-F1 "
              f"{_fmt(d['test_macro_f1'])} -> {_fmt(b['test_macro_f1'])} ({_fmt(g['test_macro_f1'], '+.4f')}). "
              f"Search wall time {res['wall_s'] / 60:.1f} min on this 2-core machine.", ""]
    return "\n".join(lines)


if __name__ == "__main__":
    raise SystemExit(main())
