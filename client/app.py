"""fedtune's ClientApp: Flower messages in, typed calls, Flower messages out — nothing else.

What leaves the site: the adapter arrays (LoRA matrices + head) after training, and aggregate
metrics (counts, mean loss, accuracy, ...). Never text, labels or per-example values."""

from __future__ import annotations

from flwr.app import ArrayRecord, ConfigRecord, Context, Message, MetricRecord, RecordDict
from flwr.clientapp import ClientApp

from client.site import get_site, site_facts
from common.config import from_run_config

app = ClientApp()

# Keys a site may put in a reply's MetricRecord (the leak test holds us to this list).
TRAIN_METRICS = ("num-examples", "train_loss", "steps", "train_seconds")
EVAL_METRICS = ("num-examples", "accuracy", "macro_f1", "loss", "auc_roc", "mae", "rmse", "r2",
                "eval_seconds")


def _metrics(values: dict, allowed: tuple[str, ...]) -> MetricRecord:
    values = dict(values)
    values["num-examples"] = int(values.pop("num_examples"))
    return MetricRecord({k: v for k, v in values.items() if k in allowed})


@app.train()
def train(msg: Message, context: Context) -> Message:
    cfg = from_run_config(context.run_config)
    facts = site_facts(context.node_config, cfg)
    site = get_site(cfg, facts)
    server_round = int(msg.content["config"]["server-round"])
    state = msg.content["arrays"].to_torch_state_dict()
    new_state, stats = site.fit(state, server_round=server_round)
    content = RecordDict({
        "arrays": ArrayRecord(new_state),
        "metrics": _metrics(stats, TRAIN_METRICS),
        "site": ConfigRecord({"name": facts.name}),
    })
    return Message(content=content, reply_to=msg)


@app.evaluate()
def evaluate(msg: Message, context: Context) -> Message:
    cfg = from_run_config(context.run_config)
    facts = site_facts(context.node_config, cfg)
    site = get_site(cfg, facts)
    state = msg.content["arrays"].to_torch_state_dict()
    metrics = site.evaluate(state, split="test")
    content = RecordDict({
        "metrics": _metrics(metrics, EVAL_METRICS),
        "site": ConfigRecord({"name": facts.name}),
    })
    return Message(content=content, reply_to=msg)
