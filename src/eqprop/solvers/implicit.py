"""Implicit Euler with a matrix-free Newton–Krylov inner solve, and IMEX Euler (design §2)."""

from __future__ import annotations

from dataclasses import dataclass, replace
from typing import ClassVar

import torch
from torch import Tensor

from ..errors import ConfigError
from ..fields import FieldFn, jvp
from ..split import SplitField
from ..validate import integer, interval, positive
from .base import Solver, SolverSettings, SolverState, bcast, sample_norm
from .controllers import SER, Controller, memory
from .krylov import gmres

__all__ = ["IMEX", "ImplicitConfig", "ImplicitEuler", "PTCConfig"]


@dataclass
class ImplicitEuler(Solver):
    """Backward Euler ``z_(k+1) = z_k + h F(z_(k+1))`` (A-stable: converges for every h > 0
    on continuous-stable dynamics, contracting a mode μ by ``|1/(1 - hμ)|``).

    The implicit equation ``R(w) = w - z_k - h F(w) = 0`` is solved per sample by
    Newton's method from ``w = z_k``, each correction by GMRES on the matrix-free
    operator ``v ↦ v - h J(w) v`` (one JVP per matvec), until
    ``‖R(w)‖ ≤ newton_tol · ‖R(z_k)‖ = newton_tol · h‖F(z_k)‖`` or ``max_newton``
    corrections. The first
    correction is ``(I - hJ) δ = h F(z_k)``: as h → ∞ the step tends to a Newton step
    on ``F = 0``, for small h it follows the flow.

    With a ``controller`` (e.g. :class:`~eqprop.solvers.controllers.SER`) h becomes
    per-sample, lives in ``state.eps`` and is chosen by the controller after each
    step; with ``max_newton = 1`` this is pseudo-transient continuation (Ψtc,
    Kelley & Keyes 1998): it follows the flow while the residual is large, where
    plain Newton is lost, and turns into Newton as h grows near the equilibrium.
    It does not always follow the flow: backward Euler contracts a mode μ by
    ``|1/(1 - hμ)|``, which damps also an unstable mode (Re μ > 0) as soon as
    ``h > 2 Re μ / |μ|²``. A saddle's real mode μ > 0 keeps growing for ``h < 2/μ``
    (there ‖F‖ grows, SER shrinks h and Ψtc follows the flow away), but a spiral
    source ``a ± ib`` with ``a ≪ |b|`` is damped already at h = 1, and Ψtc converges
    to it. :func:`~eqprop.solvers.base.relax` then reports those samples ``unstable``
    (tests/test_stability.py). Without a controller, a sample whose inner solve does
    not converge keeps ``w`` only if it lowered ‖F‖.

    NFE: per sample, one evaluation per Newton correction and one per JVP.

    Args:
        h: the time step (> 0); the initial one when a controller is given.
        newton_tol: inner tolerance relative to ``h‖F(z_k)‖``, in (0, 1).
        max_newton: Newton corrections per step (≥ 1).
        restart, max_krylov: GMRES Krylov dimension and JVP budget per correction.
        gmres_tol: relative tolerance of each linear solve, in (0, 1).
        controller: picks h per sample (its ``eps_min``/``eps_max`` bound h), or None.
    """

    uses_jvp: ClassVar[bool] = True

    h: float = 1.0
    newton_tol: float = 1e-3
    max_newton: int = 4
    restart: int = 20
    max_krylov: int = 40
    gmres_tol: float = 1e-3
    controller: Controller | None = None

    def __post_init__(self) -> None:
        positive(self, "h", self.h)
        for name in ("newton_tol", "gmres_tol"):
            interval(self, name, getattr(self, name), 0.0, 1.0, lo_open=True, hi_open=True)
        for name in ("max_newton", "restart", "max_krylov"):
            integer(self, name, getattr(self, name))
        if self.controller is not None and not isinstance(self.controller, Controller):
            raise ConfigError(f"ImplicitEuler(controller={self.controller!r}): must be a "
                              "Controller from eqprop.solvers.controllers, or None")

    def init(self, F: FieldFn, z0: Tensor) -> SolverState:
        state = super().init(F, z0)
        k = torch.zeros(z0.shape[0], dtype=torch.long, device=z0.device)
        h = torch.full((z0.shape[0],), float(self.h), dtype=z0.real.dtype, device=z0.device)
        aux = {"k": k, "inner_failed": torch.zeros_like(k)}
        if self.controller is not None:
            h, ctl = memory.start(self.controller, h)
            aux.update(ctl)
        return replace(state, eps=h, aux=aux)

    def step(self, F: FieldFn, state: SolverState) -> SolverState:
        z, f = state.z, state.f
        h = bcast(state.eps, z)  # (B, 1, ...) per-sample time step
        w, fw = z, f
        R = -h * f  # residual of the implicit equation at w = z_k
        r0 = sample_norm(R)  # (B,) the inner tolerance is relative to it
        calls = torch.zeros_like(state.nfe)
        done = torch.zeros_like(calls, dtype=torch.bool)
        k = state.aux["k"]
        live = k == k.max()
        for i in range(self.max_newton):
            if i > 0:
                done = done | (sample_norm(R) <= self.newton_tol * r0)
                if not bool((~done & live).any()):
                    break
            w_lin = w  # linearisation point of this correction

            def op(v: Tensor, w_lin: Tensor = w_lin) -> Tensor:
                return v - h * jvp(F, w_lin, v)

            dw, info = gmres(op, -R, tol=self.gmres_tol, restart=self.restart,
                             max_iter=self.max_krylov)
            todo = bcast(~done, w)
            w = torch.where(todo, w + dw, w)
            fw = torch.where(todo, F(w), fw)
            R = w - z - h * fw
            calls = calls + (~done) * (info.matvecs + 1)
        done = done | (sample_norm(R) <= self.newton_tol * r0)
        f_norm, fw_norm = sample_norm(f), sample_norm(fw)
        aux = {"k": k + 1, "inner_failed": state.aux["inner_failed"] + ~done}
        eps = state.eps
        if self.controller is None:
            ok = torch.isfinite(fw_norm) & (done | (fw_norm < f_norm))
        else:
            decision, aux = memory.decide(self.controller, {**state.aux, **aux}, state.eps,
                                          f_norm=f_norm, f_new_norm=fw_norm,
                                          z_norm=sample_norm(z), z_new_norm=sample_norm(w))
            ok = decision.accept & torch.isfinite(fw_norm)
            eps = decision.eps
        keep = bcast(ok, z)
        return SolverState(z=torch.where(keep, w, z), f=torch.where(keep, fw, f),
                           nfe=self.charge(state, F, calls), eps=eps, aux=aux)


