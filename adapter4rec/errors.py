"""The errors adapter4rec raises on purpose.

Everything derives from ``Adapter4RecError`` so callers can catch the library's own errors in one
place; ``DataError`` and ``ConfigError`` are also ``ValueError`` so generic code keeps working.
"""


class Adapter4RecError(Exception):
    """Base of every error the library raises on purpose."""


class DataError(Adapter4RecError, ValueError):
    """A data file is malformed; ``str()`` reads ``<path>:<line>: <message>``."""

    def __init__(self, message, path=None, line=None):
        # All three go into args so the error survives pickling (e.g. DataLoader workers).
        super().__init__(message, path, line)
        self.message = message
        self.path = None if path is None else str(path)
        self.line = line

    def __str__(self):
        where = [str(p) for p in (self.path, self.line) if p is not None]
        return ": ".join([":".join(where), self.message]) if where else self.message


class ConfigError(Adapter4RecError, ValueError):
    """A configuration value or argument is invalid."""


class CheckpointError(Adapter4RecError):
    """A checkpoint is missing, incompatible or corrupt."""


class NonFiniteError(Adapter4RecError):
    """A loss, gradient, or item / user vector is NaN or infinite (``train.nonfinite: error``)."""


class StorageError(Adapter4RecError):
    """A file cannot be written (disk full, read-only folder, ...); ``str()`` names the path."""
