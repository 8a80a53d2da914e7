"""Solver settings as a dataclass and the name -> solver registry (the CLI edge)."""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass

from ..errors import ConfigError
from .base import Solver
from .euler import Euler

__all__ = ["SOLVERS", "SolverConfig", "build_solver"]


@dataclass
class SolverConfig:
    """How to relax one phase.

    Args:
        name: which solver (see ``SOLVERS``).
        eps: step size ε (initial ε for adaptive solvers).
        tol: relative residual ``‖F‖/‖z‖`` that counts as converged.
        max_steps: step budget.
    """

    name: str = "euler"
    eps: float = 0.5
    tol: float = 1e-4
    max_steps: int = 200

    def __post_init__(self) -> None:
        if self.name not in SOLVERS:
            raise ConfigError(f"solver name={self.name!r}: allowed values are {', '.join(SOLVERS)}")
        if not self.eps > 0:
            raise ConfigError(f"solver eps={self.eps!r}: must be > 0")
        if not self.tol > 0:
            raise ConfigError(f"solver tol={self.tol!r}: must be > 0")
        if not (isinstance(self.max_steps, int) and self.max_steps >= 1):
            raise ConfigError(f"solver max_steps={self.max_steps!r}: must be an integer ≥ 1")


SOLVERS: dict[str, Callable[[SolverConfig], Solver]] = {
    "euler": lambda c: Euler(eps=c.eps),
}


def build_solver(cfg: SolverConfig) -> Solver:
    """The solver a :class:`SolverConfig` names."""
    return SOLVERS[cfg.name](cfg)
