"""The relaxation interface: ``relax(F, z0, solver)`` -> :class:`Solution` (design §2).

A solver only does steps; a controller (``solvers.controllers``) only picks ε;
:func:`relax` owns the loop: per-sample convergence masks, NFE accounting,
traces and the final status of each sample.
"""

from __future__ import annotations

from abc import ABC, abstractmethod
from dataclasses import dataclass, field, fields, replace
from typing import TYPE_CHECKING, ClassVar

import torch
from torch import Tensor

from ..fields import FieldFn, evals_per_call
from .status import FAILED, Status

if TYPE_CHECKING:
    from .stability import RitzModes

__all__ = ["Solution", "Solver", "SolverSettings", "SolverState", "Status", "bcast", "relax",
           "sample_norm"]


def sample_norm(v: Tensor) -> Tensor:
    """Euclidean norm of each sample, ``(B, ...) -> (B,)`` (real, also for complex ``v``)."""
    return torch.linalg.vector_norm(v.reshape(v.shape[0], -1), dim=1)


def bcast(s: Tensor, like: Tensor) -> Tensor:
    """Broadcast a per-sample ``(B,)`` tensor against ``like`` ``(B, ...)``."""
    return s.reshape(s.shape + (1,) * (like.dim() - 1))


def batched_solve(A: Tensor, b: Tensor) -> Tensor:
    """``x`` with ``A x = b`` for small square systems ``A (B, m, m)``, ``b (B, m, k)``; no
    host synchronisation (singular systems give non-finite ``x``, not an error).

    On CUDA the LU runs in cuBLAS's batched routines for every ``m``: left to its
    default, PyTorch sends batches of more than 16 matrices larger than 16 × 16 to
    MAGMA, which fills pointer arrays on the host and cannot be recorded in a CUDA
    graph (a relaxation with an Anderson history deeper than 16 then ran eagerly).
    """
    if not A.is_cuda:
        return torch.linalg.solve_ex(A, b)[0]
    backends = torch.backends.cuda
    before = backends.preferred_linalg_library()
    backends.preferred_linalg_library("cusolver")  # LU: cuBLAS batched for B > 1, m < 512
    try:
        return torch.linalg.solve_ex(A, b)[0]
    finally:
        backends.preferred_linalg_library(before)


@dataclass
class SolverState:
    """What a solver carries between steps; every tensor has the batch as first dim.

    ``nfe`` counts F-equivalent evaluations per sample; ``eps`` is the per-sample
    step size where the solver has one; ``aux`` holds solver-specific tensors
    (histories, controller memory), each ``(B, ...)``. A tensor may be the very same
    object in the old and the new state (a history updated in place, see :class:`Solver`).
    """

    z: Tensor  # (B, ...)
    f: Tensor  # (B, ...) F(z)
    nfe: Tensor  # (B,) long
    eps: Tensor | None = None  # (B,)
    aux: dict[str, Tensor] = field(default_factory=dict)

    def where(self, keep_new: Tensor, new: SolverState) -> SolverState:
        """Take ``new`` for samples where ``keep_new`` ``(B,)`` is True, else keep ``self``.

        A tensor that ``new`` shares with ``self`` (updated in place) is taken as it is:
        selecting between an object and itself would be a wasted pass over it.
        """

        def pick(a: Tensor | None, b: Tensor | None) -> Tensor | None:
            if a is None or b is None or a is b:
                return b
            return torch.where(bcast(keep_new, a), b, a)

        aux = {k: pick(self.aux.get(k), v) for k, v in new.aux.items()}
        return SolverState(pick(self.z, new.z), pick(self.f, new.f), pick(self.nfe, new.nfe),
                           pick(self.eps, new.eps), aux)


