"""Accuracy at epsilon = inf, 8, 3, 1 for LoRA vs FFA-LoRA on the demo partition (3 banks,
Dirichlet 0.5), and the DP / non-DP local-training time ratio from the same runs.

    python bench/bench_dp_sweep.py [--rounds 4] [--epsilons inf,8,3,1] [--rows 0]

Writes bench/results/dp_sweep.json and dp_sweep.md. Every run is a real simulated federation with
real Opacus accounting; epsilon is per site, over the whole run, at delta = 1/(10 n)."""

from __future__ import annotations

import argparse
import json
import math
import sys
import tempfile
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

from common.config import resolve  # noqa: E402
from fedtune.simulate import simulate  # noqa: E402


def one_run(*, eps: float, variant: str, rounds: int, data: str, out: Path) -> dict:
    sets = [f"federation.rounds={rounds}", f"model.lora-variant={variant}", f"simulation.data={data}"]
    if math.isfinite(eps):
        sets += ["privacy.dp=true", f"privacy.epsilon={eps}"]
    cfg = resolve(ROOT / "configs" / "demo.toml", sets)
    t0 = time.time()
    summary = simulate(cfg, out=out, quiet=True)
    rows = [json.loads(x) for x in (out / "metrics.jsonl").read_text().splitlines()]
    train_s = sum(v["train"].get("train_seconds", 0) for r in rows for v in r["per_site"].values())
    samples = sum(v["train"].get("num-examples", 0) for r in rows for v in r["per_site"].values())
    eps_spent = max((p.get("epsilon", 0.0) for p in summary.get("privacy", {}).values()), default=0.0)
    return {"epsilon_target": eps, "variant": variant, "accuracy": summary.get("accuracy"),
            "macro_f1": summary.get("macro_f1"), "epsilon_spent_max": eps_spent,
            "mia_auc": summary.get("mia_auc"), "train_seconds": train_s,
            "samples_per_second": samples / train_s if train_s else None,
            "wall_s": time.time() - t0}


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__)
    ap.add_argument("--rounds", type=int, default=4)
    ap.add_argument("--epsilons", default="inf,8,3,1")
    ap.add_argument("--variants", default="lora,ffa")
    ap.add_argument("--rows", type=int, default=0, help="subsample the demo data (0 = all)")
    args = ap.parse_args()
    data = str(ROOT / "data" / "banking77_demo.csv")
    tmp = Path(tempfile.mkdtemp(prefix="dp-sweep-"))
    if args.rows:
        import pandas as pd

        pd.read_csv(data).sample(n=args.rows, random_state=0).to_csv(tmp / "demo.csv", index=False)
        data = str(tmp / "demo.csv")
    results = []
    for variant in args.variants.split(","):
        for eps in [float(e) for e in args.epsilons.split(",")]:
            r = one_run(eps=eps, variant=variant, rounds=args.rounds, data=data,
                        out=tmp / f"{variant}-{eps}")
            results.append(r)
            print(f"{variant:5s} eps={eps:<4} acc={r['accuracy']:.4f} f1={r['macro_f1']:.4f} "
                  f"spent={r['epsilon_spent_max']:.2f} {r['samples_per_second'] or 0:.1f} samples/s", flush=True)
    base = {r["variant"]: r for r in results if not math.isfinite(r["epsilon_target"])}
    for r in results:
        ref = base.get(r["variant"])
        r["dp_throughput_ratio"] = (r["samples_per_second"] / ref["samples_per_second"]
                                    if ref and r["samples_per_second"] and math.isfinite(r["epsilon_target"]) else None)
    out = ROOT / "bench" / "results"
    out.mkdir(parents=True, exist_ok=True)
    (out / "dp_sweep.json").write_text(json.dumps({"rounds": args.rounds, "rows": args.rows or "all",
                                                   "results": results}, indent=1, default=str))
    lines = ["| variant | target ε | accuracy | macro-F1 | ε spent (max site) | MIA AUC | samples/s | DP/non-DP |",
             "|---|---|---|---|---|---|---|---|"]
    for r in results:
        ratio = f"{r['dp_throughput_ratio']:.2f}" if r["dp_throughput_ratio"] else "—"
        mia = f"{r['mia_auc']:.3f}" if r.get("mia_auc") is not None else "—"
        lines.append(f"| {r['variant']} | {r['epsilon_target']} | {r['accuracy']:.4f} | {r['macro_f1']:.4f} | "
                     f"{r['epsilon_spent_max']:.2f} | {mia} | {r['samples_per_second'] or 0:.1f} | {ratio} |")
    (out / "dp_sweep.md").write_text("\n".join(lines) + "\n")
    print("\n".join(lines))


if __name__ == "__main__":
    main()
