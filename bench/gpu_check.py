"""GPU check (bench/gpu_check.sh): fedtune's trainer, DP trainer and a 2-site in-process
federation on CUDA and on the CPU side by side, offline, on a BERT-base-sized model built from a
config (BertConfig's default sizes; random weights: throughput and agreement, not accuracy) with
a tokenizer from a small local vocab. Checks that a CUDA round and a CPU round from the same
state agree (fp32) and prints samples/s; writes bench/results/gpu_check.json + .md.

    python -m bench.gpu_check                     # CUDA + CPU (exit 1 when the rounds disagree)
    python -m bench.gpu_check --cpu-only --quick  # the same code on a CPU-only machine, tiny model

Dropout is 0 in the generated model: CPU and CUDA draw dropout masks from different generators,
so only a dropout-free round can be compared number for number."""

from __future__ import annotations

import argparse
import contextlib
import io
import json
import os
import shutil
import sys
import tempfile
import time
import zlib
from pathlib import Path

import numpy as np
import pandas as pd
import torch

from bench.gpu_setup import LABELS, machine, make_csv, make_model

REPO = Path(__file__).resolve().parents[1]
TOL_REL = 1e-3  # |delta_cuda - delta_cpu| / |delta_cpu| over the whole adapter update, fp32
SIZES = {  # rows of the pooled file; timed steps per (device, part)
    "full": dict(rows=1024, words=(12, 40), max_length=64, train_steps={"cpu": 6, "cuda": 40},
                 dp_steps={"cpu": 4, "cuda": 30}, fed_rows=384, rounds=1),
    "quick": dict(rows=160, words=(3, 8), max_length=32, train_steps={"cpu": 3, "cuda": 10},
                  dp_steps={"cpu": 2, "cuda": 6}, fed_rows=96, rounds=1),
}


def _sync(device: str) -> None:
    if device.startswith("cuda"):
        torch.cuda.synchronize()


def _config(base: Path, *, device: str, precision: str = "fp32", run_dir: Path | None = None,
            data: Path | None = None, extra: tuple[str, ...] = ()):
    from common.config import resolve

    sets = [f"model.base={base}", "model.lora-r=16", "train.batch-size=32", f"train.device={device}",
            f"train.precision={precision}", f"task.labels={','.join(LABELS)}", "simulation.sites=2",
            "simulation.partition=iid", "federation.min-sites=2", "data.split=0.8,0.1,0.1", *extra]
    if run_dir:
        sets += [f"output.run-dir={run_dir}"]
    if data:
        sets += [f"simulation.data={data}"]
    return resolve(None, sets)


def _encoded(base: Path, csv: Path, max_length: int):
    from client.trainer import encode
    from common.config import ModelConfig
    from common.model import build_model

    built = build_model(ModelConfig(base=str(base), lora_r=16, max_length=max_length),
                        num_labels=len(LABELS), seed=0)
    frame = pd.read_csv(csv)
    y = np.array([LABELS.index(v) for v in frame["label"]])
    return built.model, encode(built.tokenizer, frame["text"].tolist(), y, max_length=max_length)


def bench_train(base: Path, csv: Path, *, device: str, precision: str, steps: int, max_length: int,
                dp: bool = False) -> dict:
    """samples/s of `steps` timed steps (after one untimed warm-up step) of train or train_dp."""
    from client.dp_trainer import train_dp
    from client.trainer import Schedule, train
    from common.config import TrainConfig
    from common.device import accel_for

    model, data = _encoded(base, csv, max_length)
    cfg = TrainConfig(batch_size=32, device=device, precision=precision)
    q = 32 / len(data)

    def run(n: int) -> dict:
        kw = dict(cfg=cfg, schedule=Schedule(0, 10 * n, 0), rng=np.random.default_rng(0))
        if dp:
            return train_dp(model, data, steps=n, sample_rate=q, noise_multiplier=1.0,
                            max_grad_norm=1.0, **kw)
        return train(model, data, steps=n, **kw)

    run(1)
    _sync(device)
    t0 = time.perf_counter()
    stats = run(steps)
    _sync(device)
    secs = time.perf_counter() - t0
    peak = torch.cuda.max_memory_allocated() / 2**30 if device.startswith("cuda") else None
    return {"device": accel_for(cfg).describe(), "steps": steps, "samples": int(stats["num_examples"]),
            "seconds": round(secs, 3), "samples_per_s": round(stats["num_examples"] / secs, 1),
            "train_loss": round(float(stats["train_loss"]), 4),
            "peak_gpu_gib": round(peak, 2) if peak is not None else None}


