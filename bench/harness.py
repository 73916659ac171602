"""Shared pieces of the benchmark suite: the datasets and run settings of each mode, memoised
federated runs (in-process, see bench/inproc.py) and real `fedtune simulate` runs, the centralized
and local-only baselines (client/trainer.py directly), the machine description and a sampler of
the memory of a whole process tree."""

from __future__ import annotations

import dataclasses
import json
import math
import os
import platform
import shutil
import threading
import time
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np
import pandas as pd

from common.config import RunConfig, resolve

REPO = Path(__file__).resolve().parents[1]

# name -> (data file, rows, sites, partition, rounds, local epochs, max length)
FULL = {
    "banking77": dict(data="data/banking77_demo.csv", rows=2000, sites=5, partition="dirichlet:0.5",
                      rounds=3, local_epochs=1.0, max_length=64, head_init="label-names"),
    "medical": dict(data="data/medical_abstracts_subset.csv", rows=1500, sites=3,
                    partition="dirichlet:0.5", rounds=2, local_epochs=0.5, max_length=128,
                    head_init="label-names"),
    # many tiny sites: synthetic keyword texts (30 rows a site, 5 labels) so every site has a test split
    "scale": dict(data="synthetic:5", rows=3000, sites=100, partition="iid", rounds=2,
                  local_epochs=1.0, max_length=32),
}
QUICK = {
    "banking77": dict(data="synthetic:8", rows=200, sites=2, partition="dirichlet:0.5", rounds=1,
                      local_epochs=1.0, max_length=32),
    "medical": dict(data="synthetic:5", rows=80, sites=2, partition="iid", rounds=1,
                    local_epochs=1.0, max_length=32),
    "scale": dict(data="synthetic:5", rows=600, sites=20, partition="iid", rounds=1,
                  local_epochs=1.0, max_length=32),
}


