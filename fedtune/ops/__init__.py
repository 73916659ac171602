"""Operating a real federation: `fedtune certs`, `coordinator start|enroll`, `site start`, `run`.

Shared helpers live here: running one Flower process in the foreground (output teed to our
stdout and a log file, SIGTERM/SIGINT reaping it and every descendant), the private FLWR_HOME
connection file, and a TLS pre-flight that turns certificate problems into plain errors."""

from __future__ import annotations

import collections
import ipaddress
import json
import signal
import socket
import ssl
import subprocess
import threading
import uuid
from collections.abc import Callable
from pathlib import Path

from common.atomic import PUBLIC, atomic_write_text
from common.errors import ConfigError, FedtuneError
from fedtune import flower

MARKER_VAR = "FEDTUNE_OPS_MARKER"


class Stopped(Exception):
    """Raised in the main thread by SIGTERM/SIGINT so `finally` blocks reap the children."""


def split_address(address: str, *, what: str = "--coordinator") -> tuple[str, int]:
    """'host:port' -> (host, port), with an error that shows the expected form."""
    host, sep, port = address.rpartition(":")
    if not sep or not host or not port.isdigit() or not 0 < int(port) < 65536:
        raise FedtuneError(f"{what} {address!r} is not HOST:PORT: write e.g. {what} coord.example.org:9443")
    return host.strip("[]"), int(port)


def is_loopback(host: str) -> bool:
    """127.0.0.0/8, ::1 or localhost: an address no other machine can reach."""
    host = host.strip("[]").lower()
    if host in ("localhost", "localhost.", "ip6-localhost"):
        return True
    try:
        return ipaddress.ip_address(host).is_loopback
    except ValueError:
        return False


def require_loopback(host: str, *, what: str, fix: str) -> None:
    """--insecure (no TLS, no node authentication) is refused for any non-loopback address."""
    if not is_loopback(host):
        raise ConfigError(f"--insecure with {what} {host!r}: without TLS and node authentication "
                          "anyone on the network could read the adapters or join and steer the "
                          f"run, so --insecure is only allowed on 127.0.0.1 / ::1 / localhost. "
                          f"{fix}")


def write_connection(flwr_home: Path, *, address: str, ca: Path | None, name: str = "fedtune") -> None:
    """$FLWR_HOME/config.toml with one SuperLink connection (TLS with `ca`, or insecure)."""
    flwr_home.mkdir(parents=True, exist_ok=True, mode=0o700)
    tls = f"root-certificates = {json.dumps(str(ca.resolve()))}\n" if ca else "insecure = true\n"
    text = (f'[superlink]\ndefault = "{name}"\n\n[superlink.{name}]\n'
            f"address = {json.dumps(address)}\n{tls}")
    atomic_write_text(flwr_home / "config.toml", text, mode=PUBLIC)


def ops_env(flwr_home: Path) -> tuple[dict[str, str], str]:
    """flower.flower_env plus a unique marker every descendant inherits (for the final sweep)."""
    marker = uuid.uuid4().hex
    return flower.flower_env(flwr_home, **{MARKER_VAR: marker}), marker


def tls_preflight(host: str, port: int, *, ca: Path | None, timeout: float = 5.0) -> str:
    """Check the coordinator's certificate against `ca` before Flower retries forever on it.

    Returns "ok" or "unreachable" (the caller keeps waiting); raises FedtuneError when the
    certificate is not trusted or the endpoint does not speak what we expect."""
    try:
        raw = socket.create_connection((host, port), timeout=timeout)
    except OSError:
        return "unreachable"
    with raw:
        if ca is None:  # plain HTTP expected: a TLS coordinator answers with an alert or hangs up
            try:
                raw.sendall(b"GET /health HTTP/1.0\r\nHost: x\r\n\r\n")
                head = raw.recv(5)
            except OSError:
                head = b""
            if not head.startswith(b"HTTP/"):
                raise FedtuneError(f"the coordinator at {host}:{port} does not speak plain HTTP (it "
                                   "uses TLS): drop --insecure and pass --ca with the federation's ca.crt")
            return "ok"
        ctx = ssl.create_default_context(cafile=str(ca))
        try:
            with ctx.wrap_socket(raw, server_hostname=host):
                return "ok"
        except ssl.SSLCertVerificationError as err:
            raise FedtuneError(
                f"the coordinator at {host}:{port} presented a certificate that {ca} does not trust "
                f"({err.verify_message}): use the ca.crt from the same `fedtune certs` run as the "
                f"coordinator's certificate, and make sure its SANs include {host!r} "
                "(fedtune certs --san)") from err
        except (ssl.SSLError, OSError) as err:
            raise FedtuneError(f"TLS handshake with {host}:{port} failed ({err}): is the coordinator "
                               "started with --insecure? Then start the site with --insecure too, or "
                               "better restart the coordinator with TLS") from err


def _parent_death_signal() -> None:
    """In the child, before exec: SIGKILL when the parent dies (Linux prctl PR_SET_PDEATHSIG)."""
    import ctypes

    ctypes.CDLL("libc.so.6", use_errno=True).prctl(1, signal.SIGKILL)


def run_foreground(cmd: list[str], *, env: dict[str, str], log: Path, marker: str,
                   cwd: Path | None = None, on_line: Callable[[str], None] | None = None,
                   watch: Callable[[subprocess.Popen], None] | None = None,
                   die_with_parent: bool = False) -> tuple[int, list[str]]:
    """Run `cmd` in its own session, tee its output to stdout and `log`, and return
    (exit code, last 60 lines). `on_line` sees every output line; `watch(proc)` runs in a thread
    (e.g. a readiness probe). SIGTERM/SIGINT stop it; either way the child's process group and
    every process carrying `marker` are reaped before returning. `die_with_parent`: the kernel
    kills the child if this process dies (even by SIGKILL), e.g. a site's SuperNode whose
    runtime lives in this process must not outlive it."""
    log.parent.mkdir(parents=True, exist_ok=True)
    last: collections.deque[str] = collections.deque(maxlen=60)
    old = {s: signal.getsignal(s) for s in (signal.SIGTERM, signal.SIGINT)}

    def _stop(signum, frame):  # noqa: ARG001 - signal handler signature
        raise Stopped(signal.Signals(signum).name)

    proc = subprocess.Popen(cmd, env=env, cwd=cwd, stdout=subprocess.PIPE, stderr=subprocess.STDOUT,
                            stdin=subprocess.DEVNULL, start_new_session=True, text=True, bufsize=1,
                            errors="replace", preexec_fn=_parent_death_signal if die_with_parent else None)

    def _pump() -> None:
        with open(log, "a", encoding="utf-8") as fh:
            for line in proc.stdout:
                fh.write(line)
                fh.flush()
                last.append(line.rstrip("\n"))
                print(line, end="", flush=True)
                if on_line is not None:
                    on_line(line)

    pump = threading.Thread(target=_pump, daemon=True)
    pump.start()
    if watch is not None:
        threading.Thread(target=watch, args=(proc,), daemon=True).start()
    on_main = threading.current_thread() is threading.main_thread()
    try:
        if on_main:
            for s in old:
                signal.signal(s, _stop)
        code = proc.wait()
    except Stopped as why:
        print(f"fedtune: {why} received: stopping {Path(cmd[0]).name} and its children", flush=True)
        code = 0
    finally:
        flower.reap([proc])
        flower.kill_by_marker(marker)
        if on_main:
            for s, h in old.items():
                signal.signal(s, h)
        pump.join(timeout=5)
    return code, list(last)