@dataclass
class IMEX(Solver):
    """IMEX Euler: the linear conservative part implicit, the non-conservative part explicit.

    For a :class:`~eqprop.split.SplitField` ``F = c + n`` (as
    :class:`~eqprop.models.LMField`), ``c(z) = -z + d(z)`` is affine: the leak ``-z``
    plus the drive ``d`` (the input x for layer 1 and the state of the layer below
    for layer l > 1; for the energy block also the layer above). The step is

        z_(k+1) = z_k + h (c(z_(k+1)) + n(z_k)),
        i.e.  (1 + h) z_(k+1) = z_k + h (d(z_(k+1)) + n(z_k))

    solved by the fixed-point iteration ``w ← (z_k + h (d(w) + n_k)) / (1 + h)`` on the
    cheap affine part (no attention): for the causal stack d couples a layer to the
    one below only, so the iteration is exact after L sweeps and the drive of the
    new state climbs the whole stack within one step; with symmetric couplings
    (energy block) it contracts by ``h ρ(∂d) / (1 + h) < 1``.

    Split used for a field that is not a ``SplitField`` (e.g. a nudged field; an
    attribute that happens to be called ``c`` is never taken for one): the leak alone,
    ``c(z) = -z``; the step is then exactly Euler with ``ε = h / (1 + h)`` (the same
    holds for a single layer, where d is constant), which is stable for every h on
    the leak but keeps Euler's ε_crit limit for the modes of n.

    NFE: one evaluation of F per step; the evaluations of ``c`` are not counted
    (they contain no attention or feed-forward).

    Args:
        h: the time step (> 0).
        sweeps: most fixed-point sweeps of the affine solve (≥ 1).
        sweep_tol: stop the sweeps when the update is below this, relative to ``‖w‖``.
    """

    h: float = 1.0
    sweeps: int = 50
    sweep_tol: float = 1e-10

    def __post_init__(self) -> None:
        positive(self, "h", self.h)
        integer(self, "sweeps", self.sweeps)
        interval(self, "sweep_tol", self.sweep_tol, 0.0, 1.0, lo_open=True, hi_open=True)

    def step(self, F: FieldFn, state: SolverState) -> SolverState:
        z, f, h = state.z, state.f, self.h
        c = F.conservative if isinstance(F, SplitField) else None
        if c is None:  # leak-only split: Euler with ε = h/(1+h)
            w = z + (h / (1 + h)) * f
        else:
            rhs = z + h * (f - c(z))  # z_k + h n(z_k); n = F - c, (B, ...)
            w = z + (h / (1 + h)) * f  # start: the leak-only step
            for _ in range(self.sweeps):
                w_next = (rhs + h * (c(w) + w)) / (1 + h)  # d(w) = c(w) + w
                small = sample_norm(w_next - w) <= self.sweep_tol * sample_norm(w_next)
                w = w_next
                if bool(small.all()):
                    break
        return replace(state, z=w, f=F(w), nfe=self.charge(state, F))


@dataclass
class ImplicitConfig(SolverSettings):
    """Settings of backward Euler (:class:`ImplicitEuler`, no controller) in a config.

    Args:
        h: the time step (> 0).
    """

    solver: ClassVar[type[Solver]] = ImplicitEuler

    h: float = 1.0

    def __post_init__(self) -> None:
        positive(self, "h", self.h)

    def build(self, tol: float) -> ImplicitEuler:
        return ImplicitEuler(h=self.h)


@dataclass
class PTCConfig(ImplicitConfig):
    """Pseudo-transient continuation (Ψtc, Kelley & Keyes 1998): :class:`ImplicitEuler`
    with one Newton correction per time step and h grown by the :class:`SER` controller.

    Args:
        h: the first time step (> 0).
    """

    def build(self, tol: float) -> ImplicitEuler:
        return ImplicitEuler(h=self.h, max_newton=1, gmres_tol=1e-2, restart=30, max_krylov=60,
                             controller=SER(eps_min=min(self.h, 1e-2), eps_max=1e6, safety=1.0,
                                            factor_max=4.0))
