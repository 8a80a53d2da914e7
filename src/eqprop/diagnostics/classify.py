"""Why did a relaxation fail? Integration artifact or lost fixed point (DESIGN.md §5).

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

The best point is found by a damped Newton–Krylov search started where the
relaxation stopped (:mod:`~eqprop.diagnostics.fixed_point`), because on an orbit
the instantaneous Jacobian says little about the fixed point it circles.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from enum import IntEnum

import torch
from torch import Tensor

from ..errors import ConfigError
from ..fields import FieldFn
from ..solvers.base import Solution
from ..solvers.status import Status
from .base import check_method
from .eps_crit import eps_crit
from .fixed_point import NewtonSettings, best_fixed_point

__all__ = ["ClassifySettings", "Failure", "FailureReport", "classify_failures"]


class Failure(IntEnum):
    """Per-sample verdict on a relaxation."""

    NONE = 0  #: the relaxation converged
    ARTIFACT = 1  #: all Re μ < 0 and ε > ε_crit: the simulation, not the dynamics, fails
    LOST_FIXED_POINT = 2  #: some Re μ ≥ 0 at the best point found: a bifurcation
    SLOW = 3  #: all Re μ < 0, ε ≤ ε_crit, still contracting: the step budget is too small
    UNEXPLAINED = 4  #: all Re μ < 0, ε ≤ ε_crit, not contracting: start or nonlinearity

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
    """

    k: int = 6
    method: str = "auto"
    newton: NewtonSettings = field(default_factory=NewtonSettings)

    def __post_init__(self) -> None:
        if not (isinstance(self.k, int) and self.k >= 1):
            raise ConfigError(f"ClassifySettings(k={self.k!r}): must be an integer ≥ 1")
        check_method(self.method)


@dataclass
class FailureReport:
    """Per-sample classification, ``(B,)`` tensors.

    Attributes:
        kind: :class:`Failure` codes.
        eps: the step ε that was used, per sample.
        eps_crit: ε_crit at the best point found (0 where some Re μ ≥ 0).
        max_real: largest Re μ at the best point found.
        mode: the critical eigenvalue there (complex).
        best_residual: residual ``‖F‖/‖z_start‖`` of the best point found.
        fixed_point_found: the best point is a fixed point (Newton converged).
        z_best: ``(B, ...)`` the best point found.
    """

    kind: Tensor
    eps: Tensor
    eps_crit: Tensor
    max_real: Tensor
    mode: Tensor
    best_residual: Tensor
    fixed_point_found: Tensor
    z_best: Tensor

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
    ec = eps_crit(F, best.z, k=s.k, bisect=False, method=s.method)
    lost = ec.max_real >= 0
    artifact = ~lost & (eps_t > ec.eig)
    kind = torch.full((B,), int(Failure.UNEXPLAINED), dtype=torch.long)
    kind = torch.where(status == Status.CONTRACTING, int(Failure.SLOW), kind)
    kind = torch.where(artifact, int(Failure.ARTIFACT), kind)
    kind = torch.where(lost, int(Failure.LOST_FIXED_POINT), kind)
    kind = torch.where(converged, int(Failure.NONE), kind)
    return FailureReport(kind, eps_t, ec.eig, ec.max_real, ec.mode, best.residual.cpu(),
                         best.converged.cpu(), best.z)
