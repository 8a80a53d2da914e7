"""Solver settings as a dataclass and the name -> solver registry (the CLI edge).

:class:`SolverConfig` holds what every relaxation has (name, tolerance, budget, host
checks, CUDA graphs, the stability check) and one section per solver: the selected
solver's section is the one used (``--solver.anderson.m 6``, ``[solver.anderson]``).
A section is the solver dataclass itself where its fields are plain values (Euler,
Anderson, Broyden, Newton–Krylov, IMEX), else a
:class:`~eqprop.solvers.base.SolverSettings` that builds it; each validates itself.
Adding a solver: its class, a line in :data:`SOLVERS` and its section in
:class:`SolverConfig`.

Configs written before the sections existed said the settings once for all solvers
(``solver.eps``, ``solver.anderson_m``, ...); :func:`migrate_flat` turns them into
sections when such a config is loaded.
"""

from __future__ import annotations

from dataclasses import dataclass, field, fields, replace
from typing import Any

from ..errors import ConfigError
from ..validate import boolean, choice, integer, positive
from .adaptive import AdaptiveConfig
from .anderson import Anderson
from .base import Solver, SolverSettings
from .broyden import Broyden
from .euler import Euler
from .implicit import IMEX, ImplicitConfig, PTCConfig
from .newton_krylov import NewtonKrylov
from .ode import ODEConfig
from .relaxation import Relaxation
from .stability import MODES as STABILITY_MODES

__all__ = ["CAPTURABLE", "FLAT_SETTINGS", "SOLVERS", "SolverConfig", "build_relaxation",
           "build_solver", "migrate_flat", "solver_class"]

#: config name -> the class of its section (a solver, or the settings that build one)
SOLVERS: dict[str, type] = {
    "euler": Euler,
    "adaptive": AdaptiveConfig,
    "anderson": Anderson,
    "broyden": Broyden,
    "newton": NewtonKrylov,
    "implicit": ImplicitConfig,
    "ptc": PTCConfig,
    "imex": IMEX,
    "ode": ODEConfig,
}


def solver_class(name: str) -> type[Solver]:
    """The solver class that the section ``name`` of :data:`SOLVERS` gives."""
    section = SOLVERS[name]
    return section.solver if issubclass(section, SolverSettings) else section


#: solvers whose step never synchronises with the host (``Solver.capturable``)
CAPTURABLE = tuple(name for name in SOLVERS if solver_class(name).capturable)


@dataclass
class SolverConfig:
    """How to relax one phase (the free phase, the nudged phases of an estimator, or
    the reference solve of validation).

    Args:
        name: which solver (see ``SOLVERS``): euler, adaptive (Euler with a
            controller), anderson, broyden (limited-memory Broyden root finding),
            newton (Newton–Krylov), implicit (backward Euler),
            ptc (pseudo-transient continuation: backward Euler with SER-grown h),
            imex, ode (the continuous-time reference). Its section below is used.
        tol: relative residual ``‖F‖/‖z‖`` that counts as converged.
        max_steps: step budget.
        check_every: the host looks at the convergence masks every k steps; the steps
            between run without a host synchronisation.
        capture: on CUDA, record ``check_every`` steps as one CUDA graph and replay it
            (euler, adaptive, anderson and broyden; ignored on CPU). See ``relax``.
        stability: after the solve, check that converged samples sit at a
            continuous-stable point (``eqprop.solvers.stability``): ``auto`` for solvers
            that do not follow the flow (anderson, broyden, newton, implicit, ptc, imex),
            ``always``, or ``never``. A sample on a source or saddle becomes ``unstable``.
        euler: explicit Euler's fixed step ε.
        adaptive: Euler with a per-sample ε chosen by a controller.
        anderson: Anderson acceleration of the Euler map.
        broyden: limited-memory Broyden root finding.
        newton: Newton–Krylov root finding.
        implicit: backward Euler.
        ptc: pseudo-transient continuation.
        imex: IMEX Euler (the leak implicit).
        ode: the continuous-time reference.
    """

    name: str = "euler"
    tol: float = 1e-4
    max_steps: int = 100
    check_every: int = 1
    capture: bool = False
    stability: str = "auto"
    euler: Euler = field(default_factory=Euler)
    adaptive: AdaptiveConfig = field(default_factory=AdaptiveConfig)
    anderson: Anderson = field(default_factory=Anderson)
    broyden: Broyden = field(default_factory=Broyden)
    newton: NewtonKrylov = field(default_factory=NewtonKrylov)
    implicit: ImplicitConfig = field(default_factory=ImplicitConfig)
    ptc: PTCConfig = field(default_factory=PTCConfig)
    imex: IMEX = field(default_factory=IMEX)
    ode: ODEConfig = field(default_factory=ODEConfig)

    def __post_init__(self) -> None:
        choice("solver", "name", self.name, SOLVERS)
        positive("solver", "tol", self.tol)
        integer("solver", "max_steps", self.max_steps)
        integer("solver", "check_every", self.check_every)
        boolean("solver", "capture", self.capture)
        choice("solver", "stability", self.stability, STABILITY_MODES)
        if self.capture and self.name not in CAPTURABLE:
            raise ConfigError(f"solver capture=True with name={self.name!r}: CUDA-graph capture "
                              f"is available for {', '.join(CAPTURABLE)}")
        for name, cls in SOLVERS.items():
            if not isinstance(getattr(self, name), cls):
                raise ConfigError(f"solver.{name}={getattr(self, name)!r}: must be a "
                                  f"{cls.__name__}")

    @property
    def section(self) -> Any:
        """The selected solver's settings (the section named by ``name``)."""
        return getattr(self, self.name)

    @property
    def eps(self) -> float:
        """The Euler step ε this relaxation stands for, which diagnostics compare with
        ε_crit: the selected solver's ε (adaptive: its first ε); for a solver without one
        (newton, implicit, ptc, imex, ode), the ``euler`` section's."""
        return float(getattr(self.section, "eps", self.euler.eps))


