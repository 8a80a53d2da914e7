"""Regularizer settings as a dataclass and the name -> regularizer registry (the CLI edge)."""

from __future__ import annotations

import math
from collections.abc import Callable
from dataclasses import dataclass, field

from ..errors import ConfigError
from ..validate import interval
from .abscissa import Abscissa
from .adaptive import AdaptiveWeight
from .base import Regularizer
from .homeostasis import Homeostasis
from .jacreg import JacReg

__all__ = ["REGULARIZERS", "AdaptiveConfig", "RegularizerConfig", "build_regularizer"]


@dataclass
class AdaptiveConfig:
    """Knobs of the adaptive weight (see :class:`AdaptiveWeight` for the policy).

    Args:
        w_min: floor of the weight.
        w_max: ceiling of the weight.
        grow: factor on an unhealthy step (relaxations failing or ε_crit margin thin).
        decay: factor on a healthy step.
        target_converged: converged fraction below which a step is unhealthy.
        min_margin: ``1 - ε/ε_crit`` below which a step is unhealthy.
    """

    w_min: float = 1e-4
    w_max: float = 10.0
    grow: float = 2.0
    decay: float = 0.98
    target_converged: float = 0.99
    min_margin: float = 0.2


@dataclass
class RegularizerConfig:
    """Which Jacobian penalty is added to the training loss, and how strongly.

    Args:
        name: one of ``REGULARIZERS``: none (default), jacreg, homeostasis, abscissa
            (a hinge on the leading eigenvalue's real part, :class:`Abscissa`).
        weight: the fixed weight, or the adaptive weight's starting value.
        adaptive: let the weight follow the relaxation health (see :class:`AdaptiveWeight`).
        n_probes: Gaussian probes per sample and step.
        samples: evaluate the penalty on this many samples of each batch (0: all).
        adapt: the adaptive weight's knobs (used when ``adaptive``).
        margin: abscissa only: the penalty is 0 while the leading ``Re μ < -margin``.
    """

    name: str = "none"
    weight: float = 1e-2
    adaptive: bool = False
    n_probes: int = 1
    samples: int = 0
    adapt: AdaptiveConfig = field(default_factory=AdaptiveConfig)
    margin: float = 0.1

    def __post_init__(self) -> None:
        if self.name not in REGULARIZERS:
            raise ConfigError(f"regularizer name={self.name!r}: allowed values are "
                              f"{', '.join(REGULARIZERS)}")
        if isinstance(self.weight, bool) or not isinstance(self.weight, (int, float)) \
                or not self.weight >= 0:
            raise ConfigError(f"regularizer weight={self.weight!r}: must be a number ≥ 0")
        if not isinstance(self.adaptive, bool):
            raise ConfigError(f"regularizer adaptive={self.adaptive!r}: must be true or false")
        if isinstance(self.n_probes, bool) or not isinstance(self.n_probes, int) \
                or self.n_probes < 1:
            raise ConfigError(f"regularizer n_probes={self.n_probes!r}: must be an integer ≥ 1")
        if isinstance(self.samples, bool) or not isinstance(self.samples, int) \
                or self.samples < 0:
            raise ConfigError(f"regularizer samples={self.samples!r}: must be an integer ≥ 0 "
                              "(0: the whole batch)")
        interval("regularizer", "margin", self.margin, 0.0, math.inf, hi_open=True)
        if self.adaptive and self.name != "none":
            self.weight_controller()  # validate the knobs now, with the config's names

    def weight_controller(self) -> AdaptiveWeight | None:
        """The :class:`AdaptiveWeight` these settings describe (None when fixed)."""
        if not self.adaptive:
            return None
        a = self.adapt
        try:
            return AdaptiveWeight(init=self.weight, w_min=a.w_min, w_max=a.w_max, grow=a.grow,
                                  decay=a.decay, target_converged=a.target_converged,
                                  min_margin=a.min_margin)
        except ConfigError as err:
            raise ConfigError(f"regularizer adapt: {err}") from None


REGULARIZERS: dict[str, Callable[[RegularizerConfig], Regularizer | None]] = {
    "none": lambda c: None,
    "jacreg": lambda c: JacReg(weight=c.weight, n_probes=c.n_probes,
                               adaptive=c.weight_controller(), samples=c.samples),
    "homeostasis": lambda c: Homeostasis(weight=c.weight, n_probes=c.n_probes,
                                         adaptive=c.weight_controller(), samples=c.samples),
    "abscissa": lambda c: Abscissa(weight=c.weight, adaptive=c.weight_controller(),
                                   samples=c.samples, margin=c.margin),
}


def build_regularizer(cfg: RegularizerConfig) -> Regularizer | None:
    """The regularizer a config names, or None for ``name="none"``."""
    return REGULARIZERS[cfg.name](cfg)
