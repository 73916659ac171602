"""Save and resume the whole federation state after every round, atomically.

    RUN_DIR/checkpoints/round-0003/
        arrays.safetensors   the global adapter state (what the sites receive)
        strategy.npz         server-optimiser moments (FedAdam/FedYogi/FedAdagrad m_t, v_t)
        state.json           round, best-so-far (early stopping), metrics history, RNG state,
                             config hash, base-model fingerprint

A checkpoint directory is written under a temporary name and renamed; the last `keep` are kept.
Resume refuses a changed config or base model, naming what differs."""

from __future__ import annotations

import json
import random
import shutil
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np
import torch

from common.atomic import atomic_dir
from common.errors import ConfigError

MOMENTS = ("m_t", "v_t")  # FedOpt-family attributes that carry state between rounds


def _strategies(strategy) -> list:
    """The strategy and everything it wraps (Recorded.inner, DP wrappers' .strategy, ...)."""
    out, seen = [], set()
    while strategy is not None and id(strategy) not in seen:
        seen.add(id(strategy))
        out.append(strategy)
        strategy = getattr(strategy, "inner", None) or getattr(strategy, "strategy", None)
    return out


def strategy_state(strategy) -> dict[str, np.ndarray]:
    """Flatten the server optimiser's moments to {"<level>.<attr>.<key>": array}."""
    flat = {}
    for level, s in enumerate(_strategies(strategy)):
        for attr in MOMENTS:
            for k, v in (getattr(s, attr, None) or {}).items():
                flat[f"{level}.{attr}.{k}"] = np.asarray(v)
    return flat


def load_strategy_state(strategy, flat: dict[str, np.ndarray]) -> None:
    levels = _strategies(strategy)
    restored: dict[tuple[int, str], dict] = {}
    for name, arr in flat.items():
        level, attr, key = name.split(".", 2)
        restored.setdefault((int(level), attr), {})[key] = np.array(arr)
    for (level, attr), value in restored.items():
        if level >= len(levels):
            raise ConfigError("the checkpoint's strategy state does not fit federation.strategy: "
                              "resume with the strategy the run started with")
        setattr(levels[level], attr, value)


@dataclass
class Checkpoint:
    round: int
    arrays: dict[str, torch.Tensor]
    strategy: dict[str, np.ndarray]
    history: list[dict]
    best: dict = field(default_factory=dict)
    config_hash: str = ""
    base_sha256: str = ""
    rng: dict = field(default_factory=dict)
    best_arrays: dict[str, torch.Tensor] | None = None  # early stopping's best round so far


def _rng_state() -> dict:
    np_state = np.random.get_state()
    return {"python": list(random.getstate()), "numpy": [np_state[0], np_state[1].tolist(),
                                                          *np_state[2:]],
            "torch": torch.get_rng_state().tolist()}


def _set_rng_state(state: dict) -> None:
    if not state:
        return
    version, internal, gauss = state["python"]
    random.setstate((version, tuple(internal), gauss))
    kind, keys, pos, has_gauss, cached = state["numpy"]
    np.random.set_state((kind, np.array(keys, dtype=np.uint32), pos, has_gauss, cached))
    torch.set_rng_state(torch.tensor(state["torch"], dtype=torch.uint8))


def save(run_dir: Path, ckpt: Checkpoint, *, keep: int = 3) -> Path:
    """Write round `ckpt.round` atomically and prune all but the newest `keep`."""
    from safetensors.torch import save_file

    root = Path(run_dir) / "checkpoints"
    final = root / f"round-{ckpt.round:04d}"
    with atomic_dir(final) as tmp:
        save_file({k: v.contiguous() for k, v in ckpt.arrays.items()}, str(tmp / "arrays.safetensors"))
        np.savez(tmp / "strategy.npz", **ckpt.strategy)
        if ckpt.best_arrays:
            save_file({k: v.contiguous() for k, v in ckpt.best_arrays.items()},
                      str(tmp / "best.safetensors"))
        state = {"round": ckpt.round, "history": ckpt.history, "best": ckpt.best,
                 "config_hash": ckpt.config_hash, "base_sha256": ckpt.base_sha256,
                 "rng": _rng_state()}
        (tmp / "state.json").write_text(json.dumps(state), encoding="utf-8")
    for old in sorted(root.glob("round-*"))[:-keep]:
        shutil.rmtree(old, ignore_errors=True)
    return final


def latest(run_dir: Path) -> Path | None:
    found = sorted((Path(run_dir) / "checkpoints").glob("round-*"))
    complete = [p for p in found if (p / "state.json").is_file()]
    return complete[-1] if complete else None


def load(run_dir: Path, *, config_hash: str, base_sha256: str) -> Checkpoint:
    """The newest complete checkpoint; refuses one made with another config or base model."""
    from safetensors.torch import load_file

    path = latest(run_dir)
    if path is None:
        raise ConfigError(f"nothing to resume in {run_dir}: it has no checkpoints/round-*/ "
                          "(the run stopped before its first round ended, or this is not a run "
                          "directory); start a new run instead")
    state = json.loads((path / "state.json").read_text(encoding="utf-8"))
    if state["config_hash"] != config_hash:
        raise ConfigError(f"cannot resume {run_dir}: its config (hash {state['config_hash']}) differs "
                          f"from this one ({config_hash}). Resume with the run's own config "
                          f"({run_dir}/config.toml) and no --set overrides, or start a new run")
    if state["base_sha256"] != base_sha256:
        raise ConfigError(f"cannot resume {run_dir}: the base model changed since the run started "
                          "(sha256 differs); point model.base at the original model")
    with np.load(path / "strategy.npz") as npz:
        strategy = {k: npz[k] for k in npz.files}
    _set_rng_state(state.get("rng", {}))
    best_file = path / "best.safetensors"
    return Checkpoint(best_arrays=load_file(str(best_file)) if best_file.is_file() else None,
                      round=state["round"], arrays=load_file(str(path / "arrays.safetensors")),
                      strategy=strategy, history=state["history"], best=state.get("best", {}),
                      config_hash=state["config_hash"], base_sha256=state["base_sha256"],
                      rng=state.get("rng", {}))
