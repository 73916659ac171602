"""CLI of the deployment commands; `register(subparsers)` adds them to the `fedtune` parser:

    fedtune site keygen --name NAME --out DIR [--passphrase-file FILE]     (at each site)
    fedtune certs --out DIR --sites a,b,c --site-keys PUBS [--san coord.example.org] [--force]
    fedtune coordinator start --certs DIR [--host 127.0.0.1] [--port 9443] [--state FILE] [--insecure]
    fedtune coordinator enroll --certs DIR --site NAME | --public-key FILE [--max-examples N]
                               [--coordinator 127.0.0.1:PORT] [--state FILE]
    fedtune site start --coordinator HOST:PORT --ca FILE --key FILE --data FILE --site-dir DIR
                       --name NAME [--port 9094] [--policy FILE] [--insecure]
    fedtune run --config FILE --coordinator HOST:PORT --ca FILE [--set k=v] [--out DIR] [--insecure]

Also runnable alone: `python -m fedtune.ops.cli ...` (same exit codes as `fedtune`)."""

from __future__ import annotations

import argparse
import json
import sys
from pathlib import Path



def cmd_certs(args: argparse.Namespace) -> int:
    from fedtune.ops.certs import handout, make_certs, parse_sites

    sans = [s.strip() for s in args.san.split(",") if s.strip()] if args.san else None
    rep = make_certs(Path(args.out), sites=parse_sites(args.sites), sans=sans, force=args.force,
                     site_keys=Path(args.site_keys) if args.site_keys else None)
    print(handout(rep))
    return 0


def cmd_coordinator_start(args: argparse.Namespace) -> int:
    from fedtune.ops.coordinator import start
    from fedtune.status.server import options

    return start(certs=Path(args.certs) if args.certs else None, host=args.host, port=args.port,
                 state=Path(args.state), insecure=args.insecure, internal_port=args.internal_port,
                 status=options(args))


def cmd_coordinator_enroll(args: argparse.Namespace) -> int:
    from fedtune.ops.enroll import enroll

    return enroll(certs=Path(args.certs) if args.certs else None, site=args.site,
                  public_key=Path(args.public_key) if args.public_key else None,
                  coordinator=args.coordinator, insecure=args.insecure,
                  max_examples=args.max_examples, state=Path(args.state) if args.state else None)


def cmd_site_keygen(args: argparse.Namespace) -> int:
    from fedtune.ops.keys import keygen, passphrase, ssh_fingerprint

    secret = passphrase(Path(args.passphrase_file) if args.passphrase_file else None)
    key, pub = keygen(name=args.name, out=Path(args.out), secret=secret, force=args.force)
    print(f"site key pair: private {key} (0600{', encrypted' if secret else ''}; never leaves this "
          f"machine), public {pub} ({ssh_fingerprint(pub.read_text())}): send ONLY the .pub to the "
          "federation's operator")
    return 0


def cmd_site_start(args: argparse.Namespace) -> int:
    from fedtune.ops.site import start
    from fedtune.status.server import options

    return start(coordinator=args.coordinator, ca=Path(args.ca) if args.ca else None,
                 key=Path(args.key) if args.key else None, data=Path(args.data),
                 site_dir=Path(args.site_dir), name=args.name, port=args.port,
                 policy=Path(args.policy) if args.policy else None, insecure=args.insecure,
                 index=args.index, metrics=options(args, name="metrics"))


def cmd_run(args: argparse.Namespace) -> int:
    from fedtune.ops.submit import resolve_run_config, submit

    if args.resume:
        # The coordinator resumes from RUN_DIR's last checkpoint (it refuses a changed config or
        # base model); the run directory must be readable here, as on the coordinator host.
        from fedtune.simulate import resume_config

        cfg = resume_config(Path(args.resume).resolve(), config_file=args.config, sets=args.set)
    else:
        cfg = resolve_run_config(args.config, args.set, out=args.out)
    summary = submit(cfg, coordinator=args.coordinator, ca=Path(args.ca) if args.ca else None,
                     insecure=args.insecure, quiet=args.quiet)
    keys = [k for k in ("accuracy", "macro_f1", "rmse", "rounds", "sites", "wall_s", "run_dir",
                        "status") if k in summary]
    print(json.dumps({k: summary[k] for k in keys}))
    return 0


