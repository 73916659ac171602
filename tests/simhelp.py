"""The one harness of the end-to-end tests: every real `fedtune` process a test starts (a
simulation, a coordinator, a site, a submitted run, any other verb) is started here, with the
same environment (the venv's bin first on PATH, where Flower's own CLIs live), from the checkout,
and stopped here. Tests that start one are marked `slow` (tests/test_imports.py checks it)."""

from __future__ import annotations

import json
import os
import re
import signal
import subprocess
import sys
import time
import uuid
from pathlib import Path

from fedtune.flower import free_port

ROOT = Path(__file__).resolve().parents[1]
SMALL = ["simulation.sites=2", "simulation.partition=iid", "federation.rounds=2"]


def env(**extra: str) -> dict[str, str]:
    """The environment of a fedtune process: this interpreter's bin first on PATH, plus `extra`."""
    return dict(os.environ, PATH=f"{Path(sys.executable).parent}{os.pathsep}{os.environ['PATH']}", **extra)


def cli(*args: str) -> list[str]:
    """The command line of `fedtune ARGS` in this checkout."""
    return [sys.executable, "-m", "fedtune.cli", *args]


def sim_args(out: Path, sets: list[str], *flags: str) -> list[str]:
    """`simulate --out OUT FLAGS --set ...` arguments."""
    args = ["simulate", *flags, "--out", str(out)]
    for s in sets:
        args += ["--set", s]
    return args


def run(*args: str, timeout: float = 600, extra_env: dict[str, str] | None = None,
        **kw) -> subprocess.CompletedProcess:
    """Run `fedtune ARGS` to its end; stdout/stderr captured as text (exit code not checked)."""
    kw.setdefault("capture_output", True)
    return subprocess.run(cli(*args), cwd=kw.pop("cwd", ROOT), env=kw.pop("env", None) or env(**(extra_env or {})),
                          text=True, timeout=timeout, check=False, **kw)


def start(*args: str, log: Path | None = None, extra_env: dict[str, str] | None = None,
          **kw) -> subprocess.Popen:
    """Start `fedtune ARGS` in the background (its own session; output to `log` or nowhere)."""
    out = open(log, "a", encoding="utf-8") if log else subprocess.DEVNULL  # noqa: SIM115 - closed by stop()
    kw.setdefault("start_new_session", True)
    proc = subprocess.Popen(cli(*args), cwd=kw.pop("cwd", ROOT), env=kw.pop("env", None) or env(**(extra_env or {})),
                            stdout=out, stderr=subprocess.STDOUT if log else subprocess.DEVNULL,
                            stdin=subprocess.DEVNULL, **kw)
    proc.log_file = out if log else None
    return proc


def stop(proc: subprocess.Popen, *, timeout: float = 60) -> None:
    """SIGTERM to the process group `start` made (fedtune stops its Flower processes on it), then
    SIGKILL if it does not end."""
    if proc.poll() is None:
        os.killpg(proc.pid, signal.SIGTERM)
        try:
            proc.wait(timeout=timeout)
        except subprocess.TimeoutExpired:
            os.killpg(proc.pid, signal.SIGKILL)
            proc.wait(timeout=30)
    if getattr(proc, "log_file", None):
        proc.log_file.close()


def wait_for(log: Path, proc: subprocess.Popen, pattern: str, *, timeout: float = 180) -> str:
    """The first group of `pattern` once it appears in `log` (fails if the process ends first)."""
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        found = re.search(pattern, log.read_text(errors="replace"))
        if found:
            return found.group(1)
        if proc.poll() is not None:
            break
        time.sleep(0.3)
    raise AssertionError(f"{pattern!r} never appeared in {log}:\n{log.read_text(errors='replace')[-3000:]}")


def flower_processes(marker: str) -> list[int]:
    """PIDs of live processes (zombies excluded) whose command line or environment holds `marker`
    (e.g. a run's FLWR_HOME, a Federation's MARK): what a test checks is gone after a stop."""
    found = []
    for pid in os.listdir("/proc"):
        if not pid.isdigit() or int(pid) == os.getpid():
            continue
        try:
            if Path(f"/proc/{pid}/stat").read_text().split(") ", 1)[1].startswith("Z"):
                continue
            blob = Path(f"/proc/{pid}/cmdline").read_bytes() + Path(f"/proc/{pid}/environ").read_bytes()
        except (OSError, IndexError):
            continue
        if marker.encode() in blob:
            found.append(int(pid))
    return found


