"""Exception types for failures the user must act on, so entry points can print one line and exit."""


class ConfigError(ValueError):
    """A setting is invalid; the message names the setting and how to fix it."""


class NumericalError(RuntimeError):
    """Training or scoring produced NaN/Inf; the message names the step (or scorer) and the likely setting."""


class StorageError(RuntimeError):
    """A file could not be written (disk full, read-only, no permission); the message names the file."""


class DegenerateScoresWarning(UserWarning):
    """Some adapter tensors got the same score for every weight: their masks come from the tie-break."""


class EmptyMatricesWarning(UserWarning):
    """Pruning left adapter matrices with no weight: a product with an empty factor silences its module."""
