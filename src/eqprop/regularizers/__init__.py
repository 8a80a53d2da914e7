"""Regularizers: Jacobian penalties at the free equilibrium (design §4)."""

from .abscissa import Abscissa
from .adaptive import AdaptiveWeight
from .base import Regularizer, probes
from .homeostasis import Homeostasis
from .jacreg import JacReg
from .registry import REGULARIZERS, AdaptiveConfig, RegularizerConfig, build_regularizer

__all__ = ["REGULARIZERS", "Abscissa", "AdaptiveConfig", "AdaptiveWeight", "Homeostasis", "JacReg",
           "Regularizer", "RegularizerConfig", "build_regularizer", "probes"]
