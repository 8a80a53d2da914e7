"""Explicit Euler with a per-sample step size chosen by a controller (design §2)."""

from __future__ import annotations

from dataclasses import dataclass, field, replace
from typing import ClassVar

import torch
from torch import Tensor

from ..errors import ConfigError
from ..fields import FieldFn
from .base import Solver, SolverState, bcast, sample_norm
from .controllers import Controller, HeunPI, StepInfo

__all__ = ["AdaptiveEuler"]

_PREFIX = "ctl."  # controller memory lives in SolverState.aux under this prefix


@dataclass
class AdaptiveEuler(Solver):
    """``z ← z + ε_b F(z)`` with ε per sample; the controller decides ε, this class only steps.

    Each step is a trial: the solver measures what the controller asks for
    (residuals before and after, and a local error estimate when
    ``controller.error_estimate`` is ``"heun"`` (free: it reuses ``F(z_new)``) or
    ``"doubling"`` (two half steps, one extra evaluation)), the controller answers
    with the next ε and whether to keep the step. A non-finite trial is never kept.
    ε lives in ``state.eps`` ``(B,)``, the controller's memory in ``state.aux``.

    Args:
        controller: a :class:`~eqprop.solvers.controllers.Controller` (default: the
            embedded Euler–Heun PI controller, the one that follows the flow most
            cheaply in ``benchmarks/results/solvers_cpu.md``).
        eps0: first ε of every sample (clipped to the controller's range).
    """

    capturable: ClassVar[bool] = True
    follows_flow: ClassVar[bool] = True

    controller: Controller = field(default_factory=HeunPI)
    eps0: float = 0.1

    def __post_init__(self) -> None:
        if not isinstance(self.controller, Controller):
            raise ConfigError(f"AdaptiveEuler(controller={self.controller!r}): must be a "
                              "Controller from eqprop.solvers.controllers")
        if not (isinstance(self.eps0, (int, float)) and self.eps0 > 0):
            raise ConfigError(f"AdaptiveEuler(eps0={self.eps0!r}): must be a number > 0")

    def init(self, F: FieldFn, z0: Tensor) -> SolverState:
        state = super().init(F, z0)
        eps = self.controller.clip(torch.full((z0.shape[0],), float(self.eps0),
                                              dtype=z0.real.dtype, device=z0.device))  # (B,)
        memory = self.controller.init(eps)
        return replace(state, eps=eps, aux={_PREFIX + k: v for k, v in memory.items()})

    def step(self, F: FieldFn, state: SolverState) -> SolverState:
        z, f, eps = state.z, state.f, state.eps  # (B, ...), (B, ...), (B,)
        e = bcast(eps, z)
        kind = self.controller.error_estimate
        if kind == "doubling":  # two half steps; err estimates the half-step solution's error
            z_half = z + 0.5 * e * f
            f_half = F(z_half)
            z_new = z_half + 0.5 * e * f_half
            err = sample_norm(0.5 * e * (f_half - f))  # = ‖z_new - (z + εf)‖
            calls = 2
        else:
            z_new = z + e * f
            err = None
            calls = 1
        f_new = F(z_new)
        if kind == "heun":  # ‖z_Heun - z_Euler‖ = ε/2 ‖F(z_new) - F(z)‖
            err = sample_norm(0.5 * e * (f_new - f))
        memory = {k[len(_PREFIX):]: v for k, v in state.aux.items() if k.startswith(_PREFIX)}
        info = StepInfo(eps=eps, f_norm=sample_norm(f), f_new_norm=sample_norm(f_new),
                        z_norm=sample_norm(z), z_new_norm=sample_norm(z_new), err=err,
                        memory=memory)
        decision = self.controller.propose(eps, info)
        accept = decision.accept & torch.isfinite(info.f_new_norm) & torch.isfinite(
            info.z_new_norm)
        keep = bcast(accept, z)
        aux = dict(state.aux)
        aux.update({_PREFIX + k: v for k, v in decision.memory.items()})
        return SolverState(z=torch.where(keep, z_new, z), f=torch.where(keep, f_new, f),
                           nfe=self.charge(state, F, calls), eps=decision.eps, aux=aux)
