"""What the command modules share: typer options whose help is shown verbatim by rich (square
brackets such as `[data]` are text, not markup), the run-config options, and the endpoint options
of the status page / Prometheus /metrics (simulate, report --serve, coordinator start, site start)."""

import functools
import inspect
from pathlib import Path
from typing import Any, Optional

import typer
from rich.markup import escape

from common.errors import ConfigError


def opt(default: Any, *names: str, help: str = "", **kw: Any) -> Any:
    """typer.Option with plain-text help."""
    return typer.Option(default, *names, help=escape(help), show_default=False, **kw)


def arg(default: Any = ..., *, help: str = "", **kw: Any) -> Any:
    """typer.Argument with plain-text help."""
    return typer.Argument(default, help=escape(help), show_default=False, **kw)


def _keep_argument_help() -> None:
    """click 8.5's Parameter.__init__ sets `help` itself, and typer 0.20's TyperArgument does not
    pass its help on, so every positional argument lost its help text: set it again afterwards."""
    from typer.core import TyperArgument

    init = TyperArgument.__init__
    if getattr(init, "_fedtune_keeps_help", False):
        return

    def __init__(self, *args: Any, help: Optional[str] = None, **kw: Any) -> None:  # noqa: A002
        init(self, *args, help=help, **kw)
        self.help = help

    __init__._fedtune_keeps_help = True
    TyperArgument.__init__ = __init__


_keep_argument_help()

CONFIG_HELP = "TOML run config (see configs/demo.toml)"
SET_HELP = "override one config key, e.g. --set federation.rounds=5 (repeatable)"
SET_METAVAR = "SECTION.KEY=VALUE"


def endpoint(name: str, *, default_port: int, what: str = "the live status page",
             off_switch: bool = True):
    """Give a command the flags --NAME-port, --no-NAME (with `off_switch`), --NAME-host,
    --NAME-token-file, --NAME-cert and --NAME-key; the command receives the parameter `NAME`:
    a function that returns StatusServer keyword arguments (None when switched off), called
    where the command needs them (so a bad token file is reported there, not before)."""
    flags = [(f"{name}_port", int, opt(default_port, f"--{name}-port", help=(
        f"port of {what} (default {default_port}, or a free one when it is taken; 0 = any free port)")))]
    if off_switch:
        flags.append((f"no_{name}", bool, opt(False, f"--no-{name}", help=f"do not serve {what}")))
    flags += [
        (f"{name}_host", str, opt("127.0.0.1", f"--{name}-host", help=(
            "address to bind (default loopback; any other needs a token or TLS)"))),
        (f"{name}_token_file", Optional[str], opt(None, f"--{name}-token-file",
                                                  help="file holding a bearer token the client must send")),
        (f"{name}_cert", Optional[str], opt(None, f"--{name}-cert",
                                            help="TLS certificate (PEM) to serve it over HTTPS")),
        (f"{name}_key", Optional[str], opt(None, f"--{name}-key", help="the certificate's private key (PEM)")),
    ]

    def decorate(fn):
        sig = inspect.signature(fn, eval_str=True)
        params = [p for p in sig.parameters.values() if p.name != name] + [
            inspect.Parameter(flag, inspect.Parameter.KEYWORD_ONLY, default=default, annotation=ann)
            for flag, ann, default in flags]

        @functools.wraps(fn)
        def command(**kw):
            values = {flag[len(name) + 1:] if flag.startswith(name) else "off": kw.pop(flag)
                      for flag, _, _ in flags}
            off = values.pop("off", False)
            kw[name] = lambda: None if off else server_options(name=name, **values)
            return fn(**kw)

        command.__signature__ = sig.replace(parameters=params)
        return command

    return decorate


def server_options(*, name: str, port: int, host: str, token_file: Optional[str],
                   cert: Optional[str], key: Optional[str]) -> dict:
    """StatusServer keyword arguments from the endpoint flags (the token read from its file)."""
    token = None
    if token_file:
        path = Path(token_file)
        if not path.is_file():
            raise ConfigError(f"--{name}-token-file {path} does not exist: write a random token "
                              f"to it (e.g. `openssl rand -hex 24 > {path}; chmod 600 {path}`)")
        token = path.read_text(encoding="utf-8").strip()
        if len(token) < 16:
            raise ConfigError(f"--{name}-token-file {path}: the token is shorter than 16 "
                              "characters; use a long random one")
    return {"host": host or "127.0.0.1", "port": port or 0, "token": token,
            "cert": Path(cert) if cert else None, "key": Path(key) if key else None}
