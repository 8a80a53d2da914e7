"""The trainer's per-step extension points: one list of :class:`Hook` objects.

A hook may add a penalty to the surrogate (:meth:`Hook.penalty`) and floats to the
step's record (:meth:`Hook.track`); the trainer calls each in one place of its step,
hook by hook in list order. The user's ``penalty`` and ``trackers`` callables are
wrapped as :class:`PenaltyHook` and :class:`TrackerHook`; the config-built ones (the
regularizer penalty, stability tracking and gradient-fidelity tracking) are one
:class:`ConfigHooks` object, because the adaptive regularizer weight
(design §4) reacts to both the free phase's converged fraction (every step) and
the ε_crit margin ``1 - ε/ε_crit`` (each time stability is tracked).
"""

from __future__ import annotations

import math
from collections.abc import Callable
from typing import TYPE_CHECKING, Any

from torch import Tensor, nn

from ..diagnostics.tracking import StabilityTracking, track_fidelity
from ..gradients import Estimator
from ..gradients.registry import BACKPROP, build_estimator
from ..models import LMField
from ..regularizers import Regularizer, RegularizerConfig, build_regularizer
from ..solvers import Solution
from .distributed import DistContext

if TYPE_CHECKING:
    from .config import TrainConfig

__all__ = ["ConfigHooks", "Hook", "Penalty", "PenaltyHook", "Tracker", "TrackerHook"]

#: ``penalty(field, z_star, sol) -> scalar`` added to the surrogate (e.g. jacreg)
Penalty = Callable[[LMField, Tensor, Solution], Tensor]
#: ``tracker(model, field, z_star, step) -> {name: float}`` merged into the metrics record
Tracker = Callable[[nn.Module, LMField, Tensor, int], dict[str, float]]


class Hook:
    """One extension of the training step; both methods do nothing by default."""

    def penalty(self, field: LMField, z_star: Tensor, sol: Solution) -> Tensor | None:
        """A scalar added to the estimator's surrogate (None: no penalty this step)."""
        return None

    def track(self, model: nn.Module, field: LMField, z_star: Tensor,
              step: int) -> dict[str, float]:
        """Floats merged into the step's record (``{}`` on the steps it skips); ``z_star``
        is detached, ``step`` the number of the step just done."""
        return {}


class PenaltyHook(Hook):
    """A user's :data:`Penalty` callable as a hook."""

    def __init__(self, fn: Penalty):
        self.fn = fn

    def penalty(self, field: LMField, z_star: Tensor, sol: Solution) -> Tensor | None:
        return self.fn(field, z_star, sol)


class TrackerHook(Hook):
    """A user's :data:`Tracker` callable as a hook."""

    def __init__(self, fn: Tracker):
        self.fn = fn

    def track(self, model: nn.Module, field: LMField, z_star: Tensor,
              step: int) -> dict[str, float]:
        return self.fn(model, field, z_star, step)


class ConfigHooks(Hook):
    """The config's penalty and tracking, a hook of the
    :class:`~eqprop.train.trainer.Trainer`.

    Args:
        regularizer: which penalty (``name="none"`` for none).
        tracking: when and how to measure ε_crit and the critical mode.
        eps: the free phase's step ε (for the ε_crit margin).
        sync: under ``torchrun``, the ranks' context: the adaptive weight is fed the
            converged fraction averaged over the ranks and the smallest ε_crit of all,
            so that every rank keeps the same weight.
        fidelity: the estimator whose cosine to IFT is measured every
            ``tracking.fidelity_every`` steps (None: not measured).
    """

    def __init__(self, regularizer: RegularizerConfig, tracking: StabilityTracking, eps: float,
                 sync: DistContext | None = None, fidelity: Estimator | None = None):
        self.reg: Regularizer | None = build_regularizer(regularizer)
        self.tracking = tracking
        self.eps = eps
        self.sync = sync or DistContext()
        self.fidelity = fidelity
        self.margin: float | None = None

    @classmethod
    def from_config(cls, cfg: TrainConfig, sync: DistContext | None = None) -> ConfigHooks:
        """The hooks a training config asks for (the fidelity tracker gets its own copy of
        the training estimator)."""
        fidelity = None
        if cfg.tracking.fidelity_every and cfg.estimator.name != BACKPROP:
            fidelity = build_estimator(cfg.estimator, cfg.solver)
        return cls(cfg.regularizer, cfg.tracking, cfg.solver.eps, sync=sync, fidelity=fidelity)

    def rebuilt(self, cfg: TrainConfig) -> ConfigHooks:
        """The hooks of a changed config, this one's state carried over (an adaptive
        weight raised to the config's new floor)."""
        hooks = ConfigHooks.from_config(cfg, sync=self.sync)
        hooks.load_state_dict(self.state_dict())
        if hooks.reg is not None and hooks.reg.adaptive is not None:
            a = hooks.reg.adaptive
            a.w_min = cfg.regularizer.adapt.w_min
            a.weight = min(max(a.weight, a.w_min), a.w_max)
        return hooks

    @property
    def active(self) -> bool:
        return self.reg is not None or self.tracking.every > 0 or self.fidelity is not None

    def penalty(self, field: LMField, z_star: Tensor, sol: Solution) -> Tensor | None:
        """``weight · R(z*)``; first feeds the adaptive weight with this step's health."""
        if self.reg is None:
            return None
        self.reg.update(self.sync.mean(float(sol.converged.float().mean())), self.margin)
        return self.reg.term(field, z_star, modes=sol.modes)

    def track(self, model: nn.Module, field: LMField, z_star: Tensor,
              step: int) -> dict[str, float]:
        """Stability when due (which also updates the ε_crit margin), gradient fidelity when
        due, regularizer state always."""
        out: dict[str, float] = {}
        if self.tracking.due(step):
            out.update(self.tracking.measure(model, field, z_star))
            ec = self.sync.min(out.get("eps_crit_min", math.nan))
            if "eps_crit_min" in out:
                out["eps_crit_min"] = ec
            if math.isnan(ec):
                self.margin = None
            else:  # ε_crit ≤ 0: no step size is stable, the thinnest margin there is
                self.margin = 1.0 - self.eps / ec if ec > 0 else -math.inf
        if self.fidelity is not None and self.tracking.fidelity_due(step):
            out.update(track_fidelity(model, field, z_star, self.fidelity,
                                      samples=self.tracking.samples))
        if self.reg is not None:
            out.update(self.reg.metrics())
        return out

    def state_dict(self) -> dict[str, Any]:
        """What a checkpoint must hold for an exact resume."""
        state: dict[str, Any] = {"margin": self.margin}
        if self.reg is not None and self.reg.adaptive is not None:
            state["weight"] = self.reg.adaptive.state_dict()
        return state

    def load_state_dict(self, state: dict[str, Any]) -> None:
        self.margin = state.get("margin")
        if "weight" in state and self.reg is not None and self.reg.adaptive is not None:
            self.reg.adaptive.load_state_dict(state["weight"])
