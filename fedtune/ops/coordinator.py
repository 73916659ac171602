"""`fedtune coordinator start|enroll`: the federation's SuperLink, run in the foreground.

Flower 1.42 serves the Fleet API (sites), the Control API (`flwr run`, `flwr supernode register`)
and the ServerAppIo API on ONE port. `start` runs `flower-superlink` with TLS, node
authentication (`--enable-supernode-auth`: only enrolled site keys may connect), a persistent
SQLite state (`--database`), no runtime `uv sync` (`--disable-runtime-dependency-installation`)
and telemetry off. `enroll` registers a site's public key (wraps `flwr supernode register`)."""

from __future__ import annotations

import json
import ssl
import subprocess
import sys
import time
import urllib.request
from dataclasses import dataclass
from pathlib import Path

from common.atomic import PUBLIC, atomic_write_text
from common.errors import ConfigError, FedtuneError
from fedtune import flower
from fedtune.flower import free_port
from fedtune.ops import (
    ops_env,
    proxy,
    require_loopback,
    run_foreground,
)
from fedtune.ops.certs import cert_sans
from server.identity import REGISTRY_ENV, REGISTRY_FILE
from server.tracking import RUNS_INDEX_ENV

DEFAULT_PORT = 9443


@dataclass(frozen=True)
class CoordinatorFiles:
    ca: Path
    cert: Path
    key: Path
    sites: Path  # folder of <site>.pub files


def coordinator_files(certs: Path) -> CoordinatorFiles:
    """Accept the coordinator's folder (certs/coordinator) or the whole `fedtune certs` output."""
    certs = certs.resolve()
    base = certs / "coordinator" if (certs / "coordinator" / "coordinator.crt").is_file() else certs
    files = CoordinatorFiles(base / "ca.crt", base / "coordinator.crt", base / "coordinator.key",
                             base / "sites")
    for path in (files.ca, files.cert, files.key):
        if not path.is_file():
            raise ConfigError(f"--certs {certs}: {path.name} not found in {base}: pass the coordinator "
                              "folder written by `fedtune certs --out DIR` (DIR/coordinator)")
    if files.key.stat().st_mode & 0o077:
        print(f"fedtune: WARNING {files.key} is readable by other users: chmod 600 {files.key}",
              file=sys.stderr, flush=True)
    return files


def superlink_command(*, files: CoordinatorFiles | None, host: str, port: int, state: Path) -> list[str]:
    """The flower-superlink command line (files=None: insecure, no node authentication)."""
    cmd = ["flower-superlink", "--host", host, "--port", str(port), "--database", str(state),
           "--isolation", "subprocess", "--disable-runtime-dependency-installation"]
    if files is None:
        return cmd + ["--insecure"]
    return cmd + ["--ssl-ca-certfile", str(files.ca), "--ssl-certfile", str(files.cert),
                  "--ssl-keyfile", str(files.key), "--enable-supernode-auth"]


def _probe(url: str, ca: Path | None) -> bool:
    ctx = None
    if ca is not None:  # verify the chain; the probe address need not be one of the SANs
        ctx = ssl.create_default_context(cafile=str(ca))
        ctx.check_hostname = False
    try:
        with urllib.request.urlopen(url, timeout=1, context=ctx) as resp:  # noqa: S310 - our own port
            return 200 <= resp.status < 300
    except OSError:
        return False


def _state_folder(state: Path) -> Path:
    return state.resolve().parent


def registry_path(state: Path) -> Path:
    """The site registry (server/identity.py) beside the state db: node id -> enrolled site."""
    return _state_folder(state) / REGISTRY_FILE


def start(*, certs: Path | None, host: str = "127.0.0.1", port: int = DEFAULT_PORT,
          state: Path = Path("coordinator/state.db"), insecure: bool = False,
          internal_port: int = 0, status: dict | None = None) -> int:
    """Run the coordinator until SIGTERM/SIGINT; returns the exit code. `status`: options of
    the status page + /metrics of its runs (fedtune/status; None = not served).

    TLS mode: nginx on host:port (Fleet only) and 127.0.0.1:port (Fleet + Control, for the
    operator), the SuperLink on 127.0.0.1:internal_port (0 = a free port); fedtune/ops/proxy.py."""
    files = _tls_files(certs, insecure=insecure, host=host)
    state = state.resolve()
    workdir = state.parent
    workdir.mkdir(parents=True, exist_ok=True, mode=0o700)
    env, marker = ops_env(workdir / "flwr-home")
    env[RUNS_INDEX_ENV] = str(workdir / "runs.index")  # each ServerApp lists its run directory
    page = _status_page(workdir, state, status)  # before any process: a refused host fails here
    front = None
    if files is None:
        cmd = superlink_command(files=None, host=host, port=port, state=state)
    else:
        env[REGISTRY_ENV] = str(registry_path(state))  # the ServerApp names replies by node id
        internal = internal_port or free_port()
        cmd = superlink_command(files=files, host="127.0.0.1", port=internal, state=state)
        front = _nginx(files, host=host, port=port, internal=internal, workdir=workdir, env=env)
    watch = _announcer(front=front, files=files, host=host, port=port, state=state, workdir=workdir)
    print(f"fedtune: starting coordinator: {' '.join(cmd)}", flush=True)
    try:
        code, last = run_foreground(cmd, env=env, log=workdir / "coordinator.log", marker=marker,
                                    cwd=workdir, watch=watch)
    finally:
        if front is not None:
            flower.reap([front])
        if page is not None:
            page.stop()
    if code:
        text = "\n".join(last[-15:])
        hint = ""
        if "address already in use" in text.lower() or "errno 98" in text.lower():
            hint = f" Port {port} is taken: stop the other process or choose --port."
        raise FedtuneError(f"the coordinator (flower-superlink) exited with code {code}.{hint} "
                           f"Last lines (full log {workdir / 'coordinator.log'}):\n{text}")
    return 0


