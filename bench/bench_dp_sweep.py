"""The DP sweep (#18): weighted test accuracy of real federations on the demo partition
(configs/demo.toml: 3 banks, Dirichlet 0.5, ~1,100-1,260 train rows each, 77 intents, head from
the label names, 6 rounds), one row per lever, at epsilon 8 and then the winners at 3 and 1.

    python bench/bench_dp_sweep.py --rows rule,probe-cls --epsilons 8,3,1
    python bench/bench_dp_sweep.py --list

Every run is fedtune's own coordinator, ClientApp, mods, ledger and Opacus accounting over an
in-process grid (bench/inproc.py; no Ray); epsilon is per site over the whole run at the site's
delta = 1/(10 n). For each run the sites' ledgers are replayed with a fresh Opacus accountant
(`replay_gap`: max |ledger epsilon - replayed| over the sites). Results MERGE into
bench/results/dp_sweep.json (keyed by row and epsilon), so rows can be run a few at a time;
dp_sweep.md is rewritten from the merged file. Screening of head-only settings on cached
features: bench/dp_screen.py; the noise/signal measurement: bench/dp_snr.py."""

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

# DP linear probing written out by hand: every unit each step (batch >= units), 8 steps a round,
# clip 0.2, lr x clip = 8 — close to what the size rule picks on the demo at epsilon 8.
PROBE = ["privacy.batch-size=1000000", "privacy.local-epochs=8", "privacy.max-grad-norm=0.2",
         "privacy.learning-rate=40"]
ADAPTER = ["privacy.probe-rounds=0", "privacy.batch-size=512", "privacy.max-grad-norm=1.0",
           "train.learning-rate=0.01", "train.head-learning-rate=0.03"]
# name: (lever, what DP trains, --set overrides on top of the demo + privacy.dp=true)
ROWS: dict[str, tuple[str, str, list[str]]] = {
    "non-dp": ("reference: no DP (the demo as it is)", "LoRA r16 all linear + head", []),
    "before": ("the DP default before #18: batch 32, 1 pass a round, AdamW, clip 1, [CLS] pooler",
               "FFA-LoRA r16 all linear + head", ["privacy.max-grad-norm=1.0", "model.pooling=cls"]),
    "adapter-b512": ("large expected batch (512, 1 pass = 3 steps a round), larger LR, mean pooling",
                     "FFA-LoRA r16 all linear + head", ADAPTER),
    "ffa-r2-qv": ("fewer DP-trained parameters: FFA-LoRA r2 on query,value, batch 512",
                  "FFA-LoRA r2 query,value + head",
                  [*ADAPTER, "model.lora-r=2", "model.target-modules=query,value"]),
    "probe-cls": ("head only on the [CLS] pooler (DP linear probing, by hand: q=1, 8 steps, clip 0.2)",
                  "head", ["model.pooling=cls", "privacy.probe-rounds=6", *PROBE]),
    "probe": ("head only on mean pooling (DP linear probing, by hand: q=1, 8 steps, clip 0.2)",
              "head", ["privacy.probe-rounds=6", *PROBE]),
    "probe-12r": ("more rounds at the same epsilon: 12 rounds x 4 steps (head only)",
                  "head", ["federation.rounds=12", "privacy.probe-rounds=12", *PROBE[:1],
                           "privacy.local-epochs=4", *PROBE[2:]]),
    "probe-then-ffa": ("DP linear probing 3 rounds, then FFA-LoRA r2 query,value 3 rounds (batch 512, "
                       "1 pass = 3 steps a round)", "head, then FFA-LoRA r2 q,v + head",
                       ["privacy.probe-rounds=3", "privacy.batch-size=512", "privacy.local-epochs=1",
                        "privacy.max-grad-norm=0.2", "privacy.learning-rate=40", "model.lora-r=2",
                        "model.target-modules=query,value", "train.learning-rate=0.003",
                        "train.head-learning-rate=0.003"]),
    "rule": ("the size rule (no DP knob set: what `--set privacy.dp=true` runs)", "head", []),
    "rule-person": ("the size rule, person-level: a synthetic customer column (~4 queries each)",
                    "head", ["data.group-column=customer"]),
}


def customer_csv(out: Path, *, mean: float = 4.0, seed: int = 0) -> str:
    """The demo file plus a synthetic `customer` column: within each simulated bank (the same
    partition `fedtune simulate` makes), rows are shuffled and dealt to customers of 1-12 queries
    (geometric, mean ~`mean`), so a customer's queries stay at one bank."""
    import numpy as np
    import pandas as pd

    from common.partition import partition

    cfg = resolve(ROOT / "configs" / "demo.toml", [])
    pooled = pd.read_csv(ROOT / cfg.simulation.data)
    tagged = pooled.assign(_row=np.arange(len(pooled)))
    rng = np.random.default_rng(seed)
    customer = np.empty(len(pooled), dtype=object)
    for site, part in enumerate(partition(tagged, scheme=cfg.simulation.partition, num_sites=cfg.simulation.sites,
                                          label_column=cfg.data.label_column, seed=cfg.train.seed)):
        rows, k = rng.permutation(part["_row"].to_numpy()), 0
        while len(rows):
            size = int(min(12, rng.geometric(1 / mean)))
            customer[rows[:size]] = f"b{site}-c{k}"
            rows, k = rows[size:], k + 1
    path = out / "banking77_demo_customers.csv"
    pooled.assign(customer=customer).to_csv(path, index=False)
    return str(path)