class Solver(ABC):
    """One step of a relaxation method. Subclasses are dataclasses of their settings.

    ``capturable`` is True for solvers whose ``step`` never synchronises with the host
    (no ``.item()``, no Python branch on a tensor), so that ``relax(capture=True)`` can
    record it in a CUDA graph. ``uses_jvp`` is True for solvers whose step takes
    Jacobian-vector products of the field (Newton-type inner solves).

    ``step`` may update history buffers in ``state.aux`` in place (and return the same
    objects): the relaxation loop keeps only the newest state and never steps a sample
    again once it turned inactive, so overwriting an inactive sample's history is
    harmless. A caller that keeps earlier states must not rely on their ``aux``.
    """

    capturable: ClassVar[bool] = False
    uses_jvp: ClassVar[bool] = False
    #: the solver follows the flow (explicit Euler, adaptive Euler, the ODE reference):
    #: a source or saddle repels it, so it never lands on one from a generic start and
    #: ``relax(stability="auto")`` skips the stability check (see solvers/stability.py)
    follows_flow: ClassVar[bool] = False

    def init(self, F: FieldFn, z0: Tensor) -> SolverState:
        """Evaluate ``F(z0)`` and set up the state (override to add ε or history)."""
        nfe = torch.full((z0.shape[0],), evals_per_call(F), dtype=torch.long, device=z0.device)
        return SolverState(z=z0, f=F(z0), nfe=nfe)

    @abstractmethod
    def step(self, F: FieldFn, state: SolverState) -> SolverState:
        """Advance every sample by one step; count its evaluations in ``state.nfe``."""

    def charge(self, state: SolverState, F: FieldFn, calls: int = 1) -> Tensor:
        """``state.nfe`` plus the cost of ``calls`` evaluations of ``F``."""
        return state.nfe + calls * evals_per_call(F)


class SolverSettings(ABC):
    """The config section of a solver that is not its own settings: a dataclass of plain
    values (what a config file or a flag can say) that builds the solver, where the
    solver takes an object (a controller) or a setting of the relaxation (its ``tol``).

    A solver dataclass whose fields are all plain values is its own section instead
    (see :mod:`~eqprop.solvers.registry`).
    """

    #: the class :meth:`build` returns (its ``capturable`` and ``follows_flow`` hold)
    solver: ClassVar[type[Solver]]

    @abstractmethod
    def build(self, tol: float) -> Solver:
        """The solver; ``tol`` is the relaxation's tolerance."""


@dataclass
class Solution:
    """Result of :func:`relax`; every per-sample tensor has shape ``(B,)``.

    Attributes:
        z: the final state ``(B, ...)``.
        status: :class:`Status` codes.
        steps: steps taken while the sample was active.
        nfe: F-equivalent evaluations (F, JVP, VJP) spent on the sample.
        residual: final ``‖F(z)‖``.
        rel_residual: final ``g = ‖F(z)‖ / ‖z‖``.
        residual_trace: ``(B, steps+1)`` relative residuals when asked for.
        eps_trace: ``(B, steps+1)`` step sizes when asked for and the solver has one.
        max_real: estimated leading ``Re μ`` of ``J`` at ``z`` where it was measured
            (NaN elsewhere), or None (see :mod:`~eqprop.solvers.stability`).
        stable: where measured, no eigenvalue was found with ``Re μ ≥ 0`` (False where
            not measured), or None.
        modes: the Ritz decomposition the stability check measured at ``z``
            (:class:`~eqprop.solvers.stability.RitzModes`), or None.
    """

    z: Tensor
    status: Tensor
    steps: Tensor
    nfe: Tensor
    residual: Tensor
    rel_residual: Tensor
    residual_trace: Tensor | None = None
    eps_trace: Tensor | None = None
    max_real: Tensor | None = None
    stable: Tensor | None = None
    modes: RitzModes | None = None

    @property
    def converged(self) -> Tensor:
        return self.status == Status.CONVERGED

    @property
    def failed(self) -> Tensor:
        """``(B,)`` bool: the samples whose status is one of :data:`~.status.FAILED`."""
        out = torch.zeros_like(self.status, dtype=torch.bool)
        for s in FAILED:
            out |= self.status == s
        return out

    def counts(self) -> dict[str, int]:
        """Number of samples in each status, by label."""
        n = torch.bincount(self.status.flatten(), minlength=len(Status)).tolist()  # one sync
        return {s.label: n[s] for s in Status}

    def select(self, idx: slice) -> Solution:
        """The solution of the samples ``idx`` (a slice of the batch)."""
        return replace(self, **{f.name: getattr(self, f.name)[idx] for f in fields(self)
                                if getattr(self, f.name) is not None})

    def summary(self) -> str:
        counts = ", ".join(f"{k} {v}" for k, v in self.counts().items() if v)
        return (f"{counts}; steps≤{int(self.steps.max())}, mean NFE {self.nfe.float().mean():.1f}, "
                f"max g {self.rel_residual.max():.2e}")


