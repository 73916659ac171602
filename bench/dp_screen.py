"""Screening for the DP sweep: many head-only DP settings in seconds each, so that only the
winners need full federations (bench/bench_dp_sweep.py). Same demo partition, same site data
pipeline and model, the product's own DP head step (client/dp_head.py) and accountant
(client/accounting.py); what is emulated is only the transport: the 3 sites' head inputs are
computed once (the encoder is frozen while only the head trains), FedAvg of the heads weighted
by the expected examples, and the weighted test accuracy over the sites' test splits.

    python bench/dp_screen.py [--grid default] [--out bench/results/dp_screen.json]
"""

from __future__ import annotations

import argparse
import functools
import itertools
import json
import math
import sys
import tempfile
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

import numpy as np  # noqa: E402
import torch  # noqa: E402

from client.accounting import calibrate_noise, default_delta  # noqa: E402
from client.dp_head import find_head, head_inputs, train_head_dp  # noqa: E402
from client.dp_units import units_of  # noqa: E402
from client.trainer import Schedule  # noqa: E402
from common.dp_recipe import auto_recipe  # noqa: E402
from common.config import resolve  # noqa: E402
from common.errors import PrivacyBudgetExceeded  # noqa: E402


def site_features(cache: Path, *, data: str = "", sets: tuple[str, ...] = ()) -> dict:
    """Per site: head inputs and labels of train/val/test, and the initial head (label names),
    built exactly as `fedtune simulate --config configs/demo.toml --set privacy.dp=true` builds
    them (model.pooling resolves to mean under DP)."""
    if cache.is_file():
        return torch.load(cache)
    from client.site import Site, SiteFacts
    from common.adapter import get_state, set_state
    from common.model import build_model
    from fedtune.simulate import prepare_sites

    extra = [f"simulation.data={data}"] if data else []
    cfg = resolve(ROOT / "configs" / "demo.toml", ["privacy.dp=true", *extra, *sets])
    cfg = prepare_sites(cfg, Path(tempfile.mkdtemp(prefix="dp-screen-")))
    labels = cfg.task.label_names()
    init = get_state(build_model(cfg.model, num_labels=len(labels), seed=cfg.train.seed,
                                 labels=labels).model)
    out = {"sites": [], "pooling": cfg.model.pooling}
    for i in range(cfg.simulation.sites):
        d = Path(cfg.simulation.sites_dir) / f"site-{i}"
        site = Site(cfg, SiteFacts(name=f"site-{i}", index=i, data_path=str(d / "data.csv"),
                                   site_dir=str(d)))
        set_state(site.model, init)
        head = find_head(site.model)
        out["head"] = (head.weight.detach().clone(), head.bias.detach().clone())
        out["sites"].append({s: (head_inputs(site.model, site.splits[s], pad_id=site.pad_id),
                                 torch.as_tensor(np.asarray(site.splits[s].labels)))
                             for s in ("train", "val", "test")})
    torch.save(out, cache)
    return out


@functools.lru_cache(maxsize=4096)
def _sigma(q: float, steps: int, eps: float, n: int) -> float:
    if math.isinf(eps):
        return 0.0
    return calibrate_noise([], sample_rate=q, steps=steps, target_epsilon=eps, delta=default_delta(n),
                           accountant="rdp")


