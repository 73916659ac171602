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
import tempfile
import time
import urllib.request
from dataclasses import dataclass
from pathlib import Path

from common.errors import ConfigError, FedtuneError
from fedtune.ops import ops_env, run_foreground, split_address, write_connection

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


def start(*, certs: Path | None, host: str = "127.0.0.1", port: int = DEFAULT_PORT,
          state: Path = Path("coordinator/state.db"), insecure: bool = False) -> int:
    """Run the coordinator until SIGTERM/SIGINT; returns the exit code."""
    if insecure:
        print("=" * 78 + "\nfedtune: WARNING --insecure: NO TLS, NO site authentication. Adapter "
              "weights and metrics\ncross the network in clear text and ANY machine that reaches this "
              "port can join\nas a site or submit runs. Use only on a laptop for a demo.\n" + "=" * 78,
              file=sys.stderr, flush=True)
        files = None
    else:
        if certs is None:
            raise ConfigError("coordinator start needs --certs DIR (from `fedtune certs`), or "
                              "--insecure for a local demo")
        files = coordinator_files(certs)
    state = state.resolve()
    workdir = state.parent
    workdir.mkdir(parents=True, exist_ok=True, mode=0o700)
    env, marker = ops_env(workdir / "flwr-home")
    cmd = superlink_command(files=files, host=host, port=port, state=state)
    scheme = "http" if insecure else "https"
    probe_host = "127.0.0.1" if host in ("0.0.0.0", "::", "") else host
    url = f"{scheme}://{probe_host}:{port}/health"

    def _announce(proc: subprocess.Popen) -> None:
        deadline = time.monotonic() + 120
        while proc.poll() is None and time.monotonic() < deadline:
            if _probe(url, None if files is None else files.ca):
                print(f"coordinator listening on {scheme}://{host}:{port} (state {state}; node "
                      f"authentication {'OFF' if insecure else 'ON'}; runs written under {workdir})",
                      flush=True)
                return
            time.sleep(0.3)

    print(f"fedtune: starting coordinator: {' '.join(cmd)}", flush=True)
    code, last = run_foreground(cmd, env=env, log=workdir / "coordinator.log", marker=marker,
                                cwd=workdir, watch=_announce)
    if code:
        text = "\n".join(last[-15:])
        hint = ""
        if "address already in use" in text.lower() or "errno 98" in text.lower():
            hint = f" Port {port} is taken: stop the other process or choose --port."
        raise FedtuneError(f"the coordinator (flower-superlink) exited with code {code}.{hint} "
                           f"Last lines (full log {workdir / 'coordinator.log'}):\n{text}")
    return 0


def _public_key(files_sites: Path | None, *, site: str | None, public_key: Path | None) -> Path:
    if public_key is not None:
        path = public_key
    elif site and files_sites is not None:
        path = files_sites / f"{site}.pub"
    else:
        raise ConfigError("coordinator enroll needs --site NAME (with --certs) or --public-key FILE")
    if not path.is_file():
        raise ConfigError(f"public key {path} not found: copy the site's <name>.pub (from `fedtune "
                          "certs`) there, or pass --public-key FILE")
    first = path.read_text(encoding="utf-8", errors="replace").split()
    if not first or not first[0].startswith("ecdsa-sha2-nistp"):
        raise ConfigError(f"{path} is not an OpenSSH EC public key (expected a line starting with "
                          "'ecdsa-sha2-nistp384'): use the .pub file written by `fedtune certs`")
    return path


def enroll(*, certs: Path | None, site: str | None = None, public_key: Path | None = None,
           coordinator: str = f"127.0.0.1:{DEFAULT_PORT}", insecure: bool = False) -> int:
    """Register a site's public key with the running coordinator (Control API)."""
    files = coordinator_files(certs) if certs is not None else None
    key = _public_key(files.sites if files else None, site=site, public_key=public_key)
    split_address(coordinator)
    if files is None and not insecure:
        raise ConfigError("coordinator enroll needs --certs DIR (for the CA that verifies the "
                          "coordinator), or --insecure for a coordinator started with --insecure")
    name = site or key.stem
    with tempfile.TemporaryDirectory(prefix="fedtune-enroll-") as home:
        write_connection(Path(home), address=coordinator, ca=None if insecure else files.ca)
        env, _ = ops_env(Path(home))
        proc = subprocess.run(["flwr", "supernode", "register", str(key), "fedtune", "--name", name,
                               "--format", "json"], env=env, capture_output=True, text=True, timeout=60,
                              stdin=subprocess.DEVNULL)
    out = (proc.stdout + proc.stderr).strip()
    node_id = _json_field(proc.stdout, "node-id")
    if proc.returncode == 0 and node_id is not None:
        print(f"enrolled site {name!r} as node {node_id} (public key {key}); it may now connect",
              flush=True)
        return 0
    low = out.lower()
    if "already" in low and ("use" in low or "exist" in low or "registered" in low):
        print(f"site {name!r} is already enrolled (public key {key}); nothing to do", flush=True)
        return 0
    if "certificate" in low or "ssl" in low:
        raise FedtuneError(f"cannot reach the coordinator's Control API at {coordinator} over TLS: "
                           f"check --coordinator and that --certs holds its ca.crt.\n{out[-1500:]}")
    raise FedtuneError(f"enrolling {key} at {coordinator} failed (flwr exit {proc.returncode}); "
                       f"is the coordinator running there?\n{out[-1500:]}")


def _json_field(text: str, key: str):
    for line in reversed(text.splitlines()):
        line = line.strip()
        if line.startswith("{"):
            try:
                return json.loads(line).get(key)
            except json.JSONDecodeError:
                continue
    try:
        return json.loads(text).get(key)
    except (json.JSONDecodeError, AttributeError):
        return None

