"""Secure aggregation (`privacy.secure-aggregation=true`): the coordinator learns only the weighted
SUM of the sites' adapters (their FedAvg), never one site's update.

Design choice — Flower's own SecAgg+ on the legacy path. Flower 1.42 ships SecAgg+ only as
`SecAggPlusWorkflow` (a fit step of the legacy `DefaultWorkflow`, run with a `LegacyContext` and a
legacy `flwr.server.strategy` strategy) plus `secaggplus_mod` at the sites. The Message-API
strategies cannot host it: their loop sends one train message per site and round, SecAgg+ needs
four exchanges (setup, share keys, collect masked vectors, unmask). Rebuilding the protocol on
the Message API from the primitives in `flwr.common.secure_aggregation` would mean maintaining
our own key agreement, Shamir sharing, masking and dropout recovery — code whose bugs are
silent and fatal. The price of the shipped, tested workflow: a legacy FedAvg here, parameters as
an ordered list (the FIXED key order of `get_state`'s OrderedDict, which every site shares) and
a thin adapter at the site (client/secagg.py).

What the coordinator can no longer do, by design: look at one site's update. So per-update
validation and norm checks (server/validate.py), robust aggregation, server-side DP clipping,
compression, server optimisers, early stopping, retries and checkpoint/resume are refused or
unavailable in this mode (`check_secagg_config`). Per-site TRAIN metrics do not exist either
(sites send only privacy accounting, with num-examples hidden); per-site EVALUATE metrics do.

Precision: each site quantizes (num-examples / max-weight) x parameter to 2**22 levels within
[-clip, clip] (stochastic rounding). The aggregate differs from exact FedAvg by at most
`error_bound()` per entry: 2 x sites x clip x max-weight / (2**22 x total num-examples).
"""

from __future__ import annotations

import json
from collections import OrderedDict

import numpy as np
import torch
from flwr.app import ConfigRecord, Context, Message, RecordDict
from flwr.common import bytes_to_ndarray, ndarrays_to_parameters, parameters_to_ndarrays
from flwr.common.secure_aggregation.secaggplus_constants import RECORD_KEY_CONFIGS, Key
from flwr.server import LegacyContext, ServerConfig
from flwr.server.strategy import FedAvg
from flwr.server.workflow import DefaultWorkflow, SecAggPlusWorkflow

from common.adapter import save_adapter, set_state, state_nbytes
from common.atomic import atomic_write_text
from common.config import RunConfig
from common.errors import ConfigError
from common.model import count_trainable
from server.identity import SiteIdentity
from server.rundir import RunDir, format_round
from server.roundlog import RoundLog, error_code, note_error

QUANTIZATION_RANGE = 2**22  # Flower's default; masks live modulo 2**32
MODULUS_RANGE = 2**32
AUDIT_FILE = "secagg_audit.jsonl"  # what the coordinator received: shapes and counts, no values


def check_secagg_config(cfg: RunConfig) -> None:
    """Refuse settings that need the coordinator to see individual updates."""
    fed, problems = cfg.federation, []
    if fed.strategy not in ("fedavg", "fedprox"):
        problems.append(f"federation.strategy = {fed.strategy!r}: use fedavg or fedprox")
    if fed.aggregation != "mean":
        problems.append(f"federation.aggregation = {fed.aggregation!r} needs every update: "
                        "use mean")
    if cfg.privacy.server_noise > 0:
        problems.append("privacy.server-noise > 0 clips each update at the coordinator: set it "
                        "to 0 and use site-side DP (privacy.dp=true)")
    if cfg.compression.mode != "none":
        problems.append(f"compression.mode = {cfg.compression.mode!r}: use none (masked vectors "
                        "cannot be compressed)")
    if fed.early_stopping_patience:
        problems.append("federation.early-stopping-patience: use 0 (all rounds run in one "
                        "workflow)")
    if cfg.output.resume:
        problems.append("output.resume: secure-aggregation runs keep no checkpoints; start a "
                        "new run")
    if problems:
        raise ConfigError("privacy.secure-aggregation = true cannot be combined with: "
                          + "; ".join(problems))


def protocol_params(cfg: RunConfig) -> dict:
    """SecAggPlusWorkflow's arguments. 0 shares = every selected site (Flower's 1.0); 0 threshold
    = 2/3 of the shares (Flower's float form), which is always more than half of them."""
    p = cfg.privacy
    return {"num_shares": p.secagg_shares or 1.0,
            "reconstruction_threshold": p.secagg_threshold or 2 / 3,
            "max_weight": float(p.secagg_max_weight), "clipping_range": float(p.secagg_clip),
            "quantization_range": QUANTIZATION_RANGE, "modulus_range": MODULUS_RANGE}


def error_bound(*, sites: int, clip: float, max_weight: float, total_examples: float) -> float:
    """Largest difference per entry between the SecAgg+ aggregate and exact FedAvg (stochastic
    rounding of each site's weighted, quantized vector; weight rounding is far smaller)."""
    return 2 * sites * clip * max_weight / (QUANTIZATION_RANGE * total_examples)


