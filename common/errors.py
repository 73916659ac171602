"""fedtune's error hierarchy: every error names the file/row/field, shows the value and says the fix."""


class FedtuneError(Exception):
    """Base class of every error fedtune raises on purpose (the CLI turns these into exit code 2)."""


class ConfigError(FedtuneError, ValueError):
    """A configuration key is unknown, mistyped, out of range or contradicts another."""


class DataError(FedtuneError, ValueError):
    """A site's data file is missing, unreadable or has bad rows or columns."""


class ModelError(FedtuneError, ValueError):
    """A model directory or adapter is missing, corrupt or does not match the base model."""


class PrivacyBudgetExceeded(FedtuneError, RuntimeError):
    """Training would push a site's privacy ledger past its epsilon budget."""
