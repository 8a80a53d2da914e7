"""A relaxation as an object: solver + stopping rule + its buffers and CUDA graphs.

:class:`Relaxation` is built once and run many times: every caller that relaxes
(training phases, estimators, validation, sampling, diagnostics, benchmarks) holds
one. On CUDA with ``capture=True`` and a field that declares its inputs
(:meth:`~eqprop.fields.Field.static_inputs`), it records two CUDA graphs the first
time it meets a shape and replays them for every later batch of that shape:

- the *prologue*: the field's :meth:`~eqprop.fields.Field.refresh` (e.g. the nudged
  field's linearisation at z*) and the loop's start (``F(z0)``, residuals, masks);
- the *chunk*: ``check_every`` masked solver steps;
- the *check* (when the solver's end points are checked for stability): the Arnoldi
  steps at the end point (:func:`~eqprop.solvers.stability.arnoldi`); only the small
  Hessenberg matrices come to the host, for their eigenvalues.

Each call copies the new batch's inputs (and ``z0``, ``scale``) into the static
buffers that the graphs read, replays the prologue, then replays the chunk until
every sample is done or the budget is spent (one host check per chunk). Steps past
the budget are masked on the device, so the result equals the eager loop's
(z, steps, NFE, status: tested on the GPU). The parameters are read in place, so
an optimizer that updates them in place (every torch optimizer) needs no re-capture.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any

import torch
from torch import Tensor

from ..fields import Field, FieldFn
from .base import Solution, Solver
from .criterion import Tolerance
from .loop import Loop, advance, copy_into, fall_back, run_loop, start
from .stability import (
    KRYLOV_DIM,
    Krylov,
    arnoldi,
    check_mode,
    check_relaxation,
    checks,
    probe,
    start_vector,
)
from .status import classify

__all__ = ["Relaxation", "to_solution"]


def to_solution(loop: Loop, tol: Tolerance, trace: bool, clone: bool = False) -> Solution:
    """The :class:`Solution` of a finished loop (``clone``: copy out of static buffers)."""
    c = (lambda v: v.clone()) if clone else (lambda v: v)
    S = int(loop.steps.max()) + 1 if loop.steps.numel() else 1
    residuals = loop.res[:, :S]  # (B, S)
    B = loop.state.z.shape[0]
    finite = torch.isfinite(loop.r_rel) & torch.isfinite(loop.state.z.reshape(B, -1)).all(1)
    converged = tol.met(loop.r_abs, loop.r_rel, loop.res[:, 0], loop.norms[:, 0])
    status = classify(residuals, converged=converged, finite=finite, norms=loop.norms[:, :S])
    return Solution(
        z=c(loop.state.z), status=status, steps=c(loop.steps), nfe=c(loop.state.nfe),
        residual=c(loop.r_abs), rel_residual=c(loop.r_rel),
        residual_trace=residuals.clone() if trace else None,
        eps_trace=loop.eps[:, :S].clone() if trace and loop.eps is not None else None,
    )


@dataclass
class _Replay:
    """The static buffers and the two graphs of one shape."""

    field: Field  # the graphs' own copy of the field (its inputs are refilled per call)
    inputs: list[Tensor]  # field.static_inputs(): the buffers that are refilled
    z0: Tensor
    scale: Tensor | None
    loop: Loop
    prologue: torch.cuda.CUDAGraph
    chunk: torch.cuda.CUDAGraph
    stream: torch.cuda.Stream
    check: torch.cuda.CUDAGraph | None  # the stability check's Arnoldi steps
    krylov: Krylov | None  # what the check graph leaves
    probe: Tensor | None  # the random part of the check's start (a buffer its graph reads)


def _layout(tensors: list[Tensor | None]) -> tuple:
    return tuple(None if t is None else (tuple(t.shape), t.dtype, t.device) for t in tensors)


@dataclass
class Relaxation:
    """Relax ``dz/dt = F(z)`` to an equilibrium, every sample on its own (design §2).

    A sample stops once its relative residual ``g = ‖F(z)‖/‖z‖ ≤ tol`` and its absolute
    residual ``‖F(z)‖ ≤ atol`` (:mod:`~eqprop.solvers.criterion`), or it turns
    non-finite; the others go on. Between two host checks the loop runs
    ``check_every`` steps entirely on the device, so the result does not depend on
    ``check_every``, only the wall time does. Then the converged samples of a solver
    that does not follow the flow are checked for continuous stability
    (:mod:`~eqprop.solvers.stability`): one on a source or saddle becomes ``unstable``.

    Args:
        solver: the :class:`~eqprop.solvers.base.Solver` that steps.
        tol: relative residual at which a sample counts as converged (> 0).
        atol: absolute residual at which a sample counts as converged; None:
            ``tol · (‖z0‖ + ‖F(z0)‖)`` per sample; ``inf``: no absolute test.
        stability: ``"auto"`` (the converged samples of solvers that do not follow the
            flow), ``"always"`` (every finite sample) or ``"never"``.
        max_steps: step budget (≥ 0).
        max_nfe: evaluation budget per sample (None: only ``max_steps``); a sample stops
            after the step that reaches it.
        check_every: look for "all done" on the host every k steps (≥ 1).
        capture: on CUDA, record the loop as CUDA graphs (see the module docstring);
            needs a solver with ``capturable = True`` and an ``F`` that never
            synchronises with the host. Ignored on CPU. A field without
            ``static_inputs`` is recorded anew on every call.
    """

    solver: Solver
    tol: float = 1e-5
    max_steps: int = 500
    check_every: int = 1
    capture: bool = False
    atol: float | None = None
    stability: str = "auto"
    max_nfe: int | None = None
    _graphs: dict[tuple, _Replay] = field(default_factory=dict, init=False, repr=False)
    _failed: set[tuple] = field(default_factory=set, init=False, repr=False)

    def __post_init__(self) -> None:
        if not isinstance(self.solver, Solver):
            raise TypeError(f"Relaxation(solver={self.solver!r}): expected a Solver")
        self._tol = Tolerance(self.tol, self.atol)  # validates both
        check_mode(self.stability)
        if isinstance(self.max_steps, bool) or not (isinstance(self.max_steps, int)
                                                     and self.max_steps >= 0):
            raise ValueError(f"max_steps={self.max_steps!r}: must be an integer ≥ 0")
        if isinstance(self.check_every, bool) or not (isinstance(self.check_every, int)
                                                       and self.check_every >= 1):
            raise ValueError(f"check_every={self.check_every!r}: must be an integer ≥ 1")
        if self.max_nfe is not None and (isinstance(self.max_nfe, bool) or not (
                isinstance(self.max_nfe, int) and self.max_nfe >= 1)):
            raise ValueError(f"max_nfe={self.max_nfe!r}: must be an integer ≥ 1 or None")
        if self.capture and not self.solver.capturable:
            raise ValueError(f"capture=True: {type(self.solver).__name__} synchronises with "
                             "the host and cannot be captured (capturable solvers: Euler, "
                             "AdaptiveEuler, Anderson, Broyden)")

    def run(self, F: FieldFn, z0: Tensor, *, scale: Tensor | None = None,
            trace: bool = False, reuse: bool = True) -> Solution:
        """Relax from ``z0`` ``(B, ...)``; runs without building an autograd graph.

        Args:
            F: batched field (any callable; a :class:`~eqprop.fields.Field` for NFE costs
                and for graph reuse).
            z0: initial state ``(B, ...)``.
            scale: per-sample ``(B,)`` normaliser of the residual, replacing ``‖z‖`` in
                ``g``; e.g. the size of a nudge, so that a small nudge is still resolved.
            trace: keep the residual (and ε) traces in the solution.
            reuse: keep the recorded graphs for later calls of the same shape (False: a
                graph recorded for this call alone, released after it).
        """
        with torch.no_grad():
            inputs = F.static_inputs() if isinstance(F, Field) else None
            if reuse and self.capture and z0.is_cuda and inputs is not None:
                return self._replayed(F, inputs, z0, scale, trace)
            return self._once(F, z0, scale, trace, capture=self.capture and z0.is_cuda)

    def _once(self, F: FieldFn, z0: Tensor, scale: Tensor | None, trace: bool,
              capture: bool) -> Solution:
        """The loop run for this call alone (a graph, if any, recorded and released)."""
        loop = run_loop(F, z0, self.solver, tol=self._tol, max_steps=self.max_steps,
                        check_every=self.check_every, scale=scale, capture=capture,
                        max_nfe=self.max_nfe)
        sol = to_solution(loop, self._tol, trace)
        return check_relaxation(F, sol, self.solver, self.stability, f=loop.state.f)

    __call__ = run

    def release(self) -> None:
        """Drop every recorded graph and its buffers (their memory returns to the cache)."""
        for r in self._graphs.values():
            for g in (r.prologue, r.chunk, r.check):
                if g is not None:
                    g.reset()
        self._graphs.clear()

    # -- the replayed path -----------------------------------------------------------
    def _key(self, F: Field, inputs: list[Tensor], z0: Tensor, scale: Tensor | None) -> tuple:
        return (type(F), F.static_key(), _layout([z0, scale]), _layout(list(inputs)))

    def _replayed(self, F: Field, inputs: list[Tensor], z0: Tensor, scale: Tensor | None,
                  trace: bool) -> Solution:
        key = self._key(F, inputs, z0, scale)
        if key in self._failed:
            return self._once(F, z0, scale, trace, capture=False)
        r = self._graphs.get(key)
        caller = torch.cuda.current_stream(z0.device)
        if r is None:
            try:
                r = self._record(F, inputs, z0, scale)
            except RuntimeError as e:  # an F or a kernel that needs the host
                fall_back("Relaxation", self.solver, z0, e)
                self._failed.add(key)  # not tried again for this shape
                return self._once(F, z0, scale, trace, capture=False)
            self._graphs[key] = r
        r.stream.wait_stream(caller)
        with torch.cuda.stream(r.stream):
            for dst, src in zip(r.inputs, inputs, strict=True):
                dst.copy_(src)
            r.z0.copy_(z0)
            if scale is not None:
                r.scale.copy_(scale)
            r.prologue.replay()
            t = 0
            while t < self.max_steps and bool(r.loop.active.any()):
                r.chunk.replay()
                t += self.check_every
            sol = to_solution(r.loop, self._tol, trace, clone=True)
            kr = r.krylov
            if r.check is not None:
                r.check.replay()  # the solution keeps the basis (its modes): out of the buffer
                kr = Krylov(kr.H, kr.k, kr.V.clone())
            sol = check_relaxation(F, sol, self.solver, self.stability, krylov=kr)
        caller.wait_stream(r.stream)
        for v in _tensors(sol):
            v.record_stream(caller)
        return sol

    def _record(self, F: Field, inputs: list[Tensor], z0: Tensor,
                scale: Tensor | None) -> _Replay:
        stream = torch.cuda.Stream(device=z0.device)
        stream.wait_stream(torch.cuda.current_stream(z0.device))
        k, solver = self.check_every, self.solver
        with torch.cuda.stream(stream):
            F = F.static_copy()  # the graphs read its buffers, never the caller's tensors
            inputs = F.static_inputs()
            z0_s = z0.clone()
            scale_s = None if scale is None else scale.clone()
            # warm-up on the side stream (lazy initialisations must not happen in capture)
            F.refresh()
            warm = start(F, z0_s, solver, self._tol, self.max_steps, scale_s, k)
            advance(F, solver, warm, k, self._tol, self.max_steps, scale_s, self.max_nfe)
            del warm
            stream.synchronize()
            prologue = torch.cuda.CUDAGraph()
            prologue.capture_begin()
            try:
                F.refresh()
                loop = start(F, z0_s, solver, self._tol, self.max_steps, scale_s, k)
            finally:
                prologue.capture_end()
            chunk = torch.cuda.CUDAGraph()
            chunk.capture_begin()
            try:
                copy_into(loop, advance(F, solver, loop, k, self._tol, self.max_steps,
                                        scale_s, self.max_nfe))
            finally:
                chunk.capture_end()
            check, krylov, v0 = None, None, None
            if checks(solver, self.stability):
                z, f = loop.state.z, loop.state.f
                m, v0 = min(KRYLOV_DIM, z[0].numel()), probe(z)
                arnoldi(F, z, f, start_vector(f, v0), m)  # warm-up
                stream.synchronize()
                check = torch.cuda.CUDAGraph()
                check.capture_begin()
                try:
                    krylov = arnoldi(F, z, f, start_vector(f, v0), m)
                finally:
                    check.capture_end()
        return _Replay(field=F, inputs=list(inputs), z0=z0_s, scale=scale_s, loop=loop,
                       prologue=prologue, chunk=chunk, stream=stream, check=check,
                       krylov=krylov, probe=v0)


def _tensors(sol: Solution) -> list[Any]:
    extra = [] if sol.modes is None else [sol.modes.V]  # made on the replay's stream too
    return [v for v in vars(sol).values() if isinstance(v, Tensor)] + extra
