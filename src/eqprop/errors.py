"""Errors that the CLI reports as one line with exit code 2 (no traceback).

They derive from :class:`Exception`, not :class:`ValueError`, on purpose: a
``ValueError`` raised while tyro builds a config section is caught by tyro and
drawn as a multi-line box; an :class:`EqpropError` passes through tyro untouched
and the CLI prints it as one line (see :mod:`eqprop.cli.main`).
"""

from __future__ import annotations

__all__ = ["CheckpointError", "ConfigError", "DataError", "EqpropError", "StorageError",
           "TrainingInterrupted"]


class EqpropError(Exception):
    """Base of the user-facing errors: the message says what was wrong and what is allowed."""


class ConfigError(EqpropError):
    """A setting has a value that is not allowed."""


class DataError(EqpropError):
    """A data file is missing, empty, binary, not UTF-8, too short, or mismatches a vocabulary."""


class CheckpointError(EqpropError):
    """A checkpoint is missing, truncated, corrupted, unsafe, or for another model."""


class StorageError(EqpropError):
    """A run directory or one of its files cannot be written (permissions, full disk)."""


class TrainingInterrupted(KeyboardInterrupt):
    """A run was stopped by a signal at a step boundary, after its checkpoint was written.

    Args:
        signum: the signal (``signal.SIGINT`` or ``signal.SIGTERM``).
        message: the one line already printed for the user.

    Attributes:
        exit_code: 130 for SIGINT, 143 for SIGTERM.
    """

    def __init__(self, signum: int, message: str):
        super().__init__(message)
        self.signum = signum
        self.exit_code = 128 + signum  # as shells report a process ended by a signal
