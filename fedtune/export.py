"""`fedtune export`: turn a run directory's global adapter into files a bank or hospital can
deploy without fedtune.

    OUT/                 the merged model (`merge_and_unload`) in Hugging Face format, with the
                         tokenizer and id2label/label2id: AutoModelForSequenceClassification
                         .from_pretrained(OUT) just works
    OUT/adapter/         the PEFT adapter, copied from RUN_DIR/adapter
    OUT/int8/            (--int8) dynamically int8-quantised Linear layers for CPU inference
    OUT/export.json      provenance: run, base model + sha256, labels, max length, logit diffs

`personalized=SITE` exports a site's personalized adapter instead of the global one (kept at the
site after a run with federation.personalize-epochs: client/personalize.py): SITE is the site's
directory, or a simulated site's name under RUN_DIR/sites. A personalized directory
(<site-dir>/personalized/run-<id>) is itself run-shaped and can also be passed as RUN_DIR.

The whole directory is built under a temporary name and renamed into place; the export is
refused when merged and adapter logits differ by 1e-4 or more, or when the base model on disk
is not the one the adapter was trained on (fingerprint in adapter/fedtune.json).
"""

from __future__ import annotations

import dataclasses
import json
import shutil
import warnings
from dataclasses import dataclass
from pathlib import Path

import torch

import fedtune
from common.adapter import read_labels
from common.atomic import atomic_dir
from common.config import RunConfig, from_flat, load_toml
from common.device import model_device, place, resolve_device
from common.errors import FedtuneError, ModelError
from common.model import load_tokenizer, model_fingerprint, quiet_transformers, resolve_base

TOLERANCE = 1e-4  # max abs logit difference allowed between merged and adapter model
INT8_WEIGHTS = "model_int8.pt"


class OutputExistsError(FedtuneError, FileExistsError):
    """An output path exists and --force was not given."""


@dataclass(frozen=True)
class RunInfo:
    """What a finished run directory says about its model (read once, checked)."""

    run_dir: Path
    cfg: RunConfig
    base: str  # the local base model directory
    base_sha256: str
    labels: list[str]
    num_labels: int


def load_run(run_dir: str | Path, *, check_base: bool = True) -> RunInfo:
    """Read RUN_DIR/config.toml and RUN_DIR/adapter; check the base model's fingerprint."""
    run = Path(run_dir)
    if not (run / "config.toml").is_file() or not (run / "adapter").is_dir():
        raise ModelError(f"{run} is not a fedtune run directory (it needs config.toml and adapter/): "
                         "pass the --out directory of `fedtune simulate` or a coordinator's run dir")
    cfg = from_flat(load_toml(run / "config.toml"), origin=str(run / "config.toml"))
    labels = read_labels(run / "adapter")
    meta_path = run / "adapter" / "fedtune.json"
    try:
        meta = json.loads(meta_path.read_text(encoding="utf-8"))
    except (OSError, ValueError) as err:
        raise ModelError(f"{meta_path} is missing or unreadable ({err}): the adapter's base-model "
                         "fingerprint is unknown; re-run the federation with this fedtune") from None
    base = resolve_base(cfg.model)  # "" resolves to common.model.default_base_model()
    num_labels = 1 if cfg.task.type == "regression" else len(labels)
    info = RunInfo(run_dir=run, cfg=cfg, base=base, base_sha256=str(meta.get("base_model_sha256", "")),
                   labels=labels, num_labels=num_labels)
    if check_base:
        check_base_model(base, expected=info.base_sha256, where=meta_path)
    return info


def check_base_model(base: str, *, expected: str, where: Path | str) -> None:
    """Raise ModelError unless the base model directory hashes to `expected`."""
    actual = model_fingerprint(base)
    if actual != expected:
        raise ModelError(f"the base model {base} has sha256 {actual[:16]}…, but {where} says the adapter "
                         f"was trained on {expected[:16] or '(none recorded)'}…: the adapter only works on "
                         "its own base model; point model.base in config.toml at that exact model directory")


