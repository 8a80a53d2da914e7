"""Batched restarted GMRES on a matrix-free operator (each sample its own system).

Used for the IFT adjoint ``Jᵀ s = ∇L`` and for Newton–Krylov steps. GMRES (Saad & Schultz
1986) vectorised over the batch: inner products, least squares and stopping are per
sample.
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


def _least_squares(H: Tensor, beta: Tensor, k: int) -> tuple[Tensor, Tensor]:
    """``y = argmin ‖β e₁ - H y‖`` per sample on the first ``k`` columns of the Hessenberg
    ``H`` ``(B, m+1, m)``, by a batched QR; a zero pivot (a breakdown column) gets
    ``y_i = 0``. Returns ``(y (B, k), residual (B,))``."""
    Hk = H[:, : k + 1, :k]  # (B, k+1, k)
    Q, R = torch.linalg.qr(Hk)  # (B, k+1, k), (B, k, k)
    c = beta[:, None] * Q[:, 0, :]  # (B, k) = Qᵀ β e₁
    d = torch.diagonal(R, dim1=1, dim2=2)  # (B, k)
    tiny = torch.finfo(H.dtype).tiny
    bad = d.abs() <= tiny * 1e3 * d.abs().amax(1, keepdim=True).clamp_min(1.0)  # (B, k)
    eye = torch.eye(k, dtype=H.dtype, device=H.device)
    R = torch.where(bad[:, :, None], eye, R)  # a zero pivot's row becomes y_i = 0
    c = torch.where(bad, 0.0, c)
    y = torch.linalg.solve_triangular(R, c[:, :, None], upper=True)[:, :, 0]  # (B, k)
    e1 = torch.zeros(H.shape[0], k + 1, dtype=H.dtype, device=H.device)
    e1[:, 0] = beta
    res = (e1 - torch.einsum("bij,bj->bi", Hk, y)).norm(dim=1)  # (B,)
    return y, res


def gmres(A: Callable[[Tensor], Tensor], b: Tensor, x0: Tensor | None = None, *,
          tol: float = 1e-10, restart: int = 30, max_iter: int = 300,
          check_every: int = 1) -> tuple[Tensor, GMRESInfo]:
    """Solve ``A x = b`` per sample with restarted GMRES(m).

    Arnoldi by classical Gram–Schmidt applied twice (batched: a few kernels per step
    whatever the Krylov dimension), the small least-squares problem by a batched QR of
    the Hessenberg matrix at each check. A sample stops once its residual estimate
    ``‖b - A x‖ ≤ tol ‖b‖`` at a check; the host looks every ``check_every`` Arnoldi
    steps (fewer synchronisations; a sample may take up to ``check_every - 1`` steps
    more than it needs, never fewer).

    Args:
        A: batched linear operator ``(B, ...) -> (B, ...)`` (e.g. a VJP).
        b: right-hand side ``(B, ...)``.
        x0: initial guess (zeros if None).
        tol: stop a sample when ``‖b - A x‖ ≤ tol ‖b‖``.
        restart: Krylov dimension m between restarts.
        max_iter: total operator applications allowed per sample.
        check_every: Arnoldi steps between two convergence checks (≥ 1).

    Returns:
        ``(x, info)`` with ``x`` shaped like ``b``.
    """
    if not tol > 0 or restart < 1 or max_iter < 1 or check_every < 1:
        raise ValueError(f"gmres: need tol > 0, restart ≥ 1, max_iter ≥ 1, check_every ≥ 1 "
                         f"(got tol={tol}, restart={restart}, max_iter={max_iter}, "
                         f"check_every={check_every})")
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
        V = torch.zeros(B, m + 1, bf.shape[1], dtype=bf.dtype, device=b.device)
        V[:, 0] = r / res.clamp_min(tiny)[:, None]
        H = torch.zeros(B, m + 1, m, dtype=bf.dtype, device=b.device)
        k = 0
        for j in range(m):
            w = op(V[:, j])
            matvecs += active
            for _ in range(2):  # classical Gram–Schmidt, twice ("twice is enough")
                h = torch.einsum("bkn,bn->bk", V[:, : j + 1], w)  # (B, j+1)
                w = w - torch.einsum("bk,bkn->bn", h, V[:, : j + 1])
                H[:, : j + 1, j] += h
            hn = w.norm(dim=1)
            H[:, j + 1, j] = hn
            ok = hn > tiny * 1e3
            V[:, j + 1] = torch.where(ok[:, None], w / hn.clamp_min(tiny)[:, None], 0.0)
            k = j + 1
            if k % check_every == 0 or k == m:
                _, est = _least_squares(H, res, k)
                active = active & (est > tol * b_norm)
                if not bool(active.any()):
                    break
        y, _ = _least_squares(H, res, k)
        x = x + torch.einsum("bk,bkn->bn", y, V[:, :k])
        used += k
        r = bf - op(x)  # true residual (guards against drift in the rotated estimate)
        matvecs += 1
        used += 1
        res = r.norm(dim=1)
    rel = res / b_norm
    return x.reshape(shape), GMRESInfo(matvecs=matvecs, rel_residual=rel, converged=rel <= tol)
