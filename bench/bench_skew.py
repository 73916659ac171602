"""What joining buys each site under label skew (#17): Banking77 from ../shared/data (train.csv
only; a held-out part of it is the pooled test set — the official test file is never fetched),
sites in {3, 10}, Dirichlet alpha in {0.1, 0.5, 1.0}. Every method trains the same samples x
epochs (rounds x local epochs of each site's train split):

  centralized    fedtune.FineTuner on the union of the sites' train splits (bench/baselines.py)
  local-only     each site's own model, trained by the product itself (federation.baselines)
  fedavg         fedtune's coordinator + ClientApp in process (bench/inproc.py)
  fedprox        the same with federation.strategy = fedprox
  personalized   fedavg's global adapter + federation.personalize-epochs at each site

Reported per cell: pooled held-out accuracy (and its ratio to centralized), each site's
own-test accuracy for every method (mean and worst site), and the sites whose own-test accuracy
is below their local-only model's. Finished pieces are cached under --work (a rerun skips them).

    python bench/bench_skew.py                  # the grid (about an hour on 2 cores)
    python bench/bench_skew.py --quick          # a tiny smoke run, results under bench/results/quick
"""

from __future__ import annotations

import argparse
import json
import shutil
import sys
import time
from pathlib import Path

import numpy as np
import pandas as pd

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

DATA = ROOT.parent / "shared" / "data" / "banking77" / "train.csv"


def split_data(work: Path, *, rows: int, heldout: int, seed: int) -> tuple[Path, Path]:
    """pool.csv (what the sites share out) and heldout.csv, disjoint random parts of train.csv,
    and labels.txt: the federation's label space (all 77 intents of the file)."""
    pool, held = work / "pool.csv", work / "heldout.csv"
    if not (pool.is_file() and held.is_file() and (work / "labels.txt").is_file()):
        frame = pd.read_csv(DATA)
        order = np.random.default_rng(seed).permutation(len(frame))
        if heldout + rows > len(frame):
            raise SystemExit(f"--rows {rows} + --heldout {heldout} exceed the {len(frame)} rows of {DATA}")
        work.mkdir(parents=True, exist_ok=True)
        frame.iloc[order[:heldout]].to_csv(held, index=False)
        frame.iloc[order[heldout:heldout + rows]].to_csv(pool, index=False)
        names = sorted(frame["label"].astype(str).unique())
        (work / "labels.txt").write_text("\n".join(names) + "\n", encoding="utf-8")
    return pool, held


def base_config(args, pool: Path, *, sites: int, alpha: float):
    from common.config import resolve

    return resolve(ROOT / "configs" / "demo.toml", [
        f"simulation.data={pool}", f"task.labels=@{pool.parent / 'labels.txt'}", f"simulation.sites={sites}", f"simulation.partition=dirichlet:{alpha}",
        f"federation.rounds={args.rounds}", f"train.local-epochs={args.local_epochs}",
        f"federation.evaluate-every={args.rounds}", f"data.split={args.split}", "train.threads=2",
        f"federation.min-sites={min(2, sites)}", *args.sets])


class Heldout:
    """The pooled held-out set, cleaned and scrubbed like every site's data, scored by any model."""

    def __init__(self, path: Path, labels: list[str], data_cfg):
        from fedtune.predict import Predictor, read_input

        pred = Predictor(model=None, tokenizer=None, labels=labels, task="classification",
                         max_length=64, data=data_cfg)
        frame, _ = read_input(path, pred=pred)
        self.texts, self.ids = frame["text"].tolist(), frame["label"].to_numpy()
        self.labels = labels

    def accuracy(self, model, tokenizer, max_length: int) -> float:
        from client.trainer import encode, evaluate

        data = encode(tokenizer, self.texts, self.ids, max_length=max_length)
        return evaluate(model, data, num_labels=len(self.labels), pad_id=tokenizer.pad_token_id or 0)["accuracy"]


def _cached(path: Path, fn) -> dict:
    if path.is_file():
        return json.loads(path.read_text(encoding="utf-8"))
    result = fn()
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.with_suffix(".tmp")
    tmp.write_text(json.dumps(result, indent=1), encoding="utf-8")
    tmp.replace(path)
    return result


