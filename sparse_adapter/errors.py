"""One exception type for bad user input, so entry points can print one line and exit."""


class ConfigError(ValueError):
    """A setting is invalid; the message names the setting and how to fix it."""
