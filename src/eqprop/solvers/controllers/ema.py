"""The EMA-smoothed overshoot controller (design §2)."""

from __future__ import annotations

from dataclasses import dataclass

import torch
from torch import Tensor

from ...validate import interval
from .base import Decision, MultiplicativeController, StepInfo

__all__ = ["EMAOvershoot"]


@dataclass
class EMAOvershoot(MultiplicativeController):
    """Overshoot test against an exponential moving average of the residual.

    Shrink ε when ``g_t > tol · ḡ_(t-1)``, grow otherwise, where
    ``ḡ_t = (1 - alpha) ḡ_(t-1) + alpha g_t`` (``ḡ_0 = g_0``, ``g_t = ‖F(z_t)‖``). On non-normal or
    mixed-mode fields the residual wiggles from step to step even when ε is stable;
    comparing against the average instead of the last value ignores the wiggle
    and reacts to a sustained rise. ``alpha = 1`` is :class:`Overshoot`.

    Args:
        alpha: EMA weight of the newest residual, in (0, 1].
        tol: allowed ratio of the new residual to the average.
        shrink, grow, eps_min, eps_max: see :class:`MultiplicativeController`.
    """

    alpha: float = 0.3
    tol: float = 1.0

    def __post_init__(self) -> None:
        super().__post_init__()
        interval(self, "alpha", self.alpha, 1e-6, 1.0)
        interval(self, "tol", self.tol, 0.5, 10.0)

    def init(self, eps0: Tensor) -> dict[str, Tensor]:
        return {"ema": torch.full_like(eps0, float("nan"))}  # (B,) set on the first step

    def propose(self, eps: Tensor, info: StepInfo) -> Decision:
        ema = info.memory["ema"]
        ema = torch.where(torch.isnan(ema), info.f_norm, ema)  # first step: ḡ_0 = ‖F_0‖
        bad = ~(info.f_new_norm <= self.tol * ema)
        ema = (1 - self.alpha) * ema + self.alpha * info.f_new_norm
        return Decision(self.apply(eps, bad), torch.ones_like(bad), {"ema": ema})