def federate(feats: dict, *, batch: float, epochs: float, rounds: int, clip: float, lr: float,
             eps: float, optimizer: str = "sgd", schedule: str = "constant", warmup: float = 0.0,
             steps: int = 0, fraction: float = 1.0, eta: float = 0.0, share: float = 0.0,
             rule: bool = False, seed: int = 0) -> dict:
    """One emulated federation of DP linear probing; returns weighted test accuracy per round.
    `rule`: each site takes its own q, steps, clip and rate from common/dp_recipe.auto_recipe."""
    lr = eta / clip if eta else lr  # eta = lr x clip: how far one step of clipped gradients moves
    site_lr, site_clip = lr, clip
    w0, b0 = feats["head"]
    gw, gb = w0.clone(), b0.clone()
    curve = []
    gen = torch.Generator().manual_seed(seed)
    rng = np.random.default_rng(seed)
    sigmas = []
    for r in range(rounds):
        new, weights = [], []
        for s in feats["sites"]:
            x, y = s["train"]
            if fraction < 1.0:  # a smaller site: the first rows of its (shuffled) train split
                x, y = x[:round(fraction * len(y))], y[:round(fraction * len(y))]
            n = len(y)
            if not rule:
                q = min(1.0, share if share else batch / n)
                per_round = steps or max(1, math.ceil(epochs * n / batch))
            else:
                rec = auto_recipe(units=n, unit="record", rounds=rounds,
                                  sigma_of=lambda q_, s_: _sigma(q_, s_, eps, n))
                q, per_round, site_lr, site_clip = rec.sample_rate, rec.steps_per_round, rec.learning_rate, rec.clip
            if r == 0:
                sigmas.append(_sigma(q, per_round * rounds, eps, n))
            sigma = sigmas[len(new)]
            head = torch.nn.Linear(w0.shape[1], w0.shape[0])
            with torch.no_grad():
                head.weight.copy_(gw)
                head.bias.copy_(gb)
            opt = (torch.optim.SGD(head.parameters(), lr=site_lr, momentum=0.9) if optimizer == "sgd"
                   else torch.optim.AdamW(head.parameters(), lr=site_lr, weight_decay=0.0))
            for g in opt.param_groups:
                g["base_lr"] = site_lr
            total = per_round * rounds
            sched = Schedule(start_step=r * per_round, total_steps=total, warmup_steps=int(warmup * total))
            train_head_dp(head, x, y, optimizer=opt, schedule=sched, kind=schedule, steps=per_round,
                          units=units_of(None, n), sample_rate=q, rng=rng, noise_multiplier=sigma,
                          clip=site_clip, generator=gen)
            new.append((head.weight.detach().clone(), head.bias.detach().clone()))
            weights.append(per_round * q * n)
        tot = sum(weights)
        gw = sum(w * nw for (nw, _), w in zip(new, weights)) / tot
        gb = sum(w * nb for (_, nb), w in zip(new, weights)) / tot
        correct = sum(int(((s["test"][0] @ gw.T + gb).argmax(1) == s["test"][1]).sum()) for s in feats["sites"])
        curve.append(correct / sum(len(s["test"][1]) for s in feats["sites"]))
    return {"accuracy": curve[-1], "curve": curve, "sigma": sigmas}


GRIDS = {
    "default": dict(batch=[64, 256, 1e9], epochs=[1.0], rounds=[6], clip=[0.1, 1.0], lr=[0.01, 0.1, 1.0],
                    eps=[8.0], optimizer=["sgd", "adam"]),
    "size": dict(batch=[0], share=[0.25, 0.5, 1.0], epochs=[1.0], rounds=[6], clip=[0.2], lr=[0.0],
                 eta=[2.0, 4.0, 8.0, 16.0, 32.0], steps=[2, 4, 8, 16], eps=[8.0, 3.0, 1.0],
                 fraction=[0.25, 0.5, 1.0], optimizer=["sgd"]),
    "rule": dict(batch=[0], epochs=[1.0], rounds=[6], clip=[0.0], lr=[0.0], rule=[True],
                 eps=[8.0, 3.0, 1.0], fraction=[0.25, 0.5, 1.0], optimizer=["sgd"]),
    "eta": dict(batch=[256, 512, 1e9], epochs=[1.0], rounds=[6], clip=[0.2], lr=[0.0],
                eta=[2.0, 4.0, 8.0, 16.0, 32.0], steps=[2, 4, 8, 16], eps=[8.0, 3.0, 1.0], optimizer=["sgd"]),
}


def _shape(r: dict) -> str:
    q = r.get("share") or (1.0 if r.get("batch", 0) >= 1e9 else f"B={r['batch']:g}")
    steps = r.get("steps") or f"{r['epochs']:g} epochs"
    return f"q={q}, {steps}, {r.get('eta') or r['lr'] * r['clip']:g}"


