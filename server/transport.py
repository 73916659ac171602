"""The coordinator's side of the deployment engine's transport: packed arrays, no idle waits.

On the deployment engine the ServerApp talks to its SuperLink over HTTP (Flower 1.42's
`HttpGrid`), and measured on the demo (bench/bench_deploy.py) a round lost seconds per message to
the transport, not to any work:
- every array travels as its own objects, one HTTP request each, at both hops (ServerApp ->
  SuperLink -> SuperNode and back): 74 arrays of the demo adapter = ~150 requests per message;
- `send_and_receive` asks for replies every 3 s, and a reply's arrays that are not there yet are
  fetched again after 1 s, 2, 4 ... (the simulation's in-memory grid polls every 0.1 s).

`Wire` wraps the grid the ServerApp was given: each outgoing message's arrays are packed into one
blob + manifest (common/packing.py; the site runtime unpacks them before its ClientApp runs and
packs its reply the same way: client/wire.py), replies are polled every 0.1 s and their arrays
re-fetched after 20 ms (doubling to 0.5 s), and each reply is unpacked before any strategy sees
it. A reply whose packing is malformed becomes an error reply (the site is untrusted input), so
the round goes on without it. Only the ServerApp's loopback connection to its own SuperLink polls
faster; what a site sees is the packed message (its side of the waits: client/supernode.py)."""

from __future__ import annotations

import functools
import time
from collections.abc import Iterable

from flwr.app import Array, ArrayRecord, ConfigRecord, Error, Message, RecordDict
from flwr.app.message import make_message
from flwr.serverapp import Grid

from common.errors import INTERNAL
from common.packing import PackingError, pack, unpack

POLL_S = 0.1
FIRST_RETRY_S = 0.02
MAX_RETRY_S = 0.5
BLOB, MANIFEST = "fedtune.packed", "fedtune.manifest"  # as client/wire.py, the site's side
MALFORMED = "the reply's packed arrays are malformed (rejected by the coordinator)"


def pack_message(msg: Message) -> None:
    """Pack the arrays of an outgoing message in place (nothing to do without arrays)."""
    content = msg.content
    if not content.array_records:
        return
    blob, manifest = pack({name: {k: a.numpy() for k, a in rec.items()}
                           for name, rec in content.array_records.items()})
    rest = {k: v for k, v in content.items() if k not in content.array_records}
    msg.content = RecordDict({**rest, BLOB: ArrayRecord({"blob": Array(blob)}),
                              MANIFEST: ConfigRecord({"arrays": manifest})})


def unpack_reply(msg: Message) -> Message:
    """A site's reply with its arrays unpacked; malformed packing -> an error reply."""
    if msg.has_error() or BLOB not in msg.content.array_records:
        return msg
    try:
        content = msg.content
        records = unpack(content.array_records[BLOB]["blob"].numpy(),
                         content.config_records[MANIFEST]["arrays"])
        rest = {k: v for k, v in content.items() if k not in (BLOB, MANIFEST)}
        if set(records) & set(rest):
            raise PackingError("a packed record name collides with another record")
        msg.content = RecordDict({**rest, **{n: ArrayRecord({k: Array(a) for k, a in r.items()})
                                             for n, r in records.items()}})
        return msg
    except Exception:  # noqa: BLE001 - a site's reply is untrusted input: reject, never crash
        return make_message(metadata=msg.metadata, error=Error(code=INTERNAL, reason=MALFORMED))


class Wire(Grid):
    """`grid` with packed arrays and short polls (see the module docstring)."""

    def __init__(self, grid: Grid, poll: float = POLL_S):
        self.grid, self.poll = grid, poll

    def set_run(self, run) -> None:
        self.grid.set_run(run)

    @property
    def run(self):
        return self.grid.run

    def create_message(self, content, message_type, dst_node_id, group_id, ttl=None) -> Message:
        return self.grid.create_message(content, message_type, dst_node_id, group_id, ttl)

    def get_node_ids(self) -> Iterable[int]:
        return self.grid.get_node_ids()

    def get_nodes(self):
        return self.grid.get_nodes()

    def push_messages(self, messages: Iterable[Message]) -> Iterable[str]:
        messages = list(messages)
        for msg in messages:
            if msg.has_content():
                pack_message(msg)
        return self.grid.push_messages(messages)

    def pull_messages(self, message_ids: Iterable[str]) -> Iterable[Message]:
        return [unpack_reply(m) for m in self.grid.pull_messages(message_ids)]

    def send_and_receive(self, messages: Iterable[Message], *,
                         timeout: float | None = None) -> Iterable[Message]:
        """As Flower's: push, then pull until every reply is in or `timeout` passes."""
        pending = set(self.push_messages(messages))
        end = time.time() + (timeout or 0.0)
        replies: list[Message] = []
        while timeout is None or time.time() < end:
            got = list(self.pull_messages(pending))
            replies.extend(got)
            pending.difference_update(m.metadata.reply_to_message_id for m in got)
            if not pending:
                break
            time.sleep(self.poll)
        return replies


def fast(grid: Grid) -> Grid:
    """The grid the ServerApp should use: Flower's HTTP grid wrapped in `Wire`, others as they
    are (the simulation's in-memory grid polls every 0.1 s and copies nothing; benchmarks bring
    their own)."""
    from flwr.superlink.grid import http_grid

    if not isinstance(grid, http_grid.HttpGrid):
        return grid
    # HttpGrid.pull_messages fetches reply arrays with the module's pull_objects (flwr==1.42.0)
    if not isinstance(http_grid.pull_objects, functools.partial):
        http_grid.pull_objects = functools.partial(http_grid.pull_objects,
                                                   initial_backoff=FIRST_RETRY_S,
                                                   backoff_cap=MAX_RETRY_S)
    return Wire(grid)
