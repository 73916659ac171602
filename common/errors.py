"""fedtune's error hierarchy: every error names the file/row/field, shows the value and says the fix.

Two audiences. The full message (file, row, column, value, fix) is for the person at the machine:
it goes to the terminal or the site's own log. What crosses the network from a site is only
`wire(err)`: a numeric code and a FIXED, value-free reason (which rule, which fix) — never a data
value, a path, a column list or a row count. An error that knows a more precise fixed reason
passes it as `public=reason("...")` (a literal), which registers it.
The site's outbound guard lets an error leave only with a registered reason."""

from __future__ import annotations

_REASONS: set[str] = set()


def reason(text: str) -> str:
    """Register a fixed, value-free reason a site may send and return it. Call it with a string
    LITERAL only (at module level or at the raise), never with a formatted string."""
    _REASONS.add(text)
    return text


def is_public_reason(text: str) -> bool:
    """True for a reason registered with `reason()` (or a FedtuneError class's `public`)."""
    return text in _REASONS

# Error codes a site may send to the coordinator (Flower `Error.code`), one place for all of them.
REFUSED = 451      # the site refuses the round: its policy or its privacy budget
LEAK = 452         # the outbound guard stopped a reply
COMPRESSION = 453  # the site could not encode its update
DROPPED = 454      # SecAgg+ test knob: the site left mid-protocol
UNMASKABLE = 455   # SecAgg+ cannot carry this update (quantization range)
CONFIG = 456       # the run config is invalid or contradicts itself at this site
DATA = 457         # the site's data does not fit the run config
MODEL = 458        # the base model / adapter does not match
BUNDLE = 459       # the submitted app bundle is not the one this site installed
INTERNAL = 460     # anything else: details only in the site's log

REFUSALS = frozenset({REFUSED, BUNDLE})  # the site declines the task by its own rule or check
CODES = {REFUSED: "refused", LEAK: "blocked", COMPRESSION: "compression", DROPPED: "dropped",
         UNMASKABLE: "unmaskable", CONFIG: "config", DATA: "data", MODEL: "model",
         BUNDLE: "bundle", INTERNAL: "internal"}


class FedtuneError(Exception):
    """Base class of every error fedtune raises on purpose (the CLI turns these into exit code 2)."""

    code = INTERNAL
    public = "the site hit an error; its operator finds the details in the site's log"

    def __init_subclass__(cls, **kwargs):
        super().__init_subclass__(**kwargs)
        _REASONS.add(cls.public)

    def __init__(self, *args, public: str | None = None):
        super().__init__(*args)
        if public is not None:
            self.public = public


class ConfigError(FedtuneError, ValueError):
    """A configuration key is unknown, mistyped, out of range or contradicts another."""

    code = CONFIG
    public = ("the run config is invalid at this site (unknown key, bad value or a contradiction); "
              "check the run config against the site's fedtune version")


class DataError(FedtuneError, ValueError):
    """A site's data file is missing, unreadable or has bad rows or columns."""

    code = DATA
    public = ("the site's data does not fit the run config (columns, labels, values or size); "
              "the site's operator sees which rule in the site's log")


class ModelError(FedtuneError, ValueError):
    """A model directory or adapter is missing, corrupt or does not match the base model."""

    code = MODEL
    public = ("the base model or the adapter does not match at this site (missing model, "
              "different architecture or keys); check model.* in the run config")


class PrivacyBudgetExceeded(FedtuneError, RuntimeError):
    """Training would push a site's privacy ledger past its epsilon budget."""

    code = REFUSED
    public = "refused: the round would pass the site's privacy budget"


_REASONS.add(FedtuneError.public)


def wire(err: BaseException) -> tuple[int, str]:
    """(code, reason) for an error that must leave a site: never the error's own text."""
    if isinstance(err, FedtuneError):
        return err.code, err.public if err.public in _REASONS else type(err).public
    return INTERNAL, FedtuneError.public