def federated(cfg, out: Path, held: Heldout, extra: list[str]) -> dict:
    """One in-process federation; its global adapter scored on the pooled held-out set."""
    from bench.inproc import run_inprocess
    from common.config import from_flat, parse_sets
    from fedtune.export import load_adapter_model, load_run

    cfg = from_flat(parse_sets(extra), base=cfg, origin="bench_skew")
    shutil.rmtree(out, ignore_errors=True)  # an unfinished earlier attempt
    res = run_inprocess(cfg, out=out, log=out.parent / f"{out.name}.log")
    model, tok = load_adapter_model(load_run(out))
    per = res["summary"]["per_site"]
    return {"pooled_heldout_accuracy": held.accuracy(model, tok, cfg.model.max_length),
            "wall_s": res["wall_s"],
            "sites": {s: {k: v for k, v in m.items() if k.endswith(("accuracy", "num-examples"))}
                      for s, m in sorted(per.items())}}


def centralized(cfg, out: Path, held: Heldout) -> dict:
    """FineTuner on the union of the sites' train splits (the same partition and splits)."""
    import torch

    from bench.baselines import _texts, _tuner
    from common.data import prepare_site
    from fedtune.simulate import prepare_sites

    out.mkdir(parents=True, exist_ok=True)
    cfg = prepare_sites(cfg, out.resolve())
    torch.set_num_threads(cfg.train.threads)
    labels = cfg.task.label_names()
    sites = Path(cfg.simulation.sites_dir)
    splits = [prepare_site(sites / f"site-{i}" / "data.csv", cfg=cfg.data, seed=cfg.train.seed,
                           label_names=labels, task=cfg.task.type, site_dir=sites / f"site-{i}")
              for i in range(cfg.simulation.sites)]
    t0 = time.perf_counter()
    tuner = _tuner(cfg, labels).fit(*_texts([s.train for s in splits], labels))
    wall = time.perf_counter() - t0
    return {"pooled_heldout_accuracy": held.accuracy(tuner.model, tuner.tokenizer, cfg.model.max_length),
            "wall_s": wall, "train_rows": sum(len(s.train) for s in splits),
            "sites": {f"site-{i}": {"accuracy": tuner.evaluate(*_texts([s.test], labels))["accuracy"],
                                    "train_rows": len(s.train), "test_rows": len(s.test)}
                      for i, s in enumerate(splits)}}


def summarize(cell: dict) -> dict:
    """Per method: mean and worst own-test accuracy; sites below their local-only model."""
    fa, fp, ce = cell["fedavg"]["sites"], cell["fedprox"]["sites"], cell["centralized"]["sites"]
    own = {"local_only": {s: m["local_accuracy"] for s, m in fa.items()},
           "fedavg": {s: m["accuracy"] for s, m in fa.items()},
           "fedavg_personalized": {s: m["personal_accuracy"] for s, m in fa.items()},
           "fedprox": {s: m["accuracy"] for s, m in fp.items()},
           "centralized": {s: m["accuracy"] for s, m in ce.items()}}
    local = own["local_only"]
    out = {"own_test": {}, "below_local_only": {}}
    for name, accs in own.items():
        out["own_test"][name] = {"mean": float(np.mean(list(accs.values()))),
                                 "worst": min(accs.values()), "worst_site": min(accs, key=accs.get)}
        if name != "local_only":
            out["below_local_only"][name] = sorted(s for s in accs if accs[s] < local[s] - 1e-12)
    c = cell["centralized"]["pooled_heldout_accuracy"]
    out["pooled_heldout"] = {m: cell[m]["pooled_heldout_accuracy"] for m in ("centralized", "fedavg", "fedprox")}
    out["pooled_over_centralized"] = {m: cell[m]["pooled_heldout_accuracy"] / c for m in ("fedavg", "fedprox")}
    return out


