"""A site's refusal is known at the coordinator by its reply's error CODE (common/errors.py
REFUSALS), not by the words of its reason: the round record's `refused`, the run summary's
refused rounds and the status page's events all follow the code."""

from __future__ import annotations

import pytest
from flwr.app import Error, Message, RecordDict

from common.config import resolve
from common.errors import INTERNAL, REFUSED
from fedtune.status.model import events
from server.rundir import RunDir
from server.strategy import build_coordinator


@pytest.fixture(autouse=True)
def _task_identity():
    from flwr.supercore.task_identity import TaskIdentity

    TaskIdentity.task_id, TaskIdentity.run_id, TaskIdentity.node_id = 1, 4242, 1


def _error(node: int, code: int, reason: str, kind: str = "train") -> Message:
    ins = Message(RecordDict(), dst_node_id=node, message_type=kind)
    return Message(Error(code=code, reason=reason), reply_to=ins)


def test_refusals_are_recorded_by_code_not_by_text(tmp_path):
    from server.identity import SiteIdentity

    cfg = resolve(None, ["federation.min-sites=1"])
    rec = build_coordinator(cfg, num_sites=3, identity=SiteIdentity())
    rec.current = {}
    replies = [_error(11, REFUSED, "the round would pass the site's budget"),  # no word "refused"
               _error(12, INTERNAL, "the word refused: appears but this is a crash")]
    assert rec.aggregate_train(1, replies) == (None, None)
    log = rec.rounds[1]
    assert log.refused == {"node-11": ["train"]} and len(log.failures) == 2
    rec.aggregate_evaluate(1, [_error(11, REFUSED, "evaluation not planned", kind="evaluate")])
    assert log.refused == {"node-11": ["train", "evaluate"]}
    run = RunDir(tmp_path / "run", cfg)
    row = run.record_round(log)
    assert row["refused"] == {"node-11": ["train", "evaluate"]}
    assert run.privacy_summary() == {"node-11": {"refused_rounds": [1]}}
    kinds = {(e["site"], e["kind"]) for e in events(run.history)}
    assert kinds == {("node-11", "refused"), ("node-12", "failed")}
