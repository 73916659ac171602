"""Deployment: `certs`, `coordinator start|enroll`, `site start|keygen`, `run`.

    fedtune site keygen --name NAME --out DIR [--passphrase-file FILE]     (at each site)
    fedtune certs --out DIR --sites a,b,c --site-keys PUBS [--san coord.example.org] [--force]
    fedtune coordinator start --certs DIR [--host 127.0.0.1] [--port 9443] [--state FILE] [--insecure]
    fedtune coordinator enroll --certs DIR --site NAME | --public-key FILE [--max-examples N]
                               [--coordinator 127.0.0.1:PORT] [--state FILE]
    fedtune site start --coordinator HOST:PORT --ca FILE --key FILE --data FILE --site-dir DIR
                       --name NAME [--port 9094] [--policy FILE] [--insecure]
    fedtune run --config FILE --coordinator HOST:PORT --ca FILE [--set k=v] [--out DIR] [--insecure]
"""

import json
from pathlib import Path
from typing import Optional

import typer

from fedtune.commands.common import SET_METAVAR, endpoint, opt
from fedtune.ops.coordinator import DEFAULT_PORT
from fedtune.ops.site import DEFAULT_PORT as SITE_PORT

app = typer.Typer()
PANEL = "Deployment"
coordinator = typer.Typer(no_args_is_help=True)
site = typer.Typer(no_args_is_help=True)
app.add_typer(coordinator, name="coordinator", rich_help_panel=PANEL,
              help="run the federation's coordinator (SuperLink)")
app.add_typer(site, name="site", rich_help_panel=PANEL, help="run one institution's site (SuperNode)")


def _path(value: Optional[str]) -> Optional[Path]:
    return Path(value) if value else None


@app.command(rich_help_panel=PANEL, help="make the CA, the coordinator's TLS certificate and one "
             "node-authentication key pair per site")
def certs(out: str = opt(..., "--out", help="output folder (one subfolder per recipient)"),
          sites: str = opt(..., "--sites", help="comma-separated site names, e.g. bank-a,bank-b"),
          san: Optional[str] = opt(None, "--san", help="coordinator host names/IPs, comma-separated "
                                   "(default 127.0.0.1,localhost)"),
          force: bool = opt(False, "--force", help="reissue everything, replacing existing files"),
          site_keys: Optional[str] = opt(None, "--site-keys", help=(
              "folder of the sites' <name>.pub (from `fedtune site keygen` at each site); without it, "
              "demo key pairs are made here (with a warning)"))) -> int:
    from fedtune.ops.certs import handout, make_certs, parse_sites

    sans = [s.strip() for s in san.split(",") if s.strip()] if san else None
    rep = make_certs(Path(out), sites=parse_sites(sites), sans=sans, force=force, site_keys=_path(site_keys))
    print(handout(rep))
    return 0


@coordinator.command("start", help="run the coordinator in the foreground (TLS + node auth)")
@endpoint("status", default_port=9464, what="the status page and Prometheus /metrics of its runs")
def coordinator_start(
        certs: Optional[str] = opt(None, "--certs", help="the coordinator folder from `fedtune certs` (DIR/coordinator)"),
        host: str = opt("127.0.0.1", "--host", help="address to listen on (0.0.0.0: all)"),
        port: int = opt(DEFAULT_PORT, "--port", help=f"the one port sites and `fedtune run` connect to "
                        f"(default {DEFAULT_PORT})"),
        state: str = opt("coordinator/state.db", "--state",
                         help="SQLite state file; its folder also holds logs and relative run directories"),
        insecure: bool = opt(False, "--insecure",
                             help="NO TLS and NO node auth (local demo only; loopback --host only)"),
        internal_port: int = opt(0, "--internal-port", help="loopback port of the SuperLink behind nginx "
                                 "(default: a free one); never publish it"),
        status=None) -> int:
    from fedtune.ops.coordinator import start

    return start(certs=_path(certs), host=host, port=port, state=Path(state), insecure=insecure,
                 internal_port=internal_port, status=status())


@coordinator.command("enroll", help="allow a site's public key to connect")
def coordinator_enroll(
        certs: Optional[str] = opt(None, "--certs", help="the coordinator folder (for ca.crt and sites/<name>.pub)"),
        site: Optional[str] = opt(None, "--site", help="site name: enrolls <certs>/sites/<name>.pub"),
        public_key: Optional[str] = opt(None, "--public-key", help="a site's .pub file (instead of --site)"),
        coordinator: str = opt(f"127.0.0.1:{DEFAULT_PORT}", "--coordinator",
                               help=f"the running coordinator (default 127.0.0.1:{DEFAULT_PORT})"),
        insecure: bool = opt(False, "--insecure", help="for a coordinator started with --insecure"),
        max_examples: Optional[int] = opt(None, "--max-examples", help=(
            "the site's declared dataset size: its replies may claim at most this many examples")),
        state: Optional[str] = opt(None, "--state", help=(
            "the coordinator's --state file (default: asked from the running coordinator on loopback)"))) -> int:
    from fedtune.ops.enroll import enroll

    return enroll(certs=_path(certs), site=site, public_key=_path(public_key), coordinator=coordinator,
                  insecure=insecure, max_examples=max_examples, state=_path(state))