def run_simulate(out: Path, sets: list[str], *flags: str, timeout: float = 600,
                 extra_env: dict[str, str] | None = None) -> subprocess.CompletedProcess:
    """`fedtune simulate` to its end; the test fails with the output's tail when it does not succeed."""
    proc = run(*sim_args(out, sets, *flags), timeout=timeout, extra_env=extra_env)
    assert proc.returncode == 0, proc.stdout[-4000:] + proc.stderr[-4000:]
    return proc


def simulate(out: Path, sets: list[str], *, timeout: int = 600) -> tuple[dict, list[dict], str]:
    """Run a 2-site simulation; returns (summary.json, metrics.jsonl rows, stdout+stderr)."""
    proc = run_simulate(out, [*SMALL, *sets], timeout=timeout)
    return read_run(out) + (proc.stdout + proc.stderr,)


def read_run(out: Path) -> tuple[dict, list[dict]]:
    """(summary.json, metrics.jsonl rows) of a finished run directory."""
    summary = json.loads((out / "summary.json").read_text())
    rows = [json.loads(line) for line in (out / "metrics.jsonl").read_text().splitlines()]
    return summary, rows


# ---- a deployed federation on loopback: certs, a coordinator, sites, `fedtune run` ---------------
MARK = "FEDTUNE_IT_MARKER"  # every process of one Federation inherits its own value
LABELS = [f"intent_{i}" for i in range(4)]


class Federation:
    """Starts and stops every process of the test; `stop()` is idempotent."""

    def __init__(self, tmp: Path, tiny: Path):
        self.tmp, self.tiny, self.marker = tmp, tiny, uuid.uuid4().hex
        self.env = env(**{MARK: self.marker}, PYTHONUNBUFFERED="1", HF_HUB_OFFLINE="1",
                       FEDTUNE_AUDIT_DIR=str(tmp / "audit"))  # the sites' outbound guard logs here
        self.procs: dict[str, subprocess.Popen] = {}
        self.port = free_port()
        self.coordinator = f"127.0.0.1:{self.port}"

    def cli(self, *args: str, timeout: float = 120) -> subprocess.CompletedProcess:
        return run(*args, timeout=timeout, env=self.env, stdin=subprocess.DEVNULL)

    def spawn(self, name: str, *args: str) -> subprocess.Popen:
        proc = start(*args, log=self.tmp / f"{name}.out", env=self.env)
        self.procs[name] = proc
        return proc

    def output(self, name: str) -> str:
        return (self.tmp / f"{name}.out").read_text(errors="replace")

    def wait_for(self, name: str, text: str, timeout: float) -> None:
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            if text in self.output(name):
                return
            if self.procs[name].poll() is not None:
                break
            time.sleep(0.3)
        raise AssertionError(f"{name} never printed {text!r}:\n{self.output(name)[-3000:]}")

    def site_args(self, name: str, *, ca: Path | None = None, policy: Path | None = None) -> list[str]:
        certs = self.tmp / "certs"
        args = ["site", "start", "--coordinator", self.coordinator,
                "--ca", str(ca or certs / f"site-{name}/ca.crt"), "--key", str(certs / f"site-{name}/{name}.key"),
                "--data", str(self.tmp / f"data-{name}.csv"), "--site-dir", str(self.tmp / f"site-{name}"),
                "--name", name, "--port", str(free_port())]
        return args + (["--policy", str(policy)] if policy else [])

    def stop(self) -> list[int]:
        """SIGTERM every wrapper (they reap their Flower children); returns (and kills) leftovers."""
        for proc in self.procs.values():
            if proc.poll() is None:
                os.killpg(proc.pid, signal.SIGTERM)
        for proc in self.procs.values():
            try:
                proc.wait(timeout=20)
            except subprocess.TimeoutExpired:
                os.killpg(proc.pid, signal.SIGKILL)
                proc.wait(timeout=10)
        # An orphaned flwr-clientapp (its SuperNode was SIGKILLed) exits by itself once its parent
        # monitor runs, which starts only after its imports: allow a slow, loaded machine time.
        deadline = time.monotonic() + 60
        while flower_processes(self.marker) and time.monotonic() < deadline:
            time.sleep(0.5)
        left = flower_processes(self.marker)
        for pid in left:  # last resort, so a failing test leaves nothing either
            try:
                os.kill(pid, signal.SIGKILL)
            except ProcessLookupError:
                pass
        return left
