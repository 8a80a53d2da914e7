"""Estimator interface: turn an equilibrium into a gradient (design §3).

Every estimator returns one surrogate scalar

    S(θ) = mean_b L_b(z*; θ) - (1/B) Σ_b < stopgrad(s_b), F(stopgrad(z*); θ)_b >

whose ``backward()`` fills ``.grad`` with its estimate of ``dL/dθ``, where
``s ≈ J⁻ᵀ ∇_z L`` is the estimator's learning signal. Optimisers, clipping,
mixed precision and DDP then work unchanged.
"""

from __future__ import annotations

from abc import ABC, abstractmethod
from dataclasses import dataclass, field

from torch import Tensor

from ..fields import Field
from ..solvers.base import Solution

__all__ = ["Estimator", "EstimatorResult", "surrogate"]


@dataclass
class EstimatorResult:
    """What an estimator gives back.

    Attributes:
        surrogate: scalar; ``surrogate.backward()`` fills the parameters' ``.grad``.
        loss: detached mean loss at the free equilibrium.
        signal: the learning signal ``s`` ``(B, ...)`` (None for BPTT).
        nfe: F-equivalent evaluations per phase, each ``(B,)``.
        solutions: relaxation results per phase (nudged phases).
        dropped: ``(B,)`` bool, the samples left out of the signal because a nudged
            relaxation failed (``EP.drop_failed``), or None when the estimator drops none.
    """

    surrogate: Tensor
    loss: Tensor
    signal: Tensor | None = None
    nfe: dict[str, Tensor] = field(default_factory=dict)
    solutions: dict[str, Solution] = field(default_factory=dict)
    dropped: Tensor | None = None


def surrogate(field: Field, z_star: Tensor, s: Tensor) -> Tensor:
    """``S = mean_b L_b(z*) - (1/B) Σ_b <s_b, F(z*)_b>`` with z* and s detached."""
    z = z_star.detach()
    return field.loss(z).mean() - (s.detach() * field(z)).sum() / z.shape[0]


class Estimator(ABC):
    """Turns a free equilibrium ``z*`` of ``field`` into a surrogate scalar."""

    @abstractmethod
    def estimate(self, field: Field, z_star: Tensor) -> EstimatorResult:
        """Compute the learning signal at ``z_star`` ``(B, ...)`` and the surrogate."""
