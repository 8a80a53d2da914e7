"""Why did a relaxation fail? Integration artifact or lost fixed point (design §5).

- **integration artifact**: at the best fixed point found every ``Re μ < 0`` and the
  step ε exceeds ε_crit there. The continuous dynamics (the hardware) would settle;
  a smaller step or a better integrator fixes it.
- **lost fixed point**: some ``Re μ ≥ 0`` at the best point found. The continuous
  dynamics themselves no longer settle there (a bifurcation that training caused);
  no integrator fixes it, only the model or the optimiser can.
- **slow**: every ``Re μ < 0``, ``ε ≤ ε_crit`` and the relaxation was still
  contracting: the step budget is too small for the slowest mode.
- **unexplained**: every ``Re μ < 0`` and ``ε ≤ ε_crit``, yet it did not contract:
  a start far from z*, or nonlinear effects away from the linearisation.
- **unknown**: no evidence either way (below).

A verdict needs evidence, per sample (``FailureReport.evidence``):

1. a fixed point: a damped Newton–Krylov search started where the relaxation
   stopped (:mod:`~eqprop.diagnostics.fixed_point`) reaches ``‖F‖ ≤ tol · ‖z_start‖``
   (an absolute residual: a search that runs off to ``‖z‖ → ∞`` on a field without
   a leak never passes it). Its spectrum decides, as above.
2. else the continuous flow's own verdict: the flow is followed from the same
   state by the error-controlled reference (:func:`~eqprop.solvers.ode.follow_flow`,
   within ``flow_nfe`` evaluations; adaptive Euler was measured to stall on the
   stiff rotating modes where this matters, docs/diagnostics.md).
   If it settles, a stable fixed point exists there and its spectrum decides; if it
   cycles or diverges, the continuous dynamics themselves do not settle: a lost
   fixed point.
3. else (the flow still moving when its budget ends): **unknown**.

A relaxation reported converged on a point with some ``Re μ ≥ 0`` (a root finder
run with ``stability="never"``) is a lost fixed point, not a success.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from enum import IntEnum

import torch
from torch import Tensor

from ..errors import ConfigError
from ..fields import FieldFn
from ..solvers.base import Solution
from ..solvers.ode import ODE, follow_flow
from ..solvers.status import Status
from .base import check_method
from .eps_crit import eps_crit
from .fixed_point import NewtonSettings, best_fixed_point

__all__ = ["ClassifySettings", "Evidence", "Failure", "FailureReport", "classify_failures"]


class Failure(IntEnum):
    """Per-sample verdict on a relaxation."""

    NONE = 0  #: the relaxation converged
    ARTIFACT = 1  #: all Re μ < 0 and ε > ε_crit: the simulation, not the dynamics, fails
    LOST_FIXED_POINT = 2  #: some Re μ ≥ 0 at the best point found: a bifurcation
    SLOW = 3  #: all Re μ < 0, ε ≤ ε_crit, still contracting: the step budget is too small
    UNEXPLAINED = 4  #: all Re μ < 0, ε ≤ ε_crit, not contracting: start or nonlinearity
    UNKNOWN = 5  #: no fixed point found and the flow did not settle within its budget

    @property
    def label(self) -> str:
        return self.name.lower()


class Evidence(IntEnum):
    """What a sample's verdict rests on."""

    CONVERGED = 0  #: the relaxation converged (its point's spectrum is still checked)
    FIXED_POINT = 1  #: the search found a fixed point (small absolute residual)
    FLOW_SETTLED = 2  #: no fixed point found; the continuous flow settled on one
    FLOW_UNSETTLED = 3  #: the continuous flow cycles or diverges: it has no fixed point
    NONE = 4  #: neither: the verdict is unknown

    @property
    def label(self) -> str:
        return self.name.lower()


@dataclass
class ClassifySettings:
    """Settings of :func:`classify_failures`.

    Args:
        k: eigenvalues per ARPACK call in the ε_crit computation.
        method: ``"arpack"``, ``"dense"`` or ``"auto"`` (dense up to 128 unknowns).
        newton: settings of the search for the best fixed point.
        flow_nfe: evaluations of F allowed to the continuous flow followed where the
            search finds no fixed point (0: never follow it; such samples are unknown).
        flow_tol: relative residual at which the flow counts as settled.
    """

    k: int = 6
    method: str = "auto"
    newton: NewtonSettings = field(default_factory=NewtonSettings)
    flow_nfe: int = 50_000
    flow_tol: float = 1e-8

    def __post_init__(self) -> None:
        if not (isinstance(self.k, int) and self.k >= 1):
            raise ConfigError(f"ClassifySettings(k={self.k!r}): must be an integer ≥ 1")
        check_method(self.method)
        if isinstance(self.flow_nfe, bool) or not isinstance(self.flow_nfe, int) \
                or self.flow_nfe < 0:
            raise ConfigError(f"ClassifySettings(flow_nfe={self.flow_nfe!r}): must be an "
                              "integer ≥ 0")
        if not (isinstance(self.flow_tol, (int, float)) and 0 < self.flow_tol < 1):
            raise ConfigError(f"ClassifySettings(flow_tol={self.flow_tol!r}): must lie in "
                              "(0, 1)")