@dataclass
class Harness:
    quick: bool
    work: Path
    say: callable = print
    base: str = ""  # model directory; "" = all-MiniLM-L6-v2
    resume: bool = False  # reuse finished runs in `work` (an interrupted suite goes on)
    runs: dict = field(default_factory=dict)
    baseline_cache: dict = field(default_factory=dict)

    def __post_init__(self) -> None:
        # start clean: an earlier run's privacy ledgers, checkpoints and split manifests would
        # change this run (a DP site refuses once its ledger is spent). With resume, finished
        # runs are reused and unfinished ones are started over in a clean directory.
        if not self.resume:
            for sub in ("runs", "sim", "base", "data", "sections"):
                shutil.rmtree(self.work / sub, ignore_errors=True)
        self.work.mkdir(parents=True, exist_ok=True)
        if self.quick:
            from bench.tiny import make_tiny_model

            self.base = str(make_tiny_model(self.work / "tiny-model"))
        self.specs = QUICK if self.quick else FULL

    # ---- data ------------------------------------------------------------------------------
    def data_file(self, name: str) -> Path:
        """The pooled CSV of dataset `name` for this mode (a stratified subset, written once)."""
        spec = self.specs[name]
        path = self.work / "data" / f"{name}.csv"
        if path.is_file():
            return path
        if spec["data"].startswith("synthetic:"):
            from bench.tiny import synthetic_csv

            return synthetic_csv(path, rows=spec["rows"], num_labels=int(spec["data"].split(":")[1]))
        frame = pd.read_csv(REPO / spec["data"])
        frame = stratified(frame, rows=spec["rows"], seed=0)
        path.parent.mkdir(parents=True, exist_ok=True)
        frame.to_csv(path, index=False)
        return path

    def sets(self, name: str, extra: list[str] = ()) -> list[str]:
        spec = self.specs[name]
        base = [f"simulation.data={self.data_file(name)}", f"simulation.sites={spec['sites']}",
                f"simulation.partition={spec['partition']}", f"federation.rounds={spec['rounds']}",
                f"train.local-epochs={spec['local_epochs']}", f"model.max-length={spec['max_length']}",
                f"federation.evaluate-every={spec['rounds']}"]  # evaluate the final adapter only
        if spec.get("head_init"):
            base.append(f"model.head-init={spec['head_init']}")
        if self.base:
            base.append(f"model.base={self.base}")
        return base + list(extra)

    def config(self, name: str, extra: list[str] = ()) -> RunConfig:
        return resolve(None, self.sets(name, extra))

    # ---- federated runs -------------------------------------------------------------------
    def federate(self, name: str, extra: list[str] = ()) -> dict:
        """An in-process federated run of dataset `name` with `extra` settings (memoised)."""
        key = (name, tuple(extra))
        if key not in self.runs:
            from bench.inproc import load_run, run_inprocess

            tag = f"{name}-" + ("-".join(s.split(".")[-1] for s in extra) or "fedavg")
            tag = "".join(c if c.isalnum() or c in "-_=" else "_" for c in tag)[:80]
            out = self.work / "runs" / tag
            res = load_run(out) if self.resume else None
            if res is None:
                shutil.rmtree(out, ignore_errors=True)
                self.say(f"  federated run {tag} ...")
                res = run_inprocess(self.config(name, extra), out=out, log=self.work / "runs.log")
            else:
                self.say(f"  federated run {tag}: reused (--resume)")
            self.say(f"    {res['wall_s']:.0f}s, accuracy {res['summary'].get('accuracy', float('nan')):.4f}")
            self.runs[key] = res
        return self.runs[key]

    def simulate(self, name: str, extra: list[str] = (), *, tag: str) -> dict:
        """A real `fedtune simulate` run (SuperLink + Ray), with the process tree's memory sampled."""
        from fedtune.simulate import simulate

        out = self.work / "sim" / tag
        cache = self.work / "sim" / f"{tag}.json"
        if self.resume and cache.is_file():
            self.say(f"  fedtune simulate {tag}: reused (--resume)")
            return json.loads(cache.read_text(encoding="utf-8"))
        shutil.rmtree(out, ignore_errors=True)
        self.say(f"  fedtune simulate {tag} ...")
        with TreeMemory(marker=str(out.resolve() / ".flwr")) as mem:
            t0 = time.perf_counter()
            summary = simulate(self.config(name, extra), out=out, quiet=True)
            wall = time.perf_counter() - t0
        rows = [json.loads(line) for line in
                (out / "metrics.jsonl").read_text(encoding="utf-8").splitlines() if line.strip()]
        self.say(f"    {wall:.0f}s, accuracy {summary.get('accuracy', float('nan')):.4f}, "
                 f"peak RSS {mem.peak_rss / 2**30:.2f} GiB")
        res = {"summary": summary, "wall_s": wall, "metrics": rows, "memory": mem.result()}
        cache.write_text(json.dumps(res), encoding="utf-8")
        return res

    # ---- baselines ------------------------------------------------------------------------
    def baselines(self, name: str) -> dict:
        if name not in self.baseline_cache:
            from bench.baselines import run_baselines

            cache = self.work / "base" / f"{name}.json"
            if self.resume and cache.is_file():
                self.baseline_cache[name] = json.loads(cache.read_text(encoding="utf-8"))
            else:
                shutil.rmtree(self.work / "base" / name, ignore_errors=True)
                self.say(f"  centralized + local-only baselines on {name} ...")
                self.baseline_cache[name] = run_baselines(self.config(name), out=self.work / "base" / name)
                cache.write_text(json.dumps(self.baseline_cache[name]), encoding="utf-8")
        return self.baseline_cache[name]


def stratified(frame: pd.DataFrame, *, rows: int, seed: int, label: str = "label") -> pd.DataFrame:
    """About `rows` rows with every label's share kept (at least one row per label)."""
    if rows >= len(frame):
        return frame.reset_index(drop=True)
    frac = rows / len(frame)
    rng = np.random.default_rng(seed)
    keep = []
    for _, idx in frame.groupby(label).indices.items():
        n = max(1, round(len(idx) * frac))
        keep += rng.choice(idx, size=min(n, len(idx)), replace=False).tolist()
    return frame.iloc[rng.permutation(sorted(keep))].reset_index(drop=True)


