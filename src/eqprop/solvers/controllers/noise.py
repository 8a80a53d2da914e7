"""The noise-relative tolerance controller (design §2)."""

from __future__ import annotations

from dataclasses import dataclass

import torch
from torch import Tensor

from ...validate import interval
from .base import Decision, MultiplicativeController, StepInfo

__all__ = ["NoiseRelative"]


@dataclass
class NoiseRelative(MultiplicativeController):
    """Grow ε only when the residual falls by more than its own measured noise.

    With ``ℓ_t = log(‖F_t‖ / ‖F_(t-1)‖)`` the controller keeps an exponential moving
    mean ``m`` and variance ``v`` of ℓ (West 1979, incremental form) and grows ε when
    ``m < -kappa · se``, ``se = √(v · alpha / (2 - alpha))`` the standard error of the
    moving mean; otherwise (no significant progress) it shrinks. The tolerance of
    the test is thus relative to the scatter of the residual ratios: a steady fall
    is significant at once, whatever its size (so small ε grows back, unlike
    :class:`~.naive.Naive`), while a residual that swings up and down around a
    stall, as on a limit cycle of Euler just above ε_crit, or that bounces on its
    rounding floor, is not: there ε shrinks.

    Args:
        alpha: EMA weight, in (0, 1).
        kappa: significance in standard errors (≥ 0).
        shrink, grow, eps_min, eps_max: see :class:`MultiplicativeController`.
    """

    alpha: float = 0.3
    kappa: float = 1.0

    def __post_init__(self) -> None:
        super().__post_init__()
        interval(self, "alpha", self.alpha, 0.0, 1.0, lo_open=True, hi_open=True)
        interval(self, "kappa", self.kappa, 0.0, 100.0)

    def init(self, eps0: Tensor) -> dict[str, Tensor]:
        # (B,) mean is NaN until the first ratio is seen
        return {"mean": torch.full_like(eps0, float("nan")), "var": torch.zeros_like(eps0)}

    def propose(self, eps: Tensor, info: StepInfo) -> Decision:
        ell = torch.nan_to_num(torch.log(info.ratio), nan=float("inf"))  # (B,)
        m, v, a = info.memory["mean"], info.memory["var"], self.alpha
        first = torch.isnan(m)
        d = ell - torch.where(first, ell, m)
        m = torch.where(first, ell, m + a * d)
        v = (1 - a) * (v + a * d * d)
        se = torch.sqrt(v * a / (2 - a))
        bad = ~(m < -self.kappa * se)  # inf/NaN count as bad
        # one overflowing step must not poison the statistics for ever
        m = torch.nan_to_num(m, nan=0.0, posinf=1.0)
        v = torch.nan_to_num(v, nan=0.0, posinf=0.0)
        return Decision(self.apply(eps, bad), torch.ones_like(bad), {"mean": m, "var": v})
