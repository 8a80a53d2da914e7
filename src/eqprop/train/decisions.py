"""What a controller tells the trainer to do: a :class:`Decision`.

The wall guard (:mod:`eqprop.train.guard`) and the stability controller
(:mod:`eqprop.train.stability`) observe the run and decide; neither touches the trainer.
The trainer applies a decision in one place
(:meth:`~eqprop.train.trainer.Trainer.apply`), for a live escalation and for the
escalations re-applied on resume alike.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Any

if TYPE_CHECKING:  # the config imports the controllers, which import this module
    from .config import TrainConfig

__all__ = ["Decision", "phase_eps"]


def phase_eps(cfg: TrainConfig) -> dict[str, float]:
    """The ε of each phase's solver where it has one, by dotted setting:
    ``{"solver.anderson.eps": 0.5, "estimator.nudge.anderson.eps": 0.5}``."""
    out = {}
    for where, sc in (("solver", cfg.solver), ("estimator.nudge", cfg.estimator.nudge)):
        if hasattr(sc.section, "eps"):
            out[f"{where}.{sc.name}.eps"] = float(sc.section.eps)
    return out


@dataclass
class Decision:
    """One controller's verdict after a step (every field may be empty: nothing to do).

    Attributes:
        changes: settings to change, ``{"solver.euler.eps": 1.25, ...}`` (dotted config
            paths, absolute values: applying them again changes nothing); the solver,
            estimator and regularizer hooks are rebuilt from the changed config.
        weight: the penalty's weight for the next step (the stability controller's).
        stop: why the run stops now (None: it goes on).
        events: the events to log in ``metrics.jsonl``, in order.
        metrics: floats for this step's record.
    """

    changes: dict[str, Any] = field(default_factory=dict)
    weight: float | None = None
    stop: str | None = None
    events: list[dict[str, Any]] = field(default_factory=list)
    metrics: dict[str, float] = field(default_factory=dict)

    def then(self, later: Decision) -> Decision:
        """This decision followed by ``later``: later values win, events in order."""
        return Decision(changes={**self.changes, **later.changes},
                        weight=later.weight if later.weight is not None else self.weight,
                        stop=later.stop or self.stop, events=self.events + later.events,
                        metrics={**self.metrics, **later.metrics})
