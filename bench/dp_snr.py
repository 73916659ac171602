"""Where the DP accuracy goes, measured before anything changes: the signal-to-noise ratio of one
DP-SGD update on the demo partition (configs/demo.toml, 3 banks, Dirichlet 0.5, head from the
label names), at the start of training (the coordinator's initial arrays).

    python bench/dp_snr.py [--site 0] [--rows 0] [--out bench/results/dp_snr.json]

For one site it computes every training record's gradient (Opacus per-sample gradients, the
site's own model and loss), then for each setting (what is DP-trained, expected batch B = q n,
steps, clip C, epsilon):

  signal = || mean over records of clip_C(g_i) ||      (what the averaged update points along)
  noise  = sigma x C x sqrt(d) / B                    (norm of the Gaussian noise in that average)

with sigma calibrated by the site's own accountant (RDP, delta = 1/(10 n)) to all planned steps,
exactly as client/privacy.py plans a run. SNR = signal / noise per step; the noise of S steps
grows like sqrt(S) while a consistent signal grows like S, so SNR x sqrt(steps) is the ratio for
a whole run's accumulated update. Writes JSON (+ a markdown table next to it)."""

from __future__ import annotations

import argparse
import dataclasses
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
from common.config import resolve  # noqa: E402


def per_example_grads(site, *, batch: int = 32) -> dict[str, np.ndarray]:
    """Per-record gradient vectors of the train split, grouped: head / lora_B / lora_A."""
    from opacus import GradSampleModule

    from client.trainer import collate

    data, model = site.splits["train"], site.model
    for name, p in model.named_parameters():  # every LoRA matrix and the head, for the breakdown
        p.requires_grad = "lora_" in name or ("classifier" in name and "original_module" not in name)
    gsm = GradSampleModule(model, batch_first=True, loss_reduction="sum")
    groups: dict[str, list[np.ndarray]] = {"head": [], "lora_B": [], "lora_A": []}
    model.train()  # as DP-SGD sees it (Opacus captures activations only in training mode)
    try:
        for start in range(0, len(data), batch):
            idx = np.arange(start, min(len(data), start + batch))
            ids, mask, y = collate(data, idx, pad_id=site.pad_id)
            logits = gsm(input_ids=ids, attention_mask=mask).logits
            torch.nn.functional.cross_entropy(logits, y, reduction="sum").backward()
            parts = {k: [] for k in groups}
            for name, p in model.named_parameters():
                if p.requires_grad and getattr(p, "grad_sample", None) is not None:
                    key = "head" if "classifier" in name else ("lora_B" if "lora_B" in name else "lora_A")
                    parts[key].append(p.grad_sample.reshape(len(idx), -1).detach().numpy())
                    p.grad_sample = None
                p.grad = None
            for k, v in parts.items():
                groups[k].append(np.concatenate(v, axis=1))
    finally:
        gsm._close()
    return {k: np.concatenate(v, axis=0) for k, v in groups.items()}


def signal(g: np.ndarray, clip: float) -> tuple[float, float]:
    """(norm of the mean clipped gradient, share of records clipped)."""
    norms = np.linalg.norm(g, axis=1)
    scale = np.minimum(1.0, clip / np.maximum(norms, 1e-12))
    return float(np.linalg.norm((g * scale[:, None]).mean(axis=0))), float((norms > clip).mean())


