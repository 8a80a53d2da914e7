"""Analytic fields with known fixed points and eigenvalues, shared by the tests."""

from __future__ import annotations

import torch
from torch import Tensor

from eqprop.fields import Field


def rotation_block(a: float, b: float) -> Tensor:
    """2×2 real block with eigenvalues ``a ± ib``."""
    return torch.tensor([[a, -b], [b, a]], dtype=torch.float64)


def eps_crit(a: float, b: float) -> float:
    """Euler's critical step for a mode ``μ = a + ib`` (a < 0): ``-2a/(a²+b²)``."""
    return -2 * a / (a * a + b * b)


class LinearField(Field):
    """``F(z) = A (z - z_fix)`` per sample, with the loss ``L(z) = ½‖C z - y‖²``.

    ``A`` ``(n, n)`` is shared by the batch; ``z`` is ``(B, n)``. The fixed point is
    ``z_fix`` and the Jacobian is ``A`` everywhere, so ε_crit, the equilibrium and
    the adjoint ``A⁻ᵀ ∇L`` are known in closed form. ``c``/``n`` split ``A = -I + (A + I)``.
    """

    def __init__(self, A: Tensor, z_fix: Tensor, C: Tensor | None = None,
                 y: Tensor | None = None):
        self.A, self.z_fix = A, z_fix
        n = A.shape[0]
        self.C = torch.eye(n, dtype=A.dtype) if C is None else C
        self.y = torch.zeros(z_fix.shape[0], self.C.shape[0], dtype=A.dtype) if y is None else y

    def __call__(self, z: Tensor) -> Tensor:
        return (z - self.z_fix) @ self.A.T

    def c(self, z: Tensor) -> Tensor:
        return -(z - self.z_fix)

    def n(self, z: Tensor) -> Tensor:
        return (z - self.z_fix) @ (self.A + torch.eye(self.A.shape[0], dtype=self.A.dtype)).T

    def loss(self, z: Tensor) -> Tensor:
        return 0.5 * ((z @ self.C.T - self.y) ** 2).sum(-1)


def rotating_field(a: float, b: float, B: int = 3, extra: tuple[float, ...] = (-1.0,),
                   seed: int = 0) -> LinearField:
    """A linear field with a rotating mode ``a ± ib`` plus real modes ``extra``,
    mixed by a random orthogonal change of basis (so the field is not block-diagonal)."""
    g = torch.Generator().manual_seed(seed)
    n = 2 + len(extra)
    D = torch.zeros(n, n, dtype=torch.float64)
    D[:2, :2] = rotation_block(a, b)
    for i, lam in enumerate(extra):
        D[2 + i, 2 + i] = lam
    Q, _ = torch.linalg.qr(torch.randn(n, n, generator=g, dtype=torch.float64))
    z_fix = torch.randn(B, n, generator=g, dtype=torch.float64)
    y = torch.randn(B, n, generator=g, dtype=torch.float64)
    return LinearField(Q @ D @ Q.T, z_fix, y=y)


class StiffNonlinearField(Field):
    """A nonlinear field with a rotating mode near its fixed point 0:

    ``F(z) = A z - ‖z‖² z`` (cubic damping); its Jacobian at 0 is ``A`` (modes a ± ib, -1).
    Above ε_crit Euler settles on a limit cycle (the cubic term bounds the orbit).
    """

    def __init__(self, a: float, b: float, B: int = 3, seed: int = 0):
        self.inner = rotating_field(a, b, B=B, seed=seed)
        self.A = self.inner.A

    def __call__(self, z: Tensor) -> Tensor:
        return z @ self.A.T - z * (z * z).sum(-1, keepdim=True)


__all__ = ["LinearField", "StiffNonlinearField", "eps_crit", "rotating_field", "rotation_block"]
