"""eqprop: Equilibrium Propagation for attention-based equilibrium networks.

A faithful, fast simulator of analog hardware that settles to an equilibrium.
See docs/design.md for the math and vocabulary.

The public API is the names in ``__all__``, each imported from its subpackage on first
use (PEP 562), so that ``import eqprop`` and ``eqprop --help`` do not import torch.
"""

from __future__ import annotations

import importlib

__version__ = "0.1.0"

#: subpackage -> the names it contributes to the top-level API
_FROM: dict[str, tuple[str, ...]] = {
    "diagnostics": ("EpsCrit", "Failure", "FailureReport", "FidelityResult", "Spectrum",
                    "StabilityTracking", "SweepResult", "classify_failures", "dense_spectrum",
                    "eps_crit", "eps_sweep", "gradient_fidelity", "hutchinson_frobenius",
                    "log_norm", "spectrum", "track_stability"),
    "fields": ("Field", "Linearization"),
    "gradients": ("BPTT", "EP", "IFT", "AsymEP", "Estimator", "EstimatorResult", "HoloEP",
                  "NudgedField", "estimate_grads", "gradient_cosine", "grads_of", "surrogate"),
    "models": ("EquilibriumLM", "LMField", "ModelConfig", "StandardLM"),
    "regularizers": ("AdaptiveWeight", "Homeostasis", "JacReg", "Regularizer",
                     "RegularizerConfig", "build_regularizer"),
    "solvers": ("IMEX", "ODE", "SER", "AdaptiveEuler", "Anderson", "Broyden", "Controller",
                "EMAOvershoot", "Euler", "HeunPI", "ImplicitEuler", "Naive", "NewtonKrylov",
                "NoiseRelative", "Overshoot", "Solution", "Solver", "SolverConfig",
                "SolverState", "Status", "StepDoubling", "build_solver", "relax",
                "settling_time"),
    "solvers.krylov": ("gmres",),
    "split": ("SplitField",),
    "train": ("TrainConfig", "generate", "load_run", "train"),
}
_WHERE: dict[str, str] = {name: mod for mod, names in _FROM.items() for name in names}

__all__ = sorted(_WHERE)


def __getattr__(name: str) -> object:
    """Import ``name`` from its subpackage on first access (and cache it here); a name that
    is its subpackage's own (``train``) is the subpackage, callable."""
    mod = _WHERE.get(name)
    if mod is None:
        raise AttributeError(f"module 'eqprop' has no attribute {name!r}")
    package = importlib.import_module(f".{mod}", __name__)
    value = package if name == mod else getattr(package, name)
    globals()[name] = value
    return value


def __dir__() -> list[str]:
    return sorted([*globals(), *__all__])
