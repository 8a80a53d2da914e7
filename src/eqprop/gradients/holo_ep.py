"""Holomorphic equilibrium propagation (Laborieux & Zenke 2022; design §3)."""

from __future__ import annotations

import cmath
import math
from dataclasses import dataclass, field

import torch
from torch import Tensor

from ..errors import ConfigError
from ..fields import Field
from ..solvers.base import Solution, Solver, relax, sample_norm
from ..solvers.euler import Euler
from .base import Estimator, EstimatorResult, surrogate
from .nudged import NudgedField

__all__ = ["HoloEP"]


@dataclass
class HoloEP(Estimator):
    """Holomorphic EP: the learning signal as the first Fourier coefficient of the nudged
    equilibrium around a circle of complex nudges (Laborieux & Zenke, "Holomorphic
    equilibrium propagation computes exact gradients through finite size oscillations",
    NeurIPS 2022).

    With ``β_k = r e^{2πik/N}`` and ``z_{β_k}`` the equilibrium of ``F(z) - β_k ∇_z L(z)``
    (relaxed from z* on complex states),

        s = Re[(1/N) Σ_k (z_{β_k} - z*) e^{-2πik/N}] / r  =  dz_β/dβ (0) + O(r^N),

    exact up to aliasing of the N-th Taylor term, at a *finite* radius r, as long as
    every op in F is holomorphic and the nudged equilibria exist on the whole circle.
    ``dz_β/dβ = J⁻¹ ∇L``, the exact adjoint when J is symmetric; with ``antisym`` the
    nudged dynamics get ``-2A (z - z*)`` (as :class:`AsymEP`) and s → ``J⁻ᵀ ∇L`` for any J.

    The field is real on real states, so ``z_{β̄} = conj(z_β)``: only the nudges with
    ``Im β ≥ 0`` are relaxed (``⌊N/2⌋ + 1`` of N), and ``β = ±r`` run in real arithmetic.
    N = 1 is one-sided EP at β = r and N = 2 is centered EP at β = r.

    Args:
        r: radius of the nudge circle (|β|), > 0.
        N: number of nudges on the circle, ≥ 1 (error O(r^N)).
        antisym: add the ``-2A (z - z*)`` term (needed on non-symmetric J: the asym block,
            a layer stack); on complex states ``2A d`` costs two JVPs and two VJPs.
        solver: solver of the nudged phases.
        tol: nudged-phase tolerance, relative to the nudge size ``r‖∇L(z*)‖``.
        max_steps: nudged-phase step budget.
        conjugate_pairs: use ``z_{β̄} = conj(z_β)`` to skip the nudges with ``Im β < 0``.
    """

    r: float = 0.5
    N: int = 4
    antisym: bool = True
    solver: Solver = field(default_factory=Euler)
    tol: float = 1e-3
    max_steps: int = 500
    conjugate_pairs: bool = True

    def __post_init__(self) -> None:
        if not (isinstance(self.r, (int, float)) and self.r > 0):
            raise ConfigError(f"HoloEP(r={self.r!r}): the radius must be a number > 0")
        if not (isinstance(self.N, int) and not isinstance(self.N, bool) and self.N >= 1):
            raise ConfigError(f"HoloEP(N={self.N!r}): the number of nudges must be an integer ≥ 1")
        if not self.tol > 0:
            raise ConfigError(f"HoloEP(tol={self.tol!r}): must be > 0")
        if not (isinstance(self.max_steps, int) and self.max_steps >= 1):
            raise ConfigError(f"HoloEP(max_steps={self.max_steps!r}): must be an integer ≥ 1")

    def _phases(self) -> list[tuple[int, float]]:
        """``(k, weight)`` of the nudges to relax; a conjugate partner folds into weight 2."""
        if not self.conjugate_pairs:
            return [(k, 1.0) for k in range(self.N)]
        return [(k, 1.0 if 2 * k in (0, self.N) else 2.0) for k in range(self.N // 2 + 1)]

    def beta(self, k: int) -> complex | float:
        """The k-th nudge ``r e^{2πik/N}``; a plain float when it is real (k = 0, N/2)."""
        if k == 0:
            return float(self.r)
        if 2 * k == self.N:
            return -float(self.r)
        return self.r * cmath.exp(2j * math.pi * k / self.N)

    def estimate(self, field: Field, z_star: Tensor) -> EstimatorResult:
        z = z_star.detach()  # (B, ...) real
        if z.is_complex():
            raise ValueError("HoloEP needs a real free equilibrium z*; got a complex tensor")
        sols: dict[str, Solution] = {}
        with torch.no_grad():
            scale = self.r * sample_norm(field.grad_loss(z))  # (B,) size of the nudge
            acc = torch.zeros_like(z)  # (B, ...) Σ_k w_k Re[(z_k - z*) e^{-2πik/N}]
            for k, weight in self._phases():
                beta = self.beta(k)
                z0 = z if isinstance(beta, float) else z.to(_complex_dtype(z.dtype))
                F_beta = NudgedField(field, beta, z, antisym=self.antisym)
                sol = relax(F_beta, z0, self.solver, tol=self.tol, max_steps=self.max_steps,
                            scale=scale)
                sols[f"nudged{k}"] = sol
                phase = cmath.exp(-2j * math.pi * k / self.N)
                d = sol.z - z
                acc += weight * (d.real * phase.real - d.imag * phase.imag
                                 if d.is_complex() else d * phase.real)
            s = acc / (self.N * self.r)
        S = surrogate(field, z, s)
        return EstimatorResult(S, field.loss(z).mean().detach(), s,
                               nfe={k: v.nfe for k, v in sols.items()}, solutions=sols)


def _complex_dtype(dtype: torch.dtype) -> torch.dtype:
    return {torch.float64: torch.complex128, torch.float32: torch.complex64,
            torch.float16: torch.complex32}.get(dtype, torch.complex64)
