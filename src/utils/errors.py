"""Errors caused by user input: scripts print them as one line and exit with status 2."""


class UserError(Exception):
    """A mistake in the user's input (config, flags, files), not a bug in the code."""


class ConfigError(UserError):
    """An invalid config file, key, value or override."""


class DataError(UserError):
    """A missing, malformed or out-of-range data source."""


class RunDirError(UserError):
    """A run directory that cannot be used as asked (exists, missing, incompatible)."""