def agreement(base: Path, csv: Path, work: Path, *, devices: list[str]) -> dict:
    """One Site round (Site.fit, round 1) from the same global state on each device, fp32; the
    adapters that come back (CPU float32 by construction) must agree within TOL_REL. Gated on
    SGD, whose update is linear in the gradient; AdamW is reported too (its first steps are
    nearly sign-SGD, so near-zero gradient entries can flip on rounding and stand out)."""
    out = {"devices": devices, "tolerance_rel": TOL_REL, "gate": "sgd"}
    for opt in ("sgd", "adamw"):
        out[opt] = _round_diffs(base, csv, work, devices=devices, optimizer=opt)
    out["steps"] = out["sgd"].pop("steps")
    out["adamw"].pop("steps")
    out["ok"] = all(out["sgd"][d]["rel_diff"] <= TOL_REL for d in devices[1:])
    if devices == ["cpu", "cpu/again"]:
        out["note"] = "--cpu-only: the CPU against itself (must be 0: the round is deterministic)"
    return out


def _round_diffs(base: Path, csv: Path, work: Path, *, devices: list[str], optimizer: str) -> dict:
    from client.site import Site, SiteFacts
    from common.adapter import get_state

    states, start = {}, None
    for label in devices:
        dev = label.split("/")[0]  # "cpu/again": the CPU a second time (--cpu-only)
        cfg = _config(base, device=dev, extra=("federation.rounds=1", f"train.optimizer={optimizer}"))
        site = Site(cfg, SiteFacts(name=f"check-{dev}", index=0, data_path=str(csv),
                                   site_dir=str(work / f"check-{optimizer}-{label.replace('/', '-')}")))
        start = start if start is not None else get_state(site.model)
        state, stats = site.fit(start, server_round=1)
        assert all(v.dtype == torch.float32 and v.device.type == "cpu" for v in state.values())
        states[label] = (state, stats)
        del site
    ref, ref_stats = states[devices[0]]
    out = {"steps": int(ref_stats["steps"])}
    delta_ref = torch.cat([(ref[k] - start[k]).flatten() for k in ref])
    for dev in devices[1:]:
        other, stats = states[dev]
        delta = torch.cat([(other[k] - start[k]).flatten() for k in ref])
        out[dev] = {"rel_diff": float((delta - delta_ref).norm() / delta_ref.norm().clamp_min(1e-12)),
                    "max_abs_diff": float((delta - delta_ref).abs().max()),
                    "train_loss": [float(ref_stats["train_loss"]), float(stats["train_loss"])]}
    return out


def bench_federation(base: Path, csv: Path, work: Path, *, device: str, rounds: int) -> dict:
    """A 2-site federation, fedtune's coordinator + ClientApp over bench.inproc's in-process Grid."""
    import logging

    from flwr.supercore.task_identity import TaskIdentity

    from bench.inproc import InProcessGrid, bench_client_app
    from client import site as site_mod
    from fedtune.simulate import prepare_sites
    from server import app as server_app

    out = work / f"fed-{device.replace(':', '')}"
    out.mkdir(parents=True, exist_ok=True)
    cfg = prepare_sites(_config(base, device=device, run_dir=out, data=csv,
                                extra=(f"federation.rounds={rounds}",)), out.resolve())
    run_id = zlib.crc32(str(out).encode()) & 0x7FFFFFFF
    grid = InProcessGrid(bench_client_app(), num_nodes=2, run_config=cfg.to_flat(), run_id=run_id)
    TaskIdentity.task_id, TaskIdentity.run_id, TaskIdentity.node_id = 1, run_id, 1
    logging.getLogger("flwr").setLevel(logging.WARNING)
    log = io.StringIO()
    t0 = time.perf_counter()
    with contextlib.redirect_stdout(log):
        summary = server_app.run(grid, cfg)
    _sync(device)
    wall = time.perf_counter() - t0
    _forget_sites(site_mod)
    rows = [json.loads(x) for x in (out / "metrics.jsonl").read_text().splitlines() if x]
    train = [v.get("train", {}) for r in rows for v in r.get("per_site", {}).values()]
    trained = sum(t.get("num-examples", 0) for t in train)
    train_s = sum(t.get("train_seconds", 0) for t in train)
    return {"rounds": len(rows), "wall_s": round(wall, 2), "train_examples": int(trained),
            "samples_per_s": round(trained / wall, 1) if trained else None,  # end to end
            "train_samples_per_s": round(trained / train_s, 1) if train_s else None,  # sites' loops
            "final": {k: v for k, v in (summary or {}).items() if isinstance(v, (int, float))}}


def _forget_sites(site_mod) -> None:
    """Drop the process's warm sites (their models) between runs."""
    site_mod.clear_sites()
    if torch.cuda.is_available():
        torch.cuda.empty_cache()


def batch_probe(base: Path, csv: Path, *, device: str, max_length: int) -> dict:
    from client.probe import resolve_batch_size
    from common.config import TrainConfig

    model, data = _encoded(base, csv, max_length)
    t0 = time.perf_counter()
    size, how = resolve_batch_size(model, data, cfg=TrainConfig(batch_size="auto", device=device))
    return {"batch_size": size, "how": how, "seconds": round(time.perf_counter() - t0, 2)}


