"""Interrupts of a training run: Ctrl-C (SIGINT) and SIGTERM end it at a step boundary.

While :class:`StopSignals` is active, the first SIGINT or SIGTERM only records the
signal; the loop finishes the step it is in (an update is never cut in half), writes
a checkpoint and raises :class:`TrainingInterrupted`. A second signal of either kind
stops at once (Python's default behaviour comes back), for a step that takes too long.
"""

from __future__ import annotations

import signal
import threading
from types import FrameType

from ..errors import TrainingInterrupted

__all__ = ["EXIT_CODES", "StopSignals", "TrainingInterrupted"]

#: exit code of a run ended by a signal: 128 + its number, as shells report it
EXIT_CODES = {signal.SIGINT: 128 + signal.SIGINT, signal.SIGTERM: 128 + signal.SIGTERM}
_NAMES = {signal.SIGINT: "Ctrl-C (SIGINT)", signal.SIGTERM: "SIGTERM"}


class StopSignals:
    """Context manager that turns SIGINT and SIGTERM into a request to stop.

    Outside the main thread (signal handlers cannot be installed there) it does nothing.

    Attributes:
        signum: the first signal received, or None.
    """

    def __init__(self) -> None:
        self.signum: int | None = None
        self._old: dict[int, object] = {}

    @property
    def name(self) -> str:
        """``Ctrl-C (SIGINT)`` or ``SIGTERM`` (empty while no signal arrived)."""
        return "" if self.signum is None else _NAMES.get(signal.Signals(self.signum), "signal")

    def _handle(self, signum: int, frame: FrameType | None) -> None:
        self.signum = signum
        self._restore()  # a second signal acts at once

    def _restore(self) -> None:
        for sig, old in self._old.items():
            signal.signal(sig, old)  # type: ignore[arg-type]
        self._old = {}

    def __enter__(self) -> StopSignals:
        if threading.current_thread() is threading.main_thread():
            for sig in EXIT_CODES:
                self._old[sig] = signal.signal(sig, self._handle)
        return self

    def __exit__(self, *exc: object) -> None:
        self._restore()