def load_adapter_model(info: RunInfo) -> tuple[torch.nn.Module, object]:
    """The base model with the run's global adapter (stock PeftModel.from_pretrained), eval mode."""
    from peft import PeftModel
    from transformers import AutoModelForSequenceClassification

    quiet_transformers()
    base = AutoModelForSequenceClassification.from_pretrained(info.base, num_labels=info.num_labels)
    if getattr(base.config, "pad_token_id", None) is None:
        base.config.pad_token_id = 0
    try:
        model = PeftModel.from_pretrained(base, str(info.run_dir / "adapter"))
    except (OSError, ValueError, RuntimeError, KeyError) as err:
        raise ModelError(f"cannot load the adapter {info.run_dir / 'adapter'} onto {info.base}: {err}") from None
    return model.eval(), load_tokenizer(info.base)


def probe_inputs(tokenizer, *, rows: int = 32, max_length: int = 64,
                 seed: int = 0) -> dict[str, torch.Tensor]:
    """Random token sequences of varied length (padded), to compare two models' logits on."""
    gen = torch.Generator().manual_seed(seed)
    vocab = int(getattr(tokenizer, "vocab_size", 0) or len(tokenizer))
    cls, sep = tokenizer.cls_token_id, tokenizer.sep_token_id
    ids = torch.full((rows, max_length), int(tokenizer.pad_token_id or 0), dtype=torch.long)
    mask = torch.zeros((rows, max_length), dtype=torch.long)
    for r in range(rows):
        n = int(torch.randint(3, max_length + 1, (1,), generator=gen))
        seq = torch.randint(0, vocab, (n,), generator=gen)
        if cls is not None and sep is not None:
            seq[0], seq[-1] = cls, sep
        ids[r, :n], mask[r, :n] = seq, 1
    return {"input_ids": ids, "attention_mask": mask}


@torch.inference_mode()
def logits_of(model: torch.nn.Module, inputs: dict[str, torch.Tensor]) -> torch.Tensor:
    """Float32 CPU logits; the inputs go to wherever the model is."""
    device = model_device(model)
    inputs = {k: v.to(device) for k, v in inputs.items()}
    return model(**inputs).logits.float().cpu()


def quantize_int8(model: torch.nn.Module) -> torch.nn.Module:
    """Dynamic int8 quantisation of every nn.Linear (weights int8, activations quantised on the fly)."""
    with warnings.catch_warnings():  # torch.ao.quantization is deprecated upstream but still shipped
        warnings.simplefilter("ignore")
        return torch.ao.quantization.quantize_dynamic(model.eval(), {torch.nn.Linear}, dtype=torch.qint8)


def load_int8(model_dir: str | Path) -> torch.nn.Module:
    """Rebuild the architecture from OUT/int8/config.json, quantise it, load the int8 weights."""
    from transformers import AutoConfig, AutoModelForSequenceClassification

    quiet_transformers()
    d = Path(model_dir)
    if not (d / INT8_WEIGHTS).is_file():
        raise ModelError(f"{d} has no {INT8_WEIGHTS}: pass the int8/ folder of an export made with --int8")
    skeleton = AutoModelForSequenceClassification.from_config(AutoConfig.from_pretrained(str(d)))
    model = quantize_int8(skeleton)
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        model.load_state_dict(torch.load(d / INT8_WEIGHTS, weights_only=True))
    return model.eval()


def refuse_overwrite(out: Path, *, force: bool, protect: Path) -> None:
    if out.exists() and not force:
        raise OutputExistsError(f"{out} already exists: choose another --out, or pass --force to replace it")
    if out.resolve() in (protect.resolve(), *protect.resolve().parents):
        raise OutputExistsError(f"--out {out} would replace the run directory {protect}: choose another --out")


