"""Batched restarted GMRES on a matrix-free operator (each sample its own system).

Used for the IFT adjoint ``Jᵀ s = ∇L`` and for Newton–Krylov steps. Arnoldi with
modified Gram–Schmidt and Givens rotations (Saad & Schultz 1986), vectorised over
the batch: inner products, rotations and stopping are per sample.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass

import torch
from torch import Tensor

__all__ = ["GMRESInfo", "gmres"]


@dataclass
class GMRESInfo:
    """Per-sample outcome: ``matvecs`` operator applications, final relative residual."""

    matvecs: Tensor  # (B,) long
    rel_residual: Tensor  # (B,)
    converged: Tensor  # (B,) bool


def _dot(a: Tensor, b: Tensor) -> Tensor:  # (B, N), (B, N) -> (B,)
    return (a * b).sum(1)


def gmres(A: Callable[[Tensor], Tensor], b: Tensor, x0: Tensor | None = None, *,
          tol: float = 1e-10, restart: int = 30, max_iter: int = 300) -> tuple[Tensor, GMRESInfo]:
    """Solve ``A x = b`` per sample with restarted GMRES(m).

    Args:
        A: batched linear operator ``(B, ...) -> (B, ...)`` (e.g. a VJP).
        b: right-hand side ``(B, ...)``.
        x0: initial guess (zeros if None).
        tol: stop a sample when ``‖b - A x‖ ≤ tol ‖b‖``.
        restart: Krylov dimension m between restarts.
        max_iter: total operator applications allowed per sample.

    Returns:
        ``(x, info)`` with ``x`` shaped like ``b``.
    """
    if not tol > 0 or restart < 1 or max_iter < 1:
        raise ValueError(f"gmres: need tol > 0, restart ≥ 1, max_iter ≥ 1 "
                         f"(got tol={tol}, restart={restart}, max_iter={max_iter})")
    shape, B = b.shape, b.shape[0]
    bf = b.reshape(B, -1)
    x = torch.zeros_like(bf) if x0 is None else x0.reshape(B, -1).clone()
    tiny = torch.finfo(bf.dtype).tiny
    b_norm = bf.norm(dim=1).clamp_min(tiny)
    matvecs = torch.zeros(B, dtype=torch.long, device=b.device)

    def op(v: Tensor) -> Tensor:
        return A(v.reshape(shape)).reshape(B, -1)

    r = bf - op(x) if x0 is not None else bf.clone()
    matvecs += int(x0 is not None)
    res = r.norm(dim=1)
    used = int(x0 is not None)
    while used < max_iter and bool((res > tol * b_norm).any()):
        m = min(restart, max_iter - used)
        active = res > tol * b_norm  # samples still iterating in this cycle
        V = [r / res.clamp_min(tiny)[:, None]]
        H = torch.zeros(B, m + 1, m, dtype=bf.dtype, device=b.device)
        cs = torch.zeros(B, m, dtype=bf.dtype, device=b.device)
        sn = torch.zeros_like(cs)
        g = torch.zeros(B, m + 1, dtype=bf.dtype, device=b.device)
        g[:, 0] = res
        k = 0
        for j in range(m):
            w = op(V[j])
            matvecs += active
            for i in range(j + 1):  # modified Gram–Schmidt
                H[:, i, j] = _dot(V[i], w)
                w = w - H[:, i, j, None] * V[i]
            H[:, j + 1, j] = w.norm(dim=1)
            ok = H[:, j + 1, j] > tiny * 1e3
            V.append(torch.where(ok[:, None], w / H[:, j + 1, j].clamp_min(tiny)[:, None], 0.0))
            for i in range(j):  # apply earlier rotations to the new column
                hi, hi1 = H[:, i, j].clone(), H[:, i + 1, j].clone()
                H[:, i, j] = cs[:, i] * hi + sn[:, i] * hi1
                H[:, i + 1, j] = -sn[:, i] * hi + cs[:, i] * hi1
            hjj, hj1 = H[:, j, j], H[:, j + 1, j]
            den = torch.sqrt(hjj**2 + hj1**2)
            safe = den > tiny
            cs[:, j] = torch.where(safe, hjj / den.clamp_min(tiny), torch.ones_like(den))
            sn[:, j] = torch.where(safe, hj1 / den.clamp_min(tiny), torch.zeros_like(den))
            H[:, j, j] = cs[:, j] * hjj + sn[:, j] * hj1
            H[:, j + 1, j] = 0.0
            g[:, j + 1] = -sn[:, j] * g[:, j]
            g[:, j] = cs[:, j] * g[:, j]
            k = j + 1
            active = active & (g[:, j + 1].abs() > tol * b_norm)
            if not bool(active.any()):
                break
        # back substitution on the k×k upper-triangular system, skipping zero pivots
        y = torch.zeros(B, k, dtype=bf.dtype, device=b.device)
        for i in range(k - 1, -1, -1):
            acc = g[:, i] - (H[:, i, i + 1 : k] * y[:, i + 1 : k]).sum(1)
            piv = H[:, i, i]
            y[:, i] = torch.where(piv.abs() > tiny, acc / torch.where(piv == 0, 1.0, piv), 0.0)
        x = x + sum(y[:, i, None] * V[i] for i in range(k))
        used += k
        r = bf - op(x)  # true residual (guards against drift in the rotated estimate)
        matvecs += 1
        used += 1
        res = r.norm(dim=1)
    rel = res / b_norm
    return x.reshape(shape), GMRESInfo(matvecs=matvecs, rel_residual=rel, converged=rel <= tol)
