"""The site's side of secure aggregation (`privacy.secure-aggregation=true`, server/secagg.py).

Flower's SecAgg+ runs on the legacy message format: training arrives as a legacy FitIns
(`fitins.parameters`: the adapter as an ordered list, in the FIXED key order of `get_state`) and
leaves as a legacy FitRes, which Flower's `secaggplus_mod` turns into a masked, quantized vector
before it leaves. `secagg_mod` applies that mod to SecAgg+ protocol messages only, so the same
ClientApp still serves plain (Message-API) runs. Order: `mods=[outbound_guard_mod, secagg_mod]`
— the guard is outermost and inspects the final reply, i.e. the masked one.

What a site sends per round under SecAgg+: two public keys, encrypted key shares for its
neighbours, its masked vector, and key shares for unmasking — plus the legacy FitRes frame with
its arrays cleared, privacy accounting (epsilon etc., when DP is on) and its site name. Its
num-examples is used as its weight INSIDE the masked vector and replaced by 1 in the clear.
"""

from __future__ import annotations

from collections import OrderedDict

import numpy as np
import torch
from flwr.app import Context, Message
from flwr.app.message_type import MessageType
from flwr.client.mod import secaggplus_mod
from flwr.common import (
    Code,
    EvaluateRes,
    FitRes,
    Status,
    ndarrays_to_parameters,
    parameters_to_ndarrays,
)
from flwr.common.secure_aggregation.secaggplus_constants import RECORD_KEY_CONFIGS
from flwr.compat.common import recorddict_compat as compat

from client.guard import ALLOWED_METRICS
from client.policy import PolicyViolation, enforce_policy, redact_metrics
from client.site import Site
from client.steps import final_audit, server_round
from common.adapter import check_keys, get_state
from common.config import RunConfig
from common.errors import UNMASKABLE, FedtuneError, ModelError, reason

FIT_PARAMS, EVAL_PARAMS = "fitins.parameters", "evaluateins.parameters"
FIT_NUM_EXAMPLES = "fitres.num_examples"
ACCOUNTING = ("epsilon", "delta", "epsilon_budget", "noise_multiplier")  # data-independent
PLAINTEXT_REFUSED = reason("refused: privacy.secure-aggregation is on, so this site sends its "
                           "update only masked by SecAgg+; the coordinator must run the SecAgg+ "
                           "workflow")


class Unmaskable(FedtuneError, ValueError):
    """SecAgg+'s quantization range cannot carry this update without clipping it."""

    code = UNMASKABLE
    public = ("the site's update does not fit SecAgg+'s quantization range; raise "
              "privacy.secagg-clip or privacy.secagg-max-weight")


def is_legacy(msg: Message) -> bool:
    """A legacy FitIns/EvaluateIns (sent by server/secagg.py's workflow)."""
    return msg.has_content() and bool({FIT_PARAMS, EVAL_PARAMS} & set(msg.content.array_records))


class _ErrorReply(Exception):
    def __init__(self, reply: Message):
        super().__init__(reply.error.reason)
        self.reply = reply


def secagg_mod(msg: Message, ctx: Context, call_next) -> Message:
    """Flower's `secaggplus_mod` for SecAgg+ train messages; every other message passes by.
    A refusal or dropout of the handler leaves as that error reply (the stock mod would crash
    on it); after masking, the clear-text num-examples is replaced by 1."""
    if msg.metadata.message_type != MessageType.TRAIN or not msg.has_content() \
            or RECORD_KEY_CONFIGS not in msg.content.config_records:
        return call_next(msg, ctx)
    # The site's own SecAgg+ policy (issue #15): the coordinator chooses the cohort and the
    # reconstruction threshold; a cohort of the victim plus one fake node, or a threshold of half
    # or less, would let it unmask one site's update. Refused at setup and again at share-keys.
    from flwr.app import Error
    from flwr.common.secure_aggregation.secaggplus_constants import Key, Stage

    import common.errors as errors
    from client.policy import PolicyViolation, site_policy

    fixed = getattr(errors, "reason", lambda text: text)  # fixed, value-free wire reasons
    small = fixed("refused: the SecAgg+ cohort is smaller than the site's secagg-min-cohort")
    low = fixed("refused: the SecAgg+ reconstruction threshold is not above the site's "
                "secagg-min-threshold")
    malformed = fixed("refused: malformed SecAgg+ setup")

    def check_policy(configs) -> None:
        policy = site_policy(ctx.node_config)
        least = int(getattr(policy, "secagg_min_cohort", 3))
        frac = float(getattr(policy, "secagg_min_threshold", 0.5))
        stage = configs.get(Key.STAGE)
        if stage == Stage.SETUP:
            share, thr, sample = (configs.get(k) for k in (Key.SHARE_NUMBER, Key.THRESHOLD,
                                                          Key.SAMPLE_NUMBER))
            if not all(isinstance(v, int) and not isinstance(v, bool) for v in (share, thr, sample)):
                raise PolicyViolation("SecAgg+ setup without integer share/threshold/sample numbers",
                                      public=malformed)
            if min(share, sample) < least:
                raise PolicyViolation(f"SecAgg+ cohort of {min(share, sample)} sites, fewer than "
                                      f"this site's secagg-min-cohort = {least}", public=small)
            if thr <= frac * share:
                raise PolicyViolation(f"SecAgg+ reconstruction threshold {thr} of {share} shares is "
                                      f"not above this site's secagg-min-threshold = {frac:g}",
                                      public=low)
        elif stage == Stage.SHARE_KEYS:
            keys = len([k for k in configs if k != Key.STAGE])
            if keys < least:
                raise PolicyViolation(f"SecAgg+ share-keys stage lists {keys} sites, fewer than "
                                      f"this site's secagg-min-cohort = {least}", public=small)

    try:
        check_policy(msg.content.config_records[RECORD_KEY_CONFIGS])
    except PolicyViolation as err:
        code, why = errors.wire(err)
        return Message(Error(code=code, reason=why), reply_to=msg)

    def handler(m: Message, c: Context) -> Message:
        reply = call_next(m, c)
        if reply.has_error():
            raise _ErrorReply(reply)
        return reply

    try:
        reply = secaggplus_mod(msg, ctx, handler)
    except _ErrorReply as err:
        return err.reply
    if reply.has_content() and FIT_NUM_EXAMPLES in reply.content.metric_records:
        reply.content.metric_records[FIT_NUM_EXAMPLES]["num_examples"] = 1
    return reply