def personalized_source(run_dir: str | Path, site: str) -> Path:
    """The personalized adapter directory of `site` (a site dir, or a simulated site's name under
    RUN_DIR/sites) for the run in RUN_DIR (matched by config hash; the newest when RUN_DIR has no
    config.toml, e.g. at a site that only has its own directory)."""
    from client.personalize import find_personalized, run_config_hash
    from fedtune.report import sites_root

    site_dir = Path(site) if Path(site).is_dir() else sites_root(Path(run_dir)) / site
    if not site_dir.is_dir():
        raise ModelError(f"--personalized {site}: no such site directory (nor {site_dir}): pass the "
                         "site's directory, or a simulated site's name such as site-0")
    return find_personalized(site_dir, config_hash=run_config_hash(run_dir))


def export_run(run_dir: str | Path, *, out: str | Path, int8: bool = False, force: bool = False,
               tolerance: float = TOLERANCE, device: str | None = None,
               personalized: str | None = None) -> dict:
    """Write the export directory (see the module docstring); returns export.json's content.
    The merge and its logit check run on `device` (None = the run's train.device); the saved
    weights are CPU float32 either way, and the int8 model is made and checked on the CPU."""
    info = load_run(personalized_source(run_dir, personalized) if personalized else run_dir)
    out = Path(out)
    refuse_overwrite(out, force=force, protect=info.run_dir)
    dev = resolve_device(device or info.cfg.train.device)
    model, tokenizer = load_adapter_model(info)
    place(model, dev)
    probe = probe_inputs(tokenizer, max_length=min(info.cfg.model.max_length, 64), seed=info.cfg.train.seed)
    reference = logits_of(model, probe)
    with atomic_dir(out) as tmp:
        shutil.copytree(info.run_dir / "adapter", tmp / "adapter")
        merged = model.merge_and_unload()
        if info.labels and info.num_labels > 1:
            merged.config.id2label = dict(enumerate(info.labels))
            merged.config.label2id = {name: i for i, name in enumerate(info.labels)}
        merged.to("cpu").save_pretrained(str(tmp))
        tokenizer.save_pretrained(str(tmp))
        from transformers import AutoModelForSequenceClassification

        reloaded = place(AutoModelForSequenceClassification.from_pretrained(str(tmp)).eval(), dev)
        diff = float((logits_of(reloaded, probe) - reference).abs().max())
        if not diff < tolerance:
            raise ModelError(f"the merged model's logits differ from the adapter's by {diff:.3g} "
                             f"(limit {tolerance:g}) on {len(reference)} probe rows: the merge is not "
                             "faithful for this model; deploy the adapter/ with its base model instead")
        meta = {"format": 1, "fedtune_version": fedtune.__version__, "source_run": str(info.run_dir.resolve()),
                "task": info.cfg.task.type, "labels": info.labels, "base_model": info.base,
                "base_model_sha256": info.base_sha256, "max_length": info.cfg.model.max_length,
                "seed": info.cfg.train.seed, "data": dataclasses.asdict(info.cfg.data),
                "max_abs_logit_diff": diff, "int8": int8}
        if (info.run_dir / "personalized.json").is_file():  # a site's personalized adapter
            meta["personalized"] = json.loads((info.run_dir / "personalized.json").read_text(encoding="utf-8"))
        if int8:
            reloaded.to("cpu")  # dynamic int8 quantisation is a CPU feature
            qmodel = quantize_int8(reloaded)
            (tmp / "int8").mkdir()
            reloaded.config.save_pretrained(str(tmp / "int8"))
            tokenizer.save_pretrained(str(tmp / "int8"))
            torch.save(qmodel.state_dict(), tmp / "int8" / INT8_WEIGHTS)
            qlogits = logits_of(load_int8(tmp / "int8"), probe)
            meta["int8_max_abs_logit_diff"] = float((qlogits - reference).abs().max())
            meta["int8_argmax_agreement"] = float((qlogits.argmax(-1) == reference.argmax(-1)).float().mean())
        (tmp / "export.json").write_text(json.dumps(meta, indent=1), encoding="utf-8")
    return meta
