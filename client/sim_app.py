"""The ClientApp a SIMULATION runs: the production handlers (client/app.py) with one mod more,
the simulated attacker of robustness studies (`simulation.attack`, client/attack.py).

pyproject.toml names this app for `flwr run`, which only simulations use: a deployed site never
loads the bundle's ClientApp; its runtime (client/runtime.py) serves client/app.py's `app`,
which has no attack mod at all."""

from __future__ import annotations

from flwr.app import ArrayRecord, Context, Error, Message
from flwr.app.message_type import MessageType
from flwr.clientapp import ClientApp

from client.app import MODS, evaluate, train
from client.attack import corrupt
from client.secagg import FIT_PARAMS
from common.config import from_run_config
from common.errors import DROPPED, reason

LEFT = reason("the site dropped out at the collect-masked-vectors stage (simulation.attack = "
              "dropout)")


def attack_mod(msg: Message, ctx: Context, call_next) -> Message:
    """The last simulated site corrupts its update (scale:, noise:, nan) or, with `dropout`,
    leaves SecAgg+ mid-protocol. Innermost: compression and masking see the corrupted update."""
    cfg = from_run_config(ctx.run_config)
    attacker = cfg.simulation.attack and "partition-id" in ctx.node_config \
        and int(ctx.node_config["partition-id"]) == cfg.simulation.sites - 1
    if not attacker or msg.metadata.message_type != MessageType.TRAIN or not msg.has_content():
        return call_next(msg, ctx)
    if cfg.simulation.attack == "dropout":
        if FIT_PARAMS in msg.content.array_records:  # the legacy FitIns inside SecAgg+
            return Message(Error(code=DROPPED, reason=LEFT), reply_to=msg)
        return call_next(msg, ctx)
    reply = call_next(msg, ctx)
    if reply.has_content() and "arrays" in reply.content.array_records:
        state = reply.content["arrays"].to_torch_state_dict()
        reply.content["arrays"] = ArrayRecord(corrupt(state, cfg.simulation.attack,
                                                      seed=cfg.train.seed))
    return reply


app = ClientApp(mods=[*MODS, attack_mod])
app.train()(train)
app.evaluate()(evaluate)
