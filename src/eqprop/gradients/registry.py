"""Estimator settings as a dataclass and the name -> estimator registry (the CLI edge)."""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass, field

from ..errors import ConfigError
from ..solvers.registry import SOLVERS, SolverConfig, build_solver, solver_class
from ..validate import choice, interval
from .base import Estimator
from .bptt import BPTT
from .ep import EP, AsymEP
from .holo_ep import HoloEP
from .ift import ADJOINTS, IFT

__all__ = ["BACKPROP", "ESTIMATORS", "EstimatorConfig", "build_estimator"]

#: the estimator name of the feed-forward baseline (trained by plain backprop)
BACKPROP = "backprop"


@dataclass
class EstimatorConfig:
    """Which gradient estimator trains the model.

    Args:
        name: one of ``ESTIMATORS``: asymep (default), ep, ift, bptt, holoep; or
            ``backprop``, plain backpropagation of the feed-forward baseline
            (``model.block standard``), which has no estimator object.
        beta: nudging strength for ep / asymep.
        centered: two-sided nudges (ep; asymep is always centered).
        batch_nudges: relax the ±β nudged phases as one batch of 2B samples (ep, asymep).
        nudge: solver of the nudged phases (tolerance relative to the nudge size).
        ift_tol: relative residual of the ift estimator's adjoint solve.
        ift_adjoint: how ift solves the adjoint: ``gmres``, or ``anderson`` (relaxes the
            flow ``ds/dt = Jᵀ s - ∇L`` like a phase, with the free phase's ``capture``,
            ``check_every`` and Anderson ε).
        bptt_steps: truncation length of bptt.
        radius: holoep's nudge radius r = |β| (exact up to O(r^N) at finite r).
        n_nudges: holoep's number N of complex nudges on the circle.
        holo_antisym: holoep adds the -2A(z - z*) term (needed on the asym block).
        drop_failed: leave the samples whose estimate is not one to learn from out of the
            learning signal (:func:`~eqprop.gradients.base.drop_samples`): those whose
            nudged relaxations failed (diverged, unstable, non-finite) and those whose
            free phase did not end at a stable equilibrium (it missed the tolerance, or
            the stability check found the point unstable: the hardware would leave it);
            the penalty still acts on them. The update is rejected only when
            more than this fraction of a nudged phase's samples failed. 0 (default): any
            such sample rejects the whole update. bptt has no signal and needs 0.
    """

    name: str = "asymep"
    beta: float = 0.05
    centered: bool = True
    batch_nudges: bool = True
    # Anderson in the nudged phases: they start at z* and follow nearly linear dynamics,
    # where it needs fewer evaluations than Euler for the same gradient (docs/gpu.md)
    nudge: SolverConfig = field(default_factory=lambda: SolverConfig(
        name="anderson", tol=1e-2, max_steps=50))
    ift_tol: float = 1e-6
    ift_adjoint: str = "gmres"
    bptt_steps: int = 20
    radius: float = 0.5
    n_nudges: int = 4
    holo_antisym: bool = True
    drop_failed: float = 0.0

    def __post_init__(self) -> None:
        if self.name not in (*ESTIMATORS, BACKPROP):
            raise ConfigError(f"estimator name={self.name!r}: allowed values are "
                             f"{', '.join((*ESTIMATORS, BACKPROP))}")
        if not self.beta > 0:
            raise ConfigError(f"estimator beta={self.beta!r}: must be > 0")
        if not 0 < self.ift_tol < 1:
            raise ConfigError(f"estimator ift_tol={self.ift_tol!r}: must be in (0, 1)")
        choice("estimator", "ift_adjoint", self.ift_adjoint, ADJOINTS)
        if not (isinstance(self.bptt_steps, int) and self.bptt_steps >= 1):
            raise ConfigError(f"estimator bptt_steps={self.bptt_steps!r}: must be an integer ≥ 1")
        if not self.radius > 0:
            raise ConfigError(f"estimator radius={self.radius!r}: must be > 0")
        if isinstance(self.n_nudges, bool) or not isinstance(self.n_nudges, int) \
                or self.n_nudges < 1:
            raise ConfigError(f"estimator n_nudges={self.n_nudges!r}: must be an integer ≥ 1")
        interval("estimator", "drop_failed", self.drop_failed, 0.0, 1.0, hi_open=True)
        if self.drop_failed and self.name == "bptt":
            raise ConfigError(f"estimator drop_failed={self.drop_failed!r}: bptt has no learning "
                              "signal to drop samples from; it needs 0")
        if solver_class(self.nudge.name).uses_jvp:
            raise ConfigError(
                f"estimator.nudge.name={self.nudge.name!r}: its step takes JVPs of the nudged "
                "field, whose loss gradient is not forward-mode differentiable; the nudged "
                f"phases allow {', '.join(n for n in SOLVERS if not solver_class(n).uses_jvp)}")
        if self.nudge.stability != "auto":
            raise ConfigError(f"estimator.nudge.stability={self.nudge.stability!r}: the nudged "
                              "equilibria are never checked (their linearisation is the free "
                              "one's, checked there): allowed is auto")


def _ep(c: EstimatorConfig, cls: type[EP], centered: bool) -> EP:
    return cls(beta=c.beta, centered=centered, solver=build_solver(c.nudge), tol=c.nudge.tol,
               max_steps=c.nudge.max_steps, check_every=c.nudge.check_every,
               capture=c.nudge.capture, batch_nudges=c.batch_nudges)


def _ift(c: EstimatorConfig, free: SolverConfig) -> IFT:
    if c.ift_adjoint == "gmres":
        return IFT(tol=c.ift_tol)
    return IFT(tol=c.ift_tol, adjoint="anderson", eps=free.anderson.eps, capture=free.capture,
               check_every=free.check_every)


ESTIMATORS: dict[str, Callable[[EstimatorConfig, SolverConfig], Estimator]] = {
    "asymep": lambda c, free: _ep(c, AsymEP, True),
    "ep": lambda c, free: _ep(c, EP, c.centered),
    "ift": lambda c, free: _ift(c, free),
    "bptt": lambda c, free: BPTT(steps=c.bptt_steps, solver=build_solver(free)),
    "holoep": lambda c, free: HoloEP(r=c.radius, N=c.n_nudges, antisym=c.holo_antisym,
                                     solver=build_solver(c.nudge), tol=c.nudge.tol,
                                     max_steps=c.nudge.max_steps),
}


def build_estimator(cfg: EstimatorConfig, free: SolverConfig) -> Estimator:
    """The estimator a config names; ``free`` is the free-phase solver (unrolled by bptt).

    Raises:
        ConfigError: ``backprop``, which trains a feed-forward model without an estimator.
    """
    if cfg.name == BACKPROP:
        raise ConfigError("estimator name='backprop' has no estimator object: it trains "
                          "model.block='standard' by plain backpropagation")
    return ESTIMATORS[cfg.name](cfg, free)
