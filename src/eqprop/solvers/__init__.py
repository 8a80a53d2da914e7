"""Relaxation solvers: they step; controllers pick ε; ``relax`` runs the loop."""

from .base import Solution, Solver, SolverState, bcast, relax, sample_norm
from .euler import Euler
from .status import Status, classify

__all__ = ["Euler", "Solution", "Solver", "SolverState", "Status", "bcast", "classify", "relax",
           "sample_norm"]
