"""Vector fields: the one interface between models, solvers and estimators.

A *field* is any batched callable ``F(z) -> dz/dt`` with ``z`` of shape ``(B, ...)``
whose samples are independent (row ``b`` of ``F(z)`` depends on row ``b`` of ``z``
only). Plain callables work with every solver; the :class:`Field` base class adds
the matrix-free Jacobian products that estimators and diagnostics need, and the
readout loss that EP nudges with (design §1, §3).
"""

from __future__ import annotations

from abc import ABC, abstractmethod
from collections.abc import Callable

import torch
from torch import Tensor
from torch.func import jvp as func_jvp
from torch.func import vjp as func_vjp

FieldFn = Callable[[Tensor], Tensor]

__all__ = ["Field", "FieldFn", "Linearization", "evals_per_call", "jvp", "vjp"]


class Field(ABC):
    """A batched vector field ``F(z)`` with Jacobian products and a loss.

    Subclasses define :meth:`__call__`. ``jvp``/``vjp`` default to ``torch.func``
    on :meth:`forward_for_jvp` (override it when the fast forward is not
    forward-mode differentiable, e.g. fused attention kernels). ``loss`` and
    ``grad_loss`` are needed only by gradient estimators.
    """

    #: how many F-equivalent evaluations (F, JVP or VJP) one call costs; NFE accounting
    evals_per_call: int = 1

    @abstractmethod
    def __call__(self, z: Tensor) -> Tensor:
        """Return ``F(z)``, same shape as ``z`` ``(B, ...)``."""

    def forward_for_jvp(self, z: Tensor) -> Tensor:
        """The same map as ``__call__``, written with forward-mode-differentiable ops."""
        return self(z)

    def jvp(self, z: Tensor, v: Tensor) -> Tensor:
        """``J v`` with ``J = ∂F/∂z (z)``, matrix-free (one forward-mode pass)."""
        return func_jvp(self.forward_for_jvp, (z,), (v,))[1]

    def vjp(self, z: Tensor, v: Tensor) -> Tensor:
        """``Jᵀ v`` with ``J = ∂F/∂z (z)``, matrix-free (one reverse-mode pass)."""
        return self.vjp_at(z)(v)

    def vjp_at(self, z: Tensor) -> Callable[[Tensor], Tensor]:
        """Linearise once at ``z`` and return ``v -> Jᵀ v`` reusing the recorded graph."""
        _, fn = func_vjp(self, z)
        return lambda v: fn(v)[0]

    def linearize(self, z: Tensor) -> Linearization:
        """``J v`` and ``Jᵀ v`` at a fixed real ``z`` from one recorded graph (see
        :class:`Linearization`); the products to use when many are taken at one point
        (why not ``torch.func.linearize``: docs/gpu.md, "EP against backprop")."""
        return Linearization(self.forward_for_jvp, z)

    # -- graph reuse: a Relaxation records its CUDA graphs once per shape and replays them
    # for every later field of that shape, after copying the new field's inputs into the
    # buffers of its own copy (see eqprop.solvers.relaxation)
    def static_inputs(self) -> list[Tensor] | None:
        """The tensors besides the parameters that ``F`` reads (inputs, targets, z*, ...),
        in a fixed order; None (the default) when the field cannot be replayed on new
        inputs (a Relaxation then records its graph anew on every call)."""
        return None

    def static_key(self) -> tuple:
        """Settings that are not tensors but shape the computation (part of the graph key)."""
        return ()

    def static_copy(self) -> Field:
        """A copy of the field with its own clones of :meth:`static_inputs` (sharing the
        model): the buffers a recorded graph reads."""
        raise NotImplementedError(f"{type(self).__name__} cannot be replayed on new inputs")

    def refresh(self) -> None:  # noqa: B027  (a hook: nothing to recompute by default)
        """Recompute what the field derives from its inputs (run, and recorded, at the start
        of every relaxation that replays a graph); nothing by default."""

    def head(self, n: int) -> Field | None:
        """The same field on its first ``n`` samples, or None when the field cannot build
        one (penalties and estimates then use the whole batch)."""
        return None

    def sample(self, b: int) -> Field | None:
        """The same field on sample ``b`` alone (a batch of one), or None when the field
        cannot build one (diagnostics then evaluate the whole batch with a tangent that is
        zero outside sample ``b``: ``B`` times the cost of one sample's product)."""
        return None

    def repeated(self, n: int) -> Field | None:
        """The same field on its batch repeated ``n`` times (sample ``k·B + b`` is sample
        ``b``), or None when the field cannot build one; estimators then relax their
        nudged phases one after the other instead of as one batch."""
        return None

    def loss(self, z: Tensor) -> Tensor:
        """Per-sample loss ``L_b(z)``, shape ``(B,)``, differentiable in the parameters."""
        raise NotImplementedError(f"{type(self).__name__} defines no loss")

    def grad_loss(self, z: Tensor) -> Tensor:
        """``∇_z Σ_b L_b(z)``: each sample's own loss gradient, shape of ``z``.

        On complex ``z`` it is the holomorphic derivative ``dL/dz`` of the loss's
        holomorphic extension (what holomorphic EP nudges with).
        """
        with torch.enable_grad():
            z = z.detach().requires_grad_(True)
            total = self.loss(z).sum()
            if not z.is_complex():
                (g,) = torch.autograd.grad(total, z)
                return g
            # autograd's conjugate-Wirtinger convention gives conj(dL/dz) for a holomorphic L
            (g,) = torch.autograd.grad(total, z, torch.ones_like(total))
        return g.conj().resolve_conj()


