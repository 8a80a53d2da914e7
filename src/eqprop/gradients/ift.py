"""The exact implicit-function-theorem gradient: the reference estimator."""

from __future__ import annotations

from dataclasses import dataclass, field

import torch
from torch import Tensor

from ..errors import ConfigError
from ..fields import Field
from ..solvers.anderson import Anderson
from ..solvers.base import sample_norm
from ..solvers.krylov import gmres
from ..solvers.relaxation import Relaxation
from ..validate import choice
from .adjoint import AdjointField
from .base import Estimator, EstimatorResult, surrogate

#: how the adjoint system is solved
ADJOINTS = ("gmres", "anderson")

__all__ = ["ADJOINTS", "IFT"]


@dataclass
class IFT(Estimator):
    """``dL/dθ = ∂L/∂θ + λᵀ ∂F/∂θ``, ``Jᵀ λ = -∇_z L``: solve ``Jᵀ s = ∇_z L`` on VJPs
    (linearised once at z*), ``λ = -s``.

    The adjoint system is solved by GMRES (``adjoint="gmres"``), or relaxed as the flow
    ``ds/dt = Jᵀ s - ∇_z L`` by Anderson mixing (``adjoint="anderson"``,
    :class:`~eqprop.gradients.adjoint.AdjointField`) through a
    :class:`~eqprop.solvers.relaxation.Relaxation`, recorded as CUDA graphs with
    ``capture``. Both stop at the relative residual ``‖Jᵀ s - ∇L‖ ≤ tol ‖∇L‖`` per sample.

    Args:
        tol: relative residual of the adjoint solve (tight: this is the reference).
        restart: GMRES's Krylov dimension between restarts.
        max_iter: VJP budget per sample.
        check_every: VJPs between two convergence checks on the host (at most
            ``check_every - 1`` extra VJPs, far fewer host synchronisations).
        adjoint: ``"gmres"`` or ``"anderson"``.
        eps: anderson: ε of the map ``s + ε (Jᵀ s - ∇L)`` it accelerates.
        capture: anderson: record the relaxation as CUDA graphs (ignored on CPU).
    """

    tol: float = 1e-8
    restart: int = 40
    max_iter: int = 400
    check_every: int = 4
    adjoint: str = "gmres"
    eps: float = 0.5
    capture: bool = False
    relaxation: Relaxation | None = field(init=False, repr=False, compare=False, default=None)

    def __post_init__(self) -> None:
        if not 0 < self.tol < 1:
            raise ConfigError(f"IFT(tol={self.tol!r}): must be in (0, 1)")
        if self.restart < 1 or self.max_iter < 1 or self.check_every < 1:
            raise ConfigError(f"IFT(restart={self.restart}, max_iter={self.max_iter}, "
                              f"check_every={self.check_every}): must be ≥ 1")
        choice(self, "adjoint", self.adjoint, ADJOINTS)
        if self.adjoint == "anderson":
            # the flow is stable exactly when the free dynamics are (checked there)
            self.relaxation = Relaxation(Anderson(eps=self.eps), tol=self.tol,
                                         max_steps=self.max_iter,
                                         check_every=self.check_every,
                                         capture=self.capture, stability="never")

    def estimate(self, field: Field, z_star: Tensor) -> EstimatorResult:
        z = z_star.detach()
        with torch.no_grad():
            g = field.grad_loss(z)  # (B, ...) ∇_z L_b
        if self.relaxation is not None:
            sol = self.relaxation.run(AdjointField(field, z, g), torch.zeros_like(g),
                                      scale=sample_norm(g))
            s = sol.z
            S = surrogate(field, z, s)
            return EstimatorResult(S, field.loss(z).mean().detach(), s,
                                   nfe={"adjoint": sol.nfe}, solutions={"adjoint": sol})
        with torch.no_grad():
            s, info = gmres(field.vjp_at(z), g, tol=self.tol, restart=self.restart,
                            max_iter=self.max_iter, check_every=self.check_every)
        S = surrogate(field, z, s)
        return EstimatorResult(S, field.loss(z).mean().detach(), s,
                               nfe={"adjoint": info.matvecs})
