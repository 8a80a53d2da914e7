"""Euler's critical step ε_crit per sample, two independent ways (design §2, §5).

Near ``z*`` explicit Euler is the linear map ``M = I + εJ``; it converges iff
``|1 + εμ| < 1`` for every eigenvalue ``μ = a + ib`` of J, i.e.

    ε < ε_crit = min over μ of -2a / (a² + b²)          (a ≥ 0: no ε works, ε_crit = 0)

Equivalently ``ε_crit = -2 max Re(1/μ)``: the critical mode is neither the largest
in magnitude nor the least damped in general. The eigenvalue route therefore takes
the leading modes by magnitude and by real part, then completes them with the
dominant modes of ``I + ε̂J`` at the current estimate ε̂: any mode with a smaller
ε_crit has ``|1 + ε̂μ| > 1`` and so dominates ``I + ε̂J``; the loop stops when
``ρ(I + ε̂J) ≤ 1``, which makes the result exact. The bisection route never looks
at individual modes: it bisects on ``ρ(I + εJ) < 1`` (ρ by ARPACK on the JVP
operator of ``I + εJ``).
"""

from __future__ import annotations

import math
from dataclasses import dataclass

import numpy as np
import torch
from torch import Tensor

from ..errors import ConfigError
from ..fields import FieldFn
from .base import DENSE_MAX, SampleJacobian, arnoldi, check_method, default_tol, per_sample

__all__ = ["EpsCrit", "eps_crit", "eps_crit_from_eigs", "spectral_radius"]

#: the bisection gives up (ε_crit = 0) below this fraction of its upper bound 2/ρ(J)
FLOOR = 1e-6
#: ARPACK basis size and tolerance of the ρ(I + εJ) < 1 test (warm-started, only a sign is needed)
RHO_NCV, RHO_TOL = 10, 1e-9


@dataclass
class EpsCrit:
    """ε_crit per sample, ``(B,)`` tensors.

    Attributes:
        eig: from the eigenvalues, ``min_μ -2a/|μ|²`` (0 where a mode has a ≥ 0).
        mode: the critical eigenvalue ``μ`` (complex128): the argmin above, or the
            mode of largest real part when some a ≥ 0.
        bisect: largest ε with ``ρ(I + εJ) < 1`` by bisection (None if not asked).
        max_real: largest Re μ among the eigenvalues examined.
        eigvals: ``(B, m)`` every eigenvalue examined, NaN-padded.
    """

    eig: Tensor
    mode: Tensor
    bisect: Tensor | None
    max_real: Tensor
    eigvals: Tensor

    @property
    def damping(self) -> Tensor:
        """Damping ratio ``-a/|μ|`` of the critical mode ``(B,)`` (1: real, 0: undamped)."""
        return -self.mode.real / self.mode.abs()


def eps_crit_from_eigs(mu: Tensor) -> tuple[Tensor, Tensor]:
    """ε_crit and the critical mode from eigenvalues.

    Args:
        mu: ``(B, m)`` complex eigenvalues of J; NaN entries are ignored.

    Returns:
        ``(eps_crit (B,), mode (B,) complex)``. ``eps_crit = 0`` where some
        ``a ≥ 0`` (no step size converges; ``mode`` is then the one of largest
        real part) and NaN where no eigenvalue is given.
    """
    mu = mu.to(torch.complex128)
    a, b = mu.real, mu.imag
    valid = ~torch.isnan(a)
    e = torch.where(a < 0, -2 * a / (a * a + b * b), torch.zeros_like(a))
    e = torch.where(valid, e, torch.full_like(a, math.inf))
    unstable = (valid & (a >= 0)).any(-1)
    idx = torch.where(unstable, torch.where(valid, a, -math.inf).argmax(-1), e.argmin(-1))
    eps = torch.gather(e, -1, idx[:, None])[:, 0]
    eps = torch.where(valid.any(-1), eps, torch.full_like(eps, math.nan))
    return eps, torch.gather(mu, -1, idx[:, None])[:, 0]


def _rho_arpack(J: SampleJacobian, eps: float, tol: float, v0: np.ndarray | None,
                ncv: int | None = None):
    jv = J.numpy_op(J.jvp)
    w, vec, _ = arnoldi(lambda x: x + eps * jv(x), J.n, 2, "LM", tol=tol, v0=v0, ncv=ncv)
    return w, (None if vec is None else np.real(vec))


def _sample_eigs(J: SampleJacobian, k: int, tol: float, max_refine: int) -> tuple[Tensor, float]:
    """Eigenvalue route for one sample: LM ∪ LR of J, completed by LM of I + ε̂J."""
    jv = J.numpy_op(J.jvp)
    found = [arnoldi(jv, J.n, k, w, tol=tol)[0] for w in ("LM", "LR")]
    rho_j = float(np.abs(found[0][0])) if len(found[0]) else math.nan
    for _ in range(max_refine):
        e = float(eps_crit_from_eigs(torch.from_numpy(np.concatenate(found))[None])[0][0])
        if not (math.isfinite(e) and e > 0):
            break
        w, _, _ = arnoldi(lambda x, e=e: x + e * jv(x), J.n, k, "LM", tol=tol)
        found.append((w - 1.0) / e)  # back to eigenvalues of J
        if len(w) == 0 or np.abs(w[0]) <= 1 + 10 * tol:  # no mode outside: ε̂ is exact
            break
    return torch.from_numpy(np.concatenate(found)), rho_j


