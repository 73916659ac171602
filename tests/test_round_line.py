"""The per-round terminal line: format_round renders the round record, and the streamed output of
`fedtune simulate` / `fedtune run` shows exactly the lines it made (is_round_line), so rewording
the line cannot silently hide it."""

from __future__ import annotations

from fedtune.simulate import shown
from server.rundir import format_round, is_round_line


def _row(**extra) -> dict:
    row = {"round": 2, "round_s": 3.25, "sites_trained": ["a", "b"], "failures": [], "rejected": {},
           "train": {"train_loss": 0.5}, "evaluate": {"accuracy": 0.75, "loss": 0.6},
           "per_site": {"a": {"train": {"epsilon": 1.5}, "evaluate": {"accuracy": 0.7}},
                        "b": {"train": {}, "evaluate": {"accuracy": 0.8}}}}
    return {**row, **extra}


def test_every_round_line_is_recognised_and_shown():
    for row in (_row(), _row(evaluate={}, per_site={}), _row(failures=["c (train): refused"]),
                _row(round=12, rejected={"d": "update norm too large"})):
        for total in (3, 12, 120):
            line = format_round(row, total_rounds=total)
            assert is_round_line(line) and shown(line + "\n"), line
            assert shown("  " + line)  # the stream may indent it


def test_flower_chatter_is_hidden_and_errors_are_not():
    assert not shown("INFO :      configure_train: Sampled 2 nodes (out of 2)\n")
    assert not shown("the second round started\n")  # a 'round ' inside other text is not a round line
    assert shown("fedtune: round 2: only 1 valid updates (need 2); retrying (1/2)\n")
    assert shown("ValueError: something broke\n") and shown("Traceback (most recent call last):\n")
