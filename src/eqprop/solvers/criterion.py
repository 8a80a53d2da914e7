"""The convergence criterion every solver is judged by (design §2).

A relative residual ``g = ‖F(z)‖/‖z‖ ≤ tol`` alone can be met far from any fixed
point: on a field whose ``F`` stays bounded (no linear leak, e.g. saturating
``tanh`` couplings) a root finder that runs away to ``‖z‖ → ∞`` drives ``g`` to 0
while ``‖F‖`` stays large. So a sample also has to pass an absolute test, against
a scale that is fixed at the start and cannot grow with ``z``:

    ‖F(z)‖ ≤ atol_b,    atol_b = atol                      if given,
                        atol_b = tol · (‖z0‖ + ‖F(z0)‖)    otherwise.

``‖z0‖ + ‖F(z0)‖`` is the size of the problem as posed: for a field with a unit
leak, ``F = -z + d(z)``, the equilibrium lies about ``‖F(z0)‖`` away from the start,
so ``‖z*‖ ≲ ‖z0‖ + ‖F(z0)‖`` and the absolute test is no stricter than the relative
one; it only bites where ``z`` has travelled much further than the problem's size
(docs/solvers.md). With a ``scale`` given to ``relax`` (e.g. a nudge size) the
relative residual is already absolute (``‖F‖/scale``).

The test runs inside the device-side loop (and its CUDA graph): tensors and
``torch.where`` only, no host synchronisation.
"""

from __future__ import annotations

import math
from dataclasses import dataclass

import torch
from torch import Tensor

__all__ = ["Tolerance"]


@dataclass(frozen=True)
class Tolerance:
    """When a sample counts as converged: relative AND absolute residual small.

    Args:
        rtol: relative residual ``‖F‖/‖z‖`` (or ``‖F‖/scale``) allowed, > 0.
        atol: absolute residual ``‖F‖`` allowed; None: ``rtol · (‖z0‖ + ‖F(z0)‖)``
            per sample (see the module docstring); ``math.inf`` turns the absolute
            test off.
    """

    rtol: float
    atol: float | None = None

    def __post_init__(self) -> None:
        if isinstance(self.rtol, bool) or not (isinstance(self.rtol, (int, float))
                                               and 0 < self.rtol < math.inf):
            raise ValueError(f"tol={self.rtol!r}: must be a finite number > 0")
        a = self.atol
        if a is not None and (isinstance(a, bool) or not isinstance(a, (int, float))
                              or not a > 0):
            raise ValueError(f"atol={a!r}: must be a number > 0 (inf: no absolute test), "
                             "or None for tol · (‖z0‖ + ‖F(z0)‖)")

    def met(self, r_abs: Tensor, r_rel: Tensor, res0: Tensor, norm0: Tensor) -> Tensor:
        """``(B,)`` bool: the sample passes both tests (False on NaN).

        Args:
            r_abs: ``‖F(z)‖`` ``(B,)``.
            r_rel: the relative residual ``(B,)``.
            res0: the relative residual at the start ``(B,)`` (the trace's first column).
            norm0: its normaliser at the start, ``‖z0‖`` or the scale ``(B,)``.
        """
        if self.atol is None:
            bound = self.rtol * (norm0 + res0 * norm0)  # (B,) rtol · (‖z0‖ + ‖F(z0)‖)
        else:
            bound = torch.full_like(r_abs, float(self.atol))
        return (r_rel <= self.rtol) & (r_abs <= bound)
