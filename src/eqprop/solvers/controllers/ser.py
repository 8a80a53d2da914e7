"""Switched evolution relaxation (SER) of the step size (design §2)."""

from __future__ import annotations

from dataclasses import dataclass

import torch
from torch import Tensor

from ...validate import positive
from .base import Controller, Decision, StepInfo, check_step_factors

__all__ = ["SER"]


@dataclass
class SER(Controller):
    """``ε ← ε · safety · (‖F_prev‖ / ‖F_cur‖)^power``, the factor capped to
    ``[factor_min, factor_max]`` (Mulder & Van Leer 1985; pseudo-transient continuation,
    Kelley & Keyes 1998).

    With ``safety = power = 1`` the product ``ε‖F‖`` is invariant, so the residual can
    only fall as far as ε rises: on a stiff rotating field ε climbs to ε_crit, where
    the critical mode stops decaying, and the residual stalls. ``safety < 1`` makes ε
    settle where one step contracts the residual by ``safety``, a point below
    ε_crit whenever Euler can contract that fast (``1 - safety`` small).

    Args:
        power: exponent of the residual ratio (> 0).
        safety: factor per step (≤ 1).
        factor_min, factor_max: cap on the change of ε per step.
        eps_min, eps_max: see :class:`Controller`.
    """

    power: float = 1.0
    safety: float = 0.99
    factor_min: float = 0.5
    factor_max: float = 2.0

    def __post_init__(self) -> None:
        super().__post_init__()
        positive(self, "power", self.power)
        check_step_factors(self, self.safety, self.factor_min, self.factor_max)

    def propose(self, eps: Tensor, info: StepInfo) -> Decision:
        tiny = torch.finfo(info.f_norm.dtype).tiny
        ratio = info.f_norm / info.f_new_norm.clamp_min(tiny)
        factor = self.safety * ratio.pow(self.power)
        factor = torch.nan_to_num(factor, nan=self.factor_min).clamp(self.factor_min,
                                                                     self.factor_max)
        return Decision(self.clip(eps * factor), torch.ones_like(eps, dtype=torch.bool),
                        info.memory)