def to_markdown(res: dict) -> str:
    m = res["machine"]
    lines = [f"# GPU check ({res['mode']})", "",
             f"{m.get('gpu', 'no GPU')} · torch {m['torch']} (CUDA {m['cuda']}) · {m['cpu_count']} cores, "
             f"{m['torch_threads']} torch threads · model {res['model']} · max length {res['max_length']}, "
             "batch 32, LoRA r=16 on every linear layer", "",
             "| part | device | samples/s | steps | seconds |", "|---|---|---:|---:|---:|"]
    for part in ("trainer", "dp"):
        for name, r in res[part].items():
            lines.append(f"| {part} | {r['device']} | {r['samples_per_s']} | {r['steps']} | {r['seconds']} |")
    for dev, r in res["federation"].items():
        lines.append(f"| 2-site federation, {r['rounds']} round, end to end (site loops alone: "
                     f"{r['train_samples_per_s']}/s) | {dev} | {r['samples_per_s']} | - | {r['wall_s']} |")
    a = res["agreement"]
    diffs = "; ".join(f"{opt} {d}: rel diff {a[opt][d]['rel_diff']:.2e}, max abs {a[opt][d]['max_abs_diff']:.2e}"
                      for opt in ("sgd", "adamw") for d in a["devices"][1:])
    lines += ["", f"CUDA vs CPU round from the same state (Site.fit, {a['steps']} steps, fp32): "
              + diffs + (f" ({a['note']})" if a.get("note") else "")
              + f" — {'OK' if a['ok'] else 'FAILED'} (gate: sgd rel diff <= {a['tolerance_rel']:g})",
              "", "train.batch-size = auto: " + ", ".join(
                  f"{d}: {r['batch_size']} ({r['how']}, {r['seconds']} s)" for d, r in res["batch_auto"].items()),
              f"\nTotal {res['wall_s']} s."]
    return "\n".join(lines) + "\n"


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--cpu-only", action="store_true", help="skip CUDA (runs the same code on a CPU)")
    ap.add_argument("--quick", action="store_true", help="tiny model and few steps (seconds)")
    ap.add_argument("--out", default=str(REPO / "bench" / "results"), help="where gpu_check.json/.md go")
    ap.add_argument("--work", default="", help="scratch directory (default: a temporary one)")
    args = ap.parse_args(argv)
    if not args.cpu_only and not torch.cuda.is_available():
        print("gpu_check: no CUDA device here; run with --cpu-only to exercise the CPU side",
              file=sys.stderr)
        return 2
    os.environ.setdefault("HF_HUB_OFFLINE", "1")
    torch.set_float32_matmul_precision("highest")  # fp32 means fp32 (no TF32) on the GPU
    t0 = time.perf_counter()
    size = SIZES["quick" if args.quick else "full"]
    devices = ["cpu"] + ([] if args.cpu_only else ["cuda"])
    work = Path(args.work or tempfile.mkdtemp(prefix="fedtune-gpu-check-"))
    base = make_model(work / "model", quick=args.quick)
    csv = make_csv(work / "pooled.csv", rows=size["rows"], words=size["words"])
    site_csv = make_csv(work / "site.csv", rows=size["fed_rows"], words=size["words"], seed=1)
    res = {"mode": ("cpu-only" if args.cpu_only else "cuda+cpu") + (" quick" if args.quick else ""),
           "machine": machine(), "model": "tiny BERT (quick)" if args.quick else "BERT-base (BertConfig defaults)",
           "max_length": size["max_length"], "trainer": {}, "dp": {}, "federation": {}, "batch_auto": {}}
    for dev in devices:
        for prec in (["fp32"] if dev == "cpu" else ["fp32", "bf16"]):
            print(f"trainer {dev} {prec} ...", flush=True)
            res["trainer"][f"{dev}-{prec}"] = bench_train(base, csv, device=dev, precision=prec,
                                                           steps=size["train_steps"][dev],
                                                           max_length=size["max_length"])
        print(f"dp trainer {dev} ...", flush=True)
        res["dp"][dev] = bench_train(base, csv, device=dev, precision="auto", dp=True,
                                     steps=size["dp_steps"][dev], max_length=size["max_length"])
        print(f"federation {dev} ...", flush=True)
        res["federation"][dev] = bench_federation(base, site_csv, work,
                                                  device=dev, rounds=size["rounds"])
        res["batch_auto"][dev] = batch_probe(base, csv, device=dev, max_length=size["max_length"])
    print("agreement ...", flush=True)
    res["agreement"] = agreement(base, site_csv, work, devices=devices if len(devices) > 1 else ["cpu", "cpu/again"])
    res["wall_s"] = round(time.perf_counter() - t0, 1)
    out = Path(args.out)
    out.mkdir(parents=True, exist_ok=True)
    (out / "gpu_check.json").write_text(json.dumps(res, indent=1), encoding="utf-8")
    md = to_markdown(res)
    (out / "gpu_check.md").write_text(md, encoding="utf-8")
    print(md)
    if not args.work:
        shutil.rmtree(work, ignore_errors=True)
    return 0 if res["agreement"]["ok"] else 1


if __name__ == "__main__":
    sys.exit(main())
