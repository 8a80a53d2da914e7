"""A :class:`~eqprop.solvers.relaxation.Relaxation` from solver settings: the one way the
library turns a :class:`~eqprop.solvers.registry.SolverConfig` (a run's free phase, the
validation reference) into the object that relaxes."""

from __future__ import annotations

from ..solvers.registry import SolverConfig, build_solver
from ..solvers.relaxation import Relaxation

__all__ = ["relaxation"]


def relaxation(cfg: SolverConfig, *, stability: str | None = None,
               capture: bool | None = None) -> Relaxation:
    """The relaxation ``cfg`` describes: its solver, ``tol``, ``max_steps``,
    ``check_every``, ``capture`` and ``stability``.

    Args:
        cfg: the solver settings.
        stability: replaces ``cfg.stability`` (e.g. ``"always"`` where every sample's
            stability is reported).
        capture: replaces ``cfg.capture`` (e.g. False where every call has a new shape,
            so that a recorded CUDA graph would never be replayed).
    """
    return Relaxation(build_solver(cfg), tol=cfg.tol, max_steps=cfg.max_steps,
                      check_every=cfg.check_every,
                      capture=cfg.capture if capture is None else capture,
                      stability=cfg.stability if stability is None else stability)
