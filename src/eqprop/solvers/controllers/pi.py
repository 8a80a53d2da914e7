"""Embedded Euler–Heun error estimate with a PI step-size controller (design §2)."""

from __future__ import annotations

from dataclasses import dataclass

import torch
from torch import Tensor

from ...validate import interval, positive
from .base import ErrorController

__all__ = ["HeunPI"]


@dataclass
class HeunPI(ErrorController):
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
        pcoeff, icoeff: proportional and integral coefficients (≥ 0, icoeff > 0).
        rtol, safety, factor_min, factor_max, eps_min, eps_max: see
            :class:`~.base.ErrorController`.
    """

    pcoeff: float = 0.4
    icoeff: float = 0.3

    error_estimate = "heun"

    def __post_init__(self) -> None:
        super().__post_init__()
        positive(self, "icoeff", self.icoeff)
        interval(self, "pcoeff", self.pcoeff, 0.0, 10.0)

    def init(self, eps0: Tensor) -> dict[str, Tensor]:
        return {**super().init(eps0), "e_prev": torch.ones_like(eps0)}  # last accepted e

    def gain(self, e: Tensor, memory: dict[str, Tensor]) -> Tensor:
        return e.pow(-(self.pcoeff + self.icoeff) / 2) * memory["e_prev"].pow(self.pcoeff / 2)

    def remember(self, e: Tensor, accept: Tensor, memory: dict[str, Tensor]) -> dict[str, Tensor]:
        return {"e_prev": torch.where(accept, e, memory["e_prev"])}
