"""fp32 vs dynamically int8-quantised inference of an exported federated model: latency,
throughput and accuracy on queries the federation never saw.

    python bench/bench_predict.py --run RUN_DIR [--rows 1000]

RUN_DIR is a finished demo run (`bash run.sh demo` or deploy/demo_local.sh). The held-out
queries are Banking77 rows from shared/data (beside the checkout) that are not in the bundled
demo file, with labels in the run's label space. `fedtune export --int8` writes both models;
`fedtune predict` runs each (same pipeline, same batches). Writes bench/results/predict.json and
predict.md."""

from __future__ import annotations

import argparse
import json
import sys
import tempfile
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

import pandas as pd  # noqa: E402
import torch  # noqa: E402

from common.atomic import atomic_write_bytes, atomic_write_json  # noqa: E402
from fedtune.export import export_run  # noqa: E402
from fedtune.predict import predict_file  # noqa: E402

SHARED = ROOT.parent / "shared" / "data" / "banking77" / "train.csv"


def _rel(path) -> str:
    """A path inside the checkout as a relative one (results name no machine's paths)."""
    p = Path(path).resolve()
    return str(p.relative_to(ROOT)) if p.is_relative_to(ROOT) else p.name


def held_out(run: Path, rows: int, out: Path, pool_file: Path) -> int:
    labels = json.loads((run / "adapter" / "labels.json").read_text(encoding="utf-8"))
    seen = set(pd.read_csv(ROOT / "data" / "banking77_demo.csv")["text"])
    pool = pd.read_csv(pool_file)
    pool = pool[~pool["text"].isin(seen) & pool["label"].isin(labels)].drop_duplicates("text")
    pool.sample(n=min(rows, len(pool)), random_state=0).to_csv(out, index=False)
    return min(rows, len(pool))


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--run", type=Path, required=True, help="a finished demo run directory")
    ap.add_argument("--rows", type=int, default=1000)
    ap.add_argument("--batch-size", type=int, default=64)
    ap.add_argument("--pool", type=Path, default=SHARED,
                    help="Banking77 CSV to draw held-out queries from (default: shared/ beside the checkout)")
    args = ap.parse_args()
    if not args.pool.is_file():
        sys.exit(f"bench_predict: {args.pool} not found; fix: keep shared/ beside the checkout or pass --pool")
    tmp = Path(tempfile.mkdtemp(prefix="fedtune-predict-"))
    n = held_out(args.run, args.rows, tmp / "held_out.csv", args.pool)
    export = export_run(args.run, out=tmp / "export", int8=True)
    res = {"run": _rel(args.run), "rows": n, "batch_size": args.batch_size,
           "torch_threads": torch.get_num_threads(),
           "export": {k: _rel(v) if k in ("source_run", "base_model") else v for k, v in export.items()}}
    for name, model_dir in (("fp32", tmp / "export"), ("int8", tmp / "export" / "int8")):
        best = None
        for _ in range(2):  # best of two: the first pass also warms caches
            t0 = time.perf_counter()
            r = predict_file(model_dir, data=tmp / "held_out.csv", out=tmp / f"{name}.csv",
                             batch_size=args.batch_size, progress=False)
            r["wall_s"] = time.perf_counter() - t0
            best = r if best is None or r["seconds"] < best["seconds"] else best
        res[name] = {"accuracy": best["accuracy"], "seconds": best["seconds"],
                     "rows_per_s": best["rows_per_s"], "ms_per_row": 1000 * best["seconds"] / n,
                     "model_bytes": sum(f.stat().st_size for f in model_dir.glob("*")
                                        if f.is_file() and f.suffix in (".safetensors", ".bin", ".pt"))}
    fp, q = res["fp32"], res["int8"]
    res["ratios"] = {"int8_speedup": fp["seconds"] / q["seconds"],
                     "accuracy_points": 100 * (q["accuracy"] - fp["accuracy"]),
                     "size_ratio": q["model_bytes"] / fp["model_bytes"] if fp["model_bytes"] else None}
    lines = [f"{n} held-out Banking77 queries (not in the demo data), batch {args.batch_size}, "
             f"{res['torch_threads']} torch threads, best of 2; run `{res['run']}`", "",
             "| model | accuracy | rows/s | ms / row | weights on disk |", "|---|---:|---:|---:|---:|"]
    for name in ("fp32", "int8"):
        r = res[name]
        lines.append(f"| {name} | {r['accuracy']:.4f} | {r['rows_per_s']:.0f} | {r['ms_per_row']:.2f} | "
                     f"{r['model_bytes'] / 2**20:.1f} MiB |")
    lines += ["", f"int8 / fp32: **{res['ratios']['int8_speedup']:.2f}x** faster, "
              f"{res['ratios']['accuracy_points']:+.1f} accuracy points; export check: merged vs adapter "
              f"max |logit diff| {export['max_abs_logit_diff']:.1e}, int8 argmax agreement "
              f"{export.get('int8_argmax_agreement', float('nan')):.3f} on the probe rows."]
    out = ROOT / "bench" / "results"
    atomic_write_json(out / "predict.json", res)
    atomic_write_bytes(out / "predict.md", ("\n".join(lines) + "\n").encode())
    print("\n".join(lines))


if __name__ == "__main__":
    main()
