"""Explicit Euler with a fixed step: the baseline relaxation."""

from __future__ import annotations

from dataclasses import dataclass, replace
from typing import ClassVar

import torch
from torch import Tensor

from ..fields import FieldFn
from ..validate import positive
from .base import Solver, SolverState, bcast

__all__ = ["Euler"]


@dataclass
class Euler(Solver):
    """``z ← z + ε F(z)``. Near ``z*`` this is ``M = I + εJ``: it converges only for
    ``ε < ε_crit = min_μ -2a/(a²+b²)`` over the eigenvalues ``μ = a + ib`` of J.

    Args:
        eps: the fixed step ε > 0.
    """

    capturable: ClassVar[bool] = True
    follows_flow: ClassVar[bool] = True

    eps: float = 0.5

    def __post_init__(self) -> None:
        positive(self, "eps", self.eps)

    def init(self, F: FieldFn, z0: Tensor) -> SolverState:
        state = super().init(F, z0)
        return replace(state, eps=torch.full((z0.shape[0],), float(self.eps),
                                             dtype=z0.real.dtype, device=z0.device))

    def step(self, F: FieldFn, state: SolverState) -> SolverState:
        z = state.z + bcast(state.eps, state.z) * state.f
        return replace(state, z=z, f=F(z), nfe=self.charge(state, F))
