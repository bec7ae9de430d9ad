"""The project's own error types: what the command line reports as one `error:` line.

Everything else (a library's ValueError, a RuntimeError from XLA) is a bug somewhere and keeps its
traceback, so it can be found.
"""


class ZooError(Exception):
    """A problem with what the user asked for (a flag, a file, an argument); reported as one line."""


class ZooValueError(ZooError, ValueError):
    """A bad argument to a zoo function."""


class DataError(ZooError, ValueError):
    """Data that cannot be found or read."""
