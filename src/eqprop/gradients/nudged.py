"""The nudged field of EP and asymmetric EP: ``F_β = F - β ∇L`` (design §3).

Only the EP estimators (:mod:`~eqprop.gradients.ep`, :mod:`~eqprop.gradients.holo_ep`)
build one; a :class:`~eqprop.solvers.relaxation.Relaxation` relaxes it like any other
:class:`~eqprop.fields.Field`.
"""

from __future__ import annotations

import copy

import torch
from torch import Tensor

from ..fields import Field, Linearization

__all__ = ["NudgedField"]


class NudgedField(Field):
    """The nudged dynamics of EP and asymmetric EP (design §3).

    ``F_β(z) = F(z) - β ∇_z L(z)``, plus ``-2A (z - z*)`` with ``A = (J - Jᵀ)/2``
    frozen at ``z*`` when ``antisym`` is set (Scurria et al. 2026). ``2A v`` is
    ``J v - Jᵀ v``: one JVP and one VJP, both linearised at ``z*``.

    Args:
        field: the free field ``F`` (must define ``loss``).
        beta: nudging strength: a float (complex for holomorphic EP), or a per-sample
            ``(B,)`` tensor (several nudges relaxed as one batch).
        z_star: the free equilibrium ``(B, ...)``; needed when ``antisym``.
        antisym: add the ``-2A (z - z*)`` term.
        r_star: optional ``F(z*)`` to subtract, so that ``z*`` is an exact equilibrium
            of the β = 0 dynamics even when the free phase stopped at a residual.
    """

    def __init__(self, field: Field, beta: float | complex | Tensor,
                 z_star: Tensor | None = None,
                 antisym: bool = False, r_star: Tensor | None = None):
        if antisym and z_star is None:
            raise ValueError("NudgedField(antisym=True) needs z_star, the free equilibrium")
        self.field = field
        self.beta = beta
        self.z_star = None if z_star is None else z_star.detach()
        self.antisym = antisym
        self.r_star = None if r_star is None else r_star.detach()
        # F, plus one JVP and one VJP for 2A; a complex nudge splits 2A d into Re and Im parts
        split = 2 if isinstance(beta, complex) else 1
        self.evals_per_call = field.evals_per_call * (1 + 2 * split if antisym else 1)
        # linearised at z* on first use, so that the recording happens where F is first
        # evaluated (inside relax: on the stream a captured loop replays on)
        self._lin: Linearization | None = None

    def __call__(self, z: Tensor) -> Tensor:
        beta = self.beta
        if isinstance(beta, Tensor):
            beta = beta.reshape(beta.shape + (1,) * (z.dim() - 1))  # (B, 1, ...)
        out = self.field(z) - beta * self.field.grad_loss(z)
        if self.r_star is not None:
            out = out - self.r_star
        if self.antisym:
            out = out - self._two_a(z - self.z_star)
        return out

    def static_inputs(self) -> list[Tensor] | None:
        inner = self.field.static_inputs()
        if inner is None:
            return None
        own = [self.beta] if isinstance(self.beta, Tensor) else []
        return inner + own + [v for v in (self.z_star, self.r_star) if v is not None]

    def static_key(self) -> tuple:
        beta = "tensor" if isinstance(self.beta, Tensor) else self.beta
        return (type(self.field), self.field.static_key(), beta, self.antisym,
                self.z_star is None, self.r_star is None)

    def static_copy(self) -> NudgedField:
        new = copy.copy(self)
        new.field = self.field.static_copy()
        if isinstance(self.beta, Tensor):
            new.beta = self.beta.clone()
        new.z_star = None if self.z_star is None else self.z_star.clone()
        new.r_star = None if self.r_star is None else self.r_star.clone()
        new._lin = None
        return new

    def refresh(self) -> None:
        """Linearise anew at ``z*`` (the -2A term's J and Jᵀ)."""
        self.field.refresh()
        if self.antisym:
            self._lin = self.field.linearize(self.z_star)

    def _two_a(self, d: Tensor) -> Tensor:
        """``2A d = J d - Jᵀ d`` at the real z*; a complex ``d`` (holomorphic EP) is split
        into real and imaginary parts, since J is real there."""
        if d.is_complex() and not self.z_star.is_complex():
            return torch.complex(self._two_a(d.real), self._two_a(d.imag))
        if self._lin is None:
            self._lin = self.field.linearize(self.z_star)
        return self._lin.jvp(d) - self._lin.vjp(d)

    def loss(self, z: Tensor) -> Tensor:
        return self.field.loss(z)