def replay_gap(out: Path) -> float:
    """max over sites |epsilon the ledger reported - a fresh Opacus accountant over its journal|."""
    from opacus.accountants import PRVAccountant, RDPAccountant

    gap = 0.0
    for journal in sorted(out.glob("sites/site-*/ledger/journal.jsonl")):
        entries = [json.loads(x) for x in journal.read_text(encoding="utf-8").splitlines() if x]
        rounds = [e for e in entries if e["kind"] == "round"]
        if not rounds:
            continue
        acc = RDPAccountant() if entries[0]["accountant"] == "rdp" else PRVAccountant()
        for e in rounds:
            for _ in range(e["steps"]):
                acc.step(noise_multiplier=e["noise_multiplier"], sample_rate=e["sample_rate"])
        gap = max(gap, abs(acc.get_epsilon(delta=entries[0]["delta"]) - rounds[-1]["epsilon"]))
    return gap


def one_run(name: str, *, eps: float, out: Path, data: str | None = None,
            extra: tuple[str, ...] = ()) -> dict:
    from bench.inproc import run_inprocess

    lever, trained, sets = ROWS[name]
    sets = [*sets, *extra] + ([f"simulation.data={data}"] if data else [])
    if name != "non-dp":
        sets = ["privacy.dp=true", f"privacy.epsilon={eps}", *sets]
    cfg = resolve(ROOT / "configs" / "demo.toml", sets)
    t0 = time.time()
    res = run_inprocess(cfg, out=out, log=out.parent / f"{out.name}.log")
    s = res["summary"]
    privacy = s.get("privacy", {})
    shown = [f"simulation.data=<tmp>/{Path(data).name}" if data and x == f"simulation.data={data}" else x
             for x in sets]  # no path of this machine in the results
    return {"row": name, "lever": lever, "trained": trained, "sets": shown,
            "epsilon_target": eps if name != "non-dp" else math.inf,
            "rounds": cfg.federation.rounds, "accuracy": s.get("accuracy"), "macro_f1": s.get("macro_f1"),
            "epsilon_spent_max": max((p.get("epsilon", 0.0) for p in privacy.values()), default=0.0),
            "unit": sorted({p.get("unit", "record") for p in privacy.values()}) or ["-"],
            "replay_gap": replay_gap(out) if name != "non-dp" else 0.0,
            "wall_s": time.time() - t0, "date": time.strftime("%Y-%m-%d %H:%M")}


def _spread(r: dict) -> str:
    accs = r.get("accuracies") or [r["accuracy"]]
    return f" ({len(accs)}: {min(accs):.3f}-{max(accs):.3f})" if len(accs) > 1 else ""


def write(results: list[dict], path: Path) -> None:
    path.write_text(json.dumps({"setup": "configs/demo.toml, 3 sites, dirichlet:0.5, in-process grid",
                                "results": results}, indent=1, default=str))
    lines = ["| row | lever | DP-trained | rounds | target ε | accuracy (runs: min-max) | macro-F1 | "
             "ε spent (max site) | unit | ledger vs replayed ε | wall s |",
             "|---|---|---|---:|---:|---:|---:|---:|---|---:|---:|"]
    order = list(ROWS)
    for r in sorted(results, key=lambda r: (order.index(r["row"]) if r["row"] in order else 99,
                                            -float(r["epsilon_target"]))):
        eps = "∞" if math.isinf(float(r["epsilon_target"])) else f"{float(r['epsilon_target']):g}"
        lines.append(f"| {r['row']} | {r['lever']} | {r['trained']} | {r['rounds']} | {eps} | "
                     f"{r['accuracy']:.4f}{_spread(r)} | {r['macro_f1']:.4f} | {r['epsilon_spent_max']:.3f} | "
                     f"{'/'.join(r['unit'])} | {r['replay_gap']:.1e} | {r['wall_s']:.0f} |")
    path.with_suffix(".md").write_text("\n".join(lines) + "\n")


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--rows", default="rule", help=f"comma-separated, from: {', '.join(ROWS)}")
    ap.add_argument("--epsilons", default="8")
    ap.add_argument("--list", action="store_true")
    ap.add_argument("--repeats", type=int, default=1, help="runs per row and epsilon (DP noise differs)")
    ap.add_argument("--out", type=Path, default=ROOT / "bench" / "results" / "dp_sweep.json")
    args = ap.parse_args()
    if args.list:
        for k, (lever, trained, sets) in ROWS.items():
            print(f"{k:15s} {lever} [{trained}] {' '.join(sets)}")
        return
    prior = json.loads(args.out.read_text())["results"] if args.out.is_file() else []
    prior = [r for r in prior if "row" in r]  # rows of the old format (before #18) are dropped
    work = Path(tempfile.mkdtemp(prefix="dp-sweep-"))
    for name in args.rows.split(","):
        for eps in ([math.inf] if name == "non-dp" else [float(e) for e in args.epsilons.split(",")]):
            data = customer_csv(work) if name == "rule-person" else None
            runs = [one_run(name, eps=eps, out=work / f"{name}-{eps:g}-{k}", data=data)
                    for k in range(args.repeats)]
            r = {**runs[-1], "accuracies": [x["accuracy"] for x in runs],
                 "accuracy": sum(x["accuracy"] for x in runs) / len(runs),
                 "macro_f1": sum(x["macro_f1"] for x in runs) / len(runs),
                 "replay_gap": max(x["replay_gap"] for x in runs)}
            prior = [p for p in prior if (p["row"], float(p["epsilon_target"])) != (name, float(eps))]
            prior.append(r)
            write(prior, args.out)
            print(f"{name:15s} eps={eps:<4g} acc={r['accuracy']:.4f} f1={r['macro_f1']:.4f} "
                  f"spent={r['epsilon_spent_max']:.3f} unit={r['unit']} gap={r['replay_gap']:.1e} "
                  f"{r['wall_s']:.0f}s", flush=True)


if __name__ == "__main__":
    main()
