"""fedtune's benchmark suite — one command:

    python bench/run_all.py            # the full suite (real MiniLM, real data; tens of minutes on 2 cores)
    python bench/run_all.py --quick    # tiny model + tiny data versions of every section (< 2 min)

Sections: traffic, throughput, overhead, accuracy, scale (see bench/README.md). Each writes
`<out>/<section>.json`; `<out>/RESULTS.md` gets the machine, the targets table and every
section's table (with `--only`, the other sections are read back from their JSON files in
`--out`, and the header says so; `--render` runs nothing and only rewrites them). Notes written
by hand below the `<!-- findings -->` line of RESULTS.md are kept when it is regenerated. `--out` defaults to bench/results (bench/results/quick with --quick).
"""

from __future__ import annotations

import argparse
import json
import os
import shutil
import sys
import tempfile
import time
import traceback
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))
os.environ.setdefault("HF_HUB_OFFLINE", "1")
os.environ.setdefault("TOKENIZERS_PARALLELISM", "false")
# Idle OpenMP threads sleep instead of spinning (set before torch loads; Flower's processes
# inherit it). On a machine shared with other work, spinning threads made 2-thread training
# 6-8x slower than 1 thread; see RESULTS.md. Export OMP_WAIT_POLICY=ACTIVE to measure without.
os.environ.setdefault("OMP_WAIT_POLICY", "PASSIVE")

from bench import (bench_accuracy, bench_overhead, bench_scale,  # noqa: E402
                   bench_throughput, bench_traffic)
from bench.harness import Harness, machine  # noqa: E402
from common.atomic import atomic_write_bytes, atomic_write_json  # noqa: E402

# accuracy runs first: traffic and overhead reuse its federated runs and baselines
SECTIONS = {"throughput": bench_throughput, "accuracy": bench_accuracy, "traffic": bench_traffic,
            "overhead": bench_overhead, "scale": bench_scale}
TITLES = {"traffic": "1. Traffic per site", "throughput": "2. Local training throughput",
          "overhead": "3. Federation overhead", "accuracy": "4. Accuracy",
          "scale": "5. Scale"}
FINDINGS = "<!-- findings: notes below this line are kept when RESULTS.md is regenerated -->"


def targets(res: dict) -> list[dict]:
    """One row per target: measured value, goal, met, and by how much / why when missed."""
    rows = []

    def add(name, value, goal, met, unit="", why=""):
        rows.append({"target": name, "measured": value, "goal": goal, "met": bool(met),
                     "unit": unit, "why": "" if met else why})

    if "traffic" in res:
        t = res["traffic"]
        b = t["rows"][t["best"]]
        small = [f"{k}: {r['points_vs_uncompressed']:+.1f} points" for k, r in t["rows"].items()
                 if r["full_over_this"] >= 1000]
        add(f"traffic/round <= 1/1000 of full-model FedAvg at <= 1 point below uncompressed "
            f"(best: {t['best']})", b["full_over_this"], 1000, b["meets_target"], "x smaller",
            "rows small enough: " + ("; ".join(small) if small else "none"))
    if "throughput" in res:
        r = res["throughput"]["ratios"]
        p = res["throughput"]["padding_efficiency"]
        add("trainer throughput >= 0.9x plain PEFT loop", r["fedtune_over_plain"], 0.9,
            r["fedtune_over_plain"] >= 0.9, "x",
            f"vs plain+bucketing {r['fedtune_over_plain_bucketed']:.2f}x; real/padded tokens "
            f"fedtune {p['fedtune']:.2f}, plain {p['plain_no_bucketing']:.2f}")
        sps = res["throughput"]["samples_per_s"]
        add(f"DP training (the DP default) >= 0.8x non-DP (DP-SGD over the FFA adapter: "
            f"{r.get('dp_adapter_over_non_dp', float('nan')):.2f}x)", r["dp_over_non_dp"], 0.8,
            r["dp_over_non_dp"] >= 0.8, "x",
            f"DP default (DP linear probing) {sps['dp']:.1f}/s vs non-DP {sps['non_dp']:.1f}/s; "
            f"DP-SGD over the FFA-LoRA adapter (Opacus) {sps.get('dp_adapter', float('nan')):.1f}/s "
            f"= {r.get('dp_adapter_over_non_dp', float('nan')):.2f}x")
    if "overhead" in res:
        o = res["overhead"]
        top = max(((k, v) for k, v in o["breakdown_s"].items() if not k.startswith("site training")),
                  key=lambda kv: kv[1])
        add("5-site simulation wall <= 1.5x centralized", o["ratios"]["wall_fed_over_central"], 1.5,
            o["ratios"]["wall_fed_over_central"] <= 1.5, "x",
            f"largest non-training share: {top[0]} {top[1]:.0f} s")
    if "accuracy" in res:
        for name, a in res["accuracy"].items():
            q = a["ratios"]
            add(f"{name}: FedAvg >= 97 % of centralized", 100 * q["fedavg_over_centralized"], 97,
                q["fedavg_over_centralized"] >= 0.97, "%",
                f"{100 * (0.97 - q['fedavg_over_centralized']):.1f} % short after "
                f"{a['setup']['rounds']} rounds on a {a['setup']['partition']} split")
            add(f"{name}: FedAvg >= 15 points above mean local-only site",
                q["fedavg_minus_local_only_points"], 15, q["fedavg_minus_local_only_points"] >= 15,
                "points", f"{15 - q['fedavg_minus_local_only_points']:.1f} points short")
    if "scale" in res:
        s = res["scale"]["ratios"]
        add("100 sites in <= 8 GiB (peak RSS of the process tree)", s["peak_rss_gib"], 8,
            s["peak_rss_gib"] <= 8, "GiB", f"PSS {s['peak_pss_gib']:.2f} GiB")
        a = res["scale"]["aggregation"]
        add("1,000 updates validated + aggregated in <= 1 s", s["aggregate_1000_s"], 1,
            s["aggregate_1000_s"] <= 1, "s",
            f"numpy weighted sum alone over arrays in memory {a['numpy_weighted_sum_s']:.2f} s; "
            f"naive validation + Flower FedAvg {a['naive_plus_flower_s']:.2f} s")
    return rows


