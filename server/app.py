"""fedtune's ServerApp: parse the run config once, build the initial adapter and the strategy,
run the rounds — one `strategy.start(num_rounds=1)` per round, so that every round ends with a
checkpoint, a short round can be retried and a crashed run resumed — and write the run
directory. Only adapter arrays and aggregate metrics ever reach the coordinator."""

from __future__ import annotations

import time
from pathlib import Path

from flwr.app import ArrayRecord, ConfigRecord, Context
from flwr.serverapp import Grid, ServerApp

from common.adapter import FFA_FROZEN, get_state, save_adapter, set_state, state_nbytes
from common.config import RunConfig, from_run_config
from common.model import build_model, count_trainable, model_fingerprint
from server import checkpoint
from server.robust import build_aggregator
from server.rundir import RunDir, format_round
from server.secagg import run_secagg
from server.stopping import EarlyStopping
from server.compress import Decompressing
from server.identity import SiteIdentity
from server.strategy import Recorded, server_dp_epsilon

app = ServerApp()


def _say(text: str) -> None:
    print(text, flush=True)


@app.main()
def main(grid: Grid, context: Context) -> None:
    cfg = from_run_config(context.run_config)
    run(grid, cfg)


def _announce(cfg: RunConfig, built, initial, num_labels: int) -> None:
    trainable, total = count_trainable(built.model)
    _say(f"fedtune: {cfg.task.type}, {num_labels} labels, {cfg.model.finetune} on "
         f"{Path(built.base).name}: {trainable:,} of {total:,} parameters trainable "
         f"({100 * trainable / total:.2f} %); each site sends {state_nbytes(initial):,} bytes a round")
    if cfg.model.finetune == "full":
        _say(f"fedtune: WARNING full fine-tuning: every site sends the WHOLE model every round "
             f"({state_nbytes(initial) / 2**20:.1f} MiB)")
    if cfg.ffa:
        _say("fedtune: FFA-LoRA — lora_A frozen at the shared seeded init; only B and the head travel")
    if cfg.privacy.dp:
        _say(f"fedtune: DP-SGD at every site — epsilon {cfg.privacy.epsilon} this run, "
             f"accountant {cfg.privacy.accountant}, clip {cfg.privacy.max_grad_norm}")


