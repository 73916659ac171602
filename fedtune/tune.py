"""`fedtune tune`: federated hyperparameter search with Optuna.

    fedtune tune --space SPACE.toml [--config RUN.toml] [--set k=v ...] --out DIR
                 [--trials N] [--runner inproc|flower] [--accept-dp-spend]

Each trial is a short federation of the run config with the trial's values (`--set` style keys:
train.learning-rate, train.head-learning-rate, model.lora-r, train.local-epochs,
train.batch-size, ...), run in-process (bench/inproc.py: fedtune's own coordinator and
ClientApp without Flower's transport; fast) or as a real `fedtune simulate` (runner=flower).
A trial is scored on the sites' weighted **validation** metric (the coordinator's val_*; never
the test split); the first trial is the config's own values, so the table shows what the
search gained over the defaults. Pruning: with the in-process runner, before every round after
`tune.prune-after` rounds the trial reports its last validation value (trial.report) and
Optuna's median pruner may stop the federation there (recorded as pruned); runner=flower has
no hook between rounds, so its values are reported after the run and nothing is pruned.

Under DP every trial spends the sites' budgets: the tuner prints the total (trials x epsilon per
site) and refuses unless --accept-dp-spend; with it, every trial uses the same site directories
(DIR/sites), so the sites' ledgers record the whole search. Outputs, written atomically:
DIR/best.toml (a full run config `fedtune simulate --config` takes), DIR/trials.csv, DIR/tune.json.

SPACE.toml:
    [tune]
    trials = 8
    metric = "accuracy"          # val metric: accuracy | macro_f1 (maximised) | loss | rmse | mae
    seed = 0
    prune-after = 1              # rounds before the median pruner may stop a trial
    [tune.space."train.learning-rate"]
    low = 1e-4
    high = 1e-2
    log = true
    [tune.space."model.lora-r"]
    choices = [4, 8, 16]
"""

from __future__ import annotations

import json
import sys
import tomllib
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from common.errors import ConfigError, FedtuneError

EXTRA = "pip install 'fedtune[tune]'  (or: pip install optuna torch==<your torch version>)"
MINIMISE = ("loss", "rmse", "mae")


@dataclass(frozen=True)
class Param:
    key: str
    low: float | None = None
    high: float | None = None
    log: bool = False
    step: float | None = None
    choices: tuple | None = None

    def suggest(self, trial) -> Any:
        if self.choices is not None:
            return trial.suggest_categorical(self.key, list(self.choices))
        if all(isinstance(v, int) and not isinstance(v, bool) for v in (self.low, self.high)) and \
                (self.step is None or float(self.step).is_integer()):
            return trial.suggest_int(self.key, int(self.low), int(self.high), log=self.log, step=int(self.step or 1))
        return trial.suggest_float(self.key, float(self.low), float(self.high), log=self.log, step=self.step)


@dataclass(frozen=True)
class Space:
    params: tuple[Param, ...]
    trials: int = 8
    metric: str = "accuracy"
    seed: int = 0
    prune_after: int = 1  # rounds a trial runs before the pruner may stop it


def load_space(path: str | Path) -> Space:
    """Parse SPACE.toml; every problem names the file, the key and the fix."""
    p = Path(path)
    try:
        doc = tomllib.loads(p.read_text(encoding="utf-8"))
    except OSError as err:
        raise ConfigError(f"{p}: cannot read the search space ({err.strerror}); fix: check --space") from None
    except tomllib.TOMLDecodeError as err:
        raise ConfigError(f"{p}: invalid TOML ({err}); fix: correct the syntax") from None
    tune = doc.get("tune")
    if not isinstance(tune, dict) or not isinstance(tune.get("space"), dict) or not tune["space"]:
        raise ConfigError(f"{p}: no [tune.space] entries; fix: add e.g. [tune.space.\"train.learning-rate\"] "
                          "with low/high (and log = true) or choices = [...]")
    params = []
    for key, spec in tune["space"].items():
        where = f"{p}: tune.space.{key!r}"
        if "." not in key:
            raise ConfigError(f"{where}: not a config key; fix: name it section.key, e.g. train.learning-rate")
        if not isinstance(spec, dict) or not ("choices" in spec or {"low", "high"} <= set(spec)):
            raise ConfigError(f"{where}: needs low and high, or choices; fix: e.g. {{low = 1e-4, high = 1e-2, log = true}}")
        unknown = set(spec) - {"low", "high", "log", "step", "choices"}
        if unknown:
            raise ConfigError(f"{where}: unknown field(s) {sorted(unknown)}; fix: use low, high, log, step or choices")
        if "choices" in spec:
            if not isinstance(spec["choices"], list) or not spec["choices"]:
                raise ConfigError(f"{where}: choices must be a non-empty list")
            params.append(Param(key=key, choices=tuple(spec["choices"])))
            continue
        low, high = spec["low"], spec["high"]
        if not all(isinstance(v, (int, float)) and not isinstance(v, bool) for v in (low, high)) or low >= high:
            raise ConfigError(f"{where}: low={low!r} high={high!r}; fix: two numbers with low < high")
        if spec.get("log") and low <= 0:
            raise ConfigError(f"{where}: log = true needs low > 0")
        params.append(Param(key=key, low=low, high=high, log=bool(spec.get("log", False)), step=spec.get("step")))
    metric = str(tune.get("metric", "accuracy"))
    if metric not in ("accuracy", "macro_f1", *MINIMISE):
        raise ConfigError(f"{p}: tune.metric={metric!r}; fix: use accuracy, macro_f1, loss, rmse or mae")
    trials = tune.get("trials", 8)
    if not isinstance(trials, int) or trials < 1:
        raise ConfigError(f"{p}: tune.trials={trials!r}; fix: a positive integer")
    prune_after = tune.get("prune-after", 1)
    if not isinstance(prune_after, int) or prune_after < 1:
        raise ConfigError(f"{p}: tune.prune-after={prune_after!r}; fix: a number of rounds >= 1")
    return Space(params=tuple(params), trials=trials, metric=metric, seed=int(tune.get("seed", 0)),
                 prune_after=prune_after)


