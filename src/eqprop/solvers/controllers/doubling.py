"""Step doubling: one full Euler step against two half steps (design §2)."""

from __future__ import annotations

from dataclasses import dataclass

from torch import Tensor

from .base import ErrorController

__all__ = ["StepDoubling"]


@dataclass
class StepDoubling(ErrorController):
    """Richardson error estimate: ``err = ‖z_(two half steps) - z_(one full step)‖``.

    Euler's local error is O(ε²) and two half steps halve it, so ``err`` estimates
    the local error of the half-step solution (Hairer, Nørsett & Wanner, *Solving
    ODEs I*, §II.4). The solver keeps the half-step solution; the step costs two
    evaluations of F. The error is scaled by :func:`~.base.scaled_error` and ε follows
    the elementary (integral) controller ``ε ← ε · clip(safety · e^(-1/2))``; a step
    with ``e > 1`` is rejected and retried with the smaller ε. Settings: see
    :class:`~.base.ErrorController` (here ``rtol`` defaults to 0.05).
    """

    rtol: float = 0.05

    error_estimate = "doubling"

    def gain(self, e: Tensor, memory: dict[str, Tensor]) -> Tensor:
        return e.pow(-0.5)
