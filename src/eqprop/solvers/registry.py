"""Solver settings as a dataclass and the name -> solver registry (the CLI edge)."""

from __future__ import annotations

import math
from collections.abc import Callable
from dataclasses import dataclass, fields

from ..errors import ConfigError
from .adaptive import AdaptiveEuler
from .anderson import Anderson
from .base import Solver
from .broyden import Broyden
from .controllers import CONTROLLERS, SER
from .euler import Euler
from .implicit import IMEX, ImplicitEuler
from .newton_krylov import NewtonKrylov
from .ode import ODE
from .stability import MODES as STABILITY_MODES

__all__ = ["CAPTURABLE", "SOLVERS", "SolverConfig", "build_solver"]


@dataclass
class SolverConfig:
    """How to relax one phase (the free phase, or the nudged phases of an estimator).

    Args:
        name: which solver (see ``SOLVERS``): euler, adaptive (Euler with a
            controller), anderson, broyden (limited-memory Broyden root finding),
            newton (Newton–Krylov), implicit (backward Euler),
            ptc (pseudo-transient continuation: backward Euler with SER-grown h),
            imex, ode (the continuous-time reference).
        eps: step size ε (euler; the first ε of adaptive; the ε of anderson's map;
            broyden's initial inverse Jacobian -εI).
        tol: relative residual ``‖F‖/‖z‖`` that counts as converged.
        max_steps: step budget.
        controller: step-size controller of adaptive (see
            ``eqprop.solvers.controllers.CONTROLLERS``).
        eps_min: smallest ε the controller may choose.
        eps_max: largest ε the controller may choose.
        controller_rtol: local error per unit step length allowed by the error
            controllers (pi, doubling); None keeps each controller's default.
        anderson_m: anderson's history size.
        anderson_beta: anderson's mixing, in (0, 1].
        anderson_lam: anderson's ridge, relative to the history.
        anderson_restart: residual growth that makes anderson restart its history.
        broyden_m: broyden's history size (the inverse Jacobian's rank before a
            restart); memory ``2 · broyden_m`` states per sample.
        h: time step of implicit and imex; the first h of ptc.
        ode_rtol: local error of the ode reference, relative to ``RMS(F)``.
        check_every: the host looks at the convergence masks every k steps; the steps
            between run without a host synchronisation.
        capture: on CUDA, record ``check_every`` steps as one CUDA graph and replay it
            (euler, adaptive, anderson and broyden; ignored on CPU). See ``relax``.
        stability: after the solve, check that converged samples sit at a
            continuous-stable point (``eqprop.solvers.stability``): ``auto`` for solvers
            that do not follow the flow (anderson, broyden, newton, implicit, ptc, imex),
            ``always``, or ``never``. A sample on a source or saddle becomes ``unstable``.
    """

    name: str = "euler"
    eps: float = 0.5
    tol: float = 1e-4
    max_steps: int = 200
    controller: str = "pi"
    eps_min: float = 1e-3
    eps_max: float = 2.0
    controller_rtol: float | None = None
    anderson_m: int = 5
    anderson_beta: float = 1.0
    anderson_lam: float = 1e-4
    anderson_restart: float = 2.0
    broyden_m: int = 100
    h: float = 1.0
    ode_rtol: float = 1e-6
    check_every: int = 1
    capture: bool = False
    stability: str = "auto"

    def __post_init__(self) -> None:
        if self.name not in SOLVERS:
            raise ConfigError(f"solver name={self.name!r}: allowed values are {', '.join(SOLVERS)}")
        if self.controller not in CONTROLLERS:
            raise ConfigError(f"solver controller={self.controller!r}: allowed values are "
                              f"{', '.join(CONTROLLERS)}")
        for name in ("eps", "tol", "eps_min", "eps_max", "h", "ode_rtol"):
            v = getattr(self, name)
            if isinstance(v, bool) or not isinstance(v, (int, float)) or not 0 < v < math.inf:
                raise ConfigError(f"solver {name}={v!r}: must be a finite number > 0")
        if not (isinstance(self.max_steps, int) and self.max_steps >= 1):
            raise ConfigError(f"solver max_steps={self.max_steps!r}: must be an integer ≥ 1")
        r = self.controller_rtol
        if r is not None and not (isinstance(r, (int, float)) and 0 < r < math.inf):
            raise ConfigError(f"solver controller_rtol={r!r}: must be a finite number > 0 "
                              "(or None for the controller's default)")
        if self.eps_min > self.eps_max:
            raise ConfigError(f"solver eps_min={self.eps_min} > eps_max={self.eps_max}: "
                              "eps_max must be ≥ eps_min")
        if isinstance(self.check_every, bool) or not isinstance(self.check_every, int) \
                or self.check_every < 1:
            raise ConfigError(f"solver check_every={self.check_every!r}: must be an integer ≥ 1")
        if self.stability not in STABILITY_MODES:
            raise ConfigError(f"solver stability={self.stability!r}: allowed values are "
                              f"{', '.join(STABILITY_MODES)}")
        if self.capture and self.name not in CAPTURABLE:
            raise ConfigError(f"solver capture=True with name={self.name!r}: CUDA-graph capture "
                              f"is available for {', '.join(CAPTURABLE)}")
        if not (isinstance(self.anderson_m, int) and self.anderson_m >= 1):
            raise ConfigError(f"solver anderson_m={self.anderson_m!r}: must be an integer ≥ 1")
        if not 0 < self.anderson_beta <= 1:
            raise ConfigError(f"solver anderson_beta={self.anderson_beta!r}: must lie in (0, 1]")
        if not self.anderson_lam >= 0:
            raise ConfigError(f"solver anderson_lam={self.anderson_lam!r}: must be ≥ 0")
        if not self.anderson_restart >= 1:
            raise ConfigError(f"solver anderson_restart={self.anderson_restart!r}: must be ≥ 1")
        if isinstance(self.broyden_m, bool) or not isinstance(self.broyden_m, int) \
                or self.broyden_m < 1:
            raise ConfigError(f"solver broyden_m={self.broyden_m!r}: must be an integer ≥ 1")