def run_cell(args, work: Path, pool: Path, held_path: Path, *, sites: int, alpha: float) -> dict:
    from client import site as site_mod

    # every site of the in-process federation stays warm (its data and model loaded once), as
    # each site's own process does in a real federation; the memo's default keeps 4
    site_mod._SITES.size = max(site_mod._SITES.size, sites)
    cdir = work / f"sites{sites}-alpha{alpha}"
    cfg = base_config(args, pool, sites=sites, alpha=alpha)
    labels = cfg.task.label_names()
    held = Heldout(held_path, labels, cfg.data)
    pers = f"federation.personalize-epochs={args.personalize_epochs}"
    cell = {
        "fedavg": _cached(cdir / "fedavg.json", lambda: federated(
            cfg, cdir / "fedavg", held, ["federation.baselines=true", pers])),
        "fedprox": _cached(cdir / "fedprox.json", lambda: federated(
            cfg, cdir / "fedprox", held, ["federation.strategy=fedprox",
                                          f"federation.proximal-mu={args.mu}"])),
        "centralized": _cached(cdir / "centralized.json", lambda: centralized(cfg, cdir / "central", held)),
    }
    for name in ("fedavg", "fedprox"):  # run dirs are large (checkpoints, site copies)
        shutil.rmtree(cdir / name, ignore_errors=True)
    shutil.rmtree(cdir / "central", ignore_errors=True)
    return {"sites": sites, "alpha": alpha, **cell, "summary": summarize(cell)}


def table(doc: dict) -> str:
    s = doc["setup"]
    lines = [f"Banking77 train.csv: {s['rows']} rows shared out (Dirichlet over labels), {s['heldout']} "
             f"other rows held out as the pooled test set; every method {s['rounds']} rounds x "
             f"{s['local_epochs']} local epochs (= {s['rounds'] * s['local_epochs']:g} epochs of each "
             f"site's train split; centralized the same epochs of their union); personalization "
             f"{s['personalize_epochs']:g} epoch(s) at each site after the last round; site splits "
             f"{s['split']} (train,val,test); demo model config (MiniLM, LoRA r=16, head from label "
             f"names); FedProx mu {s['mu']}"
             + (f"; extra config {' '.join(s['sets'])}" if s.get("sets") else "") + f". {s['machine']}.", "",
             "| sites | alpha | pooled held-out: central | FedAvg (% of central) | FedProx (%) | own test "
             "mean / worst: local-only | FedAvg | FedProx | FedAvg+pers | central | sites below local-only: "
             "FedAvg | FedProx | FedAvg+pers |",
             "|---|---|---|---|---|---|---|---|---|---|---|---|---|"]
    for c in doc["cells"]:
        m = c["summary"]
        p, r, o, b = m["pooled_heldout"], m["pooled_over_centralized"], m["own_test"], m["below_local_only"]

        def mw(k: str) -> str:
            return f"{o[k]['mean']:.3f} / {o[k]['worst']:.3f}"

        lines.append(f"| {c['sites']} | {c['alpha']} | {p['centralized']:.3f} | {p['fedavg']:.3f} "
                     f"({100 * r['fedavg']:.1f} %) | {p['fedprox']:.3f} ({100 * r['fedprox']:.1f} %) | "
                     f"{mw('local_only')} | {mw('fedavg')} | {mw('fedprox')} | {mw('fedavg_personalized')} | "
                     f"{mw('centralized')} | {len(b['fedavg'])}/{c['sites']} | {len(b['fedprox'])}/{c['sites']} | "
                     f"{len(b['fedavg_personalized'])}/{c['sites']} |")
    return "\n".join(lines) + "\n"


