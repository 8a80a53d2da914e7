"""The exact implicit-function-theorem gradient: the reference estimator."""

from __future__ import annotations

from dataclasses import dataclass

import torch
from torch import Tensor

from ..errors import ConfigError
from ..fields import Field
from ..solvers.krylov import gmres
from .base import Estimator, EstimatorResult, surrogate

__all__ = ["IFT"]


@dataclass
class IFT(Estimator):
    """``dL/dθ = ∂L/∂θ + λᵀ ∂F/∂θ``, ``Jᵀ λ = -∇_z L``: solve ``Jᵀ s = ∇_z L`` by GMRES
    on VJPs (linearised once at z*), ``λ = -s``.

    Args:
        tol: GMRES relative residual (tight: this is the reference).
        restart: Krylov dimension between restarts.
        max_iter: VJP budget per sample.
        check_every: VJPs between two convergence checks on the host (at most
            ``check_every - 1`` extra VJPs, far fewer host synchronisations).
    """

    tol: float = 1e-8
    restart: int = 40
    max_iter: int = 400
    check_every: int = 4

    def __post_init__(self) -> None:
        if not 0 < self.tol < 1:
            raise ConfigError(f"IFT(tol={self.tol!r}): must be in (0, 1)")
        if self.restart < 1 or self.max_iter < 1 or self.check_every < 1:
            raise ConfigError(f"IFT(restart={self.restart}, max_iter={self.max_iter}, "
                              f"check_every={self.check_every}): must be ≥ 1")

    def estimate(self, field: Field, z_star: Tensor) -> EstimatorResult:
        z = z_star.detach()
        with torch.no_grad():
            g = field.grad_loss(z)  # (B, ...) ∇_z L_b
            s, info = gmres(field.vjp_at(z), g, tol=self.tol, restart=self.restart,
                            max_iter=self.max_iter, check_every=self.check_every)
        S = surrogate(field, z, s)
        return EstimatorResult(S, field.loss(z).mean().detach(), s,
                               nfe={"adjoint": info.matvecs})