def _optuna():
    try:
        import optuna
    except ImportError:
        raise FedtuneError(f"fedtune tune needs Optuna, which is not installed here; fix: {EXTRA}") from None
    optuna.logging.set_verbosity(optuna.logging.WARNING)
    return optuna


def _sets(values: dict[str, Any]) -> list[str]:
    return [f"{k}={v}" for k, v in values.items()]


class _Pruned(BaseException):
    """Raised inside the coordinator's round loop (a BaseException, so no `except Exception` there
    turns a pruned trial into a failed round)."""


def _rows(out: Path) -> list[dict]:
    path = out / "metrics.jsonl"
    return [json.loads(x) for x in path.read_text(encoding="utf-8").splitlines() if x] if path.is_file() else []


def _run_inproc(cfg, *, out: Path, before_round) -> None:
    """bench/inproc.py's in-process federation, with a hook before every round after the first
    (the coordinator has written the previous round's metrics.jsonl row by then)."""
    import contextlib
    import logging
    import zlib

    from fedtune.simulate import REPO, prepare_sites

    if str(REPO) not in sys.path:
        sys.path.insert(0, str(REPO))
    from flwr.supercore.task_identity import TaskIdentity

    from bench.inproc import InProcessGrid, bench_client_app
    from client import site as site_mod
    from server import app as server_app

    class Grid(InProcessGrid):
        def send_and_receive(self, messages, *, timeout=None):
            messages = list(messages)
            if self.train_calls and any(m.metadata.message_type.startswith("train") for m in messages):
                before_round(_rows(out))
            return super().send_and_receive(messages, timeout=timeout)

    out.mkdir(parents=True, exist_ok=True)
    cfg = prepare_sites(cfg, out.resolve())
    run_id = zlib.crc32(str(out).encode()) & 0x7FFFFFFF
    grid = Grid(bench_client_app(), num_nodes=cfg.simulation.sites, run_config=cfg.to_flat(), run_id=run_id)
    site_mod.clear_sites()
    TaskIdentity.task_id, TaskIdentity.run_id, TaskIdentity.node_id = 1, run_id, 1
    logging.getLogger("flwr").setLevel(logging.WARNING)
    try:
        with open(out.parent / f"{out.name}.log", "a", encoding="utf-8") as fh, contextlib.redirect_stdout(fh):
            server_app.run(grid, cfg)
    finally:
        site_mod.clear_sites()


def _run(cfg, *, out: Path, runner: str, trial, metric: str) -> tuple[list[float], bool]:
    """One federation: (validation value per round, whether the pruner stopped it)."""
    def curve(rows: list[dict]) -> list[float]:
        vals = [r["evaluate"].get(f"val_{metric}") for r in rows if r.get("evaluate")]
        return [float(v) for v in vals if v is not None]

    def before_round(rows: list[dict]) -> None:
        values = curve(rows)
        if values:
            trial.report(values[-1], len(values) - 1)
            if trial.should_prune():
                raise _Pruned

    if runner == "inproc":
        try:
            _run_inproc(cfg, out=out, before_round=before_round)
        except _Pruned:
            return curve(_rows(out)), True
        values = curve(_rows(out))  # rounds but the last were reported before the next one
        if values:
            trial.report(values[-1], len(values) - 1)
        return values, False
    # a real Flower simulation has no hook between rounds: values are reported afterwards
    from fedtune.simulate import simulate

    simulate(cfg, out=out, quiet=True)
    values = curve(_rows(out))
    for step, value in enumerate(values):
        trial.report(value, step)
    return values, False


