"""Errors that the CLI reports as one line with exit code 2 (no traceback)."""

from __future__ import annotations

__all__ = ["CheckpointError", "ConfigError", "DataError", "EqpropError"]


class EqpropError(Exception):
    """Base of the user-facing errors: the message says what was wrong and what is allowed."""


class ConfigError(EqpropError, ValueError):
    """A setting has a value that is not allowed."""


class DataError(EqpropError, ValueError):
    """A data file is missing, empty, binary, not UTF-8, too short, or mismatches a vocabulary."""


class CheckpointError(EqpropError):
    """A checkpoint is missing, truncated, corrupted, unsafe, or for another model."""
