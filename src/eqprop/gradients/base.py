"""Estimator interface: turn an equilibrium into a gradient (design §3).

Every estimator returns one surrogate scalar

    S(θ) = mean_b L_b(z*; θ) - (1/B) Σ_b < stopgrad(s_b), F(stopgrad(z*); θ)_b >

whose ``backward()`` fills ``.grad`` with its estimate of ``dL/dθ``, where
``s ≈ J⁻ᵀ ∇_z L`` is the estimator's learning signal. Optimisers, clipping,
mixed precision and DDP then work unchanged.
"""

from __future__ import annotations

from abc import ABC, abstractmethod
from dataclasses import dataclass, field, replace

import torch
from torch import Tensor

from ..fields import Field
from ..solvers.base import Solution
from ..solvers.status import Status

__all__ = ["Estimator", "EstimatorResult", "drop_failed", "drop_samples", "surrogate"]


@dataclass
class EstimatorResult:
    """What an estimator gives back.

    Attributes:
        surrogate: scalar; ``surrogate.backward()`` fills the parameters' ``.grad``.
        loss: detached mean loss at the free equilibrium.
        signal: the learning signal ``s`` ``(B, ...)`` (None for BPTT).
        nfe: F-equivalent evaluations per phase, each ``(B,)``.
        solutions: relaxation results per phase (nudged phases).
        dropped: ``(B,)`` bool, the samples left out of the signal
            (:func:`drop_samples`), or None.
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


def drop_samples(result: EstimatorResult, field: Field, z_star: Tensor,
                 drop: Tensor) -> EstimatorResult:
    """``result`` with the samples ``drop`` ``(B,)`` (bool) left out of its signal
    (``s_b = 0``) and its surrogate rebuilt: their estimate is not one to learn from (a
    nudged relaxation that diverged, a free equilibrium the continuous dynamics leave).
    Their loss still enters the surrogate's first term (the readout's own gradient).

    Raises:
        ValueError: the result has no signal (bptt differentiates through its unroll).
    """
    s = result.signal
    if s is None:
        raise ValueError("drop_samples: the estimate has no learning signal to drop samples from")
    s = torch.where(drop.view(-1, *(1,) * (s.dim() - 1)), torch.zeros_like(s), s)
    return replace(result, surrogate=surrogate(field, z_star, s), signal=s, dropped=drop)


def drop_failed(result: EstimatorResult, field: Field, free: Solution) -> EstimatorResult:
    """:func:`drop_samples` of the samples not to learn from: those whose free phase
    (``free``, its solution at ``free.z``) did not end at a stable equilibrium — it missed
    the tolerance (the estimators' formulas hold only at an equilibrium: three such samples
    of 16 took the batch's AsymEP estimate to cosine 0.91 with the exact gradient of the
    others, benchmarks/results/nudge_probe_recipe_cpu.md) or the stability check found the
    point unstable — and those with a nudged relaxation of ``result`` that failed."""
    bad = [free.status != Status.CONVERGED, *(v.failed for v in result.solutions.values())]
    return drop_samples(result, field, free.z, torch.stack(bad).any(0))


class Estimator(ABC):
    """Turns a free equilibrium ``z*`` of ``field`` into a surrogate scalar."""

    @abstractmethod
    def estimate(self, field: Field, z_star: Tensor) -> EstimatorResult:
        """Compute the learning signal at ``z_star`` ``(B, ...)`` and the surrogate."""
