"""Gradient fidelity against the IFT reference, as a function of the free-phase tolerance.

The reference is the exact implicit-function-theorem gradient at a tightly solved
equilibrium (relaxation polished by Newton–Krylov). Each estimator is run at the
free equilibrium reached with a looser tolerance ``tol``; its cosine to the
reference (global and per parameter) says how much of the gradient survives the
estimator's own bias plus an inexact free phase (design §3, §5).
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from typing import TYPE_CHECKING

import torch
from torch import Tensor

from ..errors import ConfigError
from ..gradients import EP, IFT, AsymEP, Estimator, estimate_grads, gradient_cosine
from ..models import EquilibriumLM
from ..solvers.base import Solver
from ..solvers.euler import Euler
from ..solvers.registry import build_solver
from ..solvers.relaxation import Relaxation
from .fixed_point import NewtonSettings, best_fixed_point
from .subject import subject

if TYPE_CHECKING:
    from ..train.loaded import LoadedRun

__all__ = ["FidelityResult", "FidelityRow", "default_estimators", "gradient_fidelity"]


@dataclass
class FidelityRow:
    """One estimator at one free-phase tolerance.

    Attributes:
        estimator: its name.
        tol: free-phase tolerance.
        cosine: global cosine to the reference gradient.
        per_param: cosine per parameter name.
        residual: largest free-phase relative residual actually reached.
        converged: free-phase samples that reached ``tol``.
        nfe: mean F-equivalent evaluations per sample, free phase plus estimator.
    """

    estimator: str
    tol: float
    cosine: float
    per_param: dict[str, float] = field(default_factory=dict)
    residual: float = float("nan")
    converged: int = 0
    nfe: float = float("nan")


@dataclass
class FidelityResult:
    """All rows, and how well the reference equilibrium was solved."""

    rows: list[FidelityRow]
    reference_residual: float

    def curve(self, estimator: str) -> tuple[list[float], list[float]]:
        """``(tols, cosines)`` of one estimator, tolerance descending."""
        rows = sorted((r for r in self.rows if r.estimator == estimator), key=lambda r: -r.tol)
        return [r.tol for r in rows], [r.cosine for r in rows]

    @property
    def estimators(self) -> list[str]:
        return list(dict.fromkeys(r.estimator for r in self.rows))


def default_estimators() -> dict[str, Estimator]:
    """Plain EP, asymmetric EP and IFT (at the loose equilibrium) with their defaults."""
    return {"ep": EP(), "asymep": AsymEP(), "ift": IFT(tol=1e-6)}


def gradient_fidelity(model_or_run: EquilibriumLM | LoadedRun, batch: tuple[Tensor, Tensor],
                      estimators: Mapping[str, Estimator] | None = None, *,
                      reference: Estimator | None = None,
                      tols: Sequence[float] = (1e-2, 1e-3, 1e-4, 1e-5),
                      solver: Solver | None = None, max_steps: int = 1000) -> FidelityResult:
    """Cosine of each estimator's gradient to the reference, per free-phase tolerance.

    Args:
        model_or_run: an :class:`~eqprop.models.EquilibriumLM`, or a loaded run
            (:func:`eqprop.train.load_run`), whose free-phase solver is then the default.
        batch: ``(tokens, targets)``, ``(B, T)`` each.
        estimators: name -> estimator (default: :func:`default_estimators`).
        reference: the reference estimator (default: IFT at 1e-10 in float64, 1e-6 in float32).
        tols: free-phase tolerances to test.
        solver: free-phase solver (default: the run's, else ``Euler(0.5)``).
        max_steps: free-phase step budget.

    Returns:
        A :class:`FidelityResult`.
    """
    model, run_solver = subject(model_or_run, "gradient_fidelity")
    tols = [float(t) for t in tols]
    if not tols or not all(t > 0 for t in tols):
        raise ConfigError(f"tols={tols!r}: give one or more tolerances > 0")
    if not (isinstance(max_steps, int) and max_steps >= 1):
        raise ConfigError(f"max_steps={max_steps!r}: must be an integer ≥ 1")
    estimators = default_estimators() if estimators is None else dict(estimators)
    if solver is None:
        solver = Euler(0.5) if run_solver is None else build_solver(run_solver)
    tokens, targets = batch
    device = next(model.parameters()).device
    fld = model.field(tokens.to(device), targets.to(device))
    dtype = fld.initial_state().dtype
    tight = 1e-10 if dtype == torch.float64 else 1e-6
    reference = IFT(tol=tight) if reference is None else reference
    # the reference equilibrium: relax, then polish with Newton–Krylov
    z0 = fld.initial_state()
    sol = Relaxation(solver, tol=tight, max_steps=max_steps).run(fld, z0)
    start = torch.where(torch.isfinite(sol.z), sol.z, z0)
    ref_point = best_fixed_point(fld, start, NewtonSettings(tol=tight))
    ref_grads, _ = estimate_grads(model, fld, ref_point.z, reference)
    rows = []
    for tol in tols:  # one relaxation per free-phase tolerance
        sol = Relaxation(solver, tol=tol, max_steps=max_steps).run(fld, z0)
        for name, est in estimators.items():
            grads, res = estimate_grads(model, fld, sol.z, est)
            cos, per = gradient_cosine(grads, ref_grads)
            nfe = sol.nfe.double().cpu() + sum((v.double().cpu() for v in res.nfe.values()),
                                         torch.zeros(()))
            rows.append(FidelityRow(name, tol, cos, per, float(sol.rel_residual.max()),
                                    int(sol.converged.sum()), float(nfe.mean())))
    return FidelityResult(rows, float(ref_point.residual.max()))