def evals_per_call(F: FieldFn) -> int:
    """NFE cost of one call of ``F`` (1 for plain callables)."""
    return int(F.evals_per_call) if isinstance(F, Field) else 1


def jvp(F: FieldFn, z: Tensor, v: Tensor) -> Tensor:
    """``J v`` for any field: its own ``jvp`` if it is a :class:`Field`, else ``torch.func``."""
    if isinstance(F, Field):
        return F.jvp(z, v)
    return func_jvp(F, (z,), (v,))[1]


def vjp(F: FieldFn, z: Tensor, v: Tensor) -> Tensor:
    """``Jᵀ v`` for any field."""
    if isinstance(F, Field):
        return F.vjp(z, v)
    _, fn = func_vjp(F, z)
    return fn(v)[0]


class Linearization:
    """``v -> J v`` and ``v -> Jᵀ v`` of a field at a fixed real ``z``, from one graph.

    The forward pass at ``z`` is recorded once together with its reverse pass
    ``w(u) = Jᵀ u`` (recorded with ``create_graph`` at ``u = 0``; w is linear in u).
    Then ``Jᵀ v`` is a reverse pass over the forward graph and
    ``J v = ∂⟨w(u), v⟩/∂u`` a reverse pass over the reverse graph (the "double VJP"):
    no forward-mode pass and no forward recomputed per product (what that saves on a GPU
    against forward mode: docs/gpu.md, "EP against backprop"). ``F`` must be twice
    differentiable by autograd (the LM's explicit attention path is; the fused
    kernels are not).

    Args:
        F: the map to linearise (a field's ``forward_for_jvp``).
        z: the point ``(B, ...)``, real.
    """

    def __init__(self, F: FieldFn, z: Tensor):
        if z.is_complex():
            raise ValueError("Linearization: z must be real (split complex tangents into "
                             "real and imaginary parts)")
        with torch.enable_grad():
            self._z = z.detach().requires_grad_(True)
            self._out = F(self._z)  # (B, ...) F(z), with its graph
            self._u = torch.zeros_like(self._out, requires_grad=True)
            (self._w,) = torch.autograd.grad(self._out, self._z, self._u, create_graph=True)

    def jvp(self, v: Tensor) -> Tensor:
        """``J v``, shape of ``z``."""
        return torch.autograd.grad(self._w, self._u, v, retain_graph=True)[0]

    def vjp(self, v: Tensor) -> Tensor:
        """``Jᵀ v``, shape of ``z``."""
        return torch.autograd.grad(self._out, self._z, v, retain_graph=True)[0]
