"""Relaxation solvers: they step; controllers pick ε; ``relax`` runs the loop."""

from .adaptive import AdaptiveEuler
from .anderson import Anderson
from .base import Solution, Solver, SolverState, bcast, relax, sample_norm
from .broyden import Broyden
from .controllers import (
    CONTROLLERS,
    SER,
    Controller,
    EMAOvershoot,
    HeunPI,
    Naive,
    NoiseRelative,
    Overshoot,
    StepDoubling,
)
from .euler import Euler
from .implicit import IMEX, ImplicitEuler
from .newton_krylov import NewtonKrylov
from .ode import ODE, settling_time
from .registry import SOLVERS, SolverConfig, build_solver
from .status import Status, classify

__all__ = ["CONTROLLERS", "IMEX", "ODE", "SER", "SOLVERS", "AdaptiveEuler", "Anderson", "Broyden",
           "Controller", "EMAOvershoot", "Euler", "HeunPI", "ImplicitEuler", "Naive",
           "NewtonKrylov", "NoiseRelative", "Overshoot", "Solution", "Solver", "SolverConfig",
           "SolverState", "Status", "StepDoubling", "bcast", "build_solver", "classify", "relax",
           "sample_norm", "settling_time"]
