"""Training hooks built from the config: the regularizer penalty, stability tracking and
gradient-fidelity tracking.

One :class:`ConfigHooks` object joins them, because the adaptive regularizer weight
(design §4) reacts to both the free phase's converged fraction (every step) and
the ε_crit margin ``1 - ε/ε_crit`` (each time stability is tracked).
"""

from __future__ import annotations

import math
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

__all__ = ["ConfigHooks"]


class ConfigHooks:
    """Penalty and tracker hooks for the :class:`~eqprop.train.loop.Trainer`.

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

    @property
    def active(self) -> bool:
        return self.reg is not None or self.tracking.every > 0 or self.fidelity is not None

    def penalty(self, field: LMField, z_star: Tensor, sol: Solution) -> Tensor | None:
        """``weight · R(z*)``; first feeds the adaptive weight with this step's health."""
        if self.reg is None:
            return None
        self.reg.update(self.sync.mean(float(sol.converged.float().mean())), self.margin)
        return self.reg.term(field, z_star)

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
