"""Exception types for failures the user must act on, so entry points can print one line and exit."""


class ConfigError(ValueError):
    """A setting is invalid; the message names the setting and how to fix it."""


class NumericalError(RuntimeError):
    """Training or scoring produced NaN/Inf; the message names the step (or scorer) and the likely setting."""


class StorageError(RuntimeError):
    """A file could not be written (disk full, read-only, no permission); the message names the file."""
