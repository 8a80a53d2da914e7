"""Leading eigenvalues of the Jacobian at an equilibrium, per sample (design §5).

Arnoldi (ARPACK's implicitly restarted Arnoldi, ``scipy.sparse.linalg.eigs``) on a
JVP operator, never a plain power method: J is non-normal and its critical modes
come in complex pairs ``a ± ib`` of equal magnitude, on which a power iteration
oscillates instead of converging, and the mode that sets ε_crit is often not the
one of largest magnitude at all. :func:`dense_spectrum` forms the full Jacobian
for small models: the check on ARPACK.
"""

from __future__ import annotations

from dataclasses import dataclass

import torch
from torch import Tensor

from ..errors import ConfigError
from ..fields import FieldFn, jvp
from .base import (
    DENSE_MAX,
    SampleJacobian,
    arnoldi,
    check_method,
    check_which,
    default_tol,
    sort_eigs,
)

__all__ = ["Spectrum", "dense_jacobian", "dense_spectrum", "spectrum", "union"]


@dataclass
class Spectrum:
    """Leading eigenvalues of ``J`` per sample.

    Attributes:
        eigvals: ``(B, k)`` complex128, leading first by ``which``; NaN where
            ARPACK converged fewer than k.
        which: ``"LM"`` (largest magnitude) or ``"LR"`` (largest real part).
        converged: ``(B,)`` bool, every requested value converged.
        matvecs: ``(B,)`` JVPs spent per sample.
    """

    eigvals: Tensor
    which: str
    converged: Tensor
    matvecs: Tensor

    @property
    def max_real(self) -> Tensor:
        """Largest real part found per sample ``(B,)`` (exact for ``which="LR"``)."""
        return torch.nan_to_num(self.eigvals.real, nan=-float("inf")).amax(-1)


def _check_k(k: int) -> None:
    if not (isinstance(k, int) and not isinstance(k, bool) and k >= 1):
        raise ConfigError(f"k={k!r}: the number of eigenvalues must be an integer ≥ 1")


def dense_jacobian(F: FieldFn, z_star: Tensor) -> Tensor:
    """Every sample's full Jacobian ``(B, n, n)``, ``n = z_star[0].numel()``.

    Column i of all B Jacobians comes from one batched JVP with ``e_i`` in every
    sample (samples are independent): n JVPs in all. For small models only.
    """
    B, shape = z_star.shape[0], z_star.shape[1:]
    n = z_star[0].numel()
    z = z_star.detach()
    cols = []
    with torch.no_grad():
        for i in range(n):
            e = torch.zeros(B, n, dtype=z.dtype, device=z.device)
            e[:, i] = 1.0
            cols.append(jvp(F, z, e.view(B, *shape)).reshape(B, n))
    return torch.stack(cols, dim=2)  # (B, n, n)


def dense_spectrum(F: FieldFn, z_star: Tensor) -> Tensor:
    """All eigenvalues of each sample's Jacobian, ``(B, n)`` complex, largest magnitude first.

    ``torch.linalg.eigvals`` of :func:`dense_jacobian`; the reference that the ARPACK
    results are checked against on small models.
    """
    mu = torch.linalg.eigvals(dense_jacobian(F, z_star).to(torch.float64))
    return sort_eigs(mu.to(torch.complex128), "LM")


def spectrum(F: FieldFn, z_star: Tensor, k: int = 6, which: str = "LM", *,
             method: str = "auto", tol: float | None = None, ncv: int | None = None,
             maxiter: int | None = None) -> Spectrum:
    """Leading eigenvalues ``μ = a + ib`` of ``J = ∂F/∂z (z*)``, every sample on its own.

    Args:
        F: batched field (a :class:`~eqprop.fields.Field` or any callable).
        z_star: the equilibrium ``(B, ...)``.
        k: how many eigenvalues per sample.
        which: ``"LM"`` largest magnitude (stiff modes) or ``"LR"`` largest real
            part (the least damped modes; ``a ≥ 0`` means the fixed point is unstable).
        method: ``"arpack"`` (Arnoldi on a JVP operator), ``"dense"`` (full
            Jacobian, small models), ``"auto"`` (dense up to 128 unknowns per sample).
        tol: ARPACK's relative accuracy (default: 1e-12 in float64, 1e-6 in float32).
        ncv: Arnoldi basis size (default ``max(2k + 1, 20)``).
        maxiter: ARPACK restart budget.

    Returns:
        A :class:`Spectrum` with ``eigvals`` ``(B, k)``.
    """
    _check_k(k)
    check_which(which)
    check_method(method)
    B, n = z_star.shape[0], z_star[0].numel()
    k = min(k, n)
    if method == "dense" or (method == "auto" and n <= DENSE_MAX):
        mu = sort_eigs(dense_spectrum(F, z_star), which)[:, :k]
        return Spectrum(mu, which, torch.ones(B, dtype=torch.bool),
                        torch.full((B,), n, dtype=torch.long))
    tol = default_tol(z_star.dtype) if tol is None else tol
    out = torch.full((B, k), complex("nan"), dtype=torch.complex128)
    conv = torch.zeros(B, dtype=torch.bool)
    matvecs = torch.zeros(B, dtype=torch.long)
    for b in range(B):  # ARPACK is one problem at a time
        J = SampleJacobian(F, z_star, b)
        w, _, ok = arnoldi(J.numpy_op(J.jvp), n, k, which, tol=tol, ncv=ncv, maxiter=maxiter)
        out[b, : len(w)] = torch.from_numpy(w[:k])
        conv[b], matvecs[b] = ok and len(w) >= k, J.matvecs
    return Spectrum(out, which, conv, matvecs)


def union(*spectra: Spectrum) -> Tensor:
    """Concatenate the eigenvalues of several spectra ``(B, Σk)`` (duplicates kept)."""
    return torch.cat([s.eigvals for s in spectra], dim=-1)