def machine() -> dict:
    """What ran the benchmark: cores, RAM, torch threads, CPU model, versions, load."""
    import torch

    cpu = "unknown"
    try:
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            if line.startswith("model name"):
                cpu = line.split(":", 1)[1].strip()
                break
    except OSError:
        pass
    mem = 0
    try:
        mem = int(next(ln for ln in Path("/proc/meminfo").read_text().splitlines()
                       if ln.startswith("MemTotal")).split()[1]) * 1024
    except (OSError, StopIteration):
        pass
    versions = {}
    for mod in ("torch", "flwr", "peft", "transformers", "opacus", "numpy"):
        try:
            versions[mod] = __import__(mod).__version__
        except ImportError:
            versions[mod] = "-"
    return {"cpu_model": cpu, "cores": os.cpu_count(), "ram_gib": round(mem / 2**30, 1),
            "torch_threads": torch.get_num_threads(),
            "omp_wait_policy": os.environ.get("OMP_WAIT_POLICY", "(unset)"),
            "python": platform.python_version(),
            "platform": platform.platform(), "load_avg": [round(x, 2) for x in os.getloadavg()],
            "versions": versions}


def _read(path: str) -> str:
    try:
        with open(path, "rb") as fh:
            return fh.read().decode(errors="replace")
    except OSError:
        return ""


def tree_pids(root: int, marker: str | None) -> set[int]:
    """Descendants of `root` (by parent pid) and processes whose environment names `marker`
    (Ray and Flower children can leave their parent's tree)."""
    parent: dict[int, int] = {}
    for entry in os.listdir("/proc"):
        if entry.isdigit():
            stat = _read(f"/proc/{entry}/stat")
            if stat:
                parent[int(entry)] = int(stat.rsplit(")", 1)[1].split()[1])
    found, frontier = set(), [root]
    while frontier:
        pid = frontier.pop()
        kids = [p for p, pp in parent.items() if pp == pid and p not in found]
        found.update(kids)
        frontier += kids
    if marker:
        for pid in parent:
            if pid not in found and pid != root and marker in _read(f"/proc/{pid}/environ"):
                found.add(pid)
    return found


def _kib(text: str, field_name: str) -> int:
    for line in text.splitlines():
        if line.startswith(field_name):
            return int(line.split()[1])
    return 0


class TreeMemory:
    """Samples, every `interval` s, the summed RSS and PSS of this process's descendants (plus
    processes carrying `marker`); the bench process itself is reported apart."""

    def __init__(self, *, marker: str | None = None, interval: float = 0.5, include_self: bool = False):
        self.marker, self.interval, self.include_self = marker, interval, include_self
        self.peak_rss = self.peak_pss = self.peak_procs = self.samples = 0
        self.self_peak_rss = 0
        self._stop = threading.Event()

    def sample(self) -> None:
        me = os.getpid()
        pids = tree_pids(me, self.marker) | ({me} if self.include_self else set())
        rss = sum(_kib(_read(f"/proc/{p}/status"), "VmRSS:") for p in pids) * 1024
        pss = sum(_kib(_read(f"/proc/{p}/smaps_rollup"), "Pss:") for p in pids) * 1024
        self.peak_rss, self.peak_pss = max(self.peak_rss, rss), max(self.peak_pss, pss)
        self.peak_procs = max(self.peak_procs, len(pids))
        self.self_peak_rss = max(self.self_peak_rss, _kib(_read(f"/proc/{me}/status"), "VmHWM:") * 1024)
        self.samples += 1

    def _loop(self) -> None:
        while not self._stop.wait(self.interval):
            self.sample()

    def __enter__(self) -> TreeMemory:
        self._thread = threading.Thread(target=self._loop, daemon=True)
        self._thread.start()
        return self

    def __exit__(self, *exc) -> None:
        self._stop.set()
        self._thread.join()
        self.sample()

    def result(self) -> dict:
        return {"peak_rss_bytes": self.peak_rss, "peak_pss_bytes": self.peak_pss,
                "peak_processes": self.peak_procs, "samples": self.samples,
                "interval_s": self.interval, "bench_process_peak_rss_bytes": self.self_peak_rss,
                "includes_bench_process": self.include_self}


def finite(x) -> bool:
    return isinstance(x, (int, float)) and not isinstance(x, bool) and math.isfinite(x)


def replace_cfg(cfg: RunConfig, **sections) -> RunConfig:
    return dataclasses.replace(cfg, **sections)
