"""Backpropagation through a truncated unroll of the relaxation: a baseline."""

from __future__ import annotations

from dataclasses import dataclass, field

import torch
from torch import Tensor

from ..errors import ConfigError
from ..fields import Field
from ..solvers.base import Solver
from ..solvers.euler import Euler
from .base import Estimator, EstimatorResult

__all__ = ["BPTT"]


@dataclass
class BPTT(Estimator):
    """Unroll ``steps`` solver steps from the (detached) free equilibrium with autograd
    on, and backpropagate the loss at the last state (truncated BPTT).

    Args:
        steps: truncation length K.
        solver: the solver to unroll (its steps must be differentiable).
    """

    steps: int = 20
    solver: Solver = field(default_factory=Euler)

    def __post_init__(self) -> None:
        if not (isinstance(self.steps, int) and self.steps >= 1):
            raise ConfigError(f"BPTT(steps={self.steps!r}): must be an integer ≥ 1")

    def estimate(self, field: Field, z_star: Tensor) -> EstimatorResult:
        with torch.enable_grad():
            state = self.solver.init(field, z_star.detach())
            for _ in range(self.steps):
                state = self.solver.step(field, state)
            loss = field.loss(state.z).mean()
        return EstimatorResult(loss, loss.detach(), nfe={"unroll": state.nfe})
