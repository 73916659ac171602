"""The site's compression mod: after the train handler replies, replace the adapter arrays with
the compressed update (new state - the global state received), per `[compression]` in the run
config. The handler and the trainer know nothing of it.

Error feedback (int8, topk): the part of the update that was not sent (the residual) is kept ON
THE SITE'S DISK, `<site-dir>/compression/residual-run<run id>.npz`, and added to the next
round's update. Disk, not process memory: a deployed SuperNode starts a fresh ClientApp process
per message, and in simulation a site may land on another Ray actor next round. The residual is
a function of the site's own updates only (post-processing: no privacy cost under DP-SGD).

Order in the ClientApp: `mods=[outbound_guard_mod, compression_mod]` — the guard is outermost,
so it inspects what actually leaves."""

from __future__ import annotations

import logging
import time
import zipfile
from pathlib import Path

import numpy as np
import torch
from flwr.app import Array, ArrayRecord, Context, Message

from client.site import site_facts
from common.atomic import atomic_replace
from common.compress import FEEDBACK_MODES, encode_with_feedback
from common.config import from_run_config
from common.errors import COMPRESSION, FedtuneError, ModelError

log = logging.getLogger("fedtune.site")  # the site's own runtime.log, never the coordinator


class CompressionFailed(FedtuneError, ValueError):
    """The site's update cannot be encoded (e.g. NaN), or its keys changed."""

    code = COMPRESSION
    public = "the site could not encode its update (non-finite values or changed keys)"


def residual_path(site_dir: str | Path, run_id: int) -> Path:
    return Path(site_dir) / "compression" / f"residual-run{run_id}.npz"


def load_residual(path: Path) -> dict[str, torch.Tensor]:
    """The stored residual; {} when there is none yet. An unreadable one is moved aside as
    `<name>.corrupt-<time>` and said in the site's log: feedback restarts from zero (the update
    sent stays correct; only the compression error carried over is lost)."""
    if not path.exists():
        return {}
    try:
        with np.load(path, allow_pickle=False) as npz:
            return {k: torch.from_numpy(npz[k].copy()) for k in npz.files}
    except (OSError, ValueError, EOFError, zipfile.BadZipFile) as err:
        aside = path.with_name(f"{path.name}.corrupt-{time.strftime('%Y%m%d-%H%M%S')}")
        path.replace(aside)
        log.warning("compression residual %s is unreadable (%s: %s): moved aside as %s; error "
                    "feedback restarts from zero this round", path, type(err).__name__, err, aside)
        return {}


def save_residual(path: Path, residual: dict[str, torch.Tensor]) -> None:
    """Write atomically: a crash mid-write leaves the previous residual."""
    with atomic_replace(path) as fh:
        np.savez(fh, **{k: v.numpy() for k, v in residual.items()})


def compression_mod(msg: Message, ctx: Context, call_next) -> Message:
    """Flower mod: compress the adapter arrays of every successful train reply."""
    # plain Message-API train messages only (SecAgg+'s legacy messages carry no "arrays")
    if msg.metadata.message_type.split(".")[0] != "train" or not msg.has_content() \
            or "arrays" not in msg.content.array_records:
        return call_next(msg, ctx)
    cfg = from_run_config(ctx.run_config)
    comp = cfg.compression
    if comp.mode == "none":
        return call_next(msg, ctx)
    received = msg.content["arrays"].to_torch_state_dict()
    reply = call_next(msg, ctx)
    if reply.has_error() or "arrays" not in reply.content:
        return reply
    facts = site_facts(ctx.node_config, cfg)
    new = reply.content["arrays"].to_torch_state_dict()
    path = residual_path(facts.site_dir, ctx.run_id)
    try:
        if set(new) != set(received):
            raise ModelError("the trained adapter's keys differ from the received ones")
        update = {k: new[k].float() - received[k].float() for k in new}
        residual = load_residual(path) if comp.mode in FEEDBACK_MODES else {}
        payload, residual = encode_with_feedback(update, mode=comp.mode,
                                                 topk_fraction=comp.topk_fraction,
                                                 residual=residual)
    except ModelError as err:
        raise CompressionFailed(f"{facts.name}: cannot compress its update: {err}") from err
    if comp.mode in FEEDBACK_MODES:
        save_residual(path, residual)
    reply.content["arrays"] = ArrayRecord({k: Array(v) for k, v in payload.items()})
    return reply
