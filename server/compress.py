"""The coordinator's side of update compression: a Strategy wrapper that decodes compressed
training replies back to full float32 arrays before the wrapped strategy sees them.

A compressed reply carries the site's update; `Decompressing` remembers the global arrays it sent
in configure_train and returns `global + decoded update`. Every payload is checked by
common.compress.decode (keys, dtypes, shapes, finite values, index ranges); a bad one becomes an
error reply naming the site and the key, which the wrapped strategy counts as a failure.
Uncompressed replies pass through untouched, so wrapping is harmless with compression off."""

from __future__ import annotations

from collections.abc import Iterable

import numpy as np
from flwr.app import Array, ArrayRecord, ConfigRecord, Error, Message, RecordDict
from flwr.serverapp import Grid
from flwr.serverapp.strategy import Strategy

from common.compress import decode, is_compressed
from common.errors import ModelError
from server.identity import SiteIdentity

REJECTED = 454  # Error code: a compressed update failed its checks at the coordinator


def decompress_reply(msg: Message, sent: dict[str, np.ndarray], *,
                     name: str | None = None) -> tuple[Message, int | None]:
    """(reply with full float32 arrays = sent + decoded update, bytes its compressed arrays took);
    an uncompressed reply comes back unchanged with None; a bad payload comes back as an error
    reply (same metadata) that names the site and the key."""
    try:
        if msg.has_error() or len(msg.content.array_records) != 1:
            return msg, None
        key, record = next(iter(msg.content.array_records.items()))
        if not is_compressed(record.keys()):
            return msg, None
        update = decode({k: a.numpy() for k, a in record.items()},
                        template_shapes={k: v.shape for k, v in sent.items()})
        content = RecordDict(dict(msg.content.items()))
        content[key] = ArrayRecord({
            k: Array((sent[k].astype(np.float32) + d.numpy()).astype(np.float32))
            for k, d in update.items()})
    except Exception as err:  # noqa: BLE001 - any bad payload rejects this reply only
        why = err if isinstance(err, ModelError) else f"{type(err).__name__}: {str(err)[:160]}"
        reason = (f"{name or f'node-{msg.metadata.src_node_id}'}: compressed update rejected at "
                  f"the coordinator: {why}")
        return Message(error=Error(code=REJECTED, reason=reason), metadata=msg.metadata), None
    return Message(content=content, metadata=msg.metadata), record.count_bytes()


class Decompressing(Strategy):
    """Delegates to `inner`; decodes compressed train replies first.

    `wire_bytes` maps each site of the latest round to the bytes its compressed reply carried
    (ArrayRecord.count_bytes), for the run's traffic record."""

    def __init__(self, inner: Strategy):
        self.inner = inner
        # Recorded's identity (names by enrolled node id), else first-come self-reported names
        self.identity = getattr(inner, "identity", None) or SiteIdentity()
        self.sent: dict[str, np.ndarray] = {}
        self.wire_bytes: dict[str, int] = {}

    def summary(self) -> None:
        self.inner.summary()

    def configure_train(self, server_round: int, arrays: ArrayRecord, config: ConfigRecord,
                        grid: Grid) -> Iterable[Message]:
        self.sent = {k: a.numpy() for k, a in arrays.items()}
        self.wire_bytes = {}
        return self.inner.configure_train(server_round, arrays, config, grid)

    def decompress(self, msg: Message) -> Message:
        """The reply with its compressed arrays replaced by full ones (or an error reply)."""
        name = self.identity.name(msg)
        out, nbytes = decompress_reply(msg, self.sent, name=name)
        if nbytes is not None:
            self.wire_bytes[name] = nbytes
        return out

    def aggregate_train(self, server_round: int, replies: Iterable[Message]):
        return self.inner.aggregate_train(server_round, [self.decompress(m) for m in replies])

    def configure_evaluate(self, server_round: int, arrays: ArrayRecord, config: ConfigRecord,
                           grid: Grid) -> Iterable[Message]:
        return self.inner.configure_evaluate(server_round, arrays, config, grid)

    def aggregate_evaluate(self, server_round: int, replies: Iterable[Message]):
        return self.inner.aggregate_evaluate(server_round, replies)
