"""The outermost mod of every fedtune ClientApp: whatever goes wrong while a site handles a
message, only an error code and a fixed, value-free reason leave (common/errors.py `wire`).

Flower itself would send `str(exception)` to the coordinator, and fedtune's errors are written
for the person at the site: they name files, rows, columns and values. So the full text goes to
the site's own log (logger "fedtune.site": the runtime's log file when deployed, stderr in a
simulation) and the reply carries the code and the reason of the error's class or rule."""

from __future__ import annotations

import logging

from flwr.app import Context, Error, Message

from common.errors import wire

log = logging.getLogger("fedtune.site")


def error_reply(msg: Message, err: BaseException) -> Message:
    """The reply that may leave for `err`; the full text is logged here, at the site."""
    code, why = wire(err)
    log.error("%s message of run %s failed (sent code %d): %s: %s", msg.metadata.message_type,
              msg.metadata.run_id, code, type(err).__name__, err,
              exc_info=not hasattr(err, "public"))
    return Message(Error(code=code, reason=why), reply_to=msg)


def site_errors_mod(msg: Message, ctx: Context, call_next) -> Message:
    """Flower mod: exceptions of everything inside become a code + fixed reason."""
    try:
        return call_next(msg, ctx)
    except Exception as err:  # noqa: BLE001 - nothing may leave with an exception's text
        return error_reply(msg, err)
