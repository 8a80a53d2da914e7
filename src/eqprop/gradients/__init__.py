"""Gradient estimators: each turns an equilibrium into a surrogate scalar."""

from .base import Estimator, EstimatorResult, surrogate
from .bptt import BPTT
from .ep import EP, AsymEP
from .fidelity import estimate_grads, gradient_cosine, grads_of
from .holo_ep import HoloEP
from .ift import IFT
from .nudged import NudgedField

__all__ = ["BPTT", "EP", "IFT", "AsymEP", "Estimator", "EstimatorResult", "HoloEP",
           "NudgedField", "estimate_grads", "gradient_cosine", "grads_of", "surrogate"]
