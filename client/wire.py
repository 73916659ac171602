"""The site's side of packed messages (common/packing.py) on the deployment engine.

A coordinator running fedtune's deployed ServerApp sends each message's arrays as one packed blob
plus a manifest (server/transport.py). The site runtime (client/runtime.py) unpacks them before the
ClientApp sees the message, so the handlers, mods and outbound guard work on ordinary arrays, and
packs the reply's arrays the same way after the guard has passed them — a lossless re-encoding of
exactly what the guard saw. A message that arrives unpacked gets an unpacked reply.

What arrives is untrusted: `common.packing.unpack` checks every manifest field before any array is
built and raises PackingError (code 460 with a fixed reason on the wire; details in the site log)."""

from __future__ import annotations

from flwr.app import Array, ArrayRecord, ConfigRecord, Message, RecordDict

from common.packing import PackingError, pack, unpack

BLOB = "fedtune.packed"          # ArrayRecord holding the one blob
MANIFEST = "fedtune.manifest"    # ConfigRecord {"arrays": manifest JSON}


def is_packed(msg: Message) -> bool:
    return msg.has_content() and BLOB in msg.content.array_records


def unpack_message(msg: Message) -> None:
    """Replace a packed message's blob with its ArrayRecords, in place (metadata, and so the
    message id the reply refers to, unchanged)."""
    content = msg.content
    try:
        blob = content.array_records[BLOB]["blob"].numpy()
        manifest = content.config_records[MANIFEST]["arrays"]
    except (KeyError, TypeError, ValueError):
        raise PackingError("a packed message lacks its blob or its manifest") from None
    records = unpack(blob, manifest)
    rest = {k: v for k, v in content.items() if k not in (BLOB, MANIFEST)}
    if set(records) & set(rest):
        raise PackingError("a packed record name collides with another record of the message")
    msg.content = RecordDict({**rest, **{name: ArrayRecord({k: Array(a) for k, a in arrays.items()})
                                          for name, arrays in records.items()}})


def pack_reply(reply: Message) -> Message:
    """The reply with its ArrayRecords packed (an error reply, or one without arrays, as is)."""
    if reply.has_error() or not reply.content.array_records:
        return reply
    content = reply.content
    blob, manifest = pack({name: {k: a.numpy() for k, a in rec.items()}
                           for name, rec in content.array_records.items()})
    rest = {k: v for k, v in content.items() if k not in content.array_records}
    reply.content = RecordDict({**rest, BLOB: ArrayRecord({"blob": Array(blob)}),
                                MANIFEST: ConfigRecord({"arrays": manifest})})
    return reply
