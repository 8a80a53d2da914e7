"""Analytic fields with known fixed points and eigenvalues, shared by the tests."""

from __future__ import annotations

import torch
from torch import Tensor

from eqprop.fields import Field
from eqprop.split import SplitField


def rotation_block(a: float, b: float) -> Tensor:
    """2×2 real block with eigenvalues ``a ± ib``."""
    return torch.tensor([[a, -b], [b, a]], dtype=torch.float64)


def eps_crit(a: float, b: float) -> float:
    """Euler's critical step for a mode ``μ = a + ib`` (a < 0): ``-2a/(a²+b²)``."""
    return -2 * a / (a * a + b * b)


class LinearField(SplitField):
    """``F(z) = A (z - z_fix)`` per sample, with the loss ``L(z) = ½‖C z - y‖²``.

    ``A`` ``(n, n)`` is shared by the batch; ``z`` is ``(B, n)``. The fixed point is
    ``z_fix`` and the Jacobian is ``A`` everywhere, so ε_crit, the equilibrium and
    the adjoint ``A⁻ᵀ ∇L`` are known in closed form. The split is ``A = -I + (A + I)``.
    """

    def __init__(self, A: Tensor, z_fix: Tensor, C: Tensor | None = None,
                 y: Tensor | None = None):
        self.A, self.z_fix = A, z_fix
        n = A.shape[0]
        self.C = torch.eye(n, dtype=A.dtype) if C is None else C
        self.y = torch.zeros(z_fix.shape[0], self.C.shape[0], dtype=A.dtype) if y is None else y

    def __call__(self, z: Tensor) -> Tensor:
        return (z - self.z_fix) @ self.A.T

    def conservative(self, z: Tensor) -> Tensor:
        return -(z - self.z_fix)

    def nonconservative(self, z: Tensor) -> Tensor:
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


class StiffNonlinearField(SplitField):
    """A nonlinear field with a rotating mode near its fixed point ``z_fix``:

    ``F(z) = A d - ‖d‖² d``, ``d = z - z_fix`` (cubic damping); its Jacobian at
    ``z_fix`` is ``A`` (modes a ± ib, -1). Above ε_crit Euler settles on a limit cycle
    (the cubic term bounds the orbit). ``shifted=False`` puts the fixed point at 0
    (where the relative residual ``‖F‖/‖z‖`` cannot fall below ``‖A‖``-ish: use a
    ``scale`` in relax); ``shifted=True`` uses the random ``z_fix`` of the linear part.
    """

    def __init__(self, a: float, b: float, B: int = 3, seed: int = 0, shifted: bool = False):
        self.inner = rotating_field(a, b, B=B, seed=seed)
        self.A = self.inner.A
        self.z_fix = self.inner.z_fix if shifted else torch.zeros_like(self.inner.z_fix)

    def __call__(self, z: Tensor) -> Tensor:
        d = z - self.z_fix
        return d @ self.A.T - d * (d * d).sum(-1, keepdim=True)

    def conservative(self, z: Tensor) -> Tensor:
        return -(z - self.z_fix)

    def nonconservative(self, z: Tensor) -> Tensor:
        return self(z) - self.conservative(z)


def smooth_field(B: int = 3, seed: int = 0) -> LinearField:
    """A slow, smooth linear field: modes ``-0.2 ± 0.05i`` and ``-0.3`` (ε_crit ≈ 6.7).

    At ε = 0.1 every mode contracts by less than 3 % a step."""
    return rotating_field(-0.2, 0.05, B=B, extra=(-0.3,), seed=seed)


class CountingField(Field):
    """Wraps a field and counts every evaluation: calls of F and JVPs (``forward_for_jvp``)."""

    def __init__(self, field: Field):
        self.field = field
        self.calls = 0
        self.jvps = 0

    def __call__(self, z: Tensor) -> Tensor:
        self.calls += 1
        return self.field(z)

    def forward_for_jvp(self, z: Tensor) -> Tensor:
        self.jvps += 1
        return self.field.forward_for_jvp(z)

    @property
    def total(self) -> int:
        return self.calls + self.jvps


def analytic_settling_time(F: LinearField, z0: Tensor, tol: float, t_max: float = 200.0,
                           n: int = 20001) -> Tensor:
    """First t with ``‖F(z(t))‖/‖z(t)‖ ≤ tol`` for ``z(t) = z_fix + e^{At}(z0 - z_fix)``,
    per sample ``(B,)``, from a fine grid refined by bisection on the matrix exponential."""

    def g(t: float) -> Tensor:
        d = (z0 - F.z_fix) @ torch.linalg.matrix_exp(F.A * t).T
        return (d @ F.A.T).norm(dim=1) / (F.z_fix + d).norm(dim=1)

    ts = torch.linspace(0.0, t_max, n, dtype=torch.float64)
    out = []
    for b in range(z0.shape[0]):
        lo, hi = 0.0, t_max
        for i in range(1, n, 50):  # coarse scan for the first grid point below tol
            if g(float(ts[i]))[b] <= tol:
                lo, hi = float(ts[max(i - 50, 0)]), float(ts[i])
                break
        for _ in range(60):  # bisection on the first crossing inside (lo, hi]
            mid = 0.5 * (lo + hi)
            lo, hi = (lo, mid) if g(mid)[b] <= tol else (mid, hi)
        out.append(hi)
    return torch.tensor(out, dtype=torch.float64)


__all__ = ["CountingField", "LinearField", "StiffNonlinearField", "TanhField",
           "analytic_settling_time", "eps_crit", "planted_matrix", "rotating_field",
           "rotation_block", "smooth_field"]


class TanhField(Field):
    """``F(z) = J tanh(z - c)``: no linear leak, ``‖F‖ ≤ ‖J‖ √n`` everywhere.

    The fixed point is ``c`` (Jacobian ``J`` there, planted by :func:`planted_matrix`);
    far from it ``F`` stays bounded, so ``‖F‖/‖z‖ → 0`` as ``‖z‖ → ∞`` although no
    fixed point is near: the field on which a relative residual test alone reports
    a run-away as converged.
    """

    def __init__(self, J: Tensor, c: Tensor):
        self.J, self.c = J, c  # (n, n), (B, n): a tensor named c, no split

    def __call__(self, z: Tensor) -> Tensor:
        return torch.tanh(z - self.c) @ self.J.T


def planted_matrix(modes: tuple[complex | float, ...], seed: int = 0) -> Tensor:
    """A real matrix with the eigenvalues ``modes`` (a complex entry adds its conjugate),
    mixed by a random orthogonal basis, float64."""
    blocks = []
    for mu in modes:
        if isinstance(mu, complex) and mu.imag != 0:
            blocks.append(rotation_block(mu.real, abs(mu.imag)))
        else:
            blocks.append(torch.tensor([[float(getattr(mu, "real", mu))]], dtype=torch.float64))
    D = torch.block_diag(*blocks)
    g = torch.Generator().manual_seed(seed)
    Q, _ = torch.linalg.qr(torch.randn(D.shape[0], D.shape[0], generator=g, dtype=torch.float64))
    return Q @ D @ Q.T
