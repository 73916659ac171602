"""fedtune's ServerApp: parse the run config once, build the initial adapter and the strategy,
run the rounds — one `strategy.start(num_rounds=1)` per round, so that every round ends with a
checkpoint, a short round can be retried and a crashed run resumed — and write the run
directory. Only adapter arrays and aggregate metrics ever reach the coordinator.

`run` reads top-down: the starting model, then (unless SecAgg+) the federation's strategy and
state, its rounds, and the run directory's final adapter and summary."""

from __future__ import annotations

import time
from dataclasses import dataclass
from pathlib import Path

import torch
from flwr.app import ArrayRecord, ConfigRecord, Context
from flwr.serverapp import Grid, ServerApp

from common.adapter import FFA_FROZEN, get_state, save_adapter, set_state, state_nbytes
from common import dp_recipe
from common.config import RunConfig, from_run_config
from common.model import build_model, count_trainable, model_fingerprint
from server import checkpoint
from server.compress import Decompressing
from server.identity import SiteIdentity
from server.rundir import RunDir, format_round
from server.secagg import run_secagg
from server.stopping import EarlyStopping
from server.roundlog import RoundLog
from server.strategy import Recorded, build_coordinator, server_dp_epsilon
from server.transport import fast

app = ServerApp()


def _say(text: str) -> None:
    print(text, flush=True)


@app.main()
def main(grid: Grid, context: Context) -> None:
    cfg = from_run_config(context.run_config)
    run(fast(grid), cfg)  # deployed: Flower's HTTP grid without its 3 s idle polls


def run(grid: Grid, cfg: RunConfig) -> dict:
    """Run the federation described by `cfg` over the nodes of `grid`; returns the summary."""
    run_dir = RunDir(cfg.output.run_dir or f"runs/{time.strftime('%Y%m%d-%H%M%S')}", cfg)
    start = _Start.build(cfg)
    _announce(cfg, start)
    if cfg.privacy.secure_aggregation:  # SecAgg+: the coordinator sees only the sum
        return run_secagg(grid, None, cfg, run_dir=run_dir, model=start.model,
                          initial=start.initial, exclude=start.exclude, labels=start.labels,
                          base_sha=start.base_sha)
    fed = _Federation.build(cfg, run_dir, start)
    fed.resume()
    halted = fed.run_rounds(grid)
    return fed.finish(halted)


@dataclass
class _Start:
    """The model every site starts from, and what travels of it."""

    model: torch.nn.Module
    base: str
    base_sha: str
    labels: list[str]
    num_labels: int
    exclude: tuple[str, ...]
    initial: dict[str, torch.Tensor]

    @classmethod
    def build(cls, cfg: RunConfig) -> _Start:
        labels = cfg.task.label_names()
        num_labels = 1 if cfg.task.type == "regression" else len(labels)
        built = build_model(cfg.model, num_labels=num_labels, seed=cfg.train.seed,
                            labels=labels if cfg.task.type == "classification" else None)
        exclude = FFA_FROZEN if cfg.ffa else ()  # FFA-LoRA: A never travels
        return cls(model=built.model, base=built.base, base_sha=model_fingerprint(built.base),
                   labels=labels, num_labels=num_labels, exclude=exclude,
                   initial=get_state(built.model, exclude=exclude))


def _announce(cfg: RunConfig, start: _Start) -> None:
    trainable, total = count_trainable(start.model)
    nbytes = state_nbytes(start.initial)
    _say(f"fedtune: {cfg.task.type}, {start.num_labels} labels, {cfg.model.finetune} on "
         f"{Path(start.base).name}: {trainable:,} of {total:,} parameters trainable "
         f"({100 * trainable / total:.2f} %); each site sends {nbytes:,} bytes a round")
    if cfg.model.finetune == "full":
        _say(f"fedtune: WARNING full fine-tuning: every site sends the WHOLE model every round "
             f"({nbytes / 2**20:.1f} MiB)")
    if cfg.ffa:
        _say("fedtune: FFA-LoRA — lora_A frozen at the shared seeded init; only B and the head travel")
    if cfg.privacy.dp:
        _say(f"fedtune: DP-SGD at every site — epsilon {cfg.privacy.epsilon} this run, "
             f"accountant {cfg.privacy.accountant}; {dp_recipe.announce(cfg)}")


def _reasons(log: RoundLog) -> str:
    """Every site's reason for a round without its update: failures, then rejections."""
    return "; ".join(log.failures + [f"{s}: {r}" for s, r in log.rejected.items()])


