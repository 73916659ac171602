"""`fedtune site start`: one institution's SuperNode, run in the foreground.

The site's own facts travel as node config, written to `<site-dir>/node-config.toml` and passed
with `flower-supernode --node-config FILE` (no shell quoting of paths): `data-path`, `site-dir`,
`site-name`, `site-index`, and the site policy's `policy-*` keys (client/policy.py). The site
verifies the coordinator with the CA (`--root-certificates`) and proves who it is with its own
key (`--auth-supernode-private-key`); only the adapter arrays and aggregate metrics leave."""

from __future__ import annotations

import hashlib
import json
import logging
import os
import re
import secrets
import sys
import threading
import time
from pathlib import Path
from typing import Any

from client.policy import load_policy
from common.errors import ConfigError, FedtuneError
from fedtune.ops import ops_env, require_loopback, run_foreground, split_address, tls_preflight
from fedtune.ops.certs import SITE_NAME

DEFAULT_PORT = 9094  # the SuperNode's local ClientAppIo/runtime port; never opened to the network


def _check_key(key: Path, *, site_dir: Path) -> Path:
    """The key path to hand Flower: refused when group/others can read it; an encrypted key
    is decrypted to a 0600 file in the site folder (fedtune/ops/keys.py)."""
    from fedtune.ops.keys import load_site_key

    return load_site_key(key, site_dir=site_dir)


def _toml_scalar(value: Any) -> str:
    if isinstance(value, bool):
        return "true" if value else "false"
    if isinstance(value, (int, float)):
        return repr(value)
    return json.dumps(str(value))


def node_config(*, data: Path, site_dir: Path, name: str, index: int,
                policy: Path | None) -> dict[str, Any]:
    """The node config this site hands its ClientApp (see the module docstring)."""
    values: dict[str, Any] = {"data-path": str(data), "site-dir": str(site_dir), "site-name": name,
                              "site-index": index}
    if policy is not None:
        values.update(load_policy(policy).to_node_config())
    return values


def write_node_config(path: Path, values: dict[str, Any]) -> None:
    path.write_text("# written by `fedtune site start`; edit the flags, not this file\n" +
                    "".join(f"{k} = {_toml_scalar(v)}\n" for k, v in values.items()), encoding="utf-8")


def _default_index(name: str) -> int:
    """A stable per-site number (seeds the site's local shuffling)."""
    return int(hashlib.sha256(name.encode()).hexdigest()[:6], 16)


def _checked_transport(*, host: str, ca: Path | None, key: Path | None, insecure: bool,
                       site_dir: Path) -> tuple[Path | None, Path | None]:
    """(ca, key) to hand Flower, after the TLS/--insecure rules (None, None when insecure)."""
    if insecure:
        require_loopback(host, what="--coordinator", fix="Connect with TLS: --ca FILE --key FILE.")
        print("fedtune: WARNING --insecure: this site talks to the coordinator WITHOUT TLS and "
              "without authenticating; use only for a local demo.", file=sys.stderr, flush=True)
        return None, None
    if ca is None or key is None:
        raise ConfigError("site start needs --ca FILE (the federation's ca.crt) and --key FILE "
                          "(this site's private key), or --insecure for a local demo")
    if not ca.is_file():
        raise ConfigError(f"--ca {ca} does not exist: use the ca.crt from your site folder")
    return ca, _check_key(key, site_dir=site_dir.resolve())


def supernode_command(*, superlink: str, port: int, site_dir: Path, ca: Path | None,
                      key: Path | None) -> list[str]:
    """Flower's SuperNode with shorter idle waits (client/supernode.py): a queue on a loopback
    runtime port, served by this site's runtime only (HMAC secret in the site dir)."""
    cmd = [sys.executable, "-P", "-m", "client.supernode", "--superlink", superlink,
           "--host", "127.0.0.1", "--port", str(port), "--isolation", "process",
           "--superexec-auth-secret-file", str(site_dir / "runtime.secret"),
           "--node-config", str(site_dir / "node-config.toml")]
    if ca is None:
        return cmd + ["--insecure"]
    return cmd + ["--root-certificates", str(ca.resolve()), "--auth-supernode-private-key",
                  str(key.resolve())]


