"""What a diagnostic examines: an equilibrium model, or a loaded run of one.

A loaded run (:func:`eqprop.train.load_run`) also brings the settings its diagnostics
default to: the run's free-phase solver.
"""

from __future__ import annotations

from typing import TYPE_CHECKING

from ..errors import ConfigError
from ..models import EquilibriumLM, StandardLM
from ..solvers.registry import SolverConfig

if TYPE_CHECKING:  # the training package imports the diagnostics: no cycle at import time
    from ..train.loaded import LoadedRun

__all__ = ["subject"]


def subject(model_or_run: EquilibriumLM | LoadedRun,
            who: str) -> tuple[EquilibriumLM, SolverConfig | None]:
    """``(model, the run's free-phase solver settings or None)``; a ConfigError naming
    ``who`` for anything else (the feed-forward baseline has no equilibrium)."""
    from ..train.loaded import LoadedRun

    if isinstance(model_or_run, LoadedRun):
        model, solver = model_or_run.model, model_or_run.config.solver
    else:
        model, solver = model_or_run, None
    if isinstance(model, StandardLM) or not isinstance(model, EquilibriumLM):
        raise ConfigError(f"{who}: expected an EquilibriumLM or a loaded run of one, got "
                          f"{type(model).__name__} (the feed-forward baseline has no "
                          "equilibrium)")
    return model, solver
