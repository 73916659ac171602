"""fedtune's ClientApp: Flower messages in, typed calls, Flower messages out — nothing else.

Every handler has one shape: parse the run config (memoised per message's config), load the
site's warm state, check the site's policy, train or evaluate, reply. What leaves the site: the
adapter arrays after training and the whitelisted aggregate metrics (client/guard.py). On any
failure only an error code and a fixed, value-free reason leave (client/errors_mod.py); the
full message goes to the site's own log.

A deployed site never runs this module from the coordinator's bundle: its runtime
(client/runtime.py) imports it from the site's own installation. Simulation uses the same
handlers with one simulation-only mod more (client/sim_app.py)."""

from __future__ import annotations

import time

from flwr.app import ArrayRecord, ConfigRecord, Context, Message, MetricRecord, RecordDict
from flwr.clientapp import ClientApp

from client.baseline import joined_metrics
from client.compress_mod import compression_mod
from client.errors_mod import site_errors_mod
from client.guard import EVAL_METRICS, TRAIN_METRICS, VAL_METRICS, outbound_guard_mod
from client.policy import enforce_policy, redact_metrics
from client.secagg import handle_legacy_evaluate, handle_legacy_train, is_legacy, secagg_mod
from client.site import Site, get_site, site_facts
from client.steps import final_audit, server_round
from common.config import RunConfig, from_run_config

# Outermost first. site_errors_mod turns any exception into a code + fixed reason; the guard
# inspects exactly what leaves (the masked SecAgg+ records, or the compressed update).
MODS = [site_errors_mod, outbound_guard_mod, secagg_mod, compression_mod]
app = ClientApp(mods=MODS)


def _metrics(values: dict, allowed: tuple[str, ...], policy) -> MetricRecord:
    values = dict(values)
    values["num-examples"] = int(values.pop("num_examples"))
    keep = {k: v for k, v in values.items() if k in allowed or k == "num-examples"}
    return MetricRecord(redact_metrics(policy, keep))


def _reply(msg: Message, site: Site, **records) -> Message:
    records["site"] = ConfigRecord({"name": site.facts.name})
    return Message(content=RecordDict(records), reply_to=msg)


def _load(context: Context) -> tuple[RunConfig, Site]:
    cfg = from_run_config(context.run_config)
    return cfg, get_site(cfg, site_facts(context.node_config, cfg))


@app.train()
def train(msg: Message, context: Context) -> Message:
    cfg, site = _load(context)
    if cfg.privacy.secure_aggregation or is_legacy(msg):  # SecAgg+: client/secagg.py
        return handle_legacy_train(msg, context, site, cfg)
    policy = enforce_policy(context.node_config, cfg, rows=site.records())
    state = msg.content["arrays"].to_torch_state_dict()
    new_state, stats = site.fit(state, server_round=server_round(msg.content["config"]),
                                run=str(context.run_id))
    return _reply(msg, site, arrays=ArrayRecord(new_state),
                  metrics=_metrics(stats, TRAIN_METRICS, policy))


@app.evaluate()
def evaluate(msg: Message, context: Context) -> Message:
    cfg, site = _load(context)
    if is_legacy(msg):  # SecAgg+ runs evaluate in the legacy format: client/secagg.py
        return handle_legacy_evaluate(msg, context, site, cfg)
    policy = enforce_policy(context.node_config, cfg, rows=site.records())
    rnd, run = server_round(msg.content["config"]), str(context.run_id)
    state = msg.content["arrays"].to_torch_state_dict()
    t0 = time.perf_counter()
    metrics = site.evaluate(state, split="test", run=run, server_round=rnd)  # limited under DP
    metrics.update(final_audit(site, cfg, rnd))
    if cfg.federation.early_stopping_patience:  # the coordinator stops on validation, never test
        val = site.evaluate(state, split="val", run=run, server_round=rnd)
        metrics.update({f"val_{k}": v for k, v in val.items() if k in VAL_METRICS})
    metrics["eval_seconds"] = time.perf_counter() - t0  # test, audit and val: no train-split timing
    # local-only / personalized models (federation.baselines, personalize-epochs): metrics only
    metrics.update(joined_metrics(site, cfg, state=state, rnd=rnd, run=run, policy=policy))
    return _reply(msg, site, metrics=_metrics(metrics, EVAL_METRICS, policy))