@dataclass
class FailureReport:
    """Per-sample classification, ``(B,)`` tensors.

    Attributes:
        kind: :class:`Failure` codes.
        eps: the step ε that was used, per sample.
        eps_crit: ε_crit at the fixed point the verdict rests on (0 where some
            Re μ ≥ 0; NaN where there is none).
        max_real: largest Re μ there (NaN where there is none).
        mode: the critical eigenvalue there (complex; NaN where there is none).
        best_residual: residual ``‖F‖/‖z_start‖`` of the best point the search found.
        fixed_point_found: the search found a fixed point (Newton converged).
        z_best: ``(B, ...)`` the point the verdict rests on (the search's best point,
            or where the flow settled).
        evidence: :class:`Evidence` codes.
    """

    kind: Tensor
    eps: Tensor
    eps_crit: Tensor
    max_real: Tensor
    mode: Tensor
    best_residual: Tensor
    fixed_point_found: Tensor
    z_best: Tensor
    evidence: Tensor

    def labels(self) -> list[str]:
        return [Failure(int(c)).label for c in self.kind]

    def counts(self) -> dict[str, int]:
        """Number of samples of each kind, by label."""
        return {f.label: int((self.kind == f).sum()) for f in Failure}


def classify_failures(F: FieldFn, result: Solution | Tensor, eps: float | Tensor,
                      settings: ClassifySettings | None = None,
                      start: Tensor | None = None) -> FailureReport:
    """Classify each sample's relaxation: converged, integration artifact, lost fixed point,
    slow or unexplained.

    Args:
        F: batched field.
        result: the :class:`~eqprop.solvers.Solution` of the failed relaxation (its
            status says which samples converged or were still contracting), or a
            state ``(B, ...)`` to examine as if every sample had failed to contract.
        eps: the step the relaxation used, a float or per sample ``(B,)``.
        settings: :class:`ClassifySettings`.
        start: where to start the search for samples whose final state is not
            finite (default: zeros).

    Returns:
        A :class:`FailureReport`.
    """
    s = ClassifySettings() if settings is None else settings
    B = result.z.shape[0] if isinstance(result, Solution) else result.shape[0]
    status = (result.status.cpu() if isinstance(result, Solution)
              else torch.full((B,), int(Status.CYCLING), dtype=torch.long))
    z = (result.z if isinstance(result, Solution) else result).detach()
    converged = status == Status.CONVERGED
    eps_t = torch.as_tensor(eps, dtype=torch.float64).expand(B).to("cpu")
    finite = torch.isfinite(z.reshape(B, -1)).all(1)
    if not bool(finite.all()):  # restart non-finite samples from `start`
        fallback = torch.zeros_like(z) if start is None else start.detach().to(z)
        z = torch.where(finite.view(B, *([1] * (z.dim() - 1))).to(z.device), z, fallback)
    best = best_fixed_point(F, z, s.newton)
    found = best.converged.cpu() | converged
    evidence = torch.where(found, int(Evidence.FIXED_POINT), int(Evidence.NONE))
    z_eval = best.z
    if s.flow_nfe > 0 and not bool(found.all()):  # ask the continuous flow
        _, flow, gave_up = follow_flow(F, z, ODE(tol=s.flow_tol, max_nfe=s.flow_nfe))
        fs, gave_up = flow.status.cpu(), gave_up.cpu() > 0
        settled = ~found & (fs == Status.CONVERGED)
        # the flow left (grew or blew up), or was followed to the end and cycles
        left = (fs == Status.DIVERGED) | (fs == Status.NONFINITE)
        unsettled = ~found & ~settled & (left | (~gave_up & (fs == Status.CYCLING)))
        evidence = torch.where(settled, int(Evidence.FLOW_SETTLED), evidence)
        evidence = torch.where(unsettled, int(Evidence.FLOW_UNSETTLED), evidence)
        pick = settled.to(z.device).view(B, *([1] * (z.dim() - 1)))
        z_eval = torch.where(pick, torch.nan_to_num(flow.z), best.z)
    evidence = torch.where(converged, int(Evidence.CONVERGED), evidence)
    ec = eps_crit(F, z_eval, k=s.k, bisect=False, method=s.method)
    at_point = evidence <= int(Evidence.FLOW_SETTLED)  # a fixed point to judge by
    lost = (at_point & (ec.max_real >= 0)) | (evidence == Evidence.FLOW_UNSETTLED)
    artifact = at_point & ~lost & (eps_t > ec.eig)
    kind = torch.full((B,), int(Failure.UNEXPLAINED), dtype=torch.long)
    kind = torch.where(status == Status.CONTRACTING, int(Failure.SLOW), kind)
    kind = torch.where(artifact, int(Failure.ARTIFACT), kind)
    kind = torch.where(lost, int(Failure.LOST_FIXED_POINT), kind)
    kind = torch.where(converged & ~lost, int(Failure.NONE), kind)
    kind = torch.where(evidence == Evidence.NONE, int(Failure.UNKNOWN), kind)
    nan = torch.full_like(ec.max_real, float("nan"))
    return FailureReport(kind, eps_t, torch.where(at_point, ec.eig, nan),
                         torch.where(at_point, ec.max_real, nan),
                         torch.where(at_point, ec.mode, torch.full_like(ec.mode, complex("nan"))),
                         best.residual.cpu(), best.converged.cpu(), z_eval, evidence)
