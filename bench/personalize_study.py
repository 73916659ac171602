"""How to personalize (#17): on the hardest skew cell (default 10 sites, Dirichlet 0.1, the same
data and settings as bench/bench_skew.py) one in-process FedAvg run, then at every site the
product's own fine-tuning step (client/personalize.py `finetune`) from the final global adapter
with several epoch counts and learning-rate scales; each site's own-test accuracy against its
local-only model (the product's federation.baselines). Results: bench/results/personalize.{json,md}.

    python bench/personalize_study.py [--sites 10 --alpha 0.1]
"""

from __future__ import annotations

import argparse
import json
import sys
import time
from pathlib import Path

import numpy as np

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

VARIANTS = [(0.5, 1.0), (1.0, 1.0), (2.0, 1.0), (1.0, 0.3), (2.0, 0.3)]  # (epochs, lr scale)


def _shown(path: Path) -> str:
    """`path` relative to the checkout when inside it, else only its name."""
    try:
        return str(path.resolve().relative_to(ROOT))
    except ValueError:
        return f"<tmp>/{path.name}"


def main(argv: list[str] | None = None) -> int:
    import os

    os.environ.setdefault("HF_HUB_OFFLINE", "1")
    from bench.bench_skew import base_config, split_data
    from bench.inproc import run_inprocess
    from client.personalize import finetune
    from client.site import clear_sites, get_site, site_facts
    from common.config import from_flat, load_toml, parse_sets
    from common.model import model_fingerprint, resolve_base
    from server import checkpoint

    ap = argparse.ArgumentParser(description=__doc__)
    ap.add_argument("--sites", type=int, default=10)
    ap.add_argument("--alpha", type=float, default=0.1)
    ap.add_argument("--rows", type=int, default=3000)
    ap.add_argument("--heldout", type=int, default=1000)
    ap.add_argument("--rounds", type=int, default=6)
    ap.add_argument("--local-epochs", type=float, default=0.5)
    ap.add_argument("--split", default="0.75,0.05,0.2")
    ap.add_argument("--mu", type=float, default=0.01)
    ap.add_argument("--personalize-epochs", type=float, default=1.0)
    ap.add_argument("--seed", type=int, default=0)
    ap.add_argument("--work", default=str(ROOT / "bench" / "results" / "skew_work" / "study"))
    ap.add_argument("--variants", default="",
                    help="epochs:lr-scale pairs, e.g. 3:1,4:1 (run only these; merged into an earlier result)")
    args = ap.parse_args(argv)
    work = Path(args.work)
    pool, _ = split_data(work, rows=args.rows, heldout=args.heldout, seed=args.seed)
    cfg = base_config(args, pool, sites=args.sites, alpha=args.alpha)
    cfg = from_flat(parse_sets(["federation.baselines=true"]), base=cfg, origin="study")
    run = work / "fedavg"
    from client import site as site_mod

    site_mod._SITES.size = max(site_mod._SITES.size, args.sites)  # every site warm, as bench_skew
    if not (run / "summary.json").is_file():
        run_inprocess(cfg, out=run, log=work / "fedavg.log")
    summary = json.loads((run / "summary.json").read_text())
    cfg = from_flat(load_toml(run / "config.toml"), origin="study")  # what the sites ran with
    ckpt = checkpoint.load(run, config_hash=cfg.hash(), base_sha256=model_fingerprint(resolve_base(cfg.model)))
    variants = [tuple(float(x) for x in v.split(":")) for v in args.variants.split(",") if v] or VARIANTS
    earlier = ROOT / "bench" / "results" / "personalize.json"
    results: dict[str, dict[str, float]] = \
        json.loads(earlier.read_text())["sites"] if args.variants and earlier.is_file() else {}
    t0 = time.perf_counter()
    for i in range(args.sites):
        site = get_site(cfg, site_facts({"partition-id": i}, cfg))
        name = site.facts.name
        results.setdefault(name, {}).update({"local_only": summary["per_site"][name]["local_accuracy"],
                                             "global": summary["per_site"][name]["accuracy"]})
        for epochs, scale in variants:
            state = finetune(site, ckpt.arrays, epochs=epochs, run="study", lr_scale=scale)
            results[name][f"{epochs:g}ep_lr{scale:g}"] = site.evaluate(state, split="test")["accuracy"]
        clear_sites()
    keys = list(next(iter(results.values())))
    agg = {k: {"mean": float(np.mean([r[k] for r in results.values()])),
               "worst": float(min(r[k] for r in results.values())),
               "below_local_only": sum(r[k] < r["local_only"] - 1e-12 for r in results.values())}
           for k in keys}
    setup = dict(vars(args), work=_shown(Path(args.work)))  # no path of this machine in results
    doc = {"setup": setup, "sites": results, "summary": agg, "wall_s": time.perf_counter() - t0}
    out = ROOT / "bench" / "results"
    (out / "personalize.json").write_text(json.dumps(doc, indent=1), encoding="utf-8")
    lines = [f"# Personalization study (bench/personalize_study.py)\n\n{args.sites} sites, Dirichlet "
             f"{args.alpha}, {args.rows} Banking77 rows, FedAvg {args.rounds} rounds x {args.local_epochs} "
             "local epochs; personalization = the product's fine-tuning step from the final global "
             "adapter (epochs, learning-rate scale). Own-test accuracy per site.\n",
             "| variant | mean | worst site | sites below local-only |", "|---|---|---|---|"]
    lines += [f"| {k} | {v['mean']:.3f} | {v['worst']:.3f} | {v['below_local_only']}/{args.sites} |"
              for k, v in agg.items()]
    (out / "personalize.md").write_text("\n".join(lines) + "\n", encoding="utf-8")
    print("\n".join(lines))
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
