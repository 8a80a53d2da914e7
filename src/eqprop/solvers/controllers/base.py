"""The controller interface: a controller decides ε, a solver only steps (design §2, §7).

:class:`~eqprop.solvers.adaptive.AdaptiveEuler` takes a trial step with the
current ε of every sample, hands the controller what it measured
(:class:`StepInfo`), and the controller answers with a :class:`Decision`: the
next ε per sample, whether to keep the trial step, and its updated memory.
Controllers hold no tensors themselves: their per-sample memory travels in
``SolverState.aux`` so that :func:`~eqprop.solvers.base.relax` can freeze
converged samples with the rest of the state.
"""

from __future__ import annotations

import math
from abc import ABC, abstractmethod
from dataclasses import dataclass, field
from typing import ClassVar

import torch
from torch import Tensor

from ...errors import ConfigError
from ...validate import interval, positive

__all__ = ["Controller", "Decision", "ErrorController", "MultiplicativeController", "StepInfo",
           "check_step_factors", "ratchet", "scaled_error"]


@dataclass
class StepInfo:
    """What the solver measured on one trial step ``z → z_new = z + ε F(z)``, per sample.

    Attributes:
        eps: ``(B,)`` the ε the trial step used.
        f_norm: ``(B,)`` ``‖F(z)‖`` before the step.
        f_new_norm: ``(B,)`` ``‖F(z_new)‖`` after it.
        z_norm: ``(B,)`` ``‖z‖``; ``z_new_norm`` likewise for ``z_new``.
        z_new_norm: ``(B,)``.
        err: ``(B,)`` local error estimate ``‖z_accurate - z_new‖`` when the controller
            asked for one (``Controller.error_estimate``), else None.
        memory: the controller's per-sample memory (as returned by its last decision).
    """

    eps: Tensor
    f_norm: Tensor
    f_new_norm: Tensor
    z_norm: Tensor
    z_new_norm: Tensor
    err: Tensor | None = None
    memory: dict[str, Tensor] = field(default_factory=dict)

    @property
    def ratio(self) -> Tensor:
        """Residual ratio ``‖F(z_new)‖ / ‖F(z)‖`` of the trial step ``(B,)`` (NaN if 0/0).

        The controllers compare residuals through this ratio of ``‖F‖``, not of
        ``g = ‖F‖/‖z‖``: at a fixed normaliser the two agree, but while ``‖z‖`` moves
        (early in a relaxation, or when the state blows up, where ``g → ‖J‖`` stays
        bounded) only ``‖F‖`` shows what Euler's step does to the residual.
        """
        return self.f_new_norm / self.f_norm


@dataclass
class Decision:
    """A controller's answer, per sample.

    Attributes:
        eps: ``(B,)`` ε of the next step, already inside ``[eps_min, eps_max]``.
        accept: ``(B,)`` bool, keep the trial step (False: redo it from the old z).
        memory: the updated per-sample memory, each tensor ``(B, ...)``.
    """

    eps: Tensor
    accept: Tensor
    memory: dict[str, Tensor] = field(default_factory=dict)


def check_step_factors(owner: object, safety: float, factor_min: float,
                       factor_max: float) -> None:
    """Validate the safety factor (in (0, 1]) and the range of the change of ε per step."""
    interval(owner, "safety", safety, 0.0, 1.0, lo_open=True)
    interval(owner, "factor_min", factor_min, 0.0, 1.0, lo_open=True, hi_open=True)
    interval(owner, "factor_max", factor_max, 1.0, math.inf, lo_open=True, hi_open=True)


@dataclass
class Controller(ABC):
    """Picks ε per sample from what a trial step measured. Subclasses are dataclasses.

    Args:
        eps_min: smallest ε the controller may propose (> 0).
        eps_max: largest ε (≥ eps_min).
    """

    eps_min: float = 1e-3
    eps_max: float = 2.0

    #: which local error estimate the solver must supply in ``StepInfo.err``:
    #: None, ``"heun"`` (embedded Euler–Heun, free) or ``"doubling"`` (two half steps)
    error_estimate: ClassVar[str | None] = None

    def __post_init__(self) -> None:
        positive(self, "eps_min", self.eps_min)
        positive(self, "eps_max", self.eps_max)
        if self.eps_max < self.eps_min:
            raise ConfigError(f"{type(self).__name__}(eps_min={self.eps_min}, "
                              f"eps_max={self.eps_max}): eps_max must be ≥ eps_min")

    def init(self, eps0: Tensor) -> dict[str, Tensor]:
        """Initial per-sample memory for a batch whose first ε is ``eps0`` ``(B,)``."""
        return {}

    @abstractmethod
    def propose(self, eps: Tensor, info: StepInfo) -> Decision:
        """Next ε per sample ``(B,)`` after a trial step taken with ``eps`` ``(B,)``."""

    def clip(self, eps: Tensor) -> Tensor:
        """``eps`` clamped to ``[eps_min, eps_max]``."""
        return eps.clamp(self.eps_min, self.eps_max)


