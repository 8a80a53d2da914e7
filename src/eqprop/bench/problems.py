"""The problems and instruments of the solver bench: a field that counts its evaluations
(with a budget), a solver wrapper that honours that budget, and the stiff linear field
with rotating modes."""

from __future__ import annotations

import math

import torch
from torch import Tensor

from ..fields import Field
from ..solvers.base import sample_norm
from ..split import SplitField

__all__ = ["CountingField", "counting", "stiff_field"]


class CountingField(Field):
    """Wraps a field: counts batched evaluations (F and JVPs) and records, per call,
    each sample's relative residual; after ``budget`` calls (None: never) it returns NaN,
    so that a peer solver whose loop cannot be given a budget stops."""

    def __init__(self, field: Field, budget: int | None):
        self.field, self.budget = field, budget
        self.calls = 0
        self.first_hit: Tensor | None = None  # (B,) call index at which g ≤ tol first
        self.tol = 0.0

    def _count(self, z: Tensor, out: Tensor) -> Tensor:
        self.calls += 1
        if self.budget is not None and self.calls > self.budget:
            return torch.full_like(out, float("nan"))
        return out

    def __call__(self, z: Tensor) -> Tensor:
        out = self._count(z, self.field(z))
        if self.first_hit is not None:
            g = sample_norm(out) / sample_norm(z).clamp_min(1e-30)
            hit = (g <= self.tol) & (self.first_hit < 0)
            self.first_hit = torch.where(hit, self.calls, self.first_hit)
        return out

    def forward_for_jvp(self, z: Tensor) -> Tensor:
        return self._count(z, self.field.forward_for_jvp(z))


class _CountingSplitField(CountingField, SplitField):
    """A :class:`CountingField` around a :class:`~eqprop.split.SplitField` keeps its split."""

    def conservative(self, z: Tensor) -> Tensor:
        return self.field.conservative(z)

    def nonconservative(self, z: Tensor) -> Tensor:
        return self.field.nonconservative(z)


def counting(field: Field, budget: int | None) -> CountingField:
    """A :class:`CountingField` around ``field``, a split one when ``field`` declares a split."""
    return (_CountingSplitField if isinstance(field, SplitField) else CountingField)(field, budget)


def stiff_field(dim: int, b_max: float, B: int, seed: int, dtype: torch.dtype) -> Field:
    """``F(z) = A (z - z*)``: ``dim/2`` rotating modes ``-a_k ± i b_k`` (``a_k`` in [0.1, 1],
    ``b_k`` log-spaced up to ``b_max``), mixed by a random orthogonal basis; ``z*`` random."""
    g = torch.Generator().manual_seed(seed)
    k = dim // 2
    a = -torch.linspace(1.0, 0.1, k, dtype=torch.float64)
    b = torch.logspace(0, math.log10(b_max), k, dtype=torch.float64)
    D = torch.zeros(dim, dim, dtype=torch.float64)
    for i in range(k):
        D[2 * i:2 * i + 2, 2 * i:2 * i + 2] = torch.tensor([[a[i], -b[i]], [b[i], a[i]]])
    Q, _ = torch.linalg.qr(torch.randn(dim, dim, generator=g, dtype=torch.float64))
    A = (Q @ D @ Q.T).to(dtype)
    z_fix = torch.randn(B, dim, generator=g, dtype=torch.float64).to(dtype) + 2.0
    return _Linear(A, z_fix)


class _Linear(SplitField):
    def __init__(self, A: Tensor, z_fix: Tensor):
        self.A, self.z_fix = A, z_fix

    def __call__(self, z: Tensor) -> Tensor:
        return (z - self.z_fix) @ self.A.T

    def conservative(self, z: Tensor) -> Tensor:  # the leak: IMEX treats it implicitly
        return -(z - self.z_fix)

    def nonconservative(self, z: Tensor) -> Tensor:
        return self(z) - self.conservative(z)
