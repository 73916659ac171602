"""The site's SuperNode: Flower's own `flower-supernode`, started by the site with shorter waits.

`fedtune site start` runs this module (`python -P -m client.supernode ARGS`, the same arguments as
`flower-supernode`) instead of Flower's console script. It is Flower's SuperNode unchanged except
for three waits that Flower 1.42 hard-codes and that cost a deployed round several seconds per
message while every process sits idle (bench/bench_deploy.py measured 17 s per round of pure
waiting with a tiny model, against 1 s simulated):

- the idle poll: with no message pending, the SuperNode asks the coordinator again after 3 s;
- the wait for a reply: it checks every 0.5 s whether the site runtime has pushed the reply;
- the array fetch: a message's header reaches the SuperNode before its arrays reach the
  coordinator's SuperLink, and each missing array is fetched again after 1 s, 2, 4, 8 (cap 10).

Here the first two wait at most `FEDTUNE_SUPERNODE_POLL` seconds (default 0.25: one small HTTP
request to the coordinator four times a second while idle) and the fetch retries after 20 ms,
doubling to at most 0.5 s.

One more: the heartbeat interval the SuperNode announces and keeps (Flower's default 30 s, its
minimum 10 s) is `FEDTUNE_SUPERNODE_HEARTBEAT` seconds (default 10). The coordinator counts a site
that stopped beating as gone after two intervals: a crashed site stops holding up a round after
20 s instead of 60, and its restarted instance can sign in again that much sooner (the coordinator
refuses a second sign-in of a key it still counts as online; `fedtune site start` retries it).
Nothing else changes: the same connection, TLS, node authentication,
message store and runtime API (the site runtime, client/runtime.py, still takes each task from
it). These are internals of the pinned flwr==1.42.0 (`start_client_internal`'s module-level `time`
and `pull_objects`, the heartbeat interval constant as imported by `fleet_http_connection` and
`supercore.heartbeat`), checked by tests/test_site_supernode.py."""

from __future__ import annotations

import functools
import os
import sys
import time

DEFAULT_POLL_S = 0.25
FIRST_RETRY_S = 0.02
MAX_RETRY_S = 0.5
DEFAULT_HEARTBEAT_S = 10


class ShortWaits:
    """The `time` module as Flower's SuperNode loop sees it, with every sleep capped."""

    def __init__(self, cap: float):
        self.cap = cap

    def __getattr__(self, name: str):
        return getattr(time, name)

    def sleep(self, seconds: float) -> None:
        time.sleep(min(seconds, self.cap))


def poll_seconds() -> float:
    """The idle-poll cap, from FEDTUNE_SUPERNODE_POLL (seconds, 0.01..3)."""
    raw = os.environ.get("FEDTUNE_SUPERNODE_POLL", "")
    try:
        value = float(raw) if raw else DEFAULT_POLL_S
    except ValueError:
        value = DEFAULT_POLL_S
    return min(max(value, 0.01), 3.0)


def heartbeat_seconds() -> int:
    """The announced heartbeat interval, from FEDTUNE_SUPERNODE_HEARTBEAT (seconds, 10..1800:
    the range the coordinator's SuperLink accepts)."""
    raw = os.environ.get("FEDTUNE_SUPERNODE_HEARTBEAT", "")
    try:
        value = int(float(raw)) if raw else DEFAULT_HEARTBEAT_S
    except ValueError:
        value = DEFAULT_HEARTBEAT_S
    return min(max(value, 10), 1800)


def install(poll: float | None = None, heartbeat: int | None = None) -> None:
    """Shorten the SuperNode loop's waits (see the module docstring); idempotent."""
    from flwr.supercore import heartbeat as beat
    from flwr.supercore.inflatable.inflatable_utils import pull_objects
    from flwr.supernode import fleet_http_connection as fleet
    from flwr.supernode import start_client_internal as sci

    sci.time = ShortWaits(poll_seconds() if poll is None else poll)
    sci.pull_objects = functools.partial(pull_objects, initial_backoff=FIRST_RETRY_S,
                                         backoff_cap=MAX_RETRY_S)
    # the interval announced to the coordinator and the one the sender keeps: always the same
    fleet.HEARTBEAT_DEFAULT_INTERVAL = beat.HEARTBEAT_DEFAULT_INTERVAL = (
        heartbeat_seconds() if heartbeat is None else heartbeat)


def main() -> None:
    """`flower-supernode` with the waits above; arguments as Flower's."""
    install()
    from flwr.supernode.cli.flower_supernode import flower_supernode

    sys.argv[0] = "flower-supernode"
    flower_supernode()


if __name__ == "__main__":
    main()