@dataclass
class MultiplicativeController(Controller):
    """Shared settings of the controllers that shrink or grow ε by fixed factors.

    Args:
        shrink: factor applied to ε on a bad step, in (0, 1).
        grow: factor applied on a good step, > 1.
    """

    shrink: float = 0.5
    grow: float = 1.1

    def __post_init__(self) -> None:
        super().__post_init__()
        interval(self, "shrink", self.shrink, 0.0, 1.0, lo_open=True, hi_open=True)
        interval(self, "grow", self.grow, 1.0, math.inf, lo_open=True, hi_open=True)

    def apply(self, eps: Tensor, bad: Tensor) -> Tensor:
        """``eps·shrink`` where ``bad`` ``(B,)``, else ``eps·grow``, clipped."""
        return self.clip(torch.where(bad, eps * self.shrink, eps * self.grow))


@dataclass
class ErrorController(Controller):
    """Shared part of the controllers on a scaled local error ``e`` (accept when ``e ≤ 1``):
    settings, the ratcheted reference of :func:`scaled_error`, and the update

        ε ← ε · clip(safety · gain(e), factor_min, factor_max)

    where a rejected step shrinks ε by at least ``safety``. Subclasses define
    :meth:`gain` (and any memory it needs, via :meth:`init` and :meth:`remember`).

    Args:
        rtol: allowed local error per unit step length (see :func:`scaled_error`).
        safety: safety factor of the update, in (0, 1].
        factor_min, factor_max: range of the change of ε per step.
        eps_min, eps_max: see :class:`Controller`.
    """

    rtol: float = 0.1
    safety: float = 0.9
    factor_min: float = 0.2
    factor_max: float = 10.0

    def __post_init__(self) -> None:
        super().__post_init__()
        positive(self, "rtol", self.rtol)
        check_step_factors(self, self.safety, self.factor_min, self.factor_max)

    def init(self, eps0: Tensor) -> dict[str, Tensor]:
        return {"f_ref": torch.full_like(eps0, float("nan"))}  # (B,) ratcheted ‖F‖

    @abstractmethod
    def gain(self, e: Tensor, memory: dict[str, Tensor]) -> Tensor:
        """Raw change of ε ``(B,)`` for the scaled error ``e > 0`` ``(B,)``."""

    def remember(self, e: Tensor, accept: Tensor, memory: dict[str, Tensor]) -> dict[str, Tensor]:
        """Memory besides ``f_ref`` after the decision (none by default)."""
        return {}

    def propose(self, eps: Tensor, info: StepInfo) -> Decision:
        e, f_ref = scaled_error(info, self.rtol, info.memory["f_ref"])
        accept = e <= 1.0
        e = e.clamp_min(1e-12)  # e = 0: a perfectly linear step, grow by factor_max
        factor = self.safety * self.gain(e, info.memory)
        factor = torch.nan_to_num(factor, nan=self.factor_min).clamp(self.factor_min,
                                                                     self.factor_max)
        factor = torch.where(accept, factor, factor.clamp_max(self.safety))
        memory = {"f_ref": ratchet(f_ref, info, accept),
                  **self.remember(e, accept, info.memory)}
        return Decision(self.clip(eps * factor), accept, memory)


def scaled_error(info: StepInfo, rtol: float, f_ref: Tensor) -> tuple[Tensor, Tensor]:
    """Local error of a step, relative to the step length, with a ratcheted reference.

    ``e = err / (rtol · ε · min(‖F‖ so far))``; ``e ≤ 1`` accepts the step.

    Why not the textbook ``atol + rtol·‖z‖``: near an equilibrium that scale is
    fixed while ``F → 0``, so a controller holds the stiff mode at the tolerance
    level instead of letting it decay (its step hovers on the stability boundary).
    Relative to the step length ``ε‖F‖`` the error measures the curvature of the
    trajectory over one step and keeps its meaning all the way to ``F = 0``; but in
    the linear regime a ratio of two quantities proportional to ``F`` cannot see an
    instability. Ratcheting the reference to the smallest ``‖F‖`` met so far restores
    that: when ε > ε_crit makes ``‖F‖`` rise above its best, ``e`` grows with it.

    Args:
        info: the trial step (``info.err`` must be set).
        rtol: allowed error per unit step length.
        f_ref: ``(B,)`` smallest accepted ``‖F‖`` before this step (NaN at first).

    Returns:
        ``(e, f_ref)``, both ``(B,)``; the caller folds in ``info.f_new_norm`` when it
        accepts the step (:func:`ratchet`).
    """
    assert info.err is not None, "this controller needs a local error estimate"
    tiny = torch.finfo(info.f_norm.dtype).tiny
    f_ref = torch.fmin(f_ref, info.f_norm)  # fmin ignores the initial NaN
    e = info.err / (rtol * info.eps * f_ref).clamp_min(tiny)
    e = torch.where(torch.isfinite(info.f_new_norm), e, torch.full_like(e, float("inf")))
    return e, f_ref


def ratchet(f_ref: Tensor, info: StepInfo, accept: Tensor) -> Tensor:
    """The reference of :func:`scaled_error` after the decision ``accept`` ``(B,)``."""
    return torch.where(accept, torch.fmin(f_ref, info.f_new_norm), f_ref)