def _old_section(md_path: Path, name: str) -> str:
    """The text of section `name` in an existing RESULTS.md ('' when there is none)."""
    if not md_path.is_file():
        return ""
    text = md_path.read_text(encoding="utf-8").split(FINDINGS, 1)[0]
    parts = text.split(f"\n## {TITLES[name]}\n", 1)
    return parts[1].split("\n## ", 1)[0].strip() if len(parts) == 2 else ""


def markdown(res: dict, rows: list[dict], info: dict, *, quick: bool, seconds: float, kept: str) -> str:
    m = info["machine"]
    lines = [f"# fedtune benchmark results{' (--quick: tiny model, tiny data)' if quick else ''}", "",
             f"`python bench/run_all.py{' --quick' if quick else ''}` — {info['date']}, "
             + (f"{seconds / 60:.1f} min in all" if info["only"] else "nothing run")
             + (f" (a resumed suite: {', '.join(info['reused'])} and finished runs reused from the "
                "interrupted invocation, whose time is not included)" if info.get("reused") else "")
             + (f"; `{'--only ' + ','.join(info['only']) if info['only'] else '--render'}`: the sections "
                f"{', '.join(info.get('earlier', []) + list(info.get('stale', {})))} are from an "
                "earlier invocation" + (f" ({'; '.join(info['dates'])})" if info.get("dates") else "")
                if info["only"] != list(SECTIONS) else "")
             + ".", "",
             "| machine | |", "|---|---|",
             f"| CPU | {m['cpu_model']} |", f"| cores | {m['cores']} |", f"| RAM | {m['ram_gib']} GiB |",
             f"| torch threads | {m['torch_threads']} (OMP_WAIT_POLICY={m['omp_wait_policy']}) |",
             f"| load average at start / end | {m['load_avg']} / {info['load_end']} |",
             f"| versions | python {m['python']}, " + ", ".join(f"{k} {v}" for k, v in m["versions"].items())
             + " |", "", "## Targets (each a ratio from its section's run)", "",
             "| target | measured | goal | met | by how much / why (when missed) |",
             "|---|---:|---:|:-:|---|"]
    for r in rows:
        lines.append(f"| {r['target']} | {r['measured']:,.3g} {r['unit']} | {r['goal']:,} | "
                     f"{'yes' if r['met'] else '**no**'} | {r['why']} |")
    for name in ("traffic", "throughput", "overhead", "accuracy", "scale"):
        if name in res:
            lines += ["", f"## {TITLES[name]}", "", SECTIONS[name].table(res[name]), "",
                      f"_{info['section_seconds'].get(name, 0):.0f} s_"]
        elif info.get("stale", {}).get(name):
            lines += ["", f"## {TITLES[name]}", "", "_Kept from the earlier RESULTS.md (its targets "
                      "rows are not in the table above): the section's JSON predates its current "
                      f"table; `--only {name}` renews it._", "", info["stale"][name]]
        elif name in info["errors"]:
            lines += ["", f"## {TITLES[name]}", "", f"FAILED: `{info['errors'][name]}`"]
    lines += ["", FINDINGS, kept.rstrip(), ""]
    return "\n".join(lines)


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--quick", action="store_true", help="tiny model + tiny data, < 2 minutes")
    ap.add_argument("--out", type=Path, default=None, help="results directory")
    ap.add_argument("--work", type=Path, default=None, help="scratch directory (default: a temp dir)")
    ap.add_argument("--only", default="", help="comma-separated sections to run")
    ap.add_argument("--render", action="store_true",
                    help="run nothing: rewrite RESULTS.md and summary.json from the JSON files in --out")
    ap.add_argument("--resume", action="store_true",
                    help="with --work: reuse the finished sections and runs of an interrupted suite")
    args = ap.parse_args(argv)
    here = Path(__file__).resolve().parent
    out = args.out or (here / "results" / "quick" if args.quick else here / "results")
    if args.resume and args.work is None:
        ap.error("--resume needs the --work directory of the interrupted suite")
    work = args.work or Path(tempfile.mkdtemp(prefix="fedtune-bench-"))
    only = [] if args.render else [s.strip() for s in args.only.split(",") if s.strip()] or list(SECTIONS)
    t_start = time.perf_counter()
    h = Harness(quick=args.quick, work=work, say=lambda s: print(s, flush=True), resume=args.resume)
    done = work / "sections"
    done.mkdir(parents=True, exist_ok=True)
    info = {"machine": machine(), "date": time.strftime("%Y-%m-%d %H:%M"), "errors": {},
            "section_seconds": {}, "only": only}
    res: dict = {}
    try:
        for name in [s for s in SECTIONS if s in only]:
            print(f"[{time.perf_counter() - t_start:6.0f}s] {TITLES[name]} ...", flush=True)
            t0 = time.perf_counter()
            if args.resume and (done / f"{name}.json").is_file():
                cached = json.loads((done / f"{name}.json").read_text(encoding="utf-8"))
                res[name], info["section_seconds"][name] = cached["result"], cached["seconds"]
                info.setdefault("reused", []).append(name)
                print("  reused (--resume)", flush=True)
                continue
            try:
                res[name] = SECTIONS[name].run(h)
            except Exception as err:  # noqa: BLE001 - one failed section must not hide the others
                traceback.print_exc()
                info["errors"][name] = f"{type(err).__name__}: {err}"
                continue
            info["section_seconds"][name] = round(time.perf_counter() - t0, 1)
            atomic_write_json(done / f"{name}.json", {"result": res[name],
                                                      "seconds": info["section_seconds"][name]})
            atomic_write_json(out / f"{name}.json", {**res[name], "machine": info["machine"], "date": info["date"],
                                                     "quick": args.quick,
                                                     "seconds": info["section_seconds"][name]})
    finally:
        if args.work is None:
            shutil.rmtree(work, ignore_errors=True)
    for name in [s for s in SECTIONS if s not in only]:  # --only: RESULTS.md keeps the other sections
        earlier = out / f"{name}.json"
        if earlier.is_file():
            data = json.loads(earlier.read_text(encoding="utf-8"))
            kept = {k: v for k, v in data.items() if k not in ("machine", "quick", "seconds", "date")}
            try:  # a file from an older version of the section may lack fields: leave it out
                targets({name: kept}), SECTIONS[name].table(kept)
            except (KeyError, TypeError, IndexError) as err:
                old = _old_section(out / "RESULTS.md", name)
                info.setdefault("stale", {})[name] = old
                print(f"  {earlier} predates the section's table ({err!r}): "
                      f"{'its earlier RESULTS.md text is kept' if old else 'left out'}; rerun --only {name}")
                continue
            if data.get("quick") == args.quick:
                info["section_seconds"][name] = data.get("seconds", 0)
                res[name] = kept
                if data.get("date"):
                    info.setdefault("dates", []).append(f"{name} {data['date']}")
                info.setdefault("earlier", []).append(name)
    seconds = time.perf_counter() - t_start
    info["load_end"] = [round(x, 2) for x in os.getloadavg()]
    rows = targets(res)
    md_path = out / "RESULTS.md"
    kept = md_path.read_text(encoding="utf-8").split(FINDINGS, 1)[1] if (
        md_path.is_file() and FINDINGS in md_path.read_text(encoding="utf-8")) else ""
    atomic_write_bytes(md_path, markdown(res, rows, info, quick=args.quick, seconds=seconds,
                                         kept=kept).encode())
    atomic_write_json(out / "summary.json", {"targets": rows, "seconds": seconds, "quick": args.quick,
                                             "section_seconds": info["section_seconds"],
                                             "machine": info["machine"], "errors": info["errors"]})
    print(f"\nfedtune bench: {seconds / 60:.1f} min; results in {out}")
    for r in rows:
        print(f"  {'MET ' if r['met'] else 'MISS'} {r['target']}: {r['measured']:,.3g} {r['unit']} "
              f"(goal {r['goal']:,})" + (f" — {r['why']}" if r["why"] else ""))
    for name, err in info["errors"].items():
        print(f"  FAILED section {name}: {err}")
    return 1 if info["errors"] else 0


if __name__ == "__main__":
    sys.exit(main())
