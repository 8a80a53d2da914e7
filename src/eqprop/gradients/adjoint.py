"""The adjoint dynamics of the implicit-function-theorem gradient, as a field to relax.

IFT needs ``s`` with ``Jᵀ s = ∇_z L`` at the free equilibrium (``J = ∂F/∂z (z*)``).
Besides a Krylov solve, ``s`` is the equilibrium of the linear flow

    ds/dt = Jᵀ s - ∇_z L,

whose Jacobian ``Jᵀ`` has the eigenvalues of ``J``: it settles exactly when the free
dynamics do (recurrent backpropagation, Almeida 1987 / Pineda 1987; what an analog
substrate would run for the exact gradient). As a :class:`~eqprop.fields.Field` with
declared inputs (``z*``, ``∇_z L``) it is relaxed by a
:class:`~eqprop.solvers.relaxation.Relaxation` like every other phase, so on CUDA its
loop is recorded once as CUDA graphs and replayed for every batch.
"""

from __future__ import annotations

import copy

from torch import Tensor

from ..fields import Field, Linearization

__all__ = ["AdjointField"]


class AdjointField(Field):
    """``G(s) = Jᵀ s - g`` with ``J`` linearised at ``z*`` (one VJP per call).

    Args:
        field: the free field ``F``.
        z_star: the free equilibrium ``(B, ...)``, real.
        g: the right-hand side ``∇_z L`` ``(B, ...)``.
    """

    def __init__(self, field: Field, z_star: Tensor, g: Tensor):
        self.field = field
        self.z_star, self.g = z_star.detach(), g.detach()
        self.evals_per_call = field.evals_per_call  # one VJP
        self._lin: Linearization | None = None  # on first use (inside the relaxation)

    def __call__(self, s: Tensor) -> Tensor:
        if self._lin is None:
            self._lin = self.field.linearize(self.z_star)
        return self._lin.vjp(s) - self.g

    def static_inputs(self) -> list[Tensor] | None:
        inner = self.field.static_inputs()
        return None if inner is None else inner + [self.z_star, self.g]

    def static_key(self) -> tuple:
        return (type(self.field), self.field.static_key())

    def static_copy(self) -> AdjointField:
        new = copy.copy(self)
        new.field = self.field.static_copy()
        new.z_star, new.g = self.z_star.clone(), self.g.clone()
        new._lin = None
        return new

    def refresh(self) -> None:
        """Linearise anew at ``z*``."""
        self.field.refresh()
        self._lin = self.field.linearize(self.z_star)
