"""Stability diagnostics: spectrum, ε_crit, stiffness, ε-sweeps, fidelity, failure kinds,
and the diagnose workflow that reports them all (:func:`diagnose`)."""

from .base import SampleJacobian, arnoldi, sort_eigs
from .classify import ClassifySettings, Evidence, Failure, FailureReport, classify_failures
from .eps_crit import EpsCrit, eps_crit, eps_crit_from_eigs, spectral_radius
from .fidelity import FidelityResult, FidelityRow, default_estimators, gradient_fidelity
from .fixed_point import BestPoint, NewtonSettings, best_fixed_point
from .norms import damping_ratio, hutchinson_frobenius, log_norm
from .plots import plot_fidelity, plot_residual_traces, plot_spectrum, plot_stability_history
from .report import DiagnoseReport, diagnose
from .spectrum import Spectrum, dense_jacobian, dense_spectrum, spectrum
from .sweep import SweepResult, eps_sweep, sweep_field
from .tracking import StabilityTracking, track_fidelity, track_stability

__all__ = [
    "BestPoint",
    "ClassifySettings",
    "DiagnoseReport",
    "EpsCrit",
    "Evidence",
    "Failure",
    "FailureReport",
    "FidelityResult",
    "FidelityRow",
    "NewtonSettings",
    "SampleJacobian",
    "Spectrum",
    "StabilityTracking",
    "SweepResult",
    "arnoldi",
    "best_fixed_point",
    "classify_failures",
    "damping_ratio",
    "default_estimators",
    "diagnose",
    "dense_jacobian",
    "dense_spectrum",
    "eps_crit",
    "eps_crit_from_eigs",
    "eps_sweep",
    "gradient_fidelity",
    "hutchinson_frobenius",
    "log_norm",
    "plot_fidelity",
    "plot_residual_traces",
    "plot_spectrum",
    "plot_stability_history",
    "sort_eigs",
    "spectral_radius",
    "spectrum",
    "sweep_field",
    "track_fidelity",
    "track_stability",
]
