"""Regularizer interface: a penalty on the Jacobian at the free equilibrium (design §4).

A regularizer returns ``R(θ)``, a scalar computed at ``z*`` with z* detached (the
penalty shapes the field around the equilibrium the model has, it does not move
z*); the training loop adds ``weight · R`` to the estimator's surrogate, so one
``backward()`` fills ``.grad`` with both. Every penalty here is a Hutchinson
estimate with Gaussian probes ``v ~ N(0, I)``, one independent probe per sample.
"""

from __future__ import annotations

from abc import ABC, abstractmethod
from dataclasses import dataclass
from typing import TYPE_CHECKING

import torch
from torch import Tensor

from ..errors import ConfigError
from ..fields import Field
from .adaptive import AdaptiveWeight

if TYPE_CHECKING:
    from ..solvers.stability import RitzModes

__all__ = ["Regularizer", "probes"]


def probes(z_star: Tensor, generator: torch.Generator | None = None) -> Tensor:
    """One Gaussian probe ``v ~ N(0, I)`` per sample, shape and dtype of ``z_star`` ``(B, ...)``."""
    return torch.randn(z_star.shape, generator=generator, dtype=z_star.dtype,
                       device=z_star.device)


@dataclass
class Regularizer(ABC):
    """A Jacobian penalty with a fixed or adaptive weight.

    Subclasses define :meth:`penalty`. The weight is ``weight`` when ``adaptive`` is None,
    else ``adaptive.weight``, updated by :meth:`update` once per training step.

    Args:
        weight: the fixed weight (≥ 0); ignored when ``adaptive`` is set.
        n_probes: Gaussian probes per sample (the estimate's variance falls as 1/n_probes).
        adaptive: an :class:`AdaptiveWeight` controller, or None for a fixed weight.
        samples: evaluate the penalty on the batch's first ``samples`` samples only (0: the
            whole batch). The Hutchinson estimate stays unbiased (the batch is shuffled)
            and its cost falls in proportion: a JVP with its graph to the parameters costs
            several F evaluations a sample.
    """

    weight: float = 1e-2
    n_probes: int = 1
    adaptive: AdaptiveWeight | None = None
    samples: int = 0

    def __post_init__(self) -> None:
        name = type(self).__name__
        if isinstance(self.samples, bool) or not isinstance(self.samples, int) \
                or self.samples < 0:
            raise ConfigError(f"{name}(samples={self.samples!r}): must be an integer ≥ 0 "
                              "(0: the whole batch)")
        if isinstance(self.weight, bool) or not isinstance(self.weight, (int, float)) \
                or not self.weight >= 0:
            raise ConfigError(f"{name}(weight={self.weight!r}): must be a number ≥ 0")
        if isinstance(self.n_probes, bool) or not isinstance(self.n_probes, int) \
                or self.n_probes < 1:
            raise ConfigError(f"{name}(n_probes={self.n_probes!r}): must be an integer ≥ 1")
        self.last_value: float | None = None

    @abstractmethod
    def penalty(self, field: Field, z_star: Tensor, generator: torch.Generator | None = None,
                modes: RitzModes | None = None) -> Tensor:
        """The penalty ``R(θ)`` at ``z_star`` ``(B, ...)`` (detached inside): a scalar
        differentiable in the parameters, averaged over samples and probes.

        Args:
            field: the field bound to the batch.
            z_star: the free equilibrium ``(B, ...)``, real.
            generator: source of the probes (None: the global RNG).
            modes: the free phase's stability check at ``z_star`` (``Solution.modes``), or
                None; a penalty on the leading mode (:class:`~.abscissa.Abscissa`) reuses
                its Arnoldi steps, the Hutchinson penalties ignore it.

        Returns:
            A scalar tensor.
        """

    @property
    def current_weight(self) -> float:
        """The weight the loss term uses now."""
        return self.weight if self.adaptive is None else self.adaptive.weight

    def term(self, field: Field, z_star: Tensor, generator: torch.Generator | None = None,
             modes: RitzModes | None = None) -> Tensor:
        """``current_weight · penalty``, the scalar to add to the surrogate; records the
        penalty's value for :meth:`metrics`. Skips the work when the weight is 0. Arguments
        as :meth:`penalty`."""
        w = self.current_weight
        if w == 0:
            self.last_value = None
            return z_star.new_zeros(()).real
        if 0 < self.samples < z_star.shape[0] and (sub := field.head(self.samples)) is not None:
            n = self.samples
            field, z_star, modes = sub, z_star[:n], None if modes is None else modes[:n]
        R = self.penalty(field, z_star, generator, modes)
        self.last_value = float(R.detach())
        return w * R

    def update(self, converged_fraction: float, eps_margin: float | None) -> float:
        """Feed one step's health to the adaptive weight (no-op when fixed); return the weight.

        Args:
            converged_fraction: fraction of the batch's relaxations that converged.
            eps_margin: ``1 - ε/ε_crit`` of the free phase, or None when not measured.
        """
        if self.adaptive is not None:
            self.adaptive.update(converged_fraction, eps_margin)
        return self.current_weight

    def metrics(self) -> dict[str, float]:
        """What to log: the last penalty value (when computed) and the current weight."""
        out = {"reg_weight": self.current_weight}
        if self.last_value is not None:
            out["reg_value"] = self.last_value
        return out


def _check_real(z_star: Tensor, name: str) -> Tensor:
    if z_star.is_complex():
        raise ValueError(f"{name}: the penalty is defined at a real equilibrium z*; got complex")
    return z_star.detach()
