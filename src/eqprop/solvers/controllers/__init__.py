"""Step-size controllers of :class:`~eqprop.solvers.adaptive.AdaptiveEuler` (design §2).

A controller decides ε per sample; the solver only steps. ``CONTROLLERS`` maps the
names used in configs to the classes.
"""

from .base import (
    Controller,
    Decision,
    ErrorController,
    MultiplicativeController,
    StepInfo,
    scaled_error,
)
from .doubling import StepDoubling
from .ema import EMAOvershoot
from .naive import Naive
from .noise import NoiseRelative
from .overshoot import Overshoot
from .pi import HeunPI
from .ser import SER

#: config name -> controller class (the CLI edge)
CONTROLLERS: dict[str, type[Controller]] = {
    "naive": Naive,
    "overshoot": Overshoot,
    "ema": EMAOvershoot,
    "noise": NoiseRelative,
    "doubling": StepDoubling,
    "pi": HeunPI,
    "ser": SER,
}

__all__ = ["CONTROLLERS", "SER", "Controller", "Decision", "EMAOvershoot", "ErrorController",
           "HeunPI", "MultiplicativeController", "Naive", "NoiseRelative", "Overshoot",
           "StepDoubling", "StepInfo", "scaled_error"]
