"""Issue #15 scenario 7: a site enforces its own SecAgg+ cohort and threshold (client/secagg.py).

A coordinator that puts the victim in a cohort with one fake node, or asks for a reconstruction
threshold of half the shares or less, could unmask one site's update: the site refuses at setup
(and again at share-keys, in case the setup lied), with a fixed reason and the refusal code."""

from __future__ import annotations

import pytest
from flwr.app import ConfigRecord, Context, Metadata, RecordDict
from flwr.app.message.message import make_message
from flwr.common.secure_aggregation.secaggplus_constants import RECORD_KEY_CONFIGS, Key, Stage

from client.secagg import secagg_mod
from common.errors import REFUSED


@pytest.fixture(autouse=True)
def _task_identity():
    from flwr.supercore.task_identity import TaskIdentity

    TaskIdentity.task_id, TaskIdentity.run_id, TaskIdentity.node_id = 1, 7, 5


def _msg(configs: dict):
    md = Metadata(run_id=7, message_id="m", src_node_id=0, dst_node_id=5, reply_to_message_id="",
                  group_id="1", created_at=0.0, ttl=60, message_type="train")
    return make_message(md, RecordDict({RECORD_KEY_CONFIGS: ConfigRecord(configs)}))


def _setup(share: int, threshold: int, sample: int | None = None) -> dict:
    return {Key.STAGE: Stage.SETUP, Key.SAMPLE_NUMBER: share if sample is None else sample,
            Key.SHARE_NUMBER: share, Key.THRESHOLD: threshold, Key.CLIPPING_RANGE: 8.0,
            Key.TARGET_RANGE: 2**22, Key.MOD_RANGE: 2**32, Key.MAX_WEIGHT: 1000.0}


def _ctx(**policy) -> Context:
    node = {"site-name": "bank-a", **{f"policy-{k}": v for k, v in policy.items()}}
    if policy:
        node["policy-file"] = "policy.toml"
    return Context(run_id=7, node_id=5, node_config=node, state=RecordDict(), run_config={})


def _never(msg, ctx):  # the training handler: must not run for a refused protocol message
    raise AssertionError("handler called")


@pytest.mark.parametrize("share,threshold,sample", [(2, 2, 2), (3, 2, 2), (4, 2, 4), (3, 1, 3)])
def test_weak_setup_is_refused(share, threshold, sample):
    reply = secagg_mod(_msg(_setup(share, threshold, sample)), _ctx(), _never)
    assert reply.has_error() and reply.error.code == REFUSED
    assert "secagg-min" in reply.error.reason
    assert str(share) not in reply.error.reason.replace("SecAgg+", "")  # fixed, value-free reason


def test_sound_setup_passes_to_flower():
    reply = secagg_mod(_msg(_setup(3, 2)), _ctx(), _never)
    assert not reply.has_error()
    assert Key.PUBLIC_KEY_1 in reply.content.config_records[RECORD_KEY_CONFIGS]


def test_share_keys_with_too_few_sites_is_refused():
    ctx = _ctx()
    secagg_mod(_msg(_setup(3, 2)), ctx, _never)  # setup claimed 3 ...
    keys = {str(n): [b"a%d" % n, b"b%d" % n] for n in (5, 6)}  # ... share-keys lists only 2
    reply = secagg_mod(_msg({Key.STAGE: Stage.SHARE_KEYS, **keys}), ctx, _never)
    assert reply.has_error() and reply.error.code == REFUSED


def test_site_policy_raises_the_bar():
    reply = secagg_mod(_msg(_setup(4, 3)), _ctx(**{"secagg-min-cohort": 5}), _never)
    assert reply.has_error() and "secagg-min-cohort" in reply.error.reason
    reply = secagg_mod(_msg(_setup(4, 3)), _ctx(**{"secagg-min-threshold": 0.8}), _never)
    assert reply.has_error() and "secagg-min-threshold" in reply.error.reason
