"""Explicit Euler with a per-sample step size chosen by a controller (design §2)."""

from __future__ import annotations

from dataclasses import dataclass, field, fields, replace
from typing import ClassVar

import torch
from torch import Tensor

from ..errors import ConfigError
from ..fields import FieldFn
from ..validate import choice, positive
from .base import Solver, SolverSettings, SolverState, bcast, sample_norm
from .controllers import CONTROLLERS, Controller, HeunPI, memory

__all__ = ["AdaptiveConfig", "AdaptiveEuler"]


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
        positive(self, "eps0", self.eps0)

    def init(self, F: FieldFn, z0: Tensor) -> SolverState:
        state = super().init(F, z0)
        eps, aux = memory.start(self.controller, torch.full(
            (z0.shape[0],), float(self.eps0), dtype=z0.real.dtype, device=z0.device))  # (B,)
        return replace(state, eps=eps, aux=aux)

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
        f_new_norm, z_new_norm = sample_norm(f_new), sample_norm(z_new)
        decision, aux = memory.decide(self.controller, state.aux, eps, f_norm=sample_norm(f),
                                      f_new_norm=f_new_norm, z_norm=sample_norm(z),
                                      z_new_norm=z_new_norm, err=err)
        accept = decision.accept & torch.isfinite(f_new_norm) & torch.isfinite(z_new_norm)
        keep = bcast(accept, z)
        return SolverState(z=torch.where(keep, z_new, z), f=torch.where(keep, f_new, f),
                           nfe=self.charge(state, F, calls), eps=decision.eps, aux=aux)


@dataclass
class AdaptiveConfig(SolverSettings):
    """Settings of :class:`AdaptiveEuler` with a controller named in a config.

    Args:
        controller: the step-size controller (see
            ``eqprop.solvers.controllers.CONTROLLERS``).
        eps: the first ε of every sample.
        eps_min: smallest ε the controller may choose.
        eps_max: largest ε the controller may choose.
        rtol: local error per unit step length allowed by the error controllers (pi,
            doubling); None keeps the controller's default.
    """

    solver: ClassVar[type[Solver]] = AdaptiveEuler

    controller: str = "pi"
    eps: float = 0.5
    eps_min: float = 1e-3
    eps_max: float = 2.0
    rtol: float | None = None

    def __post_init__(self) -> None:
        choice(self, "controller", self.controller, CONTROLLERS)
        positive(self, "eps", self.eps)
        cls = CONTROLLERS[self.controller]
        if self.rtol is not None and "rtol" not in {f.name for f in fields(cls)}:
            having = ", ".join(n for n, c in CONTROLLERS.items()
                               if "rtol" in {f.name for f in fields(c)})
            raise ConfigError(f"AdaptiveConfig(rtol={self.rtol!r}): controller "
                              f"{self.controller!r} has no rtol: must be None, or choose a "
                              f"controller that has one ({having})")
        self.build(tol=1.0)  # the controller and the solver validate the rest

    def build(self, tol: float) -> AdaptiveEuler:
        extra = {} if self.rtol is None else {"rtol": self.rtol}
        controller = CONTROLLERS[self.controller](eps_min=self.eps_min, eps_max=self.eps_max,
                                                  **extra)
        return AdaptiveEuler(controller, eps0=self.eps)
