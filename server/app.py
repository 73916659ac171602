"""fedtune's ServerApp: parse the run config once, build the model's initial adapter and the
strategy, run the rounds, and write the run directory. Only adapter arrays and aggregate metrics
ever reach the coordinator."""

from __future__ import annotations

import time
from pathlib import Path

from flwr.app import ArrayRecord, ConfigRecord, Context, MetricRecord
from flwr.serverapp import Grid, ServerApp

from common.adapter import FFA_FROZEN, get_state, save_adapter, set_state, state_nbytes
from common.config import RunConfig, from_run_config
from common.model import build_model, count_trainable, model_fingerprint
from server.rundir import RunDir, format_round
from server.strategy import Recorded, build_strategy, server_dp_epsilon

app = ServerApp()


def _say(text: str) -> None:
    print(text, flush=True)


@app.main()
def main(grid: Grid, context: Context) -> None:
    cfg = from_run_config(context.run_config)
    run(grid, cfg)


def run(grid: Grid, cfg: RunConfig) -> dict:
    """Run the federation described by `cfg` over the nodes of `grid`; returns the summary."""
    run_dir = RunDir(cfg.output.run_dir or f"runs/{time.strftime('%Y%m%d-%H%M%S')}", cfg)
    labels = cfg.task.label_names()
    num_labels = 1 if cfg.task.type == "regression" else len(labels)
    built = build_model(cfg.model, num_labels=num_labels, seed=cfg.train.seed)
    model = built.model
    # FFA-LoRA: A is never sent — every party derives the same A from the shared seed.
    exclude = FFA_FROZEN if cfg.ffa else ()
    initial = get_state(model, exclude=exclude)
    trainable, total = count_trainable(model)
    _say(f"fedtune: {cfg.task.type}, {num_labels} labels, {cfg.model.finetune} on "
         f"{Path(built.base).name}: {trainable:,} of {total:,} parameters trainable "
         f"({100 * trainable / total:.2f} %); each site sends {state_nbytes(initial):,} bytes a round")
    if cfg.model.finetune == "full":
        _say("fedtune: WARNING full fine-tuning: every site sends the WHOLE model every round")

    if cfg.ffa:
        _say("fedtune: FFA-LoRA — lora_A frozen at the shared seeded init; only B and the head travel")
    if cfg.privacy.dp:
        _say(f"fedtune: DP-SGD at every site — epsilon {cfg.privacy.epsilon} this run, "
             f"accountant {cfg.privacy.accountant}, clip {cfg.privacy.max_grad_norm}")
    num_sites = max(cfg.federation.min_sites, cfg.simulation.sites, 1)
    strategy = Recorded(build_strategy(cfg, num_sites=num_sites),
                        evaluate_every=cfg.federation.evaluate_every,
                        num_rounds=cfg.federation.rounds)

    def on_round_end(server_round: int, arrays: ArrayRecord) -> MetricRecord | None:
        if server_round == 0:
            return None
        row = run_dir.record_round(strategy.rounds[server_round])
        _say(format_round(row, total_rounds=cfg.federation.rounds))
        return None

    result = strategy.start(grid=grid, initial_arrays=ArrayRecord(initial),
                            num_rounds=cfg.federation.rounds, timeout=cfg.federation.round_timeout,
                            train_config=ConfigRecord({"total-rounds": cfg.federation.rounds}),
                            evaluate_config=ConfigRecord({"split": "test"}),
                            evaluate_fn=on_round_end)
    # No round aggregated (every site refused or failed): the global adapter is the initial one.
    final = result.arrays if len(result.arrays) else ArrayRecord(initial)
    set_state(model, final.to_torch_state_dict(), exclude=exclude)
    save_adapter(model, run_dir.path / "adapter", label_names=labels,
                 base_fingerprint=model_fingerprint(built.base))
    run_dir.write_plots()
    extra = {"task": cfg.task.type, "bytes_per_site_round": state_nbytes(initial),
             "trainable_params": trainable, "lora_variant": "ffa" if cfg.ffa else cfg.model.finetune,
             "privacy": run_dir.privacy_summary()}
    if cfg.privacy.server_noise > 0:
        extra["server_dp"] = server_dp_epsilon(noise_multiplier=cfg.privacy.server_noise,
                                               rounds=len(run_dir.history), num_sites=num_sites)
    summary = run_dir.write_summary(extra)
    _say(f"fedtune: done in {summary['wall_s']:.0f}s — " + ", ".join(
        f"{k}={summary[k]:.4f}" for k in ("accuracy", "macro_f1", "rmse") if k in summary)
        + f" — run directory {run_dir.path}")
    return summary