@dataclass
class _Federation:
    """The coordinator's state across rounds: strategy, current arrays, early stopping."""

    cfg: RunConfig
    run_dir: RunDir
    start: _Start
    num_sites: int
    strategy: Recorded
    outer: Recorded | Decompressing  # what `start` is called on (compressed updates decoded first)
    stopper: EarlyStopping
    arrays: ArrayRecord
    done: int = 0  # rounds finished before this process (resume)
    server_round: int = 1  # the next round to run

    @classmethod
    def build(cls, cfg: RunConfig, run_dir: RunDir, start: _Start) -> _Federation:
        fed = cfg.federation
        num_sites = max(fed.min_sites, cfg.simulation.sites)
        identity = SiteIdentity.from_env()
        if identity.registry is not None:
            _say(f"fedtune: sites named by node id from the coordinator's registry {identity.path} "
                 f"({len(identity.registry)} enrolled); names claimed in replies are ignored")
        strategy = build_coordinator(cfg, num_sites=num_sites, identity=identity)
        # Compressed updates are decoded before anything else looks at them (validation included).
        outer = Decompressing(strategy) if cfg.compression.mode != "none" else strategy
        stopper = EarlyStopping(patience=fed.early_stopping_patience,
                                min_delta=fed.early_stopping_min_delta,
                                metric=fed.early_stopping_metric)
        return cls(cfg=cfg, run_dir=run_dir, start=start, num_sites=num_sites, strategy=strategy,
                   outer=outer, stopper=stopper, arrays=ArrayRecord(start.initial))

    def resume(self) -> None:
        """With output.resume, continue after the run directory's latest checkpoint."""
        if not self.cfg.output.resume:
            return
        ckpt = checkpoint.load(self.run_dir.path, config_hash=self.cfg.hash(),
                               base_sha256=self.start.base_sha)
        self.arrays, self.done = ArrayRecord(ckpt.arrays), ckpt.round
        checkpoint.load_strategy_state(self.outer, ckpt.strategy)
        self.run_dir.history = ckpt.history
        self.stopper.load(ckpt.best, ckpt.best_arrays)
        _say(f"fedtune: resuming {self.run_dir.path} after round {self.done}")

    def run_rounds(self, grid: Grid) -> str:
        """Run the rounds left, retrying short ones; returns why the run halted ("" if it did not)."""
        fed = self.cfg.federation
        self.server_round, retries = self.done + 1, 0
        while self.server_round <= fed.rounds and not self.stopper.stopped:
            log, result = self._one_round(grid)
            if log.incomplete and retries < fed.round_retries:
                retries += 1
                _say(f"fedtune: round {self.server_round}: only {len(log.train)} valid updates "
                     f"(need {fed.min_sites}); retrying ({retries}/{fed.round_retries}) — "
                     + _reasons(log))
                continue
            retries = 0
            if len(result.arrays):
                self.arrays = result.arrays
            self._record(log)
            self.server_round += 1
            if not log.train:  # after the retries nobody trained: another round cannot help
                halted = (f"round {self.server_round - 1}: no site sent a valid update after "
                          f"{fed.round_retries} retries")
                _say(f"fedtune: STOPPED — {halted}; the run ends here (every site's reason: "
                     + _reasons(log) + ")")
                return halted
        return ""

    def _one_round(self, grid: Grid):
        fed = self.cfg.federation
        self.strategy.offset = self.server_round - 1
        result = self.outer.start(grid=grid, initial_arrays=self.arrays, num_rounds=1,
                                  timeout=fed.round_timeout,
                                  train_config=ConfigRecord({"total-rounds": fed.rounds}),
                                  evaluate_config=ConfigRecord({"split": "test"}))
        log = self.strategy.rounds[self.server_round]
        if self.outer is not self.strategy:  # traffic as it crossed the wire, compressed
            log.upload_bytes.update(self.outer.wire_bytes)
        return log, result

    def _record(self, log: RoundLog) -> None:
        """A finished round: its record, the early-stopping view, the terminal line, a checkpoint."""
        row = self.run_dir.record_round(log)
        self.stopper.update(self.server_round, row, self.arrays)
        _say(format_round(row, total_rounds=self.cfg.federation.rounds))
        checkpoint.save(self.run_dir.path, checkpoint.Checkpoint(
            round=self.server_round, arrays=self.arrays.to_torch_state_dict(),
            strategy=checkpoint.strategy_state(self.outer), history=self.run_dir.history,
            best=self.stopper.state(), best_arrays=self.stopper.best_tensors(),
            config_hash=self.cfg.hash(), base_sha256=self.start.base_sha),
            keep=self.cfg.output.keep_checkpoints)

    def finish(self, halted: str) -> dict:
        """Save the final (or best) adapter, plots and the summary; returns the summary."""
        stopper, start, run_dir = self.stopper, self.start, self.run_dir
        if stopper.stopped:
            _say(f"fedtune: early stopping after round {self.server_round - 1}: best validation "
                 f"{stopper.metric} {stopper.best_value:.4f} at round {stopper.best_round}; "
                 "keeping that round's adapter")
        final = stopper.best_arrays(self.arrays)
        set_state(start.model, final.to_torch_state_dict(), exclude=start.exclude)
        save_adapter(start.model, run_dir.path / "adapter", label_names=start.labels,
                     base_fingerprint=start.base_sha)
        run_dir.write_plots()
        summary = run_dir.write_summary(self._summary_extra(halted))
        _say(f"fedtune: done in {summary['wall_s']:.0f}s — " + ", ".join(
            f"{k}={summary[k]:.4f}" for k in ("accuracy", "macro_f1", "rmse") if k in summary)
            + f" — run directory {run_dir.path}")
        return summary

    def _summary_extra(self, halted: str) -> dict:
        cfg, stopper, run_dir = self.cfg, self.stopper, self.run_dir
        extra = {"task": cfg.task.type, "bytes_per_site_round": state_nbytes(self.start.initial),
                 "trainable_params": count_trainable(self.start.model)[0],
                 "lora_variant": "ffa" if cfg.ffa else cfg.model.finetune,
                 "privacy": run_dir.privacy_summary(), "early_stopping": stopper.state(),
                 "final_round": stopper.best_round if stopper.best_round else len(run_dir.history),
                 "halted": halted}
        if cfg.privacy.server_noise > 0:
            extra["server_dp"] = server_dp_epsilon(noise_multiplier=cfg.privacy.server_noise,
                                                   rounds=len(run_dir.history),
                                                   num_sites=self.num_sites)
        return extra