def _stage(rec: ConfigRecord) -> str:
    keys = set(rec)
    for stage, wanted in (("setup", {Key.PUBLIC_KEY_1}), ("share_keys", {Key.CIPHERTEXT_LIST}),
                          ("collect_masked_vectors", {Key.MASKED_PARAMETERS}),
                          ("unmask", {Key.SHARE_LIST})):
        if wanted <= keys:
            return stage
    return "unknown"


def describe_reply(msg: Message) -> dict:
    """One received reply, without values: records, array bytes and, for masked vectors, how
    many entries lie at or above the quantization range (an unmasked vector has none)."""
    row: dict = {"node": msg.metadata.src_node_id, "type": msg.metadata.message_type}
    if msg.has_error():
        return row | {"error": msg.error.reason, "code": error_code(msg)}
    content = msg.content
    row["records"] = {name: type(rec).__name__ for name, rec in content.items()}
    row["array_bytes"] = sum(a.count_bytes() for r in content.array_records.values()
                             for a in r.values())
    if RECORD_KEY_CONFIGS in content.config_records:
        rec = content.config_records[RECORD_KEY_CONFIGS]
        row["stage"] = _stage(rec)
        row["protocol_bytes"] = sum(len(b) for v in rec.values() for b in
                                    (v if isinstance(v, list) else [v]) if isinstance(b, bytes))
        if row["stage"] == "collect_masked_vectors":
            vecs = [bytes_to_ndarray(b) for b in rec[Key.MASKED_PARAMETERS]]
            entries = sum(v.size for v in vecs)
            row["masked"] = {"vectors": len(vecs), "entries": entries,
                             "dtypes": sorted({str(v.dtype) for v in vecs}),
                             "share_at_or_above_quantization_range": float(
                                 sum(int((v >= QUANTIZATION_RANGE).sum()) for v in vecs) / entries)}
    return row


class AuditedGrid:
    """The real grid, plus a record of every reply the coordinator receives (SecAgg+ stages
    included): the evidence that no plaintext update ever reached it."""

    def __init__(self, grid):
        self._grid = grid
        self.rows: list[dict] = []
        self.round = 0

    def __getattr__(self, name):
        return getattr(self._grid, name)

    def send_and_receive(self, messages, *, timeout=None):
        messages = list(messages)
        asked = {m.metadata.dst_node_id: _asked_stage(m) for m in messages}
        replies = list(self._grid.send_and_receive(messages, timeout=timeout))
        self.rows += [{"round": self.round, "asked": asked.get(m.metadata.src_node_id, "?"),
                       **describe_reply(m)} for m in replies]
        return replies


def _asked_stage(msg: Message) -> str:
    """The SecAgg+ stage a request asks for, or its message type (evaluate)."""
    recs = msg.content.config_records if msg.has_content() else {}
    if RECORD_KEY_CONFIGS in recs:
        return str(recs[RECORD_KEY_CONFIGS].get(Key.STAGE, "?"))
    return msg.metadata.message_type


def _metrics(values: dict) -> dict[str, float]:
    return {k: float(v) for k, v in values.items() if isinstance(v, (int, float))}


