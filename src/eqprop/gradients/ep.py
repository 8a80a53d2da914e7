"""Equilibrium propagation: plain EP and asymmetric EP (design §3)."""

from __future__ import annotations

from dataclasses import dataclass, field

import torch
from torch import Tensor

from ..errors import ConfigError
from ..fields import Field
from ..solvers.base import Solution, Solver, sample_norm
from ..solvers.euler import Euler
from ..solvers.relaxation import Relaxation
from .base import Estimator, EstimatorResult, surrogate
from .nudged import NudgedField

__all__ = ["EP", "AsymEP"]


@dataclass
class EP(Estimator):
    """Equilibrium propagation (Scellier & Bengio 2017).

    Relax the nudged dynamics ``F(z) - β ∇_z L(z)`` from z* to ``z_β``; the signal
    is ``(z_β - z*)/β`` (one-sided) or ``(z_β - z_{-β})/(2β)`` (centered). It tends
    to ``J⁻¹ ∇L``, the exact ``J⁻ᵀ ∇L`` only when J is symmetric (energy block).

    Args:
        beta: nudging strength β > 0.
        centered: use the two nudges ±β (error O(β²) instead of O(β)).
        solver: solver of the nudged phase(s).
        tol: nudged-phase tolerance, relative to the nudge size ``β‖∇L(z*)‖``.
        max_steps: nudged-phase step budget.
        check_every, capture: how the nudged relaxations run (see ``relax``).
        batch_nudges: relax the two nudges of the centered estimate as one batch of 2B
            samples (the field's ``repeated(2)``): one call of F per step with kernels
            twice as large, which on a GPU costs much less than a second phase. Every
            sample still relaxes on its own, so the result is that of one phase after the
            other (tested); fields without ``repeated`` fall back to that.
        correct_residual: subtract ``F(z*)`` in the nudged dynamics (one evaluation), so
            that ``z*`` is their exact β = 0 equilibrium. The free phase stops at a
            residual ``‖F(z*)‖ ≈ tol·‖z*‖`` that can dwarf the nudge ``β‖∇L‖``; without the
            correction the nudged tolerance (relative to the nudge) then asks the nudged
            phase to finish the free phase's work below the float precision. The
            centered signal is the same to first order either way.
    """

    beta: float = 0.01
    centered: bool = True
    solver: Solver = field(default_factory=Euler)
    tol: float = 1e-3
    max_steps: int = 500
    check_every: int = 1
    capture: bool = False
    batch_nudges: bool = True
    correct_residual: bool = True

    #: add the -2A (z - z*) term of asymmetric EP
    antisym = False
    #: the nudged relaxation, built once (its CUDA graphs are reused across batches)
    relaxation: Relaxation = field(init=False, repr=False, compare=False)

    def __post_init__(self) -> None:
        if not (isinstance(self.beta, (int, float)) and self.beta > 0):
            raise ConfigError(f"{type(self).__name__}(beta={self.beta!r}): must be a number > 0")
        if not self.tol > 0:
            raise ConfigError(f"{type(self).__name__}(tol={self.tol!r}): must be > 0")
        if not (isinstance(self.max_steps, int) and self.max_steps >= 1):
            raise ConfigError(f"{type(self).__name__}(max_steps={self.max_steps!r}): must be ≥ 1")
        # no stability check of the nudged equilibria: their linearisation at z* has the
        # free phase's spectrum (J for EP, Jᵀ for AsymEP), which the free phase checks; a
        # nudged relaxation that fails reads diverged or cycling
        self.relaxation = Relaxation(self.solver, tol=self.tol, max_steps=self.max_steps,
                                     check_every=self.check_every, capture=self.capture,
                                     stability="never")

    def _nudge(self, field: Field, z: Tensor, beta: float | Tensor, scale: Tensor,
               r_star: Tensor | None) -> Solution:
        F_beta = NudgedField(field, beta, z, antisym=self.antisym, r_star=r_star)
        return self.relaxation.run(F_beta, z, scale=scale)

    def _both_nudges(self, field: Field, z: Tensor, scale: Tensor,
                     r_star: Tensor | None) -> tuple[Solution, Solution]:
        """The +β and -β nudged equilibria, as one batch of 2B when the field allows."""
        both = field.repeated(2) if self.batch_nudges else None
        if both is None:
            return (self._nudge(field, z, self.beta, scale, r_star),
                    self._nudge(field, z, -self.beta, scale, r_star))
        B = z.shape[0]
        betas = torch.full((2 * B,), self.beta, dtype=z.real.dtype, device=z.device)
        betas[B:] = -self.beta  # (2B,): +β for the first copy, -β for the second
        r2 = None if r_star is None else torch.cat([r_star, r_star])  # (2B, ...)
        sol = self._nudge(both, torch.cat([z, z]), betas, torch.cat([scale, scale]), r2)
        return sol.select(slice(0, B)), sol.select(slice(B, 2 * B))

    def estimate(self, field: Field, z_star: Tensor) -> EstimatorResult:
        z = z_star.detach()
        with torch.no_grad():
            scale = self.beta * sample_norm(field.grad_loss(z))  # (B,) size of the nudge
            r_star = field(z) if self.correct_residual else None  # (B, ...) F(z*)
            if self.centered:
                plus, minus = self._both_nudges(field, z, scale, r_star)
                sols = {"nudged+": plus, "nudged-": minus}
                s = (plus.z - minus.z) / (2 * self.beta)
            else:
                plus = self._nudge(field, z, self.beta, scale, r_star)
                sols = {"nudged+": plus}
                s = (plus.z - z) / self.beta
        S = surrogate(field, z, s)
        nfe = {k: v.nfe for k, v in sols.items()}
        if r_star is not None:
            nfe["residual"] = torch.full_like(plus.nfe, field.evals_per_call)
        return EstimatorResult(S, field.loss(z).mean().detach(), s, nfe=nfe, solutions=sols)


@dataclass
class AsymEP(EP):
    """Asymmetric EP (Scurria et al. 2026): the nudged dynamics get ``-2A (z - z*)``,
    ``A = (J - Jᵀ)/2`` frozen at z*, so their Jacobian at z* is ``Jᵀ`` and the centered
    signal tends to ``J⁻ᵀ ∇L``: the exact adjoint, also for non-symmetric J.
    Each nudged evaluation costs one F, one JVP and one VJP. Same settings as :class:`EP`.
    """

    antisym = True