def start(*, coordinator: str, ca: Path | None, key: Path | None, data: Path, site_dir: Path,
          name: str, port: int = DEFAULT_PORT, policy: Path | None = None, insecure: bool = False,
          index: int | None = None, metrics: dict | None = None) -> int:
    """Run this site's SuperNode until SIGTERM/SIGINT (or until the coordinator refuses it)."""
    host, cport = split_address(coordinator)
    if not SITE_NAME.match(name):
        raise ConfigError(f"--name {name!r}: use letters, digits, '-', '_' or '.' (max 63)")
    data = data.resolve()
    if not data.is_file():
        raise ConfigError(f"--data {data} does not exist: give this site's local data file "
                          "(CSV/JSONL/Parquet with text and label columns)")
    ca, key = _checked_transport(host=host, ca=ca, key=key, insecure=insecure, site_dir=site_dir)
    site_dir = site_dir.resolve()
    site_dir.mkdir(parents=True, exist_ok=True, mode=0o700)
    values = node_config(data=data, site_dir=site_dir, name=name,
                         index=_default_index(name) if index is None else index, policy=policy)
    write_node_config(site_dir / "node-config.toml", values)
    if tls_preflight(host, cport, ca=ca) == "unreachable":
        print(f"fedtune: coordinator {coordinator} not reachable yet; the site keeps retrying",
              flush=True)
    env, marker = ops_env(site_dir / "flwr-home")
    secret = _new_secret(site_dir / "runtime.secret")
    cmd = supernode_command(superlink=f"{host}:{cport}", port=port, site_dir=site_dir, ca=ca, key=key)
    print(f"site {name}: data {data}; policy {policy or 'none'}; connecting to {coordinator}",
          flush=True)

    def _announce(line: str) -> None:
        if "SuperNode ID:" in line:  # Flower logs it once the coordinator accepted the key
            print(f"site {name} connected to coordinator {coordinator} as node "
                  f"{line.rsplit(':', 1)[-1].strip()}", flush=True)

    stop = threading.Event()
    runtime = start_runtime(port=port, secret=secret, site_dir=site_dir, stop=stop,
                            pinned=load_policy(policy).app_sha256 if policy else (),
                            metrics=metrics)
    try:
        code, last = _run_supernode(cmd, env=env, site_dir=site_dir, marker=marker, name=name,
                                    on_line=_announce)
    finally:
        stop.set()
        runtime.join(timeout=5)
    if code:
        raise FedtuneError(explain_exit(code, "\n".join(last[-20:]), name=name, key=key,
                                        coordinator=coordinator, log=site_dir / "site.log"))
    return 0


def _refused_sign_in(last: list[str]) -> bool:
    text = "\n".join(last[-20:]).lower()
    return "failed to activate" in text or "code: 2004" in text


def _run_supernode(cmd: list[str], *, env: dict[str, str], site_dir: Path, marker: str, name: str,
                   on_line) -> tuple[int, list[str]]:
    """Run the SuperNode in the foreground. A site restarted after a crash is refused sign-in
    while the coordinator still counts its previous instance as online (until two heartbeat
    intervals have passed without a beat; client/supernode.py): retry for that long, then
    report. An unenrolled key is refused the same way, so it is reported after the window too."""
    from client.supernode import heartbeat_seconds

    window = 2 * heartbeat_seconds() + 15
    deadline = time.monotonic() + window
    while True:
        code, last = run_foreground(cmd, env=env, log=site_dir / "site.log", marker=marker,
                                    cwd=site_dir, on_line=on_line, die_with_parent=True)
        if not (code and _refused_sign_in(last) and time.monotonic() < deadline):
            return code, last
        print(f"site {name}: the coordinator refused this site's sign-in: it may still count a "
              f"previous instance of this site as online (that clears {window - 15} s after the "
              f"instance stopped); retrying for up to {deadline - time.monotonic():.0f} s",
              flush=True)
        time.sleep(3.0)