def _adaptive(c: SolverConfig) -> Solver:
    cls = CONTROLLERS[c.controller]
    extra = {}
    if c.controller_rtol is not None:
        if "rtol" not in {f.name for f in fields(cls)}:
            raise ConfigError(f"solver controller_rtol={c.controller_rtol}: controller "
                              f"{c.controller!r} has no rtol (only pi and doubling do)")
        extra["rtol"] = c.controller_rtol
    return AdaptiveEuler(cls(eps_min=c.eps_min, eps_max=c.eps_max, **extra), eps0=c.eps)


def _ptc(c: SolverConfig) -> Solver:
    # Ψtc: one Newton correction per time step, h grown by SER (Kelley & Keyes 1998)
    return ImplicitEuler(h=c.h, max_newton=1, gmres_tol=1e-2, restart=30, max_krylov=60,
                         controller=SER(eps_min=min(c.h, 1e-2), eps_max=1e6, safety=1.0,
                                        factor_max=4.0))


SOLVERS: dict[str, Callable[[SolverConfig], Solver]] = {
    "euler": lambda c: Euler(eps=c.eps),
    "adaptive": _adaptive,
    "anderson": lambda c: Anderson(m=c.anderson_m, beta=c.anderson_beta, lam=c.anderson_lam,
                                   eps=c.eps, restart_growth=c.anderson_restart),
    "broyden": lambda c: Broyden(m=c.broyden_m, eps=c.eps),
    "newton": lambda c: NewtonKrylov(),
    "implicit": lambda c: ImplicitEuler(h=c.h),
    "ptc": _ptc,
    "imex": lambda c: IMEX(h=c.h),
    "ode": lambda c: ODE(rtol=c.ode_rtol, tol=c.tol),
}


#: solvers whose step never synchronises with the host (``Solver.capturable``)
CAPTURABLE = ("euler", "adaptive", "anderson", "broyden")


def build_solver(cfg: SolverConfig) -> Solver:
    """The solver a :class:`SolverConfig` names."""
    return SOLVERS[cfg.name](cfg)
