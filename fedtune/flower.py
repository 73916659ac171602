"""Starting and reaping Flower processes. Every process fedtune starts runs in its own session
(process group) and is killed by PID, group and all, when the command ends — Flower's CLI would
otherwise leave a detached SuperLink behind."""

from __future__ import annotations

import os
import signal
import socket
import subprocess
import sys
import time
import urllib.request
from pathlib import Path

from common.errors import FedtuneError


def flower_env(flwr_home: Path, **extra: str) -> dict[str, str]:
    """Environment for every Flower process: private FLWR_HOME, telemetry and update checks off,
    no runtime `uv sync` of the project's dependencies, and the venv's bin on PATH."""
    env = dict(os.environ)
    env.update({
        "FLWR_HOME": str(flwr_home),
        "FLWR_TELEMETRY_ENABLED": "0",
        "FLWR_DISABLE_UPDATE_CHECK": "1",
        "FLWR_DISABLE_RUNTIME_DEPENDENCY_INSTALLATION": "1",
        "HF_HUB_OFFLINE": "1",
        "TOKENIZERS_PARALLELISM": "false",
        "RAY_DEDUP_LOGS": "0",
        "RAY_USAGE_STATS_ENABLED": "0",
        "PYTHONUNBUFFERED": "1",
    })
    bindir = str(Path(sys.executable).parent)
    if bindir not in env.get("PATH", "").split(os.pathsep):
        env["PATH"] = bindir + os.pathsep + env.get("PATH", "")
    env.update(extra)
    return env


def free_port() -> int:
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def start(cmd: list[str], *, env: dict[str, str], log: Path) -> subprocess.Popen:
    """Start `cmd` in a new session, output to `log`."""
    log.parent.mkdir(parents=True, exist_ok=True)
    fh = open(log, "ab")  # noqa: SIM115 - handed to the child; closed with it
    try:
        return subprocess.Popen(cmd, env=env, stdout=fh, stderr=subprocess.STDOUT,
                                stdin=subprocess.DEVNULL, start_new_session=True)
    finally:
        fh.close()


def wait_http(url: str, *, proc: subprocess.Popen, log: Path, timeout: float = 60.0) -> None:
    """Wait until `url` answers 2xx, or fail with the process's log tail."""
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if proc.poll() is not None:
            raise FedtuneError(f"{proc.args[0]} exited with code {proc.returncode} while starting; "
                               f"last log lines:\n{tail(log)}")
        try:
            with urllib.request.urlopen(url, timeout=1) as resp:  # noqa: S310 - loopback only
                if 200 <= resp.status < 300:
                    return
        except OSError:
            pass
        time.sleep(0.3)
    raise FedtuneError(f"{proc.args[0]} did not answer on {url} within {timeout:.0f}s; "
                       f"log:\n{tail(log)}")


def tail(path: Path, lines: int = 15) -> str:
    try:
        return "\n".join(path.read_text(errors="replace").splitlines()[-lines:])
    except OSError:
        return "(no log)"


def reap(procs: list[subprocess.Popen], *, grace: float = 5.0) -> None:
    """SIGTERM each process group, then SIGKILL what is left after `grace` seconds."""
    for proc in procs:
        _signal_group(proc, signal.SIGTERM)
    deadline = time.monotonic() + grace
    for proc in procs:
        try:
            proc.wait(timeout=max(0.1, deadline - time.monotonic()))
        except subprocess.TimeoutExpired:
            pass
        _signal_group(proc, signal.SIGKILL)
        try:
            proc.wait(timeout=5)
        except subprocess.TimeoutExpired:
            pass


def _signal_group(proc: subprocess.Popen, sig: int) -> None:
    try:
        os.killpg(proc.pid, sig)
    except (ProcessLookupError, PermissionError):
        pass


def kill_by_marker(marker: str) -> int:
    """Kill stray processes whose command line or environment mentions `marker` (e.g. a private
    FLWR_HOME): Ray and Flower children can leave their parent's process group."""
    killed = 0
    for pid in os.listdir("/proc"):
        if not pid.isdigit() or int(pid) == os.getpid():
            continue
        try:
            blob = Path(f"/proc/{pid}/cmdline").read_bytes() + Path(f"/proc/{pid}/environ").read_bytes()
        except OSError:
            continue
        if marker.encode() in blob:
            try:
                os.kill(int(pid), signal.SIGKILL)
                killed += 1
            except (ProcessLookupError, PermissionError):
                pass
    return killed
