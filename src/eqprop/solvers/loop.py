"""The device-side relaxation loop behind :func:`~eqprop.solvers.base.relax`, and its CUDA graph.

Everything a step needs lives on the device: the solver state, the per-sample
``active`` mask, step counters, the step index ``t`` and preallocated traces
written with ``index_copy_``. So ``k`` steps run without a host synchronisation,
and on CUDA those ``k`` steps can be recorded once as a CUDA graph and replayed:
one launch instead of ``k`` × (kernels per step). The host only looks at the
masks between chunks of ``k`` steps.
"""

from __future__ import annotations

import warnings
from dataclasses import dataclass, replace

import torch
from torch import Tensor

from ..fields import FieldFn
from .base import Solver, SolverState, sample_norm
from .criterion import Tolerance

__all__ = ["CaptureFallback", "Loop", "advance", "capture_fallbacks", "copy_into", "fall_back",
           "run_loop", "start"]

_FALLBACKS: list[str] = []  # every capture failure of this process, oldest first


class CaptureFallback(UserWarning):
    """A relaxation that was to be recorded as a CUDA graph runs eagerly instead (several
    times slower at the study size: every kernel is launched from the host)."""


def fall_back(who: str, solver: Solver, z0: Tensor, error: Exception) -> None:
    """Log and warn (:class:`CaptureFallback`) that ``who``'s capture failed."""
    msg = (f"{who}: CUDA-graph capture failed, running eagerly ({type(solver).__name__} on a "
           f"state of shape {tuple(z0.shape)}: {str(error).splitlines()[0]})")
    _FALLBACKS.append(msg)
    warnings.warn(msg, CaptureFallback, stacklevel=4)


def capture_fallbacks() -> tuple[str, ...]:
    """The messages of every capture failure in this process so far, oldest first (the
    trainer logs new ones as ``capture_failed`` events)."""
    return tuple(_FALLBACKS)


@dataclass
class Loop:
    """Device-side state of ``relax`` after ``t`` loop steps (every tensor ``(B, ...)``)."""

    state: SolverState
    active: Tensor  # (B,) bool: not converged, finite, still stepping
    steps: Tensor  # (B,) long: steps taken while active
    t: Tensor  # () long: loop steps so far
    r_abs: Tensor  # (B,) ‖F(z)‖
    r_rel: Tensor  # (B,) g = ‖F(z)‖ / normaliser
    res: Tensor  # (B, max_steps+k+1) g per step (k more columns than the budget: a chunk
    #              of k masked steps past the budget writes its columns harmlessly)
    norms: Tensor  # (B, max_steps+k+1) normaliser per step (‖z‖ or the given scale)
    eps: Tensor | None  # (B, max_steps+k+1) ε per step, when the solver has one

    def tensors(self) -> list[Tensor]:
        """Every tensor, in a fixed order (for copying into a graph's static buffers)."""
        s = self.state
        out = [s.z, s.f, s.nfe, self.active, self.steps, self.t, self.r_abs, self.r_rel,
               self.res, self.norms]
        out += [v for v in (s.eps, self.eps) if v is not None]
        return out + [s.aux[k] for k in sorted(s.aux)]

    def layout(self) -> tuple:
        """What must not change between two chunks for a graph to be replayed."""
        return tuple((tuple(v.shape), v.dtype) for v in self.tensors()) + tuple(
            sorted(self.state.aux))


def _measure(loop: Loop, tol: Tolerance, scale: Tensor | None) -> Loop:
    """Residuals of the current state, written into the traces at ``t``; update ``active``
    (a sample stops once it meets ``tol``, relative and absolute, or turns non-finite)."""
    r_abs = sample_norm(loop.state.f)  # (B,)
    denom = sample_norm(loop.state.z) if scale is None else scale  # (B,)
    # a zero state (or scale) has no relative size: judge its absolute residual
    r_rel = torch.where(denom > 0, r_abs / denom.clamp_min(torch.finfo(r_abs.dtype).tiny), r_abs)
    col = loop.t.reshape(1)
    loop.res.index_copy_(1, col, r_rel[:, None])
    loop.norms.index_copy_(1, col, torch.where(denom > 0, denom, 1.0)[:, None].to(r_abs.dtype))
    if loop.eps is not None and loop.state.eps is not None:
        loop.eps.index_copy_(1, col, loop.state.eps[:, None].to(loop.eps.dtype))
    met = tol.met(r_abs, r_rel, loop.res[:, 0], loop.norms[:, 0])  # column 0: the start
    active = loop.active & ~met & torch.isfinite(r_rel)
    return replace(loop, active=active, r_abs=r_abs, r_rel=r_rel)


def start(F: FieldFn, z0: Tensor, solver: Solver, tol: Tolerance, max_steps: int,
          scale: Tensor | None, check_every: int) -> Loop:
    """The loop at ``t = 0``: the solver's initial state and its residuals."""
    state = solver.init(F, z0)
    B, dev = z0.shape[0], z0.device
    rdtype = z0.real.dtype
    trace = torch.zeros(B, max_steps + check_every + 1, dtype=rdtype, device=dev)
    loop = Loop(state=state, active=torch.ones(B, dtype=torch.bool, device=dev),
                steps=torch.zeros(B, dtype=torch.long, device=dev),
                t=torch.zeros((), dtype=torch.long, device=dev),
                r_abs=torch.zeros(B, dtype=rdtype, device=dev),
                r_rel=torch.zeros(B, dtype=rdtype, device=dev),
                res=trace, norms=trace.clone(),
                eps=trace.clone() if state.eps is not None else None)
    return _measure(loop, tol, scale)