def setting_row(grads: dict, *, what: str, n: int, batch: int, epochs: float, rounds: int,
                clip: float, eps: float) -> dict:
    parts = {"adapter": ("head", "lora_B"), "head": ("head",), "lora_full": ("head", "lora_B", "lora_A")}[what]
    g = np.concatenate([grads[k] for k in parts], axis=1)
    q = min(1.0, batch / n)
    steps = max(1, math.ceil(epochs * n / batch))
    sigma = calibrate_noise([], sample_rate=q, steps=steps * rounds, target_epsilon=eps,
                            delta=default_delta(n), accountant="rdp")
    sig, clipped = signal(g, clip)
    noise = sigma * clip * math.sqrt(g.shape[1]) / (q * n)
    return {"trained": what, "params": int(g.shape[1]), "expected_batch": round(q * n, 1),
            "sample_rate": q, "steps_per_round": steps, "rounds": rounds, "steps": steps * rounds,
            "clip": clip, "epsilon": eps, "sigma": sigma, "share_clipped": clipped,
            "signal": sig, "noise": noise, "snr_step": sig / noise,
            "snr_run": sig / noise * math.sqrt(steps * rounds)}


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__)
    ap.add_argument("--site", type=int, default=0)
    ap.add_argument("--rows", type=int, default=0, help="use only the first N train rows (0 = all)")
    ap.add_argument("--out", default=str(ROOT / "bench" / "results" / "dp_snr.json"))
    args = ap.parse_args()
    from client.site import Site, SiteFacts
    from common.adapter import get_state, set_state
    from common.model import build_model
    from fedtune.simulate import prepare_sites

    torch.set_num_threads(2)
    cfg = resolve(ROOT / "configs" / "demo.toml", ["privacy.dp=true"])
    tmp = Path(tempfile.mkdtemp(prefix="dp-snr-"))
    cfg = prepare_sites(cfg, tmp)
    labels = cfg.task.label_names()
    init = get_state(build_model(cfg.model, num_labels=len(labels), seed=cfg.train.seed,
                                 labels=labels).model)  # the coordinator's initial arrays
    site_dir = Path(cfg.simulation.sites_dir) / f"site-{args.site}"
    site = Site(cfg, SiteFacts(name=f"site-{args.site}", index=args.site,
                               data_path=str(site_dir / "data.csv"), site_dir=str(site_dir)))
    set_state(site.model, init)
    if args.rows:
        site.splits["train"] = dataclasses.replace(site.splits["train"],
                                                   ids=site.splits["train"].ids[:args.rows],
                                                   labels=site.splits["train"].labels[:args.rows])
    n = len(site.splits["train"])
    t0 = time.perf_counter()
    grads = per_example_grads(site)
    norms = {k: np.percentile(np.linalg.norm(v, axis=1), [10, 50, 90]).tolist() for k, v in grads.items()}
    total = np.linalg.norm(np.concatenate([grads["head"], grads["lora_B"]], axis=1), axis=1)
    rows = []
    demo = dict(n=n, epochs=cfg.train.local_epochs, rounds=cfg.federation.rounds, eps=8.0)
    for what in ("adapter", "head"):
        for batch in (32, 128, 512, n):
            for clip in (0.1, 1.0, 10.0):
                rows.append(setting_row(grads, what=what, batch=batch, clip=clip, **demo))
    for eps in (3.0, 1.0):
        rows.append(setting_row(grads, what="head", batch=n, clip=1.0, **{**demo, "eps": eps}))
    result = {"site": args.site, "train_rows": n, "classes": len(labels),
              "demo": {"batch": cfg.train.batch_size, "local_epochs": cfg.train.local_epochs,
                       "rounds": cfg.federation.rounds, "learning_rate": cfg.train.learning_rate,
                       "head_learning_rate": cfg.train.head_learning_rate,
                       "clip": cfg.privacy.max_grad_norm, "lora_r": cfg.model.lora_r},
              "grad_norm_percentiles_10_50_90": norms,
              "adapter_grad_norm_percentiles_10_50_90": np.percentile(total, [10, 50, 90]).tolist(),
              "head_share_of_squared_norm": float((np.linalg.norm(grads["head"], axis=1) ** 2).sum()
                                                   / (total ** 2).sum()),
              "seconds": time.perf_counter() - t0, "rows": rows}
    out = Path(args.out)
    out.write_text(json.dumps(result, indent=1))
    lines = [f"Site {args.site} of the demo partition: {n} train rows, {len(labels)} classes; per-record "
             f"gradient norm (p10/p50/p90) head {fmt(norms['head'])}, LoRA B {fmt(norms['lora_B'])}; "
             f"head share of the squared norm {result['head_share_of_squared_norm']:.2f}.", "",
             "| DP-trained | params | batch B | q | steps (all rounds) | clip C | ε | σ | clipped | "
             "signal ‖mean clip(g)‖ | noise σC√d/B | SNR/step | SNR x √steps |",
             "|---|---:|---:|---:|---:|---:|---:|---:|---:|---:|---:|---:|---:|"]
    for r in rows:
        lines.append(f"| {r['trained']} | {r['params']:,} | {r['expected_batch']:.0f} | {r['sample_rate']:.3f} | "
                     f"{r['steps']} | {r['clip']:g} | {r['epsilon']:g} | {r['sigma']:.2f} | "
                     f"{r['share_clipped']:.2f} | {r['signal']:.4f} | {r['noise']:.4f} | "
                     f"{r['snr_step']:.3f} | {r['snr_run']:.2f} |")
    out.with_suffix(".md").write_text("\n".join(lines) + "\n")
    print("\n".join(lines))


def fmt(p: list[float]) -> str:
    return "/".join(f"{x:.3g}" for x in p)


if __name__ == "__main__":
    main()
