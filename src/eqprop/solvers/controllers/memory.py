"""A controller inside a solver's state: its per-sample memory in ``SolverState.aux``.

The solvers that let a controller pick their step (adaptive Euler's ε, implicit
Euler's h) keep its memory in ``state.aux`` under the prefix ``ctl.``, so that
:func:`~eqprop.solvers.base.relax` freezes a finished sample's memory with the rest
of its state. These two functions are the only place that prefix is read or written.
"""

from __future__ import annotations

from torch import Tensor

from .base import Controller, Decision, StepInfo

__all__ = ["PREFIX", "start", "decide"]

PREFIX = "ctl."


def start(controller: Controller, eps0: Tensor) -> tuple[Tensor, dict[str, Tensor]]:
    """The first step size ``(B,)`` clipped to the controller's range, and the ``aux``
    entries of its initial memory."""
    eps = controller.clip(eps0)
    return eps, {PREFIX + k: v for k, v in controller.init(eps).items()}


def decide(controller: Controller, aux: dict[str, Tensor], eps: Tensor, *, f_norm: Tensor,
           f_new_norm: Tensor, z_norm: Tensor, z_new_norm: Tensor,
           err: Tensor | None = None) -> tuple[Decision, dict[str, Tensor]]:
    """The controller's decision on a trial step taken with ``eps`` ``(B,)`` (the norms
    ``(B,)`` of :class:`StepInfo`), and ``aux`` with its memory updated."""
    memory = {k[len(PREFIX):]: v for k, v in aux.items() if k.startswith(PREFIX)}
    info = StepInfo(eps=eps, f_norm=f_norm, f_new_norm=f_new_norm, z_norm=z_norm,
                    z_new_norm=z_new_norm, err=err, memory=memory)
    decision = controller.propose(eps, info)
    return decision, {**aux, **{PREFIX + k: v for k, v in decision.memory.items()}}
