"""`fedtune run`: submit one federation run to a running coordinator and stream its progress.

The run config is resolved here once (defaults <- --config <- --set), written as a TOML file and
passed with `flwr run <repo> fedtune --stream --run-config FILE` over a private FLWR_HOME
connection that trusts only the federation's CA. The Control API answers only on the
coordinator's loopback address (fedtune/ops/proxy.py): run this on the coordinator host with
--coordinator 127.0.0.1:PORT, or through an SSH tunnel to it. The ServerApp writes the run
directory at output.run-dir on the coordinator's disk (relative paths land in the coordinator's state
folder). simulation.* keys do not matter here; federation.min-sites is how many sites must be
connected before round 1 starts."""

from __future__ import annotations

import dataclasses
import json
import os
import re
import subprocess
import sys
import tempfile
import time
from pathlib import Path

from common.config import RunConfig, from_flat, load_toml, parse_sets
from common.errors import ConfigError, FedtuneError
from fedtune import flower
from fedtune.ops import ops_env, require_loopback, split_address, tls_preflight, write_connection
from fedtune.simulate import REPO, shown


def resolve_run_config(config: str | None, sets: list[str] | None, *, out: str | None) -> RunConfig:
    """The deployment run config: like common.config.resolve, plus deployment fix-ups.

    simulation.sites is raised to federation.min-sites (it is irrelevant here but RunConfig
    checks the pair), task.labels given as @file is inlined (the file is on this machine, not on
    the coordinator or the sites), and output.run-dir is set from --out."""
    flat = dict(load_toml(config)) if config else {}
    flat.update(parse_sets(sets))
    keys = {k.replace("_", "-") for k in flat}
    if "federation.min-sites" in keys and "simulation.sites" not in keys:
        min_sites = next(v for k, v in flat.items() if k.replace("_", "-") == "federation.min-sites")
        try:
            flat["simulation.sites"] = max(int(min_sites), 1)
        except (TypeError, ValueError):
            pass  # from_flat reports the bad min-sites value
    cfg = from_flat(flat, origin=config or "--set")
    task = cfg.task
    if task.type == "classification":
        names = task.label_names(base_dir=Path(config).parent if config else Path.cwd())
        if not names:
            raise ConfigError("task.labels is empty: a deployed federation needs the label space "
                              "up front (every site maps its labels to it), e.g. --set "
                              "task.labels=card_lost,card_arrived or task.labels=@labels.txt")
        if any("," in n for n in names):
            raise ConfigError("task.labels: a label name contains a comma, which the run config "
                              "cannot carry: rename that label")
        task = dataclasses.replace(task, labels=",".join(names))
    run_dir = out or cfg.output.run_dir or f"runs/run-{time.strftime('%Y%m%d-%H%M%S')}"
    return dataclasses.replace(cfg, task=task,
                               output=dataclasses.replace(cfg.output, run_dir=run_dir))


def app_dir() -> Path:
    """The Flower app submitted: $FEDTUNE_APP_DIR, else this source tree (its pyproject.toml names
    the ServerApp/ClientApp and the run-config defaults)."""
    path = Path(os.environ.get("FEDTUNE_APP_DIR") or REPO)
    if not (path / "pyproject.toml").is_file():
        raise ConfigError(f"{path} has no pyproject.toml, so it cannot be submitted as the Flower "
                          "app: install fedtune from its source tree (pip install -e .) or set "
                          "FEDTUNE_APP_DIR to that tree")
    return path


