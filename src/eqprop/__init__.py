"""eqprop: Equilibrium Propagation for attention-based equilibrium networks.

A faithful, fast simulator of analog hardware that settles to an equilibrium.
See DESIGN.md for the math and vocabulary.
"""

from .diagnostics import (
    EpsCrit,
    Failure,
    FailureReport,
    FidelityResult,
    Spectrum,
    StabilityTracking,
    SweepResult,
    classify_failures,
    dense_spectrum,
    eps_crit,
    eps_sweep,
    gradient_fidelity,
    hutchinson_frobenius,
    log_norm,
    spectrum,
    track_stability,
)
from .fields import Field, NudgedField
from .gradients import (
    BPTT,
    EP,
    IFT,
    AsymEP,
    Estimator,
    EstimatorResult,
    estimate_grads,
    gradient_cosine,
    grads_of,
    surrogate,
)
from .gradients.holo_ep import HoloEP
from .models import EquilibriumLM, LMField, ModelConfig
from .regularizers import (
    AdaptiveWeight,
    Homeostasis,
    JacReg,
    Regularizer,
    RegularizerConfig,
    build_regularizer,
)
from .solvers import Euler, Solution, Solver, SolverState, Status, relax
from .solvers.krylov import gmres

__version__ = "0.1.0"

__all__ = [
    "BPTT",
    "EP",
    "IFT",
    "AsymEP",
    "EquilibriumLM",
    "Estimator",
    "EstimatorResult",
    "Euler",
    "Field",
    "LMField",
    "ModelConfig",
    "NudgedField",
    "Solution",
    "Solver",
    "SolverState",
    "Status",
    "estimate_grads",
    "gmres",
    "gradient_cosine",
    "grads_of",
    "relax",
    "surrogate",
    "EpsCrit",
    "Failure",
    "FailureReport",
    "FidelityResult",
    "Spectrum",
    "StabilityTracking",
    "SweepResult",
    "classify_failures",
    "dense_spectrum",
    "eps_crit",
    "eps_sweep",
    "gradient_fidelity",
    "hutchinson_frobenius",
    "log_norm",
    "spectrum",
    "track_stability",
    "HoloEP",
    "AdaptiveWeight",
    "Homeostasis",
    "JacReg",
    "Regularizer",
    "RegularizerConfig",
    "build_regularizer",
]
