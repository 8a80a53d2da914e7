"""The adaptive regularizer weight: raised while relaxations fail or the ε_crit margin
is thin, decayed otherwise (design §4)."""

from __future__ import annotations

import math
from dataclasses import dataclass, field

from ..errors import ConfigError

__all__ = ["AdaptiveWeight"]


@dataclass
class AdaptiveWeight:
    """A multiplicative controller of a regularizer's weight, updated once per step.

    Policy, at every :meth:`update`:

    - **raise** (``weight ← min(weight · grow, w_max)``) when the step was unhealthy:
      the fraction of samples whose relaxation converged is below ``target_converged``,
      or the ε_crit margin ``eps_margin`` is known and below ``min_margin``;
    - **decay** (``weight ← max(weight · decay, w_min)``) otherwise.

    ``eps_margin`` is the relative distance of the step size to the critical step,
    ``1 - ε / ε_crit`` (0: on the edge, negative: beyond it, 1: far inside), measured
    by the diagnostics; pass None when it was not measured this step (only the
    converged fraction then decides). A weight that is raised fast and decays slowly
    (``grow = 2``, ``decay = 0.98``) reacts to failures within a few steps and releases
    the model over tens of steps once it is healthy again.

    Args:
        init: starting weight (≥ 0).
        w_min: floor of the weight (≥ 0).
        w_max: ceiling of the weight (≥ w_min).
        grow: factor applied on an unhealthy step (> 1).
        decay: factor applied on a healthy step (in (0, 1]).
        target_converged: converged fraction below which a step is unhealthy (in [0, 1]).
        min_margin: ε_crit margin below which a step is unhealthy.

    Attributes:
        weight: the current weight.
    """

    init: float = 1e-2
    w_min: float = 1e-4
    w_max: float = 10.0
    grow: float = 2.0
    decay: float = 0.98
    target_converged: float = 0.99
    min_margin: float = 0.2
    weight: float = field(init=False)

    def __post_init__(self) -> None:
        for name in ("init", "w_min", "w_max", "grow", "decay", "target_converged", "min_margin"):
            value = getattr(self, name)
            if isinstance(value, bool) or not isinstance(value, (int, float)) \
                    or not math.isfinite(value):
                raise ConfigError(f"AdaptiveWeight({name}={value!r}): must be a finite number")
        if not 0 <= self.w_min <= self.w_max:
            raise ConfigError(f"AdaptiveWeight(w_min={self.w_min}, w_max={self.w_max}): "
                              "need 0 ≤ w_min ≤ w_max")
        if not self.w_min <= self.init <= self.w_max:
            raise ConfigError(f"AdaptiveWeight(init={self.init}): must lie in "
                              f"[w_min, w_max] = [{self.w_min}, {self.w_max}]")
        if not self.grow > 1:
            raise ConfigError(f"AdaptiveWeight(grow={self.grow}): must be > 1")
        if not 0 < self.decay <= 1:
            raise ConfigError(f"AdaptiveWeight(decay={self.decay}): must be in (0, 1]")
        if not 0 <= self.target_converged <= 1:
            raise ConfigError(f"AdaptiveWeight(target_converged={self.target_converged}): "
                              "must be in [0, 1]")
        self.weight = float(self.init)

    def healthy(self, converged_fraction: float, eps_margin: float | None) -> bool:
        """Whether a step with these measurements counts as healthy (see the class policy)."""
        if converged_fraction < self.target_converged:
            return False
        return eps_margin is None or eps_margin >= self.min_margin

    def update(self, converged_fraction: float, eps_margin: float | None) -> float:
        """Apply one step of the policy and return the new weight.

        Args:
            converged_fraction: fraction in [0, 1] of the batch's relaxations that converged.
            eps_margin: ``1 - ε/ε_crit`` of the free phase, or None when not measured.

        Returns:
            The updated weight.
        """
        if not 0 <= converged_fraction <= 1:
            raise ValueError(f"converged_fraction={converged_fraction!r}: must be in [0, 1]")
        if eps_margin is not None and math.isnan(eps_margin):
            eps_margin = None  # an unmeasurable margin says nothing; the fraction decides
        if self.healthy(converged_fraction, eps_margin):
            self.weight = max(self.weight * self.decay, self.w_min)
        else:
            self.weight = min(self.weight * self.grow, self.w_max)
        return self.weight

    def state_dict(self) -> dict[str, float]:
        """The controller's memory (for checkpoints)."""
        return {"weight": self.weight}

    def load_state_dict(self, state: dict[str, float]) -> None:
        self.weight = float(state["weight"])
