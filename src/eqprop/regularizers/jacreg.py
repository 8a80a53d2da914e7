"""jacreg: the Frobenius norm of the non-conservative Jacobian at z* (design §4)."""

from __future__ import annotations

from dataclasses import dataclass
from typing import TYPE_CHECKING

import torch
from torch import Tensor
from torch.func import jvp as func_jvp

from ..fields import Field
from ..split import require_split
from .base import Regularizer, _check_real, probes

if TYPE_CHECKING:
    from ..solvers.stability import RitzModes

__all__ = ["JacReg"]


@dataclass
class JacReg(Regularizer):
    """``R = E_v ‖J_n v‖² / dim = ‖J_n‖²_F / dim``, ``v ~ N(0, I)``, with ``J_n = ∂n/∂z (z*)``
    the Jacobian of the non-conservative part ``n`` (attention + feed-forward) at the
    detached free equilibrium; ``dim`` is the size of one sample's state.

    Keeping ``‖J_n‖`` small keeps the field near its contracting leak ``-z``: every
    eigenvalue of ``J = -I + J_n`` stays in a disc around -1 of radius ``‖J_n‖₂``, which
    bounds |b| and keeps ε_crit away from 0 (Jacobian regularisation of deep
    equilibrium models, Bai, Koltun & Kolter 2021). Each probe costs one JVP through
    ``n``; ``torch.func.jvp`` records the graph to the parameters, so ``backward()``
    on R differentiates the JVP (forward-over-reverse). Settings as :class:`Regularizer`.
    """

    def penalty(self, field: Field, z_star: Tensor, generator: torch.Generator | None = None,
                modes: RitzModes | None = None) -> Tensor:
        z = _check_real(z_star, "JacReg")  # (B, ...)
        n = require_split(field, "JacReg").nonconservative
        total = z.new_zeros(())
        with torch.enable_grad():
            for _ in range(self.n_probes):
                v = probes(z, generator)  # (B, ...)
                jv = func_jvp(n, (z,), (v,))[1]  # (B, ...) J_n v
                total = total + jv.pow(2).sum()
        return total / (self.n_probes * z.numel())
