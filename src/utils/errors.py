"""Errors caused by user input: scripts print them as one line and exit with status 2."""


class UserError(Exception):
    """A mistake in the user's input (config, flags, files), not a bug in the code."""


class ConfigError(UserError):
    """An invalid config file, key, value or override."""


class DataError(UserError):
    """A missing, malformed or out-of-range data source."""


class RunDirError(UserError):
    """A run directory that cannot be used as asked (exists, missing, incompatible)."""


class RunError(Exception):
    """A run that cannot go on for a reason outside the code (e.g. storage); exit_status says which.

    Scripts print it as one line and exit with exit_status; it is neither a user error nor a bug.
    """

    exit_status = 1


class StorageError(RunError):
    """A checkpoint or record file that cannot be written or read (read-only or full disk)."""

    exit_status = 4
