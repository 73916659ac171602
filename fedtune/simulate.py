"""`fedtune simulate`: split the pooled data into simulated sites, start a private SuperLink in
simulation mode on a free port, submit the run with `flwr run --stream`, and reap everything."""

from __future__ import annotations

import dataclasses
import json
import os
import subprocess
import sys
from pathlib import Path

from common.atomic import PUBLIC, atomic_write_csv, atomic_write_text
from common.config import RunConfig
from common.data.load import load_table
from common.errors import DataError, FedtuneError
from common.partition import partition
from fedtune import flower
from server.rundir import is_round_line

REPO = Path(__file__).resolve().parents[1]


def prepare_sites(cfg: RunConfig, out: Path) -> RunConfig:
    """Partition the pooled file into `out/sites/site-<i>/data.csv`; fix the label space and every
    path so Flower's processes see absolute ones. Returns the resolved config."""
    from common.model import resolve_base

    resolve_base(cfg.model)  # a missing or broken model directory fails here, before any process
    data = Path(cfg.simulation.data)
    if not data.is_absolute() and not data.exists() and (REPO / data).exists():
        data = REPO / data
    pooled = load_table(data).frame
    label_col = cfg.data.label_column
    if label_col not in pooled.columns:
        raise DataError(f"{data}: no label column {label_col!r} (columns: "
                        f"{', '.join(map(str, pooled.columns))}): set data.label-column")
    task = cfg.task
    if cfg.task.type == "classification":
        names = cfg.task.label_names(base_dir=Path.cwd()) or sorted(
            pooled[label_col].dropna().astype(str).unique())
        atomic_write_text(out / "labels.txt", "\n".join(names) + "\n", mode=PUBLIC)
        task = dataclasses.replace(task, labels=f"@{out / 'labels.txt'}")
    parts = partition(pooled, scheme=cfg.simulation.partition, num_sites=cfg.simulation.sites,
                      label_column=label_col, seed=cfg.train.seed)
    sites_dir = Path(cfg.simulation.sites_dir).resolve() if cfg.simulation.sites_dir else out / "sites"
    for i, part in enumerate(parts):
        site = sites_dir / f"site-{i}"
        site.mkdir(parents=True, exist_ok=True)
        atomic_write_csv(site / "data.csv", part, mode=PUBLIC)
    concurrency = cfg.simulation.concurrency or max(1, min(cfg.simulation.sites,
                                                           (os.cpu_count() or 2) // 2))
    threads = cfg.train.threads or max(1, (os.cpu_count() or 1) // concurrency)
    return dataclasses.replace(
        cfg, task=task,
        simulation=dataclasses.replace(cfg.simulation, data=str(data.resolve()),
                                       concurrency=concurrency, sites_dir=str(sites_dir)),
        train=dataclasses.replace(cfg.train, threads=threads),
        output=dataclasses.replace(cfg.output, run_dir=str(out)))


def resume_config(run_dir: Path, *, config_file: str | None, sets: list[str]) -> RunConfig:
    """The run's own resolved config (with output.resume on). A --config/--set that changes
    anything is refused, naming the keys: a resumed run must be the same run."""
    from common.config import from_flat, load_toml, parse_sets

    saved_path = run_dir / "config.toml"
    if not saved_path.is_file():
        raise FedtuneError(f"{run_dir} is not a fedtune run directory (no config.toml): pass the "
                           "directory a previous `fedtune simulate --out` wrote")
    saved = from_flat(load_toml(saved_path), origin=str(saved_path))
    wanted = saved
    if config_file:
        wanted = from_flat(load_toml(config_file), base=wanted, origin=str(config_file))
    if sets:
        wanted = from_flat(parse_sets(sets), base=wanted, origin="--set")
    if wanted.hash() != saved.hash():
        old, new = saved.to_flat(), wanted.to_flat()
        changed = [f"{k}: {old[k]!r} -> {new[k]!r}" for k in new if new[k] != old[k]]
        raise FedtuneError(f"cannot resume {run_dir} with a changed config ({'; '.join(changed)}): "
                           "resume without --config/--set, or start a new run with --out")
    return dataclasses.replace(saved, output=dataclasses.replace(saved.output, resume=True,
                                                                  run_dir=str(run_dir)))


def simulate(cfg: RunConfig, *, out: Path, quiet: bool = False, status: dict | None = None) -> dict:
    """Run the whole federation on this machine; returns summary.json's content.
    With cfg.output.resume the sites and splits of the earlier run are reused as they are.
    `status`: StatusServer options for the live status page (fedtune/status; None = none)."""
    from server.tracking import require

    require(cfg)  # a tracker asked for without its extra fails before any process starts
    page = _status_page(out.resolve(), status, quiet)  # a refused --status-host fails here too
    try:
        return _run(cfg, out=out.resolve(), quiet=quiet)
    finally:
        if page is not None:
            page.stop()


def _run(cfg: RunConfig, *, out: Path, quiet: bool) -> dict:
    out.mkdir(parents=True, exist_ok=True)
    flower.kill_by_marker(str(out / ".flwr"))  # leftovers of a crashed run in this directory
    if not cfg.output.resume:
        cfg = prepare_sites(cfg, out)
    sizes = [sum(1 for _ in open(Path(cfg.simulation.sites_dir) / f"site-{i}" / "data.csv",
                                 encoding="utf-8")) - 1 for i in range(cfg.simulation.sites)]
    _say(f"fedtune simulate: {cfg.simulation.sites} sites ({cfg.simulation.partition}) with "
         f"{sizes} rows; {cfg.federation.rounds} rounds; {cfg.simulation.concurrency} sites at a "
         f"time x {cfg.train.threads} threads; run directory {out}", quiet)
    flwr_home = out / ".flwr"
    flwr_home.mkdir(exist_ok=True)
    port = flower.free_port()
    atomic_write_text(flwr_home / "config.toml",
                      f'[superlink]\ndefault = "fedtune"\n\n[superlink.fedtune]\n'
                      f'address = "127.0.0.1:{port}"\ninsecure = true\n', mode=PUBLIC)
    run_config = flwr_home / "run_config.toml"
    atomic_write_text(run_config, cfg.to_toml(), mode=PUBLIC)
    env = flower.flower_env(flwr_home)
    log = flwr_home / "superlink.log"
    superlink = flower.start(
        ["flower-superlink", "--insecure", "--simulation", "--isolation", "subprocess",
         "--host", "127.0.0.1", "--port", str(port),
         "--disable-runtime-dependency-installation"], env=env, log=log)
    procs = [superlink]
    try:
        flower.wait_http(f"http://127.0.0.1:{port}/health", proc=superlink, log=log)
        cpus = max(1, (os.cpu_count() or 1) // cfg.simulation.concurrency)
        cmd = ["flwr", "run", str(REPO), "fedtune", "--stream", "--run-config", str(run_config),
               "--federation-config",
               f"num-supernodes={cfg.simulation.sites} client-resources-num-cpus={cpus}"]
        run = subprocess.Popen(cmd, env=env, cwd=str(REPO), stdout=subprocess.PIPE,
                               stderr=subprocess.STDOUT, stdin=subprocess.DEVNULL,
                               start_new_session=True, text=True, bufsize=1)
        procs.insert(0, run)
        with open(out / "log.txt", "a", encoding="utf-8") as logfh:
            for line in run.stdout:  # the ServerApp's per-round table arrives here
                logfh.write(line)
                if not quiet and shown(line):
                    sys.stdout.write(line)
                    sys.stdout.flush()
        run.wait()
    finally:
        flower.reap(procs)
        flower.kill_by_marker(str(flwr_home))
    summary_path = out / "summary.json"
    if not summary_path.is_file():
        raise FedtuneError(f"the federation ended without a summary: {_cause(out / 'log.txt')} "
                           f"(full log: {out / 'log.txt'}; SuperLink log: {log})")
    return json.loads(summary_path.read_text(encoding="utf-8"))


def _status_page(out: Path, options: dict | None, quiet: bool):
    """The live status page (+ /metrics) of this run, read from its run directory."""
    if options is None:
        return None
    from fedtune.status.prom import runs_metrics
    from fedtune.status.server import StatusServer

    runs = lambda: {out.name: out}  # noqa: E731
    page = StatusServer(runs=runs, metrics=runs_metrics(runs), **options).start()
    _say(f"fedtune simulate: status page {page.url}{page.note} (metrics {page.url}metrics)", quiet)
    return page


def _cause(log: Path) -> str:
    """The last fedtune error a Flower process logged (ServerApp/ClientApp tracebacks end there)."""
    lines = flower.tail(log, 400).splitlines()
    hits = [ln.strip() for ln in lines if "Error: " in ln or "Exceeded: " in ln or "error: " in ln]
    return hits[-1] if hits else "no error was logged"


def shown(line: str) -> bool:
    """Of the coordinator's streamed output, show fedtune's own lines, its per-round line
    (server/rundir.py is_round_line) and errors; hide Flower's per-message chatter."""
    return (is_round_line(line) or "fedtune" in line or "ERROR" in line or "Error" in line
            or "Traceback" in line or "error:" in line)


def _say(text: str, quiet: bool) -> None:
    if not quiet:
        print(text, flush=True)