def advance(F: FieldFn, solver: Solver, loop: Loop, n: int, tol: Tolerance, max_steps: int,
            scale: Tensor | None, max_nfe: int | None = None) -> Loop:
    """``n`` masked steps: inactive samples, and every sample once ``t`` reaches
    ``max_steps``, keep their state, NFE and step count (so a chunk may overrun the
    budget on the device without changing the result). With ``max_nfe`` a sample also
    stops once it has spent that many evaluations (the step that crosses it is kept)."""
    for _ in range(n):
        go = loop.active & (loop.t < max_steps)  # (B,)
        state = loop.state.where(go, solver.step(F, loop.state))
        loop = replace(loop, state=state, steps=loop.steps + go, t=loop.t + 1)
        loop = _measure(loop, tol, scale)
        if max_nfe is not None:
            loop = replace(loop, active=loop.active & (loop.state.nfe < max_nfe))
    return loop


def copy_into(static: Loop, new: Loop) -> None:
    """Write ``new``'s tensors into ``static``'s (same layout), in place."""
    if new.layout() != static.layout():
        raise RuntimeError("the solver state changes shape between steps")
    for dst, src in zip(static.tensors(), new.tensors(), strict=True):
        if dst is not src:
            dst.copy_(src)


class _Graph:
    """``k`` steps recorded once as a CUDA graph; ``replay`` advances ``static`` in place."""

    def __init__(self, F: FieldFn, solver: Solver, static: Loop, k: int, tol: Tolerance,
                 max_steps: int, scale: Tensor | None, stream: torch.cuda.Stream,
                 max_nfe: int | None = None) -> None:
        self.static = static
        self.graph = torch.cuda.CUDAGraph()
        # capture_begin/end rather than torch.cuda.graph(), which also runs gc.collect() on
        # entry: tens of milliseconds in a large process, paid on every relax call
        stream.synchronize()  # the warm-up chunk is done before recording starts
        self.graph.capture_begin()
        try:
            copy_into(static, advance(F, solver, static, k, tol, max_steps, scale, max_nfe))
        finally:
            self.graph.capture_end()

    def replay(self) -> Loop:
        self.graph.replay()
        return self.static

    def release(self) -> None:
        """Give the graph's memory back now: without ``empty_cache`` the released private
        pools stay cached and the reserved memory grows per step (measured: docs/gpu.md)."""
        self.graph.reset()
        torch.cuda.empty_cache()


def run_loop(F: FieldFn, z0: Tensor, solver: Solver, *, tol: Tolerance, max_steps: int,
             check_every: int, scale: Tensor | None, capture: bool,
             max_nfe: int | None = None) -> Loop:
    """Run the loop of ``relax`` to the end; the host checks every ``check_every`` steps.

    With ``capture`` (CUDA only) the whole loop runs on a side stream (capture
    needs one; so any autograd graph that ``F`` records lazily, e.g. a VJP
    linearisation, is on the stream that replays it): the first full chunk runs
    eagerly (the warm-up CUDA graphs need), the next one is recorded and every
    further full chunk is a replay; a shorter last chunk runs eagerly. A capture
    that fails (an ``F`` that synchronises with the host) falls back to the eager
    loop with a warning.
    """
    if not capture:
        return _run(F, z0, solver, tol, max_steps, check_every, scale, None, max_nfe)
    caller = torch.cuda.current_stream(z0.device)
    stream = torch.cuda.Stream(device=z0.device)
    stream.wait_stream(caller)
    with torch.cuda.stream(stream):
        loop = _run(F, z0, solver, tol, max_steps, check_every, scale, stream, max_nfe)
    caller.wait_stream(stream)
    for v in loop.tensors():  # made on the side stream, used on the caller's
        v.record_stream(caller)
    return loop


def _run(F: FieldFn, z0: Tensor, solver: Solver, tol: Tolerance, max_steps: int, check_every: int,
         scale: Tensor | None, stream: torch.cuda.Stream | None,
         max_nfe: int | None = None) -> Loop:
    loop = start(F, z0, solver, tol, max_steps, scale, check_every)
    graph: _Graph | None = None
    t = 0
    try:
        while t < max_steps and bool(loop.active.any()):
            n = min(check_every, max_steps - t)
            if graph is not None and n == check_every:
                loop = graph.replay()
            else:
                loop = advance(F, solver, loop, n, tol, max_steps, scale, max_nfe)
                if stream is not None and n == check_every:  # that was the warm-up: record
                    try:
                        graph = _Graph(F, solver, loop, n, tol, max_steps, scale, stream,
                                       max_nfe)
                    except RuntimeError as e:
                        fall_back("relax", solver, z0, e)
                    stream = None
            t += n
    finally:
        if graph is not None:
            graph.release()
    return loop
