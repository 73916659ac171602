"""fedtune's ClientApp: Flower messages in, typed calls, Flower messages out — nothing else.

What leaves the site: the adapter arrays (LoRA matrices + head) after training, and aggregate
metrics (counts, mean loss, accuracy, ...). Never text, labels or per-example values; the
outbound guard mod blocks anything else."""

from __future__ import annotations

from flwr.app import ArrayRecord, ConfigRecord, Context, Error, Message, MetricRecord, RecordDict
from flwr.clientapp import ClientApp

from client.attack import corrupt
from client.audit import loss_threshold_auc
from client.compress_mod import compression_mod
from client.guard import outbound_guard_mod
from client.policy import PolicyViolation, enforce_policy, redact_metrics
from client.secagg import handle_legacy_evaluate, handle_legacy_train, is_legacy, secagg_mod
from client.site import get_site, site_facts
from common.config import from_run_config
from common.errors import PrivacyBudgetExceeded

# The guard is outermost: it inspects the reply that actually leaves (the SecAgg+-masked one).
# The guard is outermost: it inspects exactly what leaves (masked SecAgg+ records, or the
# compressed update).
app = ClientApp(mods=[outbound_guard_mod, secagg_mod, compression_mod])
POLICY_WIRED = True

# Keys a site may put in a reply's MetricRecord (client/guard.py enforces the full whitelist).
TRAIN_METRICS = ("num-examples", "train_loss", "steps", "train_seconds", "epsilon", "delta",
                 "epsilon_budget", "noise_multiplier")
EVAL_METRICS = ("num-examples", "mia_auc", "accuracy", "macro_f1", "loss", "auc_roc", "mae", "rmse", "r2",
                "eval_seconds", "perplexity", "rouge_l", "recall_0", "recall_1", "pr_auc", "threshold")
VAL_METRICS = ("loss", "accuracy", "macro_f1", "rmse", "mae")
REFUSED = 451  # Error code of a round a site refused (privacy budget, site policy)


def _metrics(values: dict, allowed: tuple[str, ...], policy) -> MetricRecord:
    values = dict(values)
    values["num-examples"] = int(values.pop("num_examples"))
    allowed += tuple(f"val_{k}" for k in VAL_METRICS)
    return MetricRecord(redact_metrics(policy, {k: v for k, v in values.items() if k in allowed}))


def _refuse(msg: Message, site: str, err: Exception) -> Message:
    return Message(Error(code=REFUSED, reason=f"{site} refused: {err}"), reply_to=msg)


@app.train()
def train(msg: Message, context: Context) -> Message:
    cfg = from_run_config(context.run_config)
    facts = site_facts(context.node_config, cfg)
    site = get_site(cfg, facts)
    if cfg.privacy.secure_aggregation or is_legacy(msg):  # SecAgg+: client/secagg.py
        return handle_legacy_train(msg, context, site, facts, cfg)
    try:
        policy = enforce_policy(context.node_config, cfg, rows=len(site.splits["train"]))
        state = msg.content["arrays"].to_torch_state_dict()
        new_state, stats = site.fit(state, server_round=int(msg.content["config"]["server-round"]),
                                    run=str(context.run_id))
    except (PolicyViolation, PrivacyBudgetExceeded) as err:
        return _refuse(msg, facts.name, err)
    if cfg.simulation.attack and "partition-id" in context.node_config \
            and facts.index == cfg.simulation.sites - 1:
        new_state = corrupt(new_state, cfg.simulation.attack, seed=cfg.train.seed)
    content = RecordDict({
        "arrays": ArrayRecord(new_state),
        "metrics": _metrics(stats, TRAIN_METRICS, policy),
        "site": ConfigRecord({"name": facts.name}),
    })
    return Message(content=content, reply_to=msg)


@app.evaluate()
def evaluate(msg: Message, context: Context) -> Message:
    cfg = from_run_config(context.run_config)
    facts = site_facts(context.node_config, cfg)
    site = get_site(cfg, facts)
    if is_legacy(msg):  # SecAgg+ runs evaluate in the legacy format: client/secagg.py
        return handle_legacy_evaluate(msg, context, site, facts, cfg)
    try:
        policy = enforce_policy(context.node_config, cfg, rows=len(site.splits["train"]))
    except PolicyViolation as err:
        return _refuse(msg, facts.name, err)
    state = msg.content["arrays"].to_torch_state_dict()
    metrics = site.evaluate(state, split="test")
    if int(msg.content["config"].get("server-round", 0)) == cfg.federation.rounds \
            and cfg.task.type != "causal-lm" and len(site.splits["test"]):
        # Membership-inference audit of the final global model on this site's own data: a
        # loss-threshold attack, train vs test split. Only the AUC leaves the site.
        metrics["mia_auc"] = loss_threshold_auc(site.model, site.splits["train"],
                                                site.splits["test"], num_labels=site.num_labels,
                                                pad_id=site.pad_id)
    if cfg.federation.early_stopping_patience:  # the coordinator stops on validation, never test
        val = site.evaluate(state, split="val")
        metrics.update({f"val_{k}": v for k, v in val.items() if k in VAL_METRICS})
    content = RecordDict({
        "metrics": _metrics(metrics, EVAL_METRICS, policy),
        "site": ConfigRecord({"name": facts.name}),
    })
    return Message(content=content, reply_to=msg)
