"""What the coordinator saw in one round, and the one way a site's failure is written into it
(the run summary, the status page and the terminal read these lines back)."""

from __future__ import annotations

import time
from dataclasses import dataclass, field

from flwr.app import Message

from common.errors import REFUSALS


@dataclass
class RoundLog:
    """What the coordinator saw in one round (aggregate metrics only; never site data)."""

    round: int
    started: float = field(default_factory=time.time)
    train: dict[str, dict[str, float]] = field(default_factory=dict)  # site -> metrics
    evaluate: dict[str, dict[str, float]] = field(default_factory=dict)
    failures: list[str] = field(default_factory=list)
    rejected: dict[str, str] = field(default_factory=dict)  # site -> why its update was left out
    upload_bytes: dict[str, int] = field(default_factory=dict)
    refused: dict[str, list[str]] = field(default_factory=dict)  # site -> phases, by error code
    incomplete: bool = False  # fewer than min-sites valid updates: the round is retried


def note_error(log: RoundLog, name: str, *, reason: str, code: int | None, phase: str) -> None:
    """An error reply from `name`: its line in `failures`, and, when its code says the site
    refused (common/errors.py REFUSALS), the phase under `refused` — known by code, not by text."""
    log.failures.append(failure_line(name, reason, phase=phase))
    if code in REFUSALS and phase not in log.refused.setdefault(name, []):
        log.refused[name].append(phase)


def error_code(msg: Message) -> int | None:
    """The numeric code of an error reply (None when unreadable)."""
    try:
        return int(msg.error.code)
    except Exception:  # noqa: BLE001 - a reply's error frame is input like any other
        return None


def failure_line(name: str, reason: str, *, phase: str = "train") -> str:
    """A site's refusal names the site itself ("site-1 refused: ..."); other errors get the node.
    `name` is the coordinator's name for the sender; a reason naming someone else is prefixed."""
    reason = (reason or "unknown error").strip() or "unknown error"
    first = reason.splitlines()[0]
    if first.startswith(f"{name} refused: "):
        return first
    if " refused: " in first:  # names another site than the one that sent it: keep ours first
        return f"{name} ({phase}): {first}"
    return f"{name} ({phase}): {reason.splitlines()[-1] if reason else reason}"


def error_reason(msg: Message) -> str:
    """The reason text of an error reply, bounded; an unreadable frame is input like any other."""
    try:
        return str(msg.error.reason)[:2000]
    except Exception:  # noqa: BLE001 - a reply's error frame is input like any other
        return "unreadable error reply"