def run(grid: Grid, cfg: RunConfig) -> dict:
    """Run the federation described by `cfg` over the nodes of `grid`; returns the summary."""
    run_dir = RunDir(cfg.output.run_dir or f"runs/{time.strftime('%Y%m%d-%H%M%S')}", cfg)
    labels = cfg.task.label_names()
    num_labels = 1 if cfg.task.type == "regression" else len(labels)
    built = build_model(cfg.model, num_labels=num_labels, seed=cfg.train.seed,
                        labels=labels if cfg.task.type == "classification" else None)
    model, base_sha = built.model, model_fingerprint(built.base)
    exclude = FFA_FROZEN if cfg.ffa else ()  # FFA-LoRA: A never travels
    initial = get_state(model, exclude=exclude)
    _announce(cfg, built, initial, num_labels)
    if cfg.privacy.secure_aggregation:  # SecAgg+: the coordinator sees only the sum
        return run_secagg(grid, None, cfg, run_dir=run_dir, model=model, initial=initial,
                          exclude=exclude, labels=labels, base_sha=base_sha)
    fed = cfg.federation
    num_sites = max(fed.min_sites, cfg.simulation.sites)
    identity = SiteIdentity.from_env()
    if identity.registry is not None:
        _say(f"fedtune: sites named by node id from the coordinator's registry {identity.path} "
             f"({len(identity.registry)} enrolled); names claimed in replies are ignored")
    strategy = Recorded(build_aggregator(cfg, num_sites=num_sites),
                        evaluate_every=fed.evaluate_every, num_rounds=fed.rounds,
                        min_sites=fed.min_sites, max_norm_factor=fed.max_norm_factor,
                        max_examples=fed.max_examples, max_update_norm=fed.max_update_norm,
                        weighting=fed.weighting, identity=identity)
    # Compressed updates are decoded before anything else looks at them (validation included).
    outer = Decompressing(strategy) if cfg.compression.mode != "none" else strategy
    stopper = EarlyStopping(patience=fed.early_stopping_patience,
                            min_delta=fed.early_stopping_min_delta, metric=fed.early_stopping_metric)
    arrays, done = ArrayRecord(initial), 0
    if cfg.output.resume:
        ckpt = checkpoint.load(run_dir.path, config_hash=cfg.hash(), base_sha256=base_sha)
        arrays, done = ArrayRecord(ckpt.arrays), ckpt.round
        checkpoint.load_strategy_state(outer, ckpt.strategy)
        run_dir.history = ckpt.history
        stopper.load(ckpt.best, ckpt.best_arrays)
        _say(f"fedtune: resuming {run_dir.path} after round {done}")
    server_round = done + 1
    retries, halted = 0, ""
    while server_round <= fed.rounds and not stopper.stopped:
        strategy.offset = server_round - 1
        result = outer.start(grid=grid, initial_arrays=arrays, num_rounds=1,
                                timeout=fed.round_timeout,
                                train_config=ConfigRecord({"total-rounds": fed.rounds}),
                                evaluate_config=ConfigRecord({"split": "test"}))
        log = strategy.rounds[server_round]
        if outer is not strategy:  # traffic as it crossed the wire, compressed
            log.upload_bytes.update(outer.wire_bytes)
        if log.incomplete and retries < fed.round_retries:
            retries += 1
            _say(f"fedtune: round {server_round}: only {len(log.train)} valid updates (need "
                 f"{fed.min_sites}); retrying ({retries}/{fed.round_retries}) — "
                 + "; ".join(log.failures + [f"{s}: {r}" for s, r in log.rejected.items()]))
            continue
        retries = 0
        if len(result.arrays):
            arrays = result.arrays
        row = run_dir.record_round(log)
        stopper.update(server_round, row, arrays)
        _say(format_round(row, total_rounds=fed.rounds))
        checkpoint.save(run_dir.path, checkpoint.Checkpoint(
            round=server_round, arrays=arrays.to_torch_state_dict(),
            strategy=checkpoint.strategy_state(outer), history=run_dir.history,
            best=stopper.state(), best_arrays=stopper.best_tensors(), config_hash=cfg.hash(),
            base_sha256=base_sha),
            keep=cfg.output.keep_checkpoints)
        server_round += 1
        if not log.train:  # after the retries nobody trained: another round cannot help
            halted = (f"round {server_round - 1}: no site sent a valid update after "
                      f"{fed.round_retries} retries")
            _say(f"fedtune: STOPPED — {halted}; the run ends here (every site's reason: "
                 + "; ".join(log.failures + [f"{s}: {r}" for s, r in log.rejected.items()]) + ")")
            break
    if stopper.stopped:
        _say(f"fedtune: early stopping after round {server_round - 1}: best validation "
             f"{stopper.metric} {stopper.best_value:.4f} at round {stopper.best_round}; "
             "keeping that round's adapter")
    final = stopper.best_arrays(arrays)
    set_state(model, final.to_torch_state_dict(), exclude=exclude)
    save_adapter(model, run_dir.path / "adapter", label_names=labels, base_fingerprint=base_sha)
    run_dir.write_plots()
    extra = {"task": cfg.task.type, "bytes_per_site_round": state_nbytes(initial),
             "trainable_params": count_trainable(model)[0],
             "lora_variant": "ffa" if cfg.ffa else cfg.model.finetune,
             "privacy": run_dir.privacy_summary(), "early_stopping": stopper.state(),
             "final_round": stopper.best_round if stopper.best_round else len(run_dir.history),
             "halted": halted}
    if cfg.privacy.server_noise > 0:
        extra["server_dp"] = server_dp_epsilon(noise_multiplier=cfg.privacy.server_noise,
                                               rounds=len(run_dir.history), num_sites=num_sites)
    summary = run_dir.write_summary(extra)
    _say(f"fedtune: done in {summary['wall_s']:.0f}s — " + ", ".join(
        f"{k}={summary[k]:.4f}" for k in ("accuracy", "macro_f1", "rmse") if k in summary)
        + f" — run directory {run_dir.path}")
    return summary
