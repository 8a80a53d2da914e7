"""abscissa: a hinge on the leading eigenvalue's real part at z* (design §4).

The Hopf crossing of the wall is one mode: the rightmost eigenvalue ``μ = a + ib`` of
``J = ∂F/∂z (z*)`` reaches the imaginary axis. jacreg and homeostasis shrink the whole
Jacobian (every mode pays); this penalty acts on that mode alone and only while it
stands within ``margin`` of the axis, so it is 0 on a field whose leading ``Re μ`` is
below ``-margin``.
"""

from __future__ import annotations

import math
from dataclasses import dataclass

import torch
from torch import Tensor

from ..fields import Field, jvp
from ..solvers.stability import KRYLOV_DIM, RitzModes, leading_mode
from ..validate import interval
from .base import Regularizer, _check_real

__all__ = ["Abscissa"]


@dataclass
class Abscissa(Regularizer):
    """``R = mean_b relu(ρ_b + margin)²`` with ``ρ_b = Re(yᴴ J y)``, ``y`` the unit Ritz
    vector of the rightmost Ritz value of ``J`` at the detached free equilibrium
    (``KRYLOV_DIM`` Arnoldi steps, :func:`~eqprop.solvers.stability.leading_mode`; those of
    the free phase's stability check when it left its ``modes``).

    At an eigenvector ``J y = μ y`` the quotient is the eigenvalue: ``ρ = Re μ`` exactly,
    for any ``J`` (normal or not). ``y`` is held fixed in the gradient; for real ``J`` and
    ``y = u + iw``, ``ρ = uᵀJu + wᵀJw``: two JVPs with their graph to the parameters. The
    gradient lowers the field's growth along ``y``; for a strongly non-normal ``J`` that
    is not the eigenvalue's own derivative (``wᴴ J' y / wᴴ y``, w the left eigenvector).
    Settings as :class:`Regularizer`, with ``margin`` the distance from the imaginary axis
    below which the penalty is 0 (``n_probes`` is unused: the probe is the mode).
    """

    margin: float = 0.1

    def __post_init__(self) -> None:
        super().__post_init__()
        self._lead: Tensor | None = None
        interval(self, "margin", self.margin, 0.0, math.inf, hi_open=True)

    def rayleigh(self, field: Field, z_star: Tensor, y: Tensor) -> Tensor:
        """``ρ_b = Re(yᴴ J y)`` per sample ``(B,)`` for a complex ``y`` ``(B, ...)``,
        differentiable in the parameters."""
        z = z_star.detach()
        with torch.enable_grad():
            rho = z.new_zeros(z.shape[0])
            for u in (y.real.contiguous(), y.imag.contiguous()):
                rho = rho + (u * jvp(field, z, u)).flatten(1).sum(1)
        return rho

    def penalty(self, field: Field, z_star: Tensor, generator: torch.Generator | None = None,
                modes: RitzModes | None = None) -> Tensor:
        z = _check_real(z_star, "Abscissa")  # (B, ...)
        _, y = leading_mode(field, z, KRYLOV_DIM, modes)  # (B,), (B, ...) unit
        rho = self.rayleigh(field, z, y)  # (B,)
        self._lead = rho.detach().max()  # read by metrics(), after the step's transfer
        return torch.relu(rho + self.margin).pow(2).mean()

    def metrics(self) -> dict[str, float]:
        """As :meth:`Regularizer.metrics`, with ``reg_lead_re``: the largest ``ρ_b`` of the
        last penalty (the leading ``Re μ`` of the penalised samples)."""
        out = super().metrics()
        if self.last_value is not None and self._lead is not None:
            out["reg_lead_re"] = float(self._lead)
        return out
