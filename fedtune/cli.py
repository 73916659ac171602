"""The `fedtune` console script. Each subcommand parses its config once and calls typed code;
a FedtuneError becomes `error: ...` on stderr and exit code 2."""

from __future__ import annotations

import argparse
import json
import signal
import sys
import threading
import time
from pathlib import Path

from common.errors import FedtuneError


def _add_config_args(p: argparse.ArgumentParser) -> None:
    p.add_argument("--config", help="TOML run config (see configs/demo.toml)")
    p.add_argument("--set", action="append", default=[], metavar="SECTION.KEY=VALUE",
                   help="override one config key, e.g. --set federation.rounds=5 (repeatable)")


def cmd_simulate(args: argparse.Namespace) -> int:
    from common.config import resolve
    from fedtune.simulate import resume_config, simulate

    if args.resume:
        out = Path(args.resume).resolve()
        cfg = resume_config(out, config_file=args.config, sets=args.set)
    else:
        cfg = resolve(args.config, args.set)
        out = Path(args.out or f"runs/sim-{time.strftime('%Y%m%d-%H%M%S')}")
    from fedtune.status.server import options

    summary = simulate(cfg, out=out, quiet=args.quiet, status=options(args))
    keys = [k for k in ("accuracy", "macro_f1", "rmse", "rounds", "wall_s") if k in summary]
    print(json.dumps({k: summary[k] for k in keys}))
    return 0


def cmd_ledger(args: argparse.Namespace) -> int:
    """Print a site's privacy ledger (lineage, every run and round, whether the journal verifies),
    or, with `reset --reason`, record an explicit fresh start (never a silent one)."""
    from client.ledger import LedgerCorrupt
    from client.privacy import PrivacyLedger, open_ledger, reset_ledger

    if args.action == "reset":
        if not (args.reason or "").strip():
            raise FedtuneError("fedtune ledger reset needs --reason \"...\": the journal records why this "
                               "site's budget starts over")
        print(reset_ledger(args.site_dir, reason=args.reason))
        return 0
    try:
        ledger = open_ledger(args.site_dir)
    except FileNotFoundError:
        raise FedtuneError(f"no privacy ledger under {args.site_dir} (lineage.json, ledger/journal.jsonl): "
                           "check --site-dir (the site's `site-dir`, or <run>/sites/site-N in "
                           "simulation)") from None
    except LedgerCorrupt as err:
        print(f"journal verifies: NO — {err}", file=sys.stderr)
        return 2
    if args.budget:
        lin = ledger.lineage
        ledger = PrivacyLedger(args.site_dir, site=lin["site"], source=lin["source"],
                               num_examples=lin["num_examples"], budget=args.budget)
    print(ledger.describe())
    return 0


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="fedtune", description=__doc__)
    sub = parser.add_subparsers(dest="command", required=True)
    sim = sub.add_parser("simulate", help="run a whole federation on this machine")
    _add_config_args(sim)
    sim.add_argument("--out", help="run directory (default runs/sim-<timestamp>)")
    sim.add_argument("--quiet", action="store_true", help="print only the final summary")
    sim.add_argument("--resume", metavar="RUN_DIR",
                     help="continue a crashed or stopped run from its last checkpoint")
    from fedtune.status.server import add_args as add_status_args

    add_status_args(sim, default_port=8750)
    sim.set_defaults(func=cmd_simulate)
    led = sub.add_parser("ledger", help="print (or explicitly reset) a site's privacy ledger")
    led.add_argument("action", nargs="?", default="show", choices=["show", "reset"],
                     help="show (default) or reset: start the budget over, recorded with --reason")
    led.add_argument("--site-dir", required=True, help="the site directory holding lineage.json")
    led.add_argument("--budget", type=float, default=0.0,
                     help="show spending against this budget (the site's privacy-budget)")
    led.add_argument("--reason", help="with reset: why the site starts over (kept in the journal)")
    led.set_defaults(func=cmd_ledger)
    from fedtune.cli_release import register as register_release
    from fedtune.ops.cli import register as register_ops

    register_release(sub)
    register_ops(sub)
    from fedtune.explain import register as register_explain
    from fedtune.tune import register as register_tune

    register_explain(sub)
    register_tune(sub)
    try:
        from common.data.cli import add_prepare_parser, run_prepare

        add_prepare_parser(sub)
        sub.choices["prepare"].set_defaults(func=run_prepare)
    except ImportError:  # pragma: no cover
        pass
    return parser


def _exit_on_sigterm(signum, _frame) -> None:
    # SystemExit unwinds through the `finally` blocks that stop Flower's processes; Python's
    # default SIGTERM would end the process there and leave its SuperLink and nodes running.
    raise SystemExit(128 + signum)


def main(argv: list[str] | None = None) -> int:
    args = build_parser().parse_args(argv)
    main_thread = threading.current_thread() is threading.main_thread()
    previous = signal.signal(signal.SIGTERM, _exit_on_sigterm) if main_thread else None
    try:
        return int(args.func(args) or 0)
    except FedtuneError as err:
        print(f"error: {err}", file=sys.stderr)
        return 2
    except KeyboardInterrupt:
        print("interrupted", file=sys.stderr)
        return 130
    finally:
        if main_thread and previous is not None:
            signal.signal(signal.SIGTERM, previous)


if __name__ == "__main__":
    sys.exit(main())
