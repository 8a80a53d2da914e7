"""The overshoot controller: shrink ε when the residual grows (design §2)."""

from __future__ import annotations

from dataclasses import dataclass

import torch
from torch import Tensor

from ...validate import interval
from .base import Decision, MultiplicativeController, StepInfo

__all__ = ["Overshoot"]


@dataclass
class Overshoot(MultiplicativeController):
    """Shrink ε when ``g_t > tol · g_(t-1)``, grow it otherwise (``g_t = ‖F(z_t)‖``, see
    :attr:`~.base.StepInfo.ratio`).

    Above ε_crit the critical mode grows by ``|1 + εμ| > 1`` a step, so the residual
    rises and ε is cut; below it the residual falls and ε grows back. With a strong
    shrink and a mild grow, ε spends most steps well below ε_crit, where Euler
    contracts. Growth of ε toward ``eps_max`` on a smooth field is geometric.

    Args:
        tol: allowed growth ratio of the residual per step (≥ 1 ignores small rises).
        reject: also undo the step on which the residual rose.
        shrink, grow, eps_min, eps_max: see :class:`MultiplicativeController`.
    """

    tol: float = 1.0
    reject: bool = False

    def __post_init__(self) -> None:
        super().__post_init__()
        interval(self, "tol", self.tol, 0.5, 10.0)

    def propose(self, eps: Tensor, info: StepInfo) -> Decision:
        bad = ~(info.ratio <= self.tol)  # NaN counts as bad
        accept = ~bad if self.reject else torch.ones_like(bad)
        return Decision(self.apply(eps, bad), accept, info.memory)
