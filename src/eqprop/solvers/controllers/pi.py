"""Embedded Euler–Heun error estimate with a PI step-size controller (DESIGN.md §2)."""

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

__all__ = ["HeunPI"]


@dataclass
class HeunPI(Controller):
    """PI control of ε on the embedded Euler–Heun error.

    After the Euler step ``z_E = z + εF(z)`` the solver has ``F(z_E)`` anyway (it is
    the next step's field), so Heun's ``z_H = z + ε/2 (F(z) + F(z_E))`` comes for free
    and ``err = ‖z_H - z_E‖ = ε/2 ‖F(z_E) - F(z)‖`` estimates Euler's local error,
    O(ε²). The error is scaled by :func:`~.base.scaled_error` and ε follows the PI
    controller of Gustafsson (1991), written as in diffrax's ``PIDController``:

        ε ← ε · clip(safety · e_n^(-(pcoeff + icoeff)/2) · e_(n-1)^(pcoeff/2),
                     factor_min, factor_max)

    with diffrax's defaults safety 0.9 and factor range [0.2, 10]; ``pcoeff = 0.4,
    icoeff = 0.3`` are the PI values diffrax suggests for stiff problems (``pcoeff = 0,
    icoeff = 1`` is the plain integral controller). A step with ``e > 1`` is rejected
    (ε shrinks by at most ``safety``) and the P memory is not updated.

    Args:
        rtol: allowed local error per unit step length (see :func:`~.base.scaled_error`).
        pcoeff, icoeff: proportional and integral coefficients (≥ 0, icoeff > 0).
        safety: safety factor, in (0, 1].
        factor_min, factor_max: range of the change of ε per step.
        eps_min, eps_max: see :class:`Controller`.
    """

    rtol: float = 0.1
    pcoeff: float = 0.4
    icoeff: float = 0.3
    safety: float = 0.9
    factor_min: float = 0.2
    factor_max: float = 10.0

    error_estimate = "heun"

    def __post_init__(self) -> None:
        super().__post_init__()
        check_positive(self, rtol=self.rtol, icoeff=self.icoeff, safety=self.safety)
        check_factor(self, "pcoeff", self.pcoeff, 0.0, 10.0, closed=True)
        check_factor(self, "safety", self.safety, 0.0, 1.0, closed=True)
        check_factor(self, "factor_min", self.factor_min, 0.0, 1.0)
        check_factor(self, "factor_max", self.factor_max, 1.0, float("inf"))

    def init(self, eps0: Tensor) -> dict[str, Tensor]:
        return {"f_ref": torch.full_like(eps0, float("nan")),  # (B,) ratcheted ‖F‖
                "e_prev": torch.ones_like(eps0)}  # (B,) last accepted scaled error

    def propose(self, eps: Tensor, info: StepInfo) -> Decision:
        e, f_ref = scaled_error(info, self.rtol, info.memory["f_ref"])
        accept = e <= 1.0
        e_safe = e.clamp_min(1e-12)  # e = 0: a perfectly linear step, grow by factor_max
        e_prev = info.memory["e_prev"]
        factor = (self.safety * e_safe.pow(-(self.pcoeff + self.icoeff) / 2)
                  * e_prev.pow(self.pcoeff / 2))
        factor = torch.nan_to_num(factor, nan=self.factor_min).clamp(self.factor_min,
                                                                     self.factor_max)
        factor = torch.where(accept, factor, factor.clamp_max(self.safety))
        e_prev = torch.where(accept, e_safe, e_prev)
        memory = {"f_ref": ratchet(f_ref, info, accept), "e_prev": e_prev}
        return Decision(self.clip(eps * factor), accept, memory)