def summarize(paths: list[str]) -> str:
    """Markdown: per (site size, epsilon) the best screened setting and the size rule's result."""
    best: dict = {}
    for path in paths:
        data = json.loads(Path(path).read_text())
        label = data.get("label", Path(path).stem)
        for r in data["rows"]:
            key = (label, r.get("fraction", 1.0), r["eps"])
            slot = best.setdefault(key, {"best": None, "rule": None, "n": 0})
            slot["n"] += 1
            if r.get("rule"):
                slot["rule"] = r
            elif slot["best"] is None or r["accuracy"] > slot["best"]["accuracy"]:
                slot["best"] = r
    lines = ["| data | share of each site's rows | ε | best screened (q, steps/round, lr x clip) | accuracy | "
             "size rule | settings screened |", "|---|---:|---:|---|---:|---:|---:|"]
    for (label, frac, eps), v in sorted(best.items(), key=lambda kv: (kv[0][0], kv[0][1], -kv[0][2])):
        b, rule = v["best"], v["rule"]
        shape = _shape(b) if b else "-"
        acc = f"{b['accuracy']:.3f}" if b else "-"
        lines.append(f"| {label} | {frac:g} | {eps:g} | {shape} | {acc} | "
                     f"{rule['accuracy']:.3f} | {v['n']} |" if rule else
                     f"| {label} | {frac:g} | {eps:g} | {shape} | {acc} | - | {v['n']} |")
    return "\n".join(lines) + "\n"


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__)
    ap.add_argument("--grid", default="default")
    ap.add_argument("--json", default="", help="a grid as JSON, e.g. '{\"lr\": [0.5]}' over the default")
    ap.add_argument("--repeats", type=int, default=2)
    ap.add_argument("--cache", default="/tmp/dp-screen-features.pt")
    ap.add_argument("--out", default="")
    ap.add_argument("--data", default="", help="pooled data file (default: the demo's)")
    ap.add_argument("--set", action="append", default=[], help="config overrides for the features")
    ap.add_argument("--label", default="", help="what the data is, for --summarize")
    ap.add_argument("--summarize", nargs="*", help="write a markdown summary of these result files")
    args = ap.parse_args()
    if args.summarize:
        Path(args.out or "/dev/stdout").write_text(summarize(args.summarize))
        return
    torch.set_num_threads(2)
    feats = site_features(Path(args.cache), data=args.data, sets=tuple(args.set))
    zero = sum(int(((s["test"][0] @ feats["head"][0].T + feats["head"][1]).argmax(1) == s["test"][1]).sum())
               for s in feats["sites"]) / sum(len(s["test"][1]) for s in feats["sites"])
    print(f"zero-shot (label-name head): {zero:.4f}; train rows per site "
          f"{[len(s['train'][1]) for s in feats['sites']]}", flush=True)
    grid = {**GRIDS[args.grid], **json.loads(args.json or "{}")}
    rows = []
    for combo in itertools.product(*grid.values()):
        kw = dict(zip(grid, combo))
        t0 = time.perf_counter()
        try:
            accs = [federate(feats, seed=s, **kw)["accuracy"] for s in range(args.repeats)]
        except PrivacyBudgetExceeded:  # the site would refuse: more noise than MAX_NOISE
            print(f"{json.dumps(kw)} refused (noise multiplier above the site's maximum)", flush=True)
            continue
        rows.append({**kw, "accuracy": float(np.mean(accs)), "accuracies": accs})
        print(f"{json.dumps(kw)} acc {np.mean(accs):.4f} ({' '.join(f'{a:.3f}' for a in accs)}) "
              f"{time.perf_counter() - t0:.1f}s", flush=True)
    if args.out:
        Path(args.out).write_text(json.dumps({"label": args.label, "zero_shot": zero, "grid": grid,
                                              "train_rows": [len(s["train"][1]) for s in feats["sites"]],
                                              "rows": rows}, indent=1))


if __name__ == "__main__":
    main()