@site.command("start", help="run this site in the foreground")
@endpoint("metrics", default_port=9465, what="this site's Prometheus /metrics (counters and epsilon only)")
def site_start(
        coordinator: str = opt(..., "--coordinator", help="HOST:PORT of the coordinator"),
        ca: Optional[str] = opt(None, "--ca", help="the federation's ca.crt"),
        key: Optional[str] = opt(None, "--key", help="this site's private key (<name>.key)"),
        data: str = opt(..., "--data", help="this site's local data file"),
        site_dir: str = opt(..., "--site-dir", help="folder for this site's state (ledger, cache, logs)"),
        name: str = opt(..., "--name", help="this site's name (as in `fedtune certs --sites`)"),
        port: int = opt(SITE_PORT, "--port", help=f"local port of the site's runtime API, loopback only "
                        f"(default {SITE_PORT})"),
        policy: Optional[str] = opt(None, "--policy", help="this site's policy TOML (see deploy/site-policy.example.toml)"),
        index: Optional[int] = opt(None, "--index", help="site number for local seeding (default: from the name)"),
        insecure: bool = opt(False, "--insecure",
                             help="NO TLS, NO auth (local demo only; loopback --coordinator only)"),
        metrics=None) -> int:
    from fedtune.ops.site import start

    return start(coordinator=coordinator, ca=_path(ca), key=_path(key), data=Path(data),
                 site_dir=Path(site_dir), name=name, port=port, policy=_path(policy), insecure=insecure,
                 index=index, metrics=metrics())


@site.command("keygen", help="make this site's node-authentication key pair (at the site)")
def site_keygen(name: str = opt(..., "--name", help="this site's name"),
                out: str = opt(..., "--out", help="folder for NAME.key (0600) and NAME.pub"),
                passphrase_file: Optional[str] = opt(None, "--passphrase-file", help=(
                    "encrypt the private key with the passphrase in this 0600 file (or set "
                    "FEDTUNE_KEY_PASSPHRASE)")),
                force: bool = opt(False, "--force", help="replace an existing pair")) -> int:
    from fedtune.ops.keys import keygen, passphrase, ssh_fingerprint

    secret = passphrase(_path(passphrase_file))
    key, pub = keygen(name=name, out=Path(out), secret=secret, force=force)
    print(f"site key pair: private {key} (0600{', encrypted' if secret else ''}; never leaves this "
          f"machine), public {pub} ({ssh_fingerprint(pub.read_text())}): send ONLY the .pub to the "
          "federation's operator")
    return 0


@app.command(rich_help_panel=PANEL, help="submit a federation run to a running coordinator")
def run(config: Optional[str] = opt(None, "--config", help="TOML run config (see deploy/run.example.toml)"),
        set: list[str] = opt([], "--set", metavar=SET_METAVAR, help="override one config key (repeatable)"),  # noqa: A002
        coordinator: str = opt(..., "--coordinator", help="HOST:PORT of the coordinator"),
        ca: Optional[str] = opt(None, "--ca", help="the federation's ca.crt"),
        out: Optional[str] = opt(None, "--out", help="run directory ON THE COORDINATOR (default "
                                 "runs/run-<timestamp> in its state folder)"),
        quiet: bool = opt(False, "--quiet", help="print only the final summary"),
        insecure: bool = opt(False, "--insecure", help="for a coordinator started with --insecure"),
        resume: Optional[str] = opt(None, "--resume", metavar="RUN_DIR", help=(
            "continue a crashed run from its last checkpoint (same config, same base)"))) -> int:
    from fedtune.ops.submit import resolve_run_config, submit

    if resume:
        # The coordinator resumes from RUN_DIR's last checkpoint (it refuses a changed config or
        # base model); the run directory must be readable here, as on the coordinator host.
        from fedtune.simulate import resume_config

        cfg = resume_config(Path(resume).resolve(), config_file=config, sets=set)
    else:
        cfg = resolve_run_config(config, set, out=out)
    summary = submit(cfg, coordinator=coordinator, ca=_path(ca), insecure=insecure, quiet=quiet)
    keys = [k for k in ("accuracy", "macro_f1", "rmse", "rounds", "sites", "wall_s", "run_dir",
                        "status") if k in summary]
    print(json.dumps({k: summary[k] for k in keys}))
    return 0
