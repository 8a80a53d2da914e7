"""Scalar stiffness measures of the Jacobian at an equilibrium (design §5).

- damping ratio ``-a/|μ|`` of the critical mode: 1 for a real decaying mode, → 0
  for a weakly damped rotation (ringing);
- logarithmic norm ``ν(J) = λ_max((J + Jᵀ)/2)``: ``‖e^{tJ}‖ ≤ e^{tν}``, so ν < 0
  means every perturbation shrinks monotonically, while ν > 0 with all Re μ < 0
  means transient growth (a non-normal J);
- Hutchinson ``‖J‖²_F / dim = E_v ‖J v‖² / dim``, ``v ~ N(0, I)``: the overall size
  of J (the quantity jacreg penalises on the non-conservative part).
"""

from __future__ import annotations

import math

import torch
from torch import Tensor

from ..errors import ConfigError
from ..fields import FieldFn, jvp
from .base import SampleJacobian, arnoldi, per_sample

__all__ = ["damping_ratio", "hutchinson_frobenius", "log_norm"]


def damping_ratio(mu: Tensor) -> Tensor:
    """``-a/|μ|`` of eigenvalues ``μ = a + ib`` (any shape, complex) -> real, same shape."""
    return -mu.real / mu.abs()


def log_norm(F: FieldFn, z_star: Tensor, *, method: str = "auto",
             tol: float | None = None) -> Tensor:
    """Logarithmic 2-norm ``λ_max((J + Jᵀ)/2)`` per sample ``(B,)``.

    ARPACK's Lanczos (``eigsh``, largest algebraic) on the symmetric operator
    ``v -> (J v + Jᵀ v)/2``: one JVP and one VJP a product.

    Args:
        F: batched field.
        z_star: the equilibrium ``(B, ...)``.
        method: ``"arpack"``, ``"dense"`` or ``"auto"`` (dense up to 128 unknowns).
        tol: ARPACK tolerance (default by dtype).

    Returns:
        ``(B,)`` float64.
    """
    def dense(Jd: Tensor) -> float:
        return float(torch.linalg.eigvalsh((Jd + Jd.T) / 2).max())

    def sparse(J: SampleJacobian, tol_: float) -> float:
        jv, vj = J.numpy_op(J.jvp), J.numpy_op(J.vjp)
        w, _, _ = arnoldi(lambda x: 0.5 * (jv(x) + vj(x)), J.n, 1, "LR",  # (J + Jᵀ)/2
                          symmetric=True, tol=tol_)
        return float(w[0].real) if len(w) else math.nan

    return per_sample(F, z_star, method, tol, dense, sparse)


def hutchinson_frobenius(F: FieldFn, z_star: Tensor, probes: int = 8,
                         generator: torch.Generator | None = None) -> Tensor:
    """Hutchinson estimate of ``‖J‖²_F / dim`` per sample ``(B,)``, batched over samples.

    Args:
        F: batched field.
        z_star: the equilibrium ``(B, ...)``.
        probes: Gaussian probe vectors (one batched JVP each); the relative standard
            error is about ``sqrt(2/probes)`` of the spread of J's singular values.
        generator: random generator of the probes (reproducible estimates).

    Returns:
        ``(B,)`` in the dtype of ``z_star``.
    """
    if not (isinstance(probes, int) and probes >= 1):
        raise ConfigError(f"hutchinson_frobenius(probes={probes!r}): must be an integer ≥ 1")
    z = z_star.detach()
    dim = z[0].numel()
    total = torch.zeros(z.shape[0], dtype=z.dtype, device=z.device)
    with torch.no_grad():
        for _ in range(probes):
            v = torch.randn(z.shape, generator=generator, dtype=z.dtype, device="cpu").to(z.device)
            Jv = jvp(F, z, v)  # (B, ...)
            total += Jv.reshape(z.shape[0], -1).pow(2).sum(1)
    return total / (probes * dim)