def write_overview(out: Path) -> None:
    """skew.md: the grid's table, then every variant's (skew_<tag>.json) under its own heading."""
    if not (out / "skew.json").is_file():
        return
    parts = ["# Skew benchmark (bench/bench_skew.py)\n", table(json.loads((out / "skew.json").read_text()))]
    for path in sorted(out.glob("skew_*.json")):
        doc = json.loads(path.read_text())
        base, setup = json.loads((out / "skew.json").read_text())["setup"], doc["setup"]
        changed = [f"{k}={setup[k]}" for k in ("rows", "heldout", "rounds", "local_epochs",
                                               "personalize_epochs", "mu", "split", "seed")
                   if k in setup and setup[k] != base.get(k)]
        parts += [f"\n## Variant `{path.stem[5:]}`: {' '.join(changed + setup.get('sets', []))}\n", table(doc)]
    (out / "skew.md").write_text("\n".join(parts), encoding="utf-8")


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--sites", default="3,10")
    ap.add_argument("--alphas", default="0.1,0.5,1.0")
    ap.add_argument("--rows", type=int, default=3000, help="rows shared out to the sites")
    ap.add_argument("--heldout", type=int, default=1000, help="rows held out as the pooled test set")
    ap.add_argument("--rounds", type=int, default=6)
    ap.add_argument("--local-epochs", type=float, default=0.5)
    ap.add_argument("--personalize-epochs", type=float, default=1.0)
    ap.add_argument("--mu", type=float, default=0.01, help="FedProx proximal mu")
    ap.add_argument("--split", default="0.75,0.05,0.2", help="each site's train,val,test fractions")
    ap.add_argument("--seed", type=int, default=0)
    ap.add_argument("--work", default=str(ROOT / "bench" / "results" / "skew_work"),
                    help="cache of finished pieces (a rerun skips them)")
    ap.add_argument("--out", default=str(ROOT / "bench" / "results"))
    ap.add_argument("--set", action="append", default=[], dest="sets", metavar="KEY=VALUE",
                    help="extra config for every method (e.g. train.absent-class-scale=0.5); needs --tag")
    ap.add_argument("--tag", default="", help="a variant's name: results in skew_<tag>.{json,md}, "
                    "and as a section of skew.md")
    ap.add_argument("--quick", action="store_true", help="tiny smoke run (2 sites, 1 alpha)")
    args = ap.parse_args(argv)
    if args.quick:
        args.sites, args.alphas, args.rows, args.heldout, args.rounds = "2", "0.5", 300, 100, 2
        args.out, args.work = str(ROOT / "bench" / "results" / "quick"), str(ROOT / "bench" / "results" / "quick" / "skew_work")
    import os

    os.environ.setdefault("HF_HUB_OFFLINE", "1")
    if args.sets and not args.tag:
        raise SystemExit("--set needs --tag (its results are a variant of the grid)")
    work = Path(args.work) / (f"rows{args.rows}-held{args.heldout}-r{args.rounds}x{args.local_epochs}"
                              f"-p{args.personalize_epochs}-seed{args.seed}" + (f"-{args.tag}" if args.tag else ""))
    pool, held = split_data(work, rows=args.rows, heldout=args.heldout, seed=args.seed)
    cells = []
    for sites in [int(x) for x in args.sites.split(",")]:
        for alpha in [float(x) for x in args.alphas.split(",")]:
            t0 = time.perf_counter()
            cells.append(run_cell(args, work, pool, held, sites=sites, alpha=alpha))
            print(f"bench_skew: sites {sites} alpha {alpha} done in {time.perf_counter() - t0:.0f}s: "
                  + json.dumps(cells[-1]["summary"]["pooled_over_centralized"]), flush=True)
    setup = {k: v for k, v in vars(args).items() if k not in ("work", "out", "quick")}
    setup["machine"] = f"{os.cpu_count()} CPU cores, in-process federation, sites one after another"
    doc = {"benchmark": "skew", "setup": setup, "cells": cells,
           "baselines": {f"{c['sites']} sites, alpha {c['alpha']}": {
               "centralized_pooled": c["summary"]["pooled_heldout"]["centralized"],
               "fedavg_pooled": c["summary"]["pooled_heldout"]["fedavg"],
               "local_only_own_test_mean": c["summary"]["own_test"]["local_only"]["mean"]} for c in cells}}
    out = Path(args.out)
    out.mkdir(parents=True, exist_ok=True)
    name = f"skew_{args.tag}" if args.tag else "skew"
    (out / f"{name}.json").write_text(json.dumps(doc, indent=1), encoding="utf-8")
    (out / f"{name}.md").write_text(f"# Skew benchmark (bench/bench_skew.py{' --tag ' + args.tag if args.tag else ''})\n\n"
                                    + table(doc), encoding="utf-8")
    write_overview(out)
    print(table(doc))
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
