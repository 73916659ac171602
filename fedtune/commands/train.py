"""Training verbs: `simulate` (a whole federation on this machine), `ledger` (a site's privacy
ledger), `tune` (federated hyperparameter search), `explain` (token attributions at a site)."""

import json
import sys
import time
from pathlib import Path
from typing import Optional

import click
import typer

from common.errors import FedtuneError
from fedtune.commands.common import CONFIG_HELP, SET_HELP, SET_METAVAR, arg, endpoint, opt

app = typer.Typer()
PANEL = "Training"


@app.command(rich_help_panel=PANEL, help="run a whole federation on this machine")
@endpoint("status", default_port=8750)
def simulate(config: Optional[str] = opt(None, "--config", help=CONFIG_HELP),
             set: list[str] = opt([], "--set", metavar=SET_METAVAR, help=SET_HELP),  # noqa: A002
             out: Optional[str] = opt(None, "--out", help="run directory (default runs/sim-<timestamp>)"),
             quiet: bool = opt(False, "--quiet", help="print only the final summary"),
             resume: Optional[str] = opt(None, "--resume", metavar="RUN_DIR",
                                         help="continue a crashed or stopped run from its last checkpoint"),
             status=None) -> int:
    from common.config import resolve
    from fedtune.simulate import resume_config
    from fedtune.simulate import simulate as run_simulation

    if resume:
        run_dir = Path(resume).resolve()
        cfg = resume_config(run_dir, config_file=config, sets=set)
    else:
        cfg = resolve(config, set)
        run_dir = Path(out or f"runs/sim-{time.strftime('%Y%m%d-%H%M%S')}")
    summary = run_simulation(cfg, out=run_dir, quiet=quiet, status=status())
    keys = [k for k in ("accuracy", "macro_f1", "rmse", "rounds", "wall_s") if k in summary]
    print(json.dumps({k: summary[k] for k in keys}))
    return 0


@app.command(rich_help_panel=PANEL, help="print (or explicitly reset) a site's privacy ledger")
def ledger(action: str = arg("show", click_type=click.Choice(["show", "reset"]),
                             help="show (default) or reset: start the budget over, recorded with --reason"),
           site_dir: str = opt(..., "--site-dir", help="the site directory holding lineage.json"),
           budget: float = opt(0.0, "--budget", help="show spending against this budget (the site's privacy-budget)"),
           reason: Optional[str] = opt(None, "--reason",
                                       help="with reset: why the site starts over (kept in the journal)")) -> int:
    """Print a site's privacy ledger (lineage, every run and round, whether the journal verifies),
    or, with `reset --reason`, record an explicit fresh start (never a silent one)."""
    from client.ledger import LedgerCorrupt
    from client.ledger_admin import open_ledger, reset_ledger
    from client.privacy import PrivacyLedger

    if action == "reset":
        if not (reason or "").strip():
            raise FedtuneError("fedtune ledger reset needs --reason \"...\": the journal records why this "
                               "site's budget starts over")
        print(reset_ledger(site_dir, reason=reason))
        return 0
    try:
        shown = open_ledger(site_dir)
    except FileNotFoundError:
        raise FedtuneError(f"no privacy ledger under {site_dir} (lineage.json, ledger/journal.jsonl): "
                           "check --site-dir (the site's `site-dir`, or <run>/sites/site-N in "
                           "simulation)") from None
    except LedgerCorrupt as err:
        print(f"journal verifies: NO — {err}", file=sys.stderr)
        return 2
    if budget:
        lin = shown.lineage
        shown = PrivacyLedger(site_dir, site=lin["site"], source=lin["source"],
                              num_examples=lin["num_examples"], budget=budget)
    print(shown.describe())
    return 0


@app.command(rich_help_panel=PANEL, help="federated hyperparameter search (Optuna, validation metric)")
def tune(space: str = opt(..., "--space", help="TOML search space ([tune] and [tune.space.\"KEY\"] tables)"),
         config: Optional[str] = opt(None, "--config", help="TOML run config the trials start from"),
         set: list[str] = opt([], "--set", metavar=SET_METAVAR, help="override (repeatable)"),  # noqa: A002
         out: str = opt(..., "--out", help="directory for trials/, best.toml, trials.csv, tune.json"),
         trials: Optional[int] = opt(None, "--trials", help="override tune.trials"),
         runner: str = opt("inproc", "--runner", click_type=click.Choice(["inproc", "flower"]),
                           help="inproc (default, fast: fedtune's coordinator + ClientApp in one process) or flower"),
         accept_dp_spend: bool = opt(False, "--accept-dp-spend",
                                     help="under DP: accept spending trials x epsilon")) -> int:
    import dataclasses

    from fedtune.tune import load_space
    from fedtune.tune import tune as run_tune

    search = load_space(space)
    if trials:
        search = dataclasses.replace(search, trials=trials)
    result = run_tune(search, config=config, sets=set, out=out, runner=runner,
                      accept_dp_spend=accept_dp_spend)
    print(f"tune: best {result['metric']} {result['best_score']:.4f} (defaults {result['defaults_score']}) "
          f"with {result['best']} -> {Path(out) / 'best.toml'}, trials.csv, tune.json")
    return 0


@app.command(rich_help_panel=PANEL, help="token attributions for the global model's predictions (at a site)")
def explain(model_dir: str = arg(..., metavar="MODEL_DIR", help="run directory or `fedtune export` directory"),
            text: list[str] = opt([], "--text", help="a text to explain (repeatable)"),
            data: Optional[str] = opt(None, "--data", help="CSV/TSV/JSONL/Parquet file of texts (the run's text column)"),
            text_column: Optional[str] = opt(None, "--text-column", help="text column of --data (default: the run's)"),
            out: str = opt(..., "--out", help="directory for explain.html and explain.json"),
            top: int = opt(5, "--top", help="tokens listed per text in the table (default 5)"),
            steps: int = opt(32, "--steps", help="integrated-gradients steps (default 32)"),
            max_rows: int = opt(50, "--max-rows", help="explain at most this many texts (default 50)"),
            device: Optional[str] = opt(None, "--device", help="auto | cpu | cuda[:N] (default: the run's)")) -> int:
    from fedtune.explain import explain_to

    explain_to(model_dir, texts=text, data=data, text_column=text_column, out=Path(out), top=top,
               steps=steps, max_rows=max_rows, device=device)
    return 0
