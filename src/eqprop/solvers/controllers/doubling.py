"""Step doubling: one full Euler step against two half steps (DESIGN.md §2)."""

from __future__ import annotations

from dataclasses import dataclass

import torch
from torch import Tensor

from .base import (
    Controller,
    Decision,
    StepInfo,
    check_factor,
    check_positive,
    ratchet,
    scaled_error,
)

__all__ = ["StepDoubling"]


@dataclass
class StepDoubling(Controller):
    """Richardson error estimate: ``err = ‖z_(two half steps) - z_(one full step)‖``.

    Euler's local error is O(ε²) and two half steps halve it, so ``err`` estimates
    the local error of the half-step solution (Hairer, Nørsett & Wanner, *Solving
    ODEs I*, §II.4). The solver keeps the half-step solution; the step costs two
    evaluations of F. The error is scaled by :func:`~.base.scaled_error` and ε follows
    the elementary (integral) controller ``ε ← ε · clip(safety · e^(-1/2))``; a step
    with ``e > 1`` is rejected and retried with the smaller ε.

    Args:
        rtol: allowed local error per unit step length (see :func:`~.base.scaled_error`).
        safety: safety factor of the update, in (0, 1].
        factor_min, factor_max: range of the change of ε per step.
        eps_min, eps_max: see :class:`Controller`.
    """

    rtol: float = 0.05
    safety: float = 0.9
    factor_min: float = 0.2
    factor_max: float = 10.0

    error_estimate = "doubling"

    def __post_init__(self) -> None:
        super().__post_init__()
        check_positive(self, rtol=self.rtol, safety=self.safety)
        check_factor(self, "safety", self.safety, 0.0, 1.0, closed=True)
        check_factor(self, "factor_min", self.factor_min, 0.0, 1.0)
        check_factor(self, "factor_max", self.factor_max, 1.0, float("inf"))

    def init(self, eps0: Tensor) -> dict[str, Tensor]:
        return {"f_ref": torch.full_like(eps0, float("nan"))}  # (B,)

    def propose(self, eps: Tensor, info: StepInfo) -> Decision:
        e, f_ref = scaled_error(info, self.rtol, info.memory["f_ref"])
        accept = e <= 1.0
        factor = self.safety * e.clamp_min(1e-12).pow(-0.5)
        factor = torch.nan_to_num(factor, nan=self.factor_min).clamp(self.factor_min,
                                                                     self.factor_max)
        factor = torch.where(accept, factor, factor.clamp_max(self.safety))
        memory = {"f_ref": ratchet(f_ref, info, accept)}
        return Decision(self.clip(eps * factor), accept, memory)
