"""The read-only status page and /metrics, served by the process that runs the federation
(`fedtune simulate`, `fedtune coordinator start`, `fedtune report --serve`) or, /metrics only, by
a site (`fedtune site start`): stdlib http.server in a daemon thread.

Loopback by default. Binding any other address needs a bearer token (`--status-token-file`,
sent as `Authorization: Bearer ...` or `?token=...`) or TLS (`--status-cert/--status-key`);
every route is GET-only and reads the run directories, never a site's data."""

from __future__ import annotations

import hmac
import ipaddress
import json
import ssl
import threading
from collections.abc import Callable
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from importlib import resources
from pathlib import Path
from urllib.parse import parse_qs, urlparse

from common.errors import ConfigError
from fedtune.status.model import run_status

CSP = ("default-src 'none'; script-src 'self'; style-src 'self' 'unsafe-inline'; "
       "connect-src 'self'; img-src 'self' data:")
STATIC = {"/": ("page.html", "text/html; charset=utf-8"),
          "/page.js": ("page.js", "text/javascript; charset=utf-8")}


def is_loopback(host: str) -> bool:
    if host == "localhost":
        return True
    try:
        return ipaddress.ip_address(host).is_loopback
    except ValueError:
        return False


class StatusServer:
    """`runs()` names the run directories to show ({id: path}, newest last); `metrics()`, when
    given, returns the Prometheus exposition (bytes) for /metrics; `page=False` serves /metrics only."""

    def __init__(self, *, runs: Callable[[], dict[str, Path]] | None = None,
                 metrics: Callable[[], bytes] | None = None, host: str = "127.0.0.1",
                 port: int = 0, token: str | None = None, cert: Path | None = None,
                 key: Path | None = None, what: str = "status page"):
        if not is_loopback(host) and not token and not cert:
            flag = "metrics" if "metrics" in what else "status"
            raise ConfigError(f"the {what} on {host} would be open to the network: pass a token "
                              f"file (--{flag}-token-file FILE) or TLS (--{flag}-cert FILE "
                              f"--{flag}-key FILE), or keep the default --{flag}-host 127.0.0.1")
        if bool(cert) != bool(key):
            raise ConfigError(f"the {what}'s TLS needs both a certificate and its key")
        self.runs, self.metrics, self.token, self.what = runs, metrics, token, what
        self.host, self.port, self.cert, self.key = host, port, cert, key
        self.httpd: ThreadingHTTPServer | None = None
        self.note = ""

    @property
    def url(self) -> str:
        scheme = "https" if self.cert else "http"
        host = f"[{self.host}]" if ":" in self.host else self.host
        return f"{scheme}://{host}:{self.httpd.server_address[1]}/" if self.httpd else ""

    def start(self) -> "StatusServer":
        """Bind (the requested port; a free one when it is taken) and serve in a daemon thread."""
        handler = _handler(self)
        try:
            self.httpd = ThreadingHTTPServer((self.host, self.port), handler)
        except OSError as err:
            if not self.port:
                raise
            self.httpd = ThreadingHTTPServer((self.host, 0), handler)
            self.note = f" (port {self.port} was taken: {err.strerror})"
        self.httpd.daemon_threads = True
        if self.cert:
            ctx = ssl.create_default_context(ssl.Purpose.CLIENT_AUTH)
            ctx.load_cert_chain(str(self.cert), str(self.key))
            self.httpd.socket = ctx.wrap_socket(self.httpd.socket, server_side=True)
        threading.Thread(target=self.httpd.serve_forever, name=f"fedtune-{self.what}",
                         daemon=True).start()
        return self

    def stop(self) -> None:
        if self.httpd is not None:
            self.httpd.shutdown()
            self.httpd.server_close()
            self.httpd = None


def _handler(server: StatusServer) -> type[BaseHTTPRequestHandler]:
    class Handler(BaseHTTPRequestHandler):
        server_version = "fedtune-status"

        def log_message(self, *_args) -> None:  # the federation's terminal stays readable
            pass

        def _send(self, code: int, body: bytes, ctype: str) -> None:
            self.send_response(code)
            self.send_header("Content-Type", ctype)
            self.send_header("Content-Length", str(len(body)))
            self.send_header("Cache-Control", "no-store")
            self.send_header("X-Content-Type-Options", "nosniff")
            self.send_header("Content-Security-Policy", CSP)
            self.end_headers()
            self.wfile.write(body)

        def _authorised(self, query: dict) -> bool:
            if not server.token:
                return True
            given = self.headers.get("Authorization", "").removeprefix("Bearer ").strip()
            given = given or (query.get("token") or [""])[0]
            return hmac.compare_digest(given.encode(), server.token.encode())

        def do_GET(self) -> None:  # noqa: N802 - http.server's name
            url = urlparse(self.path)
            query = parse_qs(url.query)
            if not self._authorised(query):
                return self._send(401, b"token required\n", "text/plain")
            if url.path == "/metrics" and server.metrics is not None:
                from prometheus_client import CONTENT_TYPE_LATEST

                return self._send(200, server.metrics(), CONTENT_TYPE_LATEST)
            if server.runs is None:
                return self._send(404, b"not found\n", "text/plain")
            if url.path in STATIC:
                name, ctype = STATIC[url.path]
                body = resources.files("fedtune.status").joinpath(name).read_bytes()
                return self._send(200, body, ctype)
            runs = server.runs()
            if url.path == "/api/runs":
                return self._json([{"id": k, **_brief(v)} for k, v in runs.items()])
            if url.path == "/api/status":
                wanted = (query.get("run") or [""])[0] or (list(runs)[-1] if runs else "")
                if wanted not in runs:
                    return self._send(404, b'{"error": "no such run"}', "application/json")
                return self._json({"id": wanted, "runs": list(runs), **run_status(runs[wanted])})
            return self._send(404, b"not found\n", "text/plain")

        def _json(self, doc) -> None:
            self._send(200, json.dumps(doc, allow_nan=False, default=str).encode(), "application/json")

        def do_POST(self) -> None:  # noqa: N802 - read-only
            self._send(405, b"read-only\n", "text/plain")

        do_PUT = do_DELETE = do_PATCH = do_POST

    return Handler


def _brief(path: Path) -> dict:
    st = run_status(path)
    return {k: st[k] for k in ("state", "round", "total_rounds")}


def serve_run(run_dir: Path, opts: dict) -> int:
    """`fedtune report --serve RUN`: the status page of one run until Ctrl-C / SIGTERM."""
    from fedtune.status.prom import runs_metrics

    run = Path(run_dir).resolve()
    if not (run / "config.toml").is_file() and not (run / "metrics.jsonl").is_file():
        raise ConfigError(f"{run} is not a fedtune run directory (no config.toml or metrics.jsonl): "
                          "pass the directory `fedtune simulate --out` or the coordinator wrote")
    runs = lambda: {run.name: run}  # noqa: E731
    page = StatusServer(runs=runs, metrics=runs_metrics(runs), **opts).start()
    print(f"status page of {run}: {page.url}{page.note} (Ctrl-C to stop)", flush=True)
    try:
        threading.Event().wait()
    finally:
        page.stop()
    return 0
