"""The `fedtune` console script: one typer app (rich help) joining the verbs of each area,
fedtune/commands/{train,data,release,ops}.py. Each command parses its config once and calls
typed code; a FedtuneError becomes `error: ...` on stderr and exit code 2, a usage error exit
code 2, Ctrl-C exit code 130."""

from __future__ import annotations

import signal
import sys
import threading

import click
import typer
from typer import rich_utils

from common.errors import FedtuneError
from fedtune.commands import data, ops, release, train

app = typer.Typer(name="fedtune", no_args_is_help=True, add_completion=False,
                  rich_markup_mode="rich",
                  help="Federated LoRA fine-tuning: each site trains on its own records, a "
                       "coordinator aggregates the adapters. `fedtune COMMAND --help` for each verb.")
for area in (train, data, release, ops):
    app.add_typer(area.app)


def _exit_on_sigterm(signum, _frame) -> None:
    # SystemExit unwinds through the `finally` blocks that stop Flower's processes; Python's
    # default SIGTERM would end the process there and leave its SuperLink and nodes running.
    raise SystemExit(128 + signum)


def main(argv: list[str] | None = None) -> int:
    command = typer.main.get_command(app)
    main_thread = threading.current_thread() is threading.main_thread()
    previous = signal.signal(signal.SIGTERM, _exit_on_sigterm) if main_thread else None
    try:
        result = command.main(args=list(sys.argv[1:] if argv is None else argv), prog_name="fedtune",
                              standalone_mode=False)
        return int(result or 0)
    except FedtuneError as err:
        print(f"error: {err}", file=sys.stderr)
        return 2
    except click.ClickException as err:  # a usage error: unknown flag, missing option, bad value
        rich_utils.rich_format_error(err)
        return err.exit_code
    except click.exceptions.Exit as done:
        return done.exit_code
    except (KeyboardInterrupt, click.exceptions.Abort):
        print("interrupted", file=sys.stderr)
        return 130
    finally:
        if main_thread and previous is not None:
            signal.signal(signal.SIGTERM, previous)


if __name__ == "__main__":
    sys.exit(main())