def tune(space: Space, *, config: str | None, sets: list[str], out: str | Path, runner: str = "inproc",
         accept_dp_spend: bool = False, say=print) -> dict:
    """Run the search; returns tune.json's content (best values, best score, every trial)."""
    from common.config import resolve
    from common.atomic import atomic_write_bytes, atomic_write_json

    optuna = _optuna()
    out = Path(out)
    base = resolve(config, sets)
    fed = base.federation
    forced = [f"federation.early-stopping-patience={fed.rounds + 1}", "federation.evaluate-every=1",
              f"federation.early-stopping-metric={space.metric}"]
    flat = base.to_flat()
    for p in space.params:  # typos fail before any trial runs
        if p.key not in flat:
            raise ConfigError(f"tune.space key {p.key!r} is not a run config key; fix: use a key "
                              "`fedtune simulate --set` takes, e.g. train.learning-rate")
    dp_total = None
    if base.privacy.dp:
        dp_total = space.trials * base.privacy.epsilon
        say(f"fedtune tune: DP is on: {space.trials} trials x epsilon {base.privacy.epsilon:g} = up to "
            f"{dp_total:g} epsilon of every site's budget")
        if not accept_dp_spend:
            raise ConfigError(f"a DP search spends up to {dp_total:g} epsilon per site ({space.trials} trials x "
                              f"privacy.epsilon {base.privacy.epsilon:g}); fix: pass --accept-dp-spend (every "
                              "trial then shares DIR/sites, whose ledgers record it), fewer trials, or tune without DP")
        forced.append(f"simulation.sites-dir={(out / 'sites').resolve()}")
    direction = "minimize" if space.metric in MINIMISE else "maximize"
    study = optuna.create_study(direction=direction, sampler=optuna.samplers.TPESampler(seed=space.seed),
                                pruner=optuna.pruners.MedianPruner(n_startup_trials=2, n_warmup_steps=space.prune_after - 1))
    study.enqueue_trial({p.key: flat[p.key] for p in space.params}, skip_if_exists=True)  # the defaults
    records: list[dict] = []
    for n in range(space.trials):
        trial = study.ask()
        values = {p.key: p.suggest(trial) for p in space.params}
        cfg = resolve(config, sets + _sets(values) + forced)  # a bad value is a ConfigError here
        curve, pruned = _run(cfg, out=out / "trials" / f"trial-{n}", runner=runner, trial=trial, metric=space.metric)
        if pruned or not curve:
            state, score = ("pruned" if pruned else "failed"), None
            study.tell(trial, state=optuna.trial.TrialState.PRUNED if pruned else optuna.trial.TrialState.FAIL)
        else:
            state, score = "complete", (min(curve) if direction == "minimize" else max(curve))
            study.tell(trial, score)
        records.append({"trial": n, **values, f"val_{space.metric}": score, "per_round": curve, "state": state})
        say(f"trial {n}: " + " ".join(f"{k}={v:.4g}" if isinstance(v, float) else f"{k}={v}" for k, v in values.items())
            + f" -> val {space.metric} {score if score is None else round(score, 4)} ({state})")
    done = [r for r in records if r["state"] == "complete"]
    if not done:
        raise FedtuneError(f"no trial completed (see {out / 'trials'}); fix: check the run config with one "
                           "`fedtune simulate` first")
    best = (min if direction == "minimize" else max)(done, key=lambda r: r[f"val_{space.metric}"])
    best_values = {p.key: best[p.key] for p in space.params}
    atomic_write_bytes(out / "best.toml", ("# fedtune tune: best of {} trials by val {}\n".format(
        space.trials, space.metric) + resolve(config, sets + _sets(best_values)).to_toml()).encode("utf-8"))
    header = ["trial", *[p.key for p in space.params], f"val_{space.metric}", "state", "per_round"]
    lines = [",".join(header)] + [",".join(json.dumps(r[h]) if h == "per_round" else str(r[h]) for h in header)
                                  .replace('"', "'") for r in records]
    atomic_write_bytes(out / "trials.csv", ("\n".join(lines) + "\n").encode("utf-8"))
    result = {"metric": f"val_{space.metric}", "direction": direction, "runner": runner, "best": best_values,
              "best_score": best[f"val_{space.metric}"], "defaults_score": records[0][f"val_{space.metric}"],
              "dp_total_epsilon_per_site": dp_total, "trials": records}
    atomic_write_json(out / "tune.json", result)
    return result