def _new_secret(path: Path) -> bytes:
    """A fresh random secret shared by this site's SuperNode and its runtime only (0600)."""
    secret = secrets.token_bytes(32)
    path.unlink(missing_ok=True)
    fd = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o600)
    with os.fdopen(fd, "wb") as fh:
        fh.write(secret)
    return secret


def start_runtime(*, port: int, secret: bytes, site_dir: Path, stop: threading.Event,
                  pinned: tuple[str, ...] = (), metrics: dict | None = None) -> threading.Thread:
    """The site runtime (client/runtime.py) in a thread of this process: it serves the
    SuperNode's tasks with the fedtune installed here, never the coordinator's bundle.
    `metrics`: options of the site's Prometheus /metrics (counters and epsilon; None = off),
    served until `stop` is set."""
    from client.runtime import Installed, SiteRuntime
    from fedtune.status.prom import SiteMetrics

    handler = logging.FileHandler(site_dir / "runtime.log", encoding="utf-8")
    handler.setFormatter(logging.Formatter("%(asctime)s %(levelname)s %(message)s"))
    site_log = logging.getLogger("fedtune.site")
    site_log.addHandler(handler)
    site_log.setLevel(logging.INFO)
    installed = Installed.here(pinned)
    counters = SiteMetrics(site_dir) if metrics is not None else None
    runtime = SiteRuntime(address=f"127.0.0.1:{port}", installed=installed, secret=secret,
                          timing_log=site_dir / "runtime-timing.jsonl", metrics=counters)
    if counters is not None:
        from fedtune.status.server import StatusServer

        endpoint = StatusServer(metrics=counters.exposition, what="site metrics", **metrics).start()
        print(f"site metrics (Prometheus): {endpoint.url}metrics{endpoint.note}", flush=True)
        threading.Thread(target=lambda: (stop.wait(), endpoint.stop()), daemon=True,
                         name="fedtune-site-metrics-stop").start()
    thread = threading.Thread(target=runtime.serve, args=(stop,), name="fedtune-site-runtime",
                              daemon=True)
    thread.start()
    print(f"site runtime: serving this site's tasks with fedtune {installed.version} as "
          f"installed here (bundles are checked, never run; log {site_dir / 'runtime.log'})",
          flush=True)
    return thread


def explain_exit(code: int, text: str, *, name: str, key: Path | None, coordinator: str,
                 log: Path) -> str:
    """Turn a SuperNode's last words into an operator's next step."""
    low = text.lower()
    if "failed to activate" in low or "code: 2004" in low or "registered via the cli" in low:
        return (f"the coordinator at {coordinator} refused site {name!r}: its public key is not "
                f"enrolled. Send {Path(key).with_suffix('.pub') if key else '<name>.pub'} to the "
                f"coordinator's operator, who runs `fedtune coordinator enroll --certs DIR --site "
                f"{name}`, then start the site again (log: {log})")
    if "invalid supernode authentication" in low or " 401" in low:
        return (f"the coordinator rejected site {name!r}'s signature: keep this machine's clock in "
                f"sync (NTP; more than 5 s ahead is refused), and if the key changed, enroll the new "
                f".pub (log: {log})")
    if "certificate_verify_failed" in low or "certificate verify failed" in low:
        return (f"the coordinator's certificate is not trusted by --ca: use the ca.crt from the same "
                f"`fedtune certs` run as the coordinator (log: {log})")
    if re.search(r"address already in use|errno 98", low):
        return f"the site's local port is taken: choose another --port (log: {log})"
    return f"the site's SuperNode exited with code {code}; last lines (log {log}):\n{text}"