def register(subparsers: argparse._SubParsersAction) -> None:
    """Add `certs`, `coordinator start|enroll`, `site start` and `run` to fedtune's parser."""
    from fedtune.ops.coordinator import DEFAULT_PORT
    from fedtune.ops.site import DEFAULT_PORT as SITE_PORT

    p = subparsers.add_parser("certs", help="make the CA, the coordinator's TLS certificate and "
                              "one node-authentication key pair per site")
    p.add_argument("--out", required=True, help="output folder (one subfolder per recipient)")
    p.add_argument("--sites", required=True, help="comma-separated site names, e.g. bank-a,bank-b")
    p.add_argument("--san", help="coordinator host names/IPs, comma-separated "
                   "(default 127.0.0.1,localhost)")
    p.add_argument("--force", action="store_true", help="reissue everything, replacing existing files")
    p.add_argument("--site-keys", help="folder of the sites' <name>.pub (from `fedtune site keygen` "
                   "at each site); without it, demo key pairs are made here (with a warning)")
    p.set_defaults(func=cmd_certs)

    coord = subparsers.add_parser("coordinator", help="run the federation's coordinator (SuperLink)")
    csub = coord.add_subparsers(dest="coordinator_command", required=True)
    p = csub.add_parser("start", help="run the coordinator in the foreground (TLS + node auth)")
    p.add_argument("--certs", help="the coordinator folder from `fedtune certs` (DIR/coordinator)")
    p.add_argument("--host", default="127.0.0.1", help="address to listen on (0.0.0.0: all)")
    p.add_argument("--port", type=int, default=DEFAULT_PORT, help="the one port sites and `fedtune "
                   f"run` connect to (default {DEFAULT_PORT})")
    p.add_argument("--state", default="coordinator/state.db",
                   help="SQLite state file; its folder also holds logs and relative run directories")
    p.add_argument("--insecure", action="store_true",
                   help="NO TLS and NO node auth (local demo only; loopback --host only)")
    p.add_argument("--internal-port", type=int, default=0, help="loopback port of the SuperLink "
                   "behind nginx (default: a free one); never publish it")
    from fedtune.status.server import add_args as add_status_args

    add_status_args(p, default_port=9464, what="the status page and Prometheus /metrics of its runs")
    p.set_defaults(func=cmd_coordinator_start)
    p = csub.add_parser("enroll", help="allow a site's public key to connect")
    p.add_argument("--certs", help="the coordinator folder (for ca.crt and sites/<name>.pub)")
    p.add_argument("--site", help="site name: enrolls <certs>/sites/<name>.pub")
    p.add_argument("--public-key", help="a site's .pub file (instead of --site)")
    p.add_argument("--coordinator", default=f"127.0.0.1:{DEFAULT_PORT}",
                   help=f"the running coordinator (default 127.0.0.1:{DEFAULT_PORT})")
    p.add_argument("--insecure", action="store_true", help="for a coordinator started with --insecure")
    p.add_argument("--max-examples", type=int, help="the site's declared dataset size: its replies "
                   "may claim at most this many examples")
    p.add_argument("--state", help="the coordinator's --state file (default: asked from the running "
                   "coordinator on loopback)")
    p.set_defaults(func=cmd_coordinator_enroll)

    site = subparsers.add_parser("site", help="run one institution's site (SuperNode)")
    ssub = site.add_subparsers(dest="site_command", required=True)
    p = ssub.add_parser("start", help="run this site in the foreground")
    p.add_argument("--coordinator", required=True, help="HOST:PORT of the coordinator")
    p.add_argument("--ca", help="the federation's ca.crt")
    p.add_argument("--key", help="this site's private key (<name>.key)")
    p.add_argument("--data", required=True, help="this site's local data file")
    p.add_argument("--site-dir", required=True, help="folder for this site's state (ledger, cache, logs)")
    p.add_argument("--name", required=True, help="this site's name (as in `fedtune certs --sites`)")
    p.add_argument("--port", type=int, default=SITE_PORT,
                   help=f"local port of the site's runtime API, loopback only (default {SITE_PORT})")
    p.add_argument("--policy", help="this site's policy TOML (see deploy/site-policy.example.toml)")
    p.add_argument("--index", type=int, help="site number for local seeding (default: from the name)")
    p.add_argument("--insecure", action="store_true",
                   help="NO TLS, NO auth (local demo only; loopback --coordinator only)")
    add_status_args(p, name="metrics", default_port=9465,
                    what="this site's Prometheus /metrics (counters and epsilon only)")
    p.set_defaults(func=cmd_site_start)
    p = ssub.add_parser("keygen", help="make this site's node-authentication key pair (at the site)")
    p.add_argument("--name", required=True, help="this site's name")
    p.add_argument("--out", required=True, help="folder for NAME.key (0600) and NAME.pub")
    p.add_argument("--passphrase-file", help="encrypt the private key with the passphrase in this "
                   "0600 file (or set FEDTUNE_KEY_PASSPHRASE)")
    p.add_argument("--force", action="store_true", help="replace an existing pair")
    p.set_defaults(func=cmd_site_keygen)

    p = subparsers.add_parser("run", help="submit a federation run to a running coordinator")
    p.add_argument("--config", help="TOML run config (see deploy/run.example.toml)")
    p.add_argument("--set", action="append", default=[], metavar="SECTION.KEY=VALUE",
                   help="override one config key (repeatable)")
    p.add_argument("--coordinator", required=True, help="HOST:PORT of the coordinator")
    p.add_argument("--ca", help="the federation's ca.crt")
    p.add_argument("--out", help="run directory ON THE COORDINATOR (default runs/run-<timestamp> "
                   "in its state folder)")
    p.add_argument("--quiet", action="store_true", help="print only the final summary")
    p.add_argument("--insecure", action="store_true", help="for a coordinator started with --insecure")
    p.add_argument("--resume", metavar="RUN_DIR",
                   help="continue a crashed run from its last checkpoint (same config, same base)")
    p.set_defaults(func=cmd_run)


if __name__ == "__main__":  # `python -m` this module = the `fedtune` console script
    from fedtune.cli import main

    sys.exit(main())
