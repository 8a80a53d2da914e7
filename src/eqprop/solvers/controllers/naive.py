"""The naive progress controller: kept as the known-wrong reference (design §2)."""

from __future__ import annotations

from dataclasses import dataclass

import torch
from torch import Tensor

from ...validate import interval
from .base import Decision, MultiplicativeController, StepInfo

__all__ = ["Naive"]


@dataclass
class Naive(MultiplicativeController):
    """Shrink ε when the residual ``‖F‖`` fell by less than ``progress`` in one step, else grow.

    **Known wrong; kept as a reference.** The rule has a positive feedback: a small
    ε makes little progress per step, so it shrinks ε further, which makes even less
    progress. On a smooth field started at a modest ε, and on a stiff rotating field
    near ε_crit (where progress per step is small at every ε), it parks at
    ``eps_min``. Every step is accepted.

    Args:
        progress: required fractional fall of g per step, in (0, 1).
        shrink, grow, eps_min, eps_max: see :class:`MultiplicativeController`.
    """

    progress: float = 0.05

    def __post_init__(self) -> None:
        super().__post_init__()
        interval(self, "progress", self.progress, 0.0, 1.0, lo_open=True, hi_open=True)

    def propose(self, eps: Tensor, info: StepInfo) -> Decision:
        bad = ~(info.ratio <= 1.0 - self.progress)  # NaN counts as bad
        return Decision(self.apply(eps, bad), torch.ones_like(bad), info.memory)