def relax(F: FieldFn, z0: Tensor, solver: Solver, *, tol: float = 1e-5, max_steps: int = 500,
          trace: bool = False, check_every: int = 1, scale: Tensor | None = None,
          capture: bool = False, atol: float | None = None,
          stability: str = "auto") -> Solution:
    """Relax ``dz/dt = F(z)`` from ``z0`` to an equilibrium, every sample on its own: a
    one-off :class:`~eqprop.solvers.relaxation.Relaxation` (callers that relax many
    batches hold one, so that its CUDA graphs are recorded once).

    Runs without building an autograd graph. A sample stops moving once its
    relative residual ``g = ‖F(z)‖/‖z‖ ≤ tol`` and its absolute residual
    ``‖F(z)‖ ≤ atol`` (see :mod:`~eqprop.solvers.criterion`), or it turns non-finite,
    while the others go on. Then a root finder's converged samples are checked for
    continuous stability (:mod:`~eqprop.solvers.stability`): one that landed where
    some ``Re μ ≥ 0`` (a source or saddle, which the hardware would leave) gets the
    status ``unstable``. Between two host checks the loop runs ``check_every`` steps
    entirely on the device (masks by ``torch.where``, residuals written into a
    preallocated trace), so the result does not depend on ``check_every``; only the
    wall time does (a finished batch may idle up to ``check_every - 1`` steps).

    Args:
        F: batched field (any callable; a :class:`~eqprop.fields.Field` for NFE costs).
        z0: initial state ``(B, ...)``.
        solver: a :class:`Solver`.
        tol: relative residual at which a sample counts as converged.
        max_steps: step budget.
        trace: keep the residual (and ε) traces in the solution.
        check_every: look for "all done" on the host every k steps (fewer syncs).
        scale: per-sample ``(B,)`` normaliser of the residual, replacing ``‖z‖`` in
            ``g``; e.g. the size of a nudge, so that a small nudge is still resolved.
        capture: on CUDA, record ``check_every`` steps once as a CUDA graph and replay
            it (no kernel-launch gaps); needs a solver with ``capturable = True`` and an
            ``F`` that never synchronises with the host. Ignored on CPU.
        atol: absolute residual at which a sample counts as converged; None:
            ``tol · (‖z0‖ + ‖F(z0)‖)`` per sample; ``inf``: no absolute test.
        stability: ``"auto"`` checks the converged samples of solvers that do not
            follow the flow (root finders, implicit steps, Anderson); ``"always"``
            every finite sample of every solver; ``"never"`` skips the check.

    Returns:
        A :class:`Solution`.
    """
    from .relaxation import Relaxation  # the loop, its buffers and CUDA graphs

    # one-off: a graph is recorded for this call and released after it (no reuse)
    return Relaxation(solver, tol=tol, max_steps=max_steps, check_every=check_every,
                      capture=capture, atol=atol, stability=stability).run(
        F, z0, scale=scale, trace=trace, reuse=False)
