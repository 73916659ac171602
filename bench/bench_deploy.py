"""The demo config on the deployment engine and in simulation, in one run on this machine.

    python bench/bench_deploy.py [--rounds 3] [--quick] [--out bench/results]

Simulation: `fedtune simulate --config configs/demo.toml`. Deployment: the same partition of the
demo data into 3 bank files (as deploy/demo_local.sh), a coordinator and 3 `fedtune site start`
processes on loopback (plain HTTP on loopback: TLS costs nothing measurable here and the bench
measures the site runtime), one `fedtune run`. Reports, per round, the wall time of each (the
ServerApp's own round clock, metrics.jsonl `round_s`) and their ratio, the accuracies (they
must agree), and from every site's runtime-timing.jsonl the site-side overhead per message: the
time a message in hand spends at the site outside training/evaluation (building or reusing the
warm site, policy checks, loading the arrays, pushing the reply to the SuperNode) — cold first vs
warm later ones — and separately the wait for the message's arrays to reach the SuperNode.
Writes <out>/deploy.json (ratios.deployed_over_simulated) and <out>/deploy.md."""

from __future__ import annotations

import argparse
import json
import os
import statistics
import subprocess
import sys
import time
import uuid
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))
os.environ.setdefault("HF_HUB_OFFLINE", "1")

from fedtune import flower  # noqa: E402

REPO = Path(__file__).resolve().parents[1]
CLI = [sys.executable, "-m", "fedtune.cli"]


def _rows(run_dir: Path) -> list[dict]:
    return [json.loads(x) for x in (run_dir / "metrics.jsonl").read_text().splitlines()]


def simulate(work: Path, sets: list[str]) -> tuple[list[dict], float]:
    t0 = time.perf_counter()
    out = work / "sim"
    subprocess.run([*CLI, "simulate", "--config", "configs/demo.toml", "--out", str(out),
                    *[a for s in sets for a in ("--set", s)]], cwd=REPO, check=True,
                   stdout=subprocess.DEVNULL, stdin=subprocess.DEVNULL)
    return _rows(out), time.perf_counter() - t0


def _partition(work: Path, sets: list[str]) -> list[Path]:
    from common.config import resolve
    from common.data.load import load_table
    from common.partition import partition

    cfg = resolve(REPO / "configs/demo.toml", sets)
    pooled = load_table(REPO / cfg.simulation.data).frame
    names = sorted(pooled[cfg.data.label_column].astype(str).unique())
    (work / "labels.txt").write_text("\n".join(names) + "\n")
    files = []
    for i, part in enumerate(partition(pooled, scheme=cfg.simulation.partition,
                                       num_sites=cfg.simulation.sites,
                                       label_column=cfg.data.label_column, seed=cfg.train.seed)):
        files.append(work / f"bank-{i}.csv")
        part.to_csv(files[-1], index=False)
    return files


def _wait(log: Path, text: str, proc: subprocess.Popen, timeout: float = 180) -> None:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if log.is_file() and text in log.read_text(errors="replace"):
            return
        if proc.poll() is not None:
            raise RuntimeError(f"{proc.args} exited: {flower.tail(log)}")
        time.sleep(0.3)
    raise RuntimeError(f"timed out waiting for {text!r} in {log}")


def deploy(work: Path, sets: list[str], threads: int) -> tuple[list[dict], float, list[list[dict]]]:
    files = _partition(work, sets)
    marker = uuid.uuid4().hex
    env = flower.flower_env(work / "flwr-home", FEDTUNE_BENCH_MARKER=marker,
                            FEDTUNE_SITE_THREADS=str(threads))
    procs = []
    port = flower.free_port()
    try:
        log = work / "coordinator.log"
        procs.append(flower.start([*CLI, "coordinator", "start", "--insecure", "--port", str(port),
                                   "--state", str(work / "coord/state.db")], env=env, log=log))
        _wait(log, "coordinator listening", procs[-1])
        for i, data in enumerate(files):
            slog = work / f"site-{i}.log"
            procs.append(flower.start([*CLI, "site", "start", "--insecure", "--coordinator",
                                       f"127.0.0.1:{port}", "--data", str(data), "--site-dir",
                                       str(work / f"site-{i}"), "--name", f"bank-{i}", "--index",
                                       str(i), "--port", str(flower.free_port())], env=env, log=slog))
        for i in range(len(files)):
            _wait(work / f"site-{i}.log", "connected to coordinator", procs[1 + i])
        t0 = time.perf_counter()
        subprocess.run([*CLI, "run", "--insecure", "--config", "configs/demo.toml", "--coordinator",
                        f"127.0.0.1:{port}", "--out", str(work / "deployed"), "--quiet",
                        "--set", f"task.labels=@{work / 'labels.txt'}",
                        "--set", f"federation.min-sites={len(files)}",
                        *[a for s in sets for a in ("--set", s)]],
                       cwd=REPO, env=env, check=True, stdin=subprocess.DEVNULL)
        wall = time.perf_counter() - t0
    finally:
        flower.reap(procs)
        flower.kill_by_marker(marker)
    timings = [[json.loads(x) for x in (work / f"site-{i}/runtime-timing.jsonl").read_text()
                .splitlines()] for i in range(len(files))]
    return _rows(work / "deployed"), wall, timings


