"""Errors braid raises for bad input. The CLI prints their message as one line and exits 2."""


class BraidError(Exception):
    """Base class for user-facing errors: the message says what was wrong and what to do."""


class ModelLoadError(BraidError):
    """A model directory is missing, incomplete, corrupt or of an unsupported kind."""


class InvalidRequestError(BraidError, ValueError):
    """A prompt or sampling parameter is out of range."""


class BraidWarning(UserWarning):
    """Something braid changed for the caller (a limit cut to what fits); the CLI prints it as
    one `braid: warning:` line."""