def submit(cfg: RunConfig, *, coordinator: str, ca: Path | None, insecure: bool = False,
           quiet: bool = False) -> dict:
    """Submit `cfg`, stream until the run ends; returns summary.json when the run directory is on
    this machine, else {"run_dir": ..., "status": "finished"}."""
    host, port = split_address(coordinator)
    if insecure:
        require_loopback(host, what="--coordinator", fix="Submit over TLS: --ca FILE.")
    if not insecure and (ca is None or not ca.is_file()):
        raise ConfigError(f"--ca {ca} does not exist: pass the federation's ca.crt (or --insecure "
                          "for a coordinator started with --insecure)")
    if tls_preflight(host, port, ca=None if insecure else ca) == "unreachable":
        raise FedtuneError(f"no coordinator answers at {coordinator}: start it with `fedtune "
                           "coordinator start`, or check --coordinator and the firewall")
    with tempfile.TemporaryDirectory(prefix="fedtune-run-") as tmp:
        home = Path(tmp)
        write_connection(home, address=f"{host}:{port}", ca=None if insecure else ca)
        run_config = home / "run_config.toml"
        run_config.write_text(cfg.to_toml(), encoding="utf-8")
        env, marker = ops_env(home)
        cmd = ["flwr", "run", str(app_dir()), "fedtune", "--stream", "--run-config", str(run_config)]
        _say(f"fedtune run: {cfg.federation.rounds} rounds, waiting for {cfg.federation.min_sites} "
             f"sites, on {coordinator}; run directory (on the coordinator) {cfg.output.run_dir}", quiet)
        code, lines, run_id = _stream(cmd, env=env, marker=marker, quiet=quiet)
    text = "\n".join(lines[-25:])
    done = any("fedtune: done" in ln for ln in lines)
    if code or not done:
        if "certificate_verify_failed" in text.lower() or "certificate verify failed" in text.lower():
            raise FedtuneError(f"the coordinator's certificate is not trusted by --ca {ca}: use the "
                               "federation's ca.crt")
        hint = ""
        if " 404" in text or "not found" in text.lower():
            hint = (" The coordinator's public address serves sites only: submit on the coordinator "
                    "host to 127.0.0.1:PORT, or through an SSH tunnel (deploy/OPERATOR.md).")
        raise FedtuneError(f"the run{f' {run_id}' if run_id else ''} did not finish (flwr exit "
                           f"{code}).{hint} Last lines:\n{text}")
    summary_path = Path(cfg.output.run_dir) / "summary.json"
    if summary_path.is_absolute() and summary_path.is_file():  # coordinator on this machine
        summary = json.loads(summary_path.read_text(encoding="utf-8"))
        if summary.get("config_hash") == cfg.hash():
            return summary
    return {"run_dir": cfg.output.run_dir, "status": "finished", "run_id": run_id}


def _stream(cmd: list[str], *, env: dict[str, str], marker: str,
            quiet: bool) -> tuple[int, list[str], str | None]:
    """Run `flwr run --stream`, echo the ServerApp's per-round lines; Ctrl-C stops the run."""
    lines: list[str] = []
    run_id = None
    proc = subprocess.Popen(cmd, env=env, cwd=cmd[2], stdout=subprocess.PIPE,
                            stderr=subprocess.STDOUT, stdin=subprocess.DEVNULL,
                            start_new_session=True, text=True, bufsize=1, errors="replace")
    try:
        for line in proc.stdout:
            lines.append(line.rstrip("\n"))
            found = re.search(r"run[ _-]?(?:id)?[: ]+(\d{6,})", line, re.IGNORECASE)
            if run_id is None and found:
                run_id = found.group(1)
                _say(f"fedtune run: run {run_id} started (stop it with Ctrl-C)", quiet)
            if not quiet and shown(line):
                sys.stdout.write(line)
                sys.stdout.flush()
        code = proc.wait()
    except KeyboardInterrupt:
        if run_id:  # the run would otherwise go on at the coordinator
            subprocess.run(["flwr", "stop", run_id, "fedtune"], env=env, capture_output=True,
                           timeout=30, stdin=subprocess.DEVNULL)
            print(f"fedtune run: asked the coordinator to stop run {run_id}", file=sys.stderr)
        raise
    finally:
        flower.reap([proc])
        flower.kill_by_marker(marker)
    return code, lines, run_id


def _say(text: str, quiet: bool) -> None:
    if not quiet:
        print(text, flush=True)
