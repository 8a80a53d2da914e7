"""Jacobian homeostasis: a penalty on the asymmetric part of J at z* (design §4)."""

from __future__ import annotations

from dataclasses import dataclass
from typing import TYPE_CHECKING

import torch
from torch import Tensor

from ..fields import Field, jvp
from .base import Regularizer, _check_real, probes

if TYPE_CHECKING:
    from ..solvers.stability import RitzModes

__all__ = ["Homeostasis"]


@dataclass
class Homeostasis(Regularizer):
    """``R = E_v[‖J v‖² - vᵀ J² v] / dim = (tr JᵀJ - tr J²)/dim = ½‖J - Jᵀ‖²_F / dim``,
    ``v ~ N(0, I)``, ``J = ∂F/∂z (z*)`` of the full field at the detached free equilibrium
    (Laborieux & Zenke, "Improving equilibrium propagation without weight symmetry
    through Jacobian homeostasis", ICLR 2024).

    R is 0 exactly when J is symmetric, where plain EP is exact; it penalises the part
    ``A = (J - Jᵀ)/2`` that asymmetric EP has to correct. The leak ``-z`` is symmetric
    and drops out; a layer stack's feed-forward drive does not (its fixed asymmetry is a
    constant offset of R that the parameters can partly cancel). Each probe costs two
    JVPs (``J v``, then ``J (J v)``); the estimate of one probe can be negative, its
    expectation cannot. Settings as :class:`Regularizer`.
    """

    def penalty(self, field: Field, z_star: Tensor, generator: torch.Generator | None = None,
                modes: RitzModes | None = None) -> Tensor:
        z = _check_real(z_star, "Homeostasis")  # (B, ...)
        total = z.new_zeros(())
        with torch.enable_grad():
            for _ in range(self.n_probes):
                v = probes(z, generator)  # (B, ...)
                jv = jvp(field, z, v)  # (B, ...) J v
                jjv = jvp(field, z, jv)  # (B, ...) J² v
                total = total + jv.pow(2).sum() - (v * jjv).sum()
        return total / (self.n_probes * z.numel())