def summarise(sim: list[dict], dep: list[dict], timings: list[list[dict]], *, walls: dict,
              config: dict) -> dict:
    rounds = []
    for s, d in zip(sim, dep):
        rounds.append({"round": s["round"], "simulated_s": s["round_s"], "deployed_s": d["round_s"],
                       "ratio": d["round_s"] / s["round_s"],
                       "accuracy_simulated": s["evaluate"].get("accuracy"),
                       "accuracy_deployed": d["evaluate"].get("accuracy")})
    cold = [t[0]["overhead"] for t in timings if t]
    warm = [m["overhead"] for t in timings for m in t[1:]]
    wait = [m["wait"] for t in timings for m in t]
    warm_rounds = rounds[1:] or rounds
    return {
        "config": config, "rounds": rounds, "walls_s": walls,
        "site_overhead_s": {"cold_first_message": {"mean": statistics.mean(cold), "max": max(cold)},
                            "warm": {"mean": statistics.mean(warm), "max": max(warm),
                                     "messages": len(warm)},
                            "waiting_for_arrays": {"mean": statistics.mean(wait), "max": max(wait)}},
        "site_rss_mib_per_message": [[round(m.get("rss_mib", 0.0)) for m in t] for t in timings],
        "accuracy_identical": all(r["accuracy_simulated"] == r["accuracy_deployed"] for r in rounds),
        "ratios": {"deployed_over_simulated": statistics.mean(r["ratio"] for r in warm_rounds),
                   "deployed_over_simulated_all_rounds": statistics.mean(r["ratio"] for r in rounds),
                   "deployed_over_simulated_per_round": [r["ratio"] for r in rounds]},
    }


def markdown(res: dict) -> str:
    lines = ["# Deployment engine vs simulation (demo config, 3 banks, same machine, one run)", "",
             "Deployed: a coordinator and 3 `fedtune site start` processes on loopback (each site's "
             "runtime serves its SuperNode's tasks with its own installed fedtune, warm across "
             "messages; arrays packed into one blob per message; the SuperNode's idle poll capped "
             f"at 0.25 s), {res['config']['deployed_site_threads']} torch thread(s) per site. "
             "Simulated: `fedtune simulate`, sites one after another with all cores. Round times "
             "are the ServerApp's own clock (metrics.jsonl `round_s`).", "",
             "| round | simulated s | deployed s | deployed / simulated | accuracy sim | accuracy dep |",
             "|---:|---:|---:|---:|---:|---:|"]
    for r in res["rounds"]:
        lines.append(f"| {r['round']} | {r['simulated_s']:.1f} | {r['deployed_s']:.1f} | "
                     f"{r['ratio']:.2f}x | {r['accuracy_simulated']:.4f} | {r['accuracy_deployed']:.4f} |")
    o = res["site_overhead_s"]
    lines += ["", f"Deployed / simulated round wall time, rounds 2+: "
                  f"**{res['ratios']['deployed_over_simulated']:.2f}x** (all rounds "
                  f"{res['ratios']['deployed_over_simulated_all_rounds']:.2f}x); accuracies identical: "
                  f"{res['accuracy_identical']}.",
              f"Site-side overhead per message (outside training/evaluation): cold first message "
              f"{o['cold_first_message']['mean']:.2f} s mean (data pipeline, model load, tokenising), "
              f"warm {o['warm']['mean']:.3f} s mean / {o['warm']['max']:.3f} s max over "
              f"{o['warm']['messages']} messages. Besides, each message waited "
              f"{o['waiting_for_arrays']['mean']:.2f} s mean ({o['waiting_for_arrays']['max']:.2f} s max) "
              "between the SuperNode handing it out and its (packed) arrays being in the runtime's "
              "hands (the SuperNode fetches them from the coordinator after the header).",
              "Site process memory (RSS MiB) after each message: " + "; ".join(
                  " ".join(str(v) for v in t) for t in res["site_rss_mib_per_message"]) + ".",
              f"Whole runs: simulate {res['walls_s']['simulate']:.0f} s (with its process start), "
              f"deployed `fedtune run` {res['walls_s']['deployed_run']:.0f} s.", ""]
    return "\n".join(lines)


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--rounds", type=int, default=3)
    ap.add_argument("--threads", type=int, default=1, help="torch threads per deployed site")
    ap.add_argument("--quick", action="store_true", help="tiny model: a smoke run of the bench")
    ap.add_argument("--base", default="", help="model.base (default: all-MiniLM-L6-v2)")
    ap.add_argument("--out", default="", help="default bench/results (bench/results/quick)")
    ap.add_argument("--work", default="")
    args = ap.parse_args()
    import tempfile

    work = Path(args.work or tempfile.mkdtemp(prefix="fedtune-bench-deploy-"))
    base = args.base
    if args.quick:
        from bench.tiny import make_tiny_model

        base = base or str(make_tiny_model(work / "tiny"))
    sets = [f"federation.rounds={args.rounds}"] + ([f"model.base={base}"] if base else [])
    if args.quick:
        sets += ["model.max-length=32", "train.local-epochs=0.2"]
    (work / "s").mkdir(parents=True, exist_ok=True)
    (work / "d").mkdir(parents=True, exist_ok=True)
    sim, sim_wall = simulate(work / "s", sets)
    dep, dep_wall, timings = deploy(work / "d", sets, args.threads)
    res = summarise(sim, dep, timings, walls={"simulate": sim_wall, "deployed_run": dep_wall},
                    config={"sets": sets, "deployed_site_threads": args.threads,
                            "cpus": os.cpu_count()})
    out = Path(args.out or REPO / ("bench/results/quick" if args.quick else "bench/results"))
    out.mkdir(parents=True, exist_ok=True)
    (out / "deploy.json").write_text(json.dumps(res, indent=2) + "\n")
    (out / "deploy.md").write_text(markdown(res))
    print(markdown(res))
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