def build_solver(cfg: SolverConfig) -> Solver:
    """The solver a :class:`SolverConfig` names, from its section."""
    section = cfg.section
    if isinstance(section, SolverSettings):
        return section.build(cfg.tol)
    return replace(section)  # a solver dataclass is its own settings: a copy


def _with(setting: str) -> list[tuple[str, str]]:
    return [(name, setting) for name, cls in SOLVERS.items()
            if setting in {f.name for f in fields(cls)}]


#: the settings of the flat format (one ``SolverConfig`` for all solvers, before the
#: sections) -> where each lives now: ``(section, setting)``. The one ε and the one h
#: were shared by every solver that has one, and go to each of them.
FLAT_SETTINGS: dict[str, list[tuple[str, str]]] = {
    "eps": _with("eps"),
    "h": _with("h"),
    "controller": [("adaptive", "controller")],
    "eps_min": [("adaptive", "eps_min")],
    "eps_max": [("adaptive", "eps_max")],
    "controller_rtol": [("adaptive", "rtol")],
    "anderson_m": [("anderson", "m")],
    "anderson_beta": [("anderson", "beta")],
    "anderson_lam": [("anderson", "lam")],
    "anderson_restart": [("anderson", "restart_growth")],
    "broyden_m": [("broyden", "m")],
    "ode_rtol": [("ode", "rtol")],
}


def migrate_flat(values: dict[str, Any]) -> dict[str, Any]:
    """A solver config's settings in the flat format -> the same in sections.

    ``{"name": "anderson", "eps": 0.4, "anderson_m": 3}`` becomes ``{"name": "anderson",
    "euler": {"eps": 0.4}, "adaptive": {"eps": 0.4}, "anderson": {"eps": 0.4, "m": 3},
    "broyden": {"eps": 0.4}}``: every solver that the old setting applied to gets it,
    so the config relaxes as before. A setting already given in its section wins.
    Settings of the new format pass through unchanged.
    """
    out = {k: v for k, v in values.items() if k not in FLAT_SETTINGS}
    for old, targets in FLAT_SETTINGS.items():
        if old not in values:
            continue
        for section, setting in targets:
            node = out.get(section, {})
            if isinstance(node, dict):  # (anything else: apply_overrides says what is wrong)
                out[section] = {setting: values[old], **node}
    return out



def build_relaxation(cfg: SolverConfig, *, solver: Solver | None = None,
                     stability: str | None = None, capture: bool | None = None) -> Relaxation:
    """The :class:`~eqprop.solvers.relaxation.Relaxation` a :class:`SolverConfig` describes:
    its solver, ``tol``, ``max_steps``, ``check_every``, ``capture`` and ``stability`` (the
    one way the library turns solver settings into the object that relaxes).

    Args:
        cfg: the solver settings.
        solver: the solver to use instead of building ``cfg``'s (e.g. one the wall guard
            swapped in).
        stability: replaces ``cfg.stability`` (e.g. ``"always"`` where every sample's
            stability is reported).
        capture: replaces ``cfg.capture`` (e.g. False where every call has a new shape,
            so that a recorded CUDA graph would never be replayed).
    """
    return Relaxation(build_solver(cfg) if solver is None else solver, tol=cfg.tol,
                      max_steps=cfg.max_steps, check_every=cfg.check_every,
                      capture=cfg.capture if capture is None else capture,
                      stability=cfg.stability if stability is None else stability)