class SecAggFedAvg(FedAvg):
    """Legacy FedAvg over the adapter list that records each round into the run directory.
    Under SecAggPlusWorkflow `aggregate_fit` receives only the unmasked aggregate: every result
    carries the SAME parameters; it records that, and which sites contributed."""

    def __init__(self, *, cfg: RunConfig, initial: OrderedDict[str, torch.Tensor],
                 run_dir: RunDir, grid: AuditedGrid):
        fed = cfg.federation
        self.cfg, self.run_dir, self.grid = cfg, run_dir, grid
        self.state = OrderedDict(initial)
        self.identity = SiteIdentity.from_env()  # node id -> enrolled name (not the claim)
        self.log = RoundLog(round=0)
        super().__init__(
            fraction_fit=fed.fraction_train, fraction_evaluate=1.0,
            min_fit_clients=max(2, fed.min_sites), min_evaluate_clients=fed.min_sites,
            min_available_clients=max(2, fed.min_sites), accept_failures=True,
            initial_parameters=ndarrays_to_parameters([v.numpy() for v in initial.values()]),
            on_fit_config_fn=lambda r: {"server-round": r, "total-rounds": fed.rounds},
            on_evaluate_config_fn=lambda r: {"server-round": r, "split": "test"})

    def _name(self, node_id: int) -> str:
        return self.identity.name_for(node_id)

    def configure_fit(self, server_round, parameters, client_manager):
        self.log = RoundLog(round=server_round)
        self.grid.round = server_round
        return super().configure_fit(server_round, parameters, client_manager)

    def aggregate_fit(self, server_round, results, failures):
        distinct = {tuple(r.parameters.tensors) for _, r in results}
        self.grid.rows.append({"round": server_round, "event": "aggregate_fit",
                               "results": len(results), "distinct_parameters": len(distinct)})
        for proxy, res in results:
            name = self.identity.name_for(proxy.node_id, res.metrics.get("site"))
            # privacy accounting only; num-examples is hidden (1) under SecAgg: plain mean
            self.log.train[name] = {**_metrics(res.metrics), "num-examples": 1.0}
        if len(results) < self.cfg.federation.min_sites:
            self.log.incomplete = True
            self.log.failures.append(f"only {len(results)} sites contributed (federation."
                                     f"min-sites = {self.cfg.federation.min_sites}): global "
                                     "adapter unchanged")
            self.log.train.clear()
            return None, {}
        parameters, metrics = super().aggregate_fit(server_round, results, failures)
        if parameters is not None:
            arrays = parameters_to_ndarrays(parameters)
            self.state = OrderedDict(
                (k, torch.from_numpy(np.asarray(a, dtype=np.float32).reshape(v.shape)))
                for (k, v), a in zip(self.state.items(), arrays, strict=True))
        return parameters, metrics

    def configure_evaluate(self, server_round, parameters, client_manager):
        fed = self.cfg.federation
        if server_round % fed.evaluate_every and server_round != fed.rounds:
            self._finish()
            return []
        instructions = super().configure_evaluate(server_round, parameters, client_manager)
        if not instructions:  # no evaluation this round: aggregate_evaluate will not come
            self._finish()
        return instructions

    def aggregate_evaluate(self, server_round, results, failures):
        for proxy, res in results:
            name = self.identity.name_for(proxy.node_id, res.metrics.get("site"))
            self.log.evaluate[name] = {**_metrics(res.metrics), "num-examples": res.num_examples}
        self._finish()
        return super().aggregate_evaluate(server_round, results, failures)

    def _finish(self) -> None:
        """Record the round: protocol failures (any stage), upload bytes per site, the row."""
        log, rows = self.log, [r for r in self.grid.rows if r["round"] == self.log.round]
        for r in rows:
            if "error" in r:
                note_error(log, self._name(r["node"]), reason=r["error"], code=r["code"],
                           phase=r["asked"])
            elif "protocol_bytes" in r:
                name = self._name(r["node"])
                log.upload_bytes[name] = log.upload_bytes.get(name, 0) + r["protocol_bytes"]
        if not log.train and not log.incomplete:
            log.failures.append("secure aggregation halted (fewer sites than the threshold): "
                                "global adapter unchanged")
        row = self.run_dir.record_round(log)
        print(format_round(row, total_rounds=self.cfg.federation.rounds), flush=True)


def run_secagg(grid, context: Context | None, cfg: RunConfig, *, run_dir: RunDir, model,
               initial: OrderedDict[str, torch.Tensor], exclude: tuple[str, ...],
               labels: list[str], base_sha: str = "") -> dict:
    """Run the whole federation under SecAgg+; write the run directory; return the summary."""
    check_secagg_config(cfg)
    fed, params = cfg.federation, protocol_params(cfg)
    print(f"fedtune: secure aggregation (SecAgg+): shares {params['num_shares']}, threshold "
          f"{params['reconstruction_threshold']:.3g}, clip {params['clipping_range']}, max weight "
          f"{params['max_weight']:g} — the coordinator sees only the sum", flush=True)
    audited = AuditedGrid(grid)
    strategy = SecAggFedAvg(cfg=cfg, initial=initial, run_dir=run_dir, grid=audited)
    context = context or Context(run_id=0, node_id=0, node_config={}, state=RecordDict(),
                                 run_config={})
    legacy = LegacyContext(context, config=ServerConfig(num_rounds=fed.rounds,
                                                        round_timeout=fed.round_timeout),
                           strategy=strategy)
    workflow = DefaultWorkflow(fit_workflow=SecAggPlusWorkflow(**params, timeout=fed.round_timeout))
    try:
        workflow(audited, legacy)
    finally:
        atomic_write_text(run_dir.path / AUDIT_FILE,
                          "".join(json.dumps(r, sort_keys=True) + "\n" for r in audited.rows))
    set_state(model, strategy.state, exclude=exclude)
    save_adapter(model, run_dir.path / "adapter", label_names=labels, base_fingerprint=base_sha)
    run_dir.write_plots()
    summary = run_dir.write_summary({
        "task": cfg.task.type, "bytes_per_site_round": state_nbytes(initial),
        "trainable_params": count_trainable(model)[0],
        "lora_variant": "ffa" if cfg.ffa else cfg.model.finetune,
        "privacy": run_dir.privacy_summary(), "final_round": len(run_dir.history),
        "secure_aggregation": {k: v for k, v in params.items()} | {"audit": AUDIT_FILE}})
    print(f"fedtune: done in {summary['wall_s']:.0f}s — " + ", ".join(
        f"{k}={summary[k]:.4f}" for k in ("accuracy", "macro_f1", "rmse") if k in summary)
        + f" — run directory {run_dir.path}", flush=True)
    return summary