def _tls_files(certs: Path | None, *, insecure: bool, host: str):
    """The coordinator's TLS files, or None for an --insecure demo (loopback only, said loudly)."""
    if not insecure:
        if certs is None:
            raise ConfigError("coordinator start needs --certs DIR (from `fedtune certs`), or "
                              "--insecure for a local demo")
        return coordinator_files(certs)
    require_loopback(host, what="--host", fix="Start it with TLS instead: --certs DIR.")
    print("=" * 78 + "\nfedtune: WARNING --insecure: NO TLS, NO site authentication. Adapter "
          "weights and metrics\ncross in clear text and any local process can join as a site or "
          "submit runs.\nListening on loopback only. Use only on a laptop for a demo.\n" + "=" * 78,
          file=sys.stderr, flush=True)
    return None


def _announcer(*, front: subprocess.Popen | None, files, host: str, port: int, state: Path,
               workdir: Path):
    """The watcher run_foreground calls: says where the coordinator listens once it answers."""
    scheme = "http" if files is None else "https"
    probe_host = "127.0.0.1" if host in ("0.0.0.0", "::", "") or files is not None else host
    url = f"{scheme}://{probe_host}:{port}/health"

    def announce(proc: subprocess.Popen) -> None:
        deadline = time.monotonic() + 120
        while proc.poll() is None and time.monotonic() < deadline:
            if front is not None and front.poll() is not None:
                print(f"fedtune: nginx exited ({front.returncode}); see {workdir / 'nginx'}",
                      flush=True)
                return
            if _probe(url, None if files is None else files.ca):
                where = "" if files is None else (
                    f"; sites: Fleet API only on {host}:{port}; operator: Control API on "
                    f"127.0.0.1:{port} (this host only)")
                print(f"coordinator listening on {scheme}://{host}:{port} (state {state}; node "
                      f"authentication {'OFF' if files is None else 'ON'}; runs written under "
                      f"{workdir}{where})", flush=True)
                return
            time.sleep(0.3)

    return announce


def runs_under(workdir: Path) -> dict[str, Path]:
    """The coordinator's runs, oldest first ({name: run directory}), from the index its
    ServerApps append to (server/tracking.py `announce`)."""
    try:
        lines = (workdir / "runs.index").read_text(encoding="utf-8").splitlines()
    except OSError:
        return {}
    out: dict[str, Path] = {}
    for path in dict.fromkeys(Path(p) for p in lines if p.strip()):
        name = path.name if path.name not in out else f"{path.parent.name}/{path.name}"
        out[name] = path
    return out


def _status_page(workdir: Path, state: Path, options: dict | None):
    """Status page + Prometheus /metrics of this coordinator's runs, in a thread of this process:
    the ServerApp runs in a process per run, the round records outlive it (fedtune/status/prom.py)."""
    if options is None:
        return None
    from fedtune.status.prom import runs_metrics
    from fedtune.status.server import StatusServer

    runs = lambda: runs_under(workdir)  # noqa: E731
    page = StatusServer(runs=runs, metrics=runs_metrics(runs, state_db=state), **options).start()
    print(f"coordinator status page {page.url}{page.note}; Prometheus metrics {page.url}metrics",
          flush=True)
    return page


def _nginx(files: CoordinatorFiles, *, host: str, port: int, internal: int, workdir: Path,
           env: dict[str, str]) -> subprocess.Popen:
    """Start nginx in front of the loopback SuperLink (fails early when the port is taken)."""
    nginx = proxy.find_nginx()
    sans = cert_sans(files.cert)
    name = "localhost" if "localhost" in sans else None  # nginx checks DNS names, not IPs
    folder = workdir / "nginx"
    conf = proxy.write_conf(folder, proxy.nginx_conf(
        folder=folder, host=host, port=port, upstream_port=internal, cert=files.cert,
        key=files.key, ca=files.ca, upstream_name=name), nginx=nginx)
    atomic_write_text(folder / "coordinator.json", json.dumps(
        {"registry": str(workdir / REGISTRY_FILE), "state": str(workdir)}), mode=PUBLIC)
    front = flower.start(proxy.command(nginx, conf), env=env, log=folder / "nginx.out")
    time.sleep(0.5)
    if front.poll() is not None:
        text = flower.tail(folder / "error.log") + "\n" + flower.tail(folder / "nginx.out")
        hint = f" Port {port} is taken: stop the other process or choose --port." \
            if "in use" in text else ""
        raise FedtuneError(f"nginx (the coordinator's TLS front) exited with code "
                           f"{front.returncode}.{hint}\n{text}")
    return front