def _state(parameters, site: Site) -> OrderedDict[str, torch.Tensor]:
    """The legacy parameter list as this site's adapter state (same key order everywhere)."""
    expected = get_state(site.model, exclude=site.exclude)
    arrays = parameters_to_ndarrays(parameters)
    if len(arrays) != len(expected):
        raise ModelError(f"the coordinator sent {len(arrays)} arrays, this site's adapter has "
                         f"{len(expected)}: both sides must run the same model and LoRA config "
                         "(model.*, and FFA-LoRA on or off)")
    state = OrderedDict((k, torch.from_numpy(np.asarray(a, dtype=np.float32).copy()))
                        for k, a in zip(expected, arrays))
    check_keys(expected, state)  # shapes travel with the arrays
    return state


def check_quantizable(state: dict[str, torch.Tensor], *, num_examples: int, cfg: RunConfig) -> None:
    """SecAgg+ clips (num_examples / max-weight) x value to [-clip, clip] without a word; refuse
    to send an update that would be clipped, naming the setting to change."""
    p = cfg.privacy
    if num_examples > p.secagg_max_weight:
        raise Unmaskable(f"this site trained on {num_examples} examples, more than "
                         f"privacy.secagg-max-weight = {p.secagg_max_weight:g}: raise it")
    limit = p.secagg_clip * p.secagg_max_weight / max(1, num_examples)
    peak = max(float(v.abs().max()) for v in state.values() if v.numel())
    if not peak <= limit:
        raise Unmaskable(f"an adapter value of magnitude {peak:.3g} exceeds what SecAgg+ can carry "
                         f"for {num_examples} examples ({limit:.3g} = privacy.secagg-clip x "
                         "secagg-max-weight / num-examples): raise privacy.secagg-clip")


def handle_legacy_train(msg: Message, context: Context, site: Site, cfg: RunConfig) -> Message:
    """Legacy FitIns in, site.fit, legacy FitRes out (secagg_mod masks it before it leaves)."""
    if not (is_legacy(msg) and RECORD_KEY_CONFIGS in msg.content.config_records):
        raise PolicyViolation("privacy.secure-aggregation is on, so this site sends its update "
                              "only masked by SecAgg+; run the coordinator with the same config "
                              "(server/secagg.py) and secagg_mod in the ClientApp",
                              public=PLAINTEXT_REFUSED)
    fitins = compat.recorddict_to_fitins(msg.content, keep_input=True)
    policy = enforce_policy(context.node_config, cfg, rows=site.records())
    new_state, stats = site.fit(_state(fitins.parameters, site),
                                server_round=server_round(fitins.config), run=str(context.run_id))
    num_examples = int(stats["num_examples"])
    check_quantizable(new_state, num_examples=num_examples, cfg=cfg)
    metrics = redact_metrics(policy, {k: float(stats[k]) for k in ACCOUNTING if k in stats})
    metrics.pop("num-examples", None)
    res = FitRes(status=Status(code=Code.OK, message="OK"),
                 parameters=ndarrays_to_parameters([v.numpy() for v in new_state.values()]),
                 num_examples=num_examples, metrics={**metrics, "site": site.facts.name})
    return Message(compat.fitres_to_recorddict(res, keep_input=False), reply_to=msg)


def handle_legacy_evaluate(msg: Message, context: Context, site: Site, cfg: RunConfig) -> Message:
    """Legacy EvaluateIns in, site.evaluate on the test split, legacy EvaluateRes out."""
    ins = compat.recorddict_to_evaluateins(msg.content, keep_input=True)
    policy = enforce_policy(context.node_config, cfg, rows=site.records())
    rnd = server_round(ins.config)
    metrics = site.evaluate(_state(ins.parameters, site), split="test", run=str(context.run_id),
                            server_round=rnd)
    metrics.update(final_audit(site, cfg, rnd))
    num_examples = int(metrics.pop("num_examples"))
    shared = {k: float(v) for k, v in metrics.items() if k in ALLOWED_METRICS}
    shared = redact_metrics(policy, shared)
    shared.pop("num-examples", None)
    res = EvaluateRes(status=Status(code=Code.OK, message="OK"),
                      loss=float(shared.get("loss", 0.0)), num_examples=num_examples,
                      metrics={**shared, "site": site.facts.name})
    return Message(compat.evaluateres_to_recorddict(res), reply_to=msg)
