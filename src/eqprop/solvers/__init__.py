"""Relaxation solvers: they step; controllers pick ε; ``relax`` runs the loop."""

from .adaptive import AdaptiveConfig, AdaptiveEuler
from .anderson import Anderson
from .base import Solution, Solver, SolverSettings, SolverState, bcast, relax, sample_norm
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
from .implicit import IMEX, ImplicitConfig, ImplicitEuler, PTCConfig
from .loop import CaptureFallback, capture_fallbacks
from .newton_krylov import NewtonKrylov
from .ode import ODE, ODEConfig, settling_time
from .registry import SOLVERS, SolverConfig, build_solver
from .status import Status, classify

__all__ = ["CONTROLLERS", "IMEX", "ODE", "SER", "SOLVERS", "AdaptiveConfig", "AdaptiveEuler",
           "Anderson", "Broyden", "CaptureFallback", "Controller", "EMAOvershoot", "Euler",
           "HeunPI", "ImplicitConfig", "ImplicitEuler", "Naive", "NewtonKrylov", "NoiseRelative",
           "ODEConfig", "Overshoot", "PTCConfig", "Solution", "Solver", "SolverConfig",
           "SolverSettings", "SolverState", "Status", "StepDoubling", "bcast", "build_solver",
           "capture_fallbacks", "classify", "relax", "sample_norm", "settling_time"]
