"""The coordinator's front door: nginx in front of a loopback-only SuperLink.

Flower 1.42's SuperLink serves the Fleet API (sites), the Control API (`flwr run/ls/stop`,
`flwr supernode register`) and the ServerAppIo/runtime API on ONE address, over HTTP/1.1 (uvicorn,
FastAPI routers under /v1/fleet, /v1/control, /v1/runtime, plus /health), and open-source Flower
has no account authentication on Control. So `fedtune coordinator start` binds the SuperLink to
127.0.0.1 on an internal port and puts nginx (Debian's package) in front, terminating TLS with the
coordinator's certificate:

* `--host:--port` (the public address): ONLY `/v1/fleet/` is forwarded; everything else is 404.
* `127.0.0.1:--port` (loopback, for the operator on this host): `/v1/fleet/`, `/v1/control/` and
  `/health`. nginx picks the server block by the address a connection was made TO, which no remote
  machine can choose (Linux drops packets for 127.0.0.0/8 from outside), so control stays local.

Remote operators reach the loopback address through an SSH tunnel (deploy/OPERATOR.md). The
internal SuperLink port is never published. nginx runs in the foreground as our child with its own
prefix, pid, logs and temp folders under `<state folder>/nginx/`."""

from __future__ import annotations

import getpass
import os
import shutil
import subprocess
from pathlib import Path

from common.atomic import PUBLIC, atomic_write_text
from common.errors import ConfigError, FedtuneError

FLEET, CONTROL, HEALTH = "/v1/fleet/", "/v1/control/", "/health"
INFO = "/fedtune/coordinator.json"  # loopback only: the state folder, for `coordinator enroll`
INSTALL_HINT = ("install it with `apt-get install nginx-light` (or `nginx`; `./run.sh setup` "
                "does this when run as root), or put its folder on PATH")


def find_nginx() -> str:
    """Path of the nginx binary (Debian keeps it in /usr/sbin, often not on a user's PATH)."""
    found = shutil.which("nginx") or next(
        (p for p in ("/usr/sbin/nginx", "/usr/local/sbin/nginx") if os.access(p, os.X_OK)), None)
    if not found:
        raise ConfigError(f"nginx not found: the coordinator needs it to keep its control plane off "
                          f"the public port; {INSTALL_HINT}")
    return found


def _listen(host: str, port: int) -> str:
    if host in ("", "0.0.0.0"):
        return f"0.0.0.0:{port}"
    if host == "::":
        return f"[::]:{port}"
    return f"[{host}]:{port}" if ":" in host else f"{host}:{port}"


def _location(path: str, upstream: str, *, exact: bool = False) -> str:
    match = f"= {path}" if exact else path
    return f"""        location {match} {{
            proxy_pass {upstream};
        }}
"""


def nginx_conf(*, folder: Path, host: str, port: int, upstream_port: int, cert: Path, key: Path,
               ca: Path, upstream_name: str | None) -> str:
    """nginx.conf text: the public server (Fleet only) and the loopback one (Fleet + Control)."""
    upstream = f"https://127.0.0.1:{upstream_port}"
    tmp = folder / "tmp"
    verify = (f"proxy_ssl_verify on;\n    proxy_ssl_trusted_certificate {ca};\n"
              f"    proxy_ssl_name {upstream_name};") if upstream_name else "proxy_ssl_verify off;"
    user = f"user {getpass.getuser()};\n" if os.geteuid() == 0 else ""
    tls = f"""        ssl_certificate {cert};
        ssl_certificate_key {key};
        ssl_protocols TLSv1.2 TLSv1.3;
"""
    operator = (_location(FLEET, upstream) + _location(CONTROL, upstream)
                + _location(HEALTH, upstream, exact=True))
    public = ""
    if _listen(host, port) != _listen("127.0.0.1", port):
        public = f"""    server {{  # the public address: sites only
        listen {_listen(host, port)} ssl;
{tls}{_location(FLEET, upstream)}        location / {{
            return 404;
        }}
    }}
"""
    return f"""# written by `fedtune coordinator start`; regenerated at every start — edit the flags, not this
{user}worker_processes 1;
daemon off;
pid {folder / 'nginx.pid'};
error_log {folder / 'error.log'} warn;
events {{
    worker_connections 1024;
}}
http {{
    access_log {folder / 'access.log'};
    client_body_temp_path {tmp / 'body'};
    proxy_temp_path {tmp / 'proxy'};
    fastcgi_temp_path {tmp / 'fastcgi'};
    uwsgi_temp_path {tmp / 'uwsgi'};
    scgi_temp_path {tmp / 'scgi'};
    server_tokens off;
    client_max_body_size 4g;
    proxy_http_version 1.1;
    proxy_request_buffering off;
    proxy_buffering off;
    proxy_read_timeout 3600s;
    proxy_send_timeout 3600s;
    proxy_set_header Host $http_host;
    {verify}
{public}    server {{  # loopback: the operator on this host (fedtune run, coordinator enroll)
        listen {_listen("127.0.0.1", port)} ssl;
{tls}{operator}        location = {INFO} {{  # where this coordinator keeps its site registry (for enroll)
            default_type application/json;
            alias {folder / 'coordinator.json'};
        }}
        location / {{
            return 404;
        }}
    }}
}}
"""


def write_conf(folder: Path, text: str, *, nginx: str) -> Path:
    """Write nginx.conf under `folder` (0700) and have nginx check it; returns its path."""
    folder.mkdir(parents=True, exist_ok=True, mode=0o700)
    for sub in ("body", "proxy", "fastcgi", "uwsgi", "scgi"):
        (folder / "tmp" / sub).mkdir(parents=True, exist_ok=True, mode=0o700)
    conf = folder / "nginx.conf"
    atomic_write_text(conf, text, mode=PUBLIC)
    check = subprocess.run([nginx, "-t", "-q", "-e", str(folder / "error.log"), "-p", str(folder),
                            "-c", str(conf)], capture_output=True, text=True, timeout=30, stdin=subprocess.DEVNULL)
    if check.returncode:
        raise FedtuneError(f"nginx rejected the generated {conf}: {check.stderr.strip()[-800:]}")
    return conf


def command(nginx: str, conf: Path) -> list[str]:
    return [nginx, "-e", str(conf.parent / "error.log"), "-p", str(conf.parent), "-c", str(conf)]