def _bisect(stable, hi: float, rtol: float) -> float:
    """Largest ε with ``stable(ε)`` on ``(0, hi]``, assuming ``{ε: stable}`` is ``(0, ε_crit)``."""
    lo, floor, down = hi, hi * FLOOR, 2.0
    while True:  # search down for a stable ε: factors 2, 4, 16, 256, ... (ε_crit is often
        lo = lo / down  # close to 2/ρ(J), and an unstable sample should reach the floor fast)
        if lo < floor:
            return 0.0
        if stable(lo):
            break
        hi, down = lo, down * down
    while hi / lo > 1 + rtol:
        mid = math.sqrt(lo * hi)
        lo, hi = (mid, hi) if stable(mid) else (lo, mid)
    return math.sqrt(lo * hi)


def spectral_radius(F: FieldFn, z_star: Tensor, eps: float, *, method: str = "auto",
                    tol: float | None = None) -> Tensor:
    """``ρ(I + εJ)`` per sample ``(B,)``: Euler's contraction factor near z* (< 1 converges).

    Args:
        F: batched field.
        z_star: the equilibrium ``(B, ...)``.
        eps: the Euler step ε.
        method: ``"arpack"``, ``"dense"`` or ``"auto"`` (see :func:`~eqprop.diagnostics.spectrum`).
        tol: ARPACK tolerance (default by dtype).
    """
    def dense(Jd: Tensor) -> float:
        return float(torch.linalg.eigvals(torch.eye(len(Jd), dtype=Jd.dtype) + eps * Jd)
                     .abs().max())

    def sparse(J: SampleJacobian, tol_: float) -> float:
        w, _ = _rho_arpack(J, eps, tol_, None)
        return float(np.abs(w[0])) if len(w) else math.nan

    return per_sample(F, z_star, method, tol, dense, sparse)


def eps_crit(F: FieldFn, z_star: Tensor, *, k: int = 6, bisect: bool = True, rtol: float = 1e-3,
             method: str = "auto", tol: float | None = None, max_refine: int = 8) -> EpsCrit:
    """ε_crit of explicit Euler at ``z_star``, per sample: from eigenvalues and by bisection.

    Args:
        F: batched field (a :class:`~eqprop.fields.Field` or any callable).
        z_star: the equilibrium ``(B, ...)``.
        k: eigenvalues per ARPACK call (LM and LR of J, LM of ``I + ε̂J``).
        bisect: also compute the bisection estimate (about 15 ARPACK calls a sample).
        rtol: relative width of the final bisection bracket.
        method: ``"arpack"``, ``"dense"`` (full Jacobian) or ``"auto"`` (dense up to
            128 unknowns per sample).
        tol: ARPACK tolerance (default 1e-12 in float64, 1e-6 in float32).
        max_refine: at most this many ``I + ε̂J`` completions of the eigenvalue route.

    Returns:
        An :class:`EpsCrit`.
    """
    check_method(method)
    if not (isinstance(k, int) and k >= 1):
        raise ConfigError(f"eps_crit(k={k!r}): must be an integer ≥ 1")
    if not 0 < rtol < 1:
        raise ConfigError(f"eps_crit(rtol={rtol!r}): must be in (0, 1)")
    tol = default_tol(z_star.dtype) if tol is None else tol
    B, n = z_star.shape[0], z_star[0].numel()
    dense = method == "dense" or (method == "auto" and n <= DENSE_MAX)
    found, bis = [], torch.full((B,), math.nan, dtype=torch.float64)
    for b in range(B):  # ARPACK is one problem at a time
        J = SampleJacobian(F, z_star, b)
        if dense:
            Jd = J.dense().to("cpu", torch.float64)
            mu = torch.linalg.eigvals(Jd)
            rho_j = float(mu.abs().max())
            eye = torch.eye(n, dtype=torch.float64)

            def stable(e: float, Jd=Jd, eye=eye) -> bool:
                return bool(torch.linalg.eigvals(eye + e * Jd).abs().max() < 1)
        else:
            mu, rho_j = _sample_eigs(J, min(k, n), tol, max_refine)
            v0: list[np.ndarray | None] = [None]
            rng = np.random.default_rng(b)

            def stable(e: float, J=J, v0=v0, rng=rng) -> bool:
                # warm start from the last dominant vector, mixed with a random one: an
                # eigenvector alone spans an invariant subspace, blind to every other mode
                start, ncv = None, None
                if v0[0] is not None:
                    r = rng.standard_normal(J.n)
                    start = v0[0] / np.linalg.norm(v0[0]) + r / np.linalg.norm(r)
                    ncv = RHO_NCV
                w, v0[0] = _rho_arpack(J, e, max(tol, RHO_TOL), start, ncv)
                return bool(len(w) and np.abs(w[0]) < 1)
        found.append(mu.to(torch.complex128))
        if bisect and math.isfinite(rho_j) and rho_j > 0:
            bis[b] = _bisect(stable, 2.0 / rho_j * (1 + rtol), rtol)
    m = max(len(f) for f in found)
    eigvals = torch.full((B, m), complex("nan"), dtype=torch.complex128)
    for b, f in enumerate(found):
        eigvals[b, : len(f)] = f
    e, mode = eps_crit_from_eigs(eigvals)
    max_real = torch.nan_to_num(eigvals.real, nan=-math.inf).amax(-1)
    return EpsCrit(e, mode, bis if bisect else None, max_real, eigvals)
