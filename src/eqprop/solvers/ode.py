"""The continuous-time reference: adaptive Runge–Kutta of ``dz/dt = F(z)`` (design §2).

The analog emulator. Where the other solvers find ``z*`` as fast as they can, this
one follows the flow the hardware would follow, with an error-controlled
integrator (torchdiffeq), and reports when each sample settles.
"""

from __future__ import annotations

import math
import warnings
from dataclasses import dataclass, replace
from typing import ClassVar

import torch
from torch import Tensor

from ..fields import FieldFn, evals_per_call
from ..validate import choice, integer, interval, positive
from .base import Solution, Solver, SolverSettings, SolverState, relax, sample_norm

__all__ = ["ODE", "ODEConfig", "follow_flow", "settling_time"]

#: torchdiffeq methods with error control that the reference accepts
METHODS = ("dopri5", "dopri8", "bosh3", "fehlberg2", "adaptive_heun")


@dataclass
class ODE(Solver):
    """Integrate ``dz/dt = F(z)`` over growing horizons with an adaptive Runge–Kutta method.

    Step k integrates the whole batch over ``[t_k, t_k + Δ_k]``, ``Δ_k = t0 · growth^k``,
    with ``torchdiffeq.odeint`` (Dormand–Prince 5(4) by default), and samples the
    relative residual ``g(t) = ‖F(z(t))‖/‖z(t)‖`` at ``grid`` interior times of the
    horizon (from the integrator's dense output) and at its end. The settling time
    of a sample is the first time with ``g ≤ tol``, interpolated linearly in
    ``log g`` between samples (exact for a single decaying mode); it is kept in
    ``aux["t_settle"]`` (inf until then) and returned by :func:`settling_time`. The
    continuous time reached is ``aux["t"]``.

    Error control: the usual ``atol + rtol·|z|`` holds the stiff modes of an explicit
    integrator at the tolerance level near the equilibrium, so the residual stalls
    there (step sizes hover on the stability boundary). Each horizon instead uses
    a pure absolute tolerance ``rtol · RMS(F(z_k))`` (the smallest over the samples
    still relaxing), i.e. the local error relative to how far the state still has
    to move: the trajectory is followed to relative accuracy ``rtol`` all the way
    down, and each horizon restarts the scale. The tolerance never goes below
    ``8·ulp·RMS(z)`` (in float32 the error estimate is rounding noise below that).

    The integrator's step size is shared by the batch (torchdiffeq controls one
    error norm), so every sample is charged every evaluation: the right cost for a
    reference, not a fast solver.

    Args:
        method: a torchdiffeq adaptive method (see ``METHODS``).
        rtol: local error relative to the current speed ``RMS(F)``.
        atol: absolute floor of the tolerance.
        t0: first horizon, in units of the leak time constant (1 for ``c = -z + x``).
        growth: factor by which each horizon is longer than the last (≥ 1).
        grid: interior residual samples per horizon (each costs one evaluation of F).
        tol: relative residual that counts as settled (use relax's ``tol``).
        max_steps_per_horizon: integrator steps allowed per horizon.
        max_nfe: evaluations of F allowed per sample over the whole relaxation. A flow
            that does not settle (no stable fixed point; a blow-up that the horizon's
            frozen tolerance makes ever more expensive to follow) would otherwise run
            for hours. Once the budget (or a horizon's step allowance) is spent, the
            samples still relaxing stop moving and are flagged in ``aux["gave_up"]``
            (:func:`settling_time` warns and says why); a step-size underflow (a
            blow-up in finite time) marks them non-finite.
    """

    follows_flow: ClassVar[bool] = True

    method: str = "dopri5"
    rtol: float = 1e-6
    atol: float = 1e-12
    t0: float = 1.0
    growth: float = 1.5
    grid: int = 8
    tol: float = 1e-5
    max_steps_per_horizon: int = 100_000
    max_nfe: int = 200_000

    def __post_init__(self) -> None:
        choice(self, "method", self.method, METHODS)
        for name in ("rtol", "atol", "t0", "tol"):
            positive(self, name, getattr(self, name))
        interval(self, "growth", self.growth, 1.0, math.inf, hi_open=True)
        integer(self, "grid", self.grid, minimum=0)
        integer(self, "max_steps_per_horizon", self.max_steps_per_horizon)
        integer(self, "max_nfe", self.max_nfe)

    def init(self, F: FieldFn, z0: Tensor) -> SolverState:
        state = super().init(F, z0)
        B, real = z0.shape[0], dict(dtype=z0.real.dtype, device=z0.device)
        g0 = self._g(state.f, z0)
        settled = torch.where(g0 <= self.tol, 0.0, math.inf).to(**real)
        zero = torch.zeros(B, dtype=torch.long, device=z0.device)
        aux = {"t": torch.zeros(B, **real), "t_settle": settled, "k": zero,
               "gave_up": zero.clone()}  # 1: evaluation budget spent, 2: a horizon's steps
        return replace(state, aux=aux)

    @staticmethod
    def _g(f: Tensor, z: Tensor) -> Tensor:
        return sample_norm(f) / sample_norm(z).clamp_min(torch.finfo(sample_norm(f).dtype).tiny)

    def step(self, F: FieldFn, state: SolverState) -> SolverState:
        from torchdiffeq import odeint  # lazy: keeps `import eqprop` light

        z, aux = state.z, state.aux
        k = int(aux["k"].max())  # every sample still relaxing has the same k
        dt = self.t0 * self.growth**k
        calls = [0]

        def rhs(t: Tensor, y: Tensor) -> Tensor:
            calls[0] += 1
            return F(y)

        ts = torch.linspace(0.0, dt, self.grid + 2, dtype=aux["t"].dtype, device=z.device)
        # error control relative to the current speed, not to the state (see class doc)
        live = aux["k"] == k
        # what is left of the evaluation budget: each integrator step costs ≤ 13 evaluations
        # (dopri8), and the residual samples grid + 1 more
        left = self.max_nfe - int(state.nfe[live].max()) - (self.grid + 1) * evals_per_call(F)
        if left < 13 * evals_per_call(F) or bool((aux["gave_up"][live] > 0).any()):
            gave_up = torch.where(live & (aux["gave_up"] == 0), 1, aux["gave_up"])
            return replace(state, aux=dict(aux, gave_up=gave_up, k=aux["k"] + 1))
        max_num_steps = max(1, min(self.max_steps_per_horizon, left // (13 * evals_per_call(F))))
        n = math.sqrt(z[0].numel())
        speed = sample_norm(state.f)[live].min() / n  # RMS of F, slowest live sample
        # below a few ulps of the state the error estimate is rounding noise
        floor = 8 * torch.finfo(z.dtype).eps * sample_norm(z)[live].max() / n
        atol = max(float(self.rtol * speed), float(floor), self.atol)
        gave_up = aux["gave_up"]
        try:
            ys = odeint(rhs, z, ts, method=self.method, rtol=0.0, atol=atol,
                        options={"max_num_steps": max_num_steps})
        except AssertionError as e:
            if "max_num_steps" in str(e):  # budget spent: stop where the horizon started
                nfe = state.nfe + calls[0] * evals_per_call(F)
                gave_up = torch.where(live, 1 if max_num_steps < self.max_steps_per_horizon
                                      else 2, gave_up)
                return replace(state, nfe=nfe, aux=dict(aux, gave_up=gave_up, k=aux["k"] + 1))
            # step-size underflow: the flow blew up in finite time
            ys = torch.full((len(ts),) + tuple(z.shape), float("nan"), dtype=z.dtype,
                            device=z.device)
            ys[0] = z
        fs = [state.f] + [F(y) for y in ys[1:]]  # residual samples along the horizon
        gs = torch.stack([self._g(fi, yi) for fi, yi in zip(fs, ys, strict=True)], 1)  # (B, grid+2)
        t_settle = torch.minimum(aux["t_settle"], aux["t"] + self._crossing(gs, ts))
        new_aux = {"t": aux["t"] + dt, "t_settle": t_settle, "k": aux["k"] + 1,
                   "gave_up": gave_up}
        nfe = state.nfe + (calls[0] + self.grid + 1) * evals_per_call(F)
        return SolverState(z=ys[-1], f=fs[-1], nfe=nfe, aux=new_aux)

    def _crossing(self, gs: Tensor, ts: Tensor) -> Tensor:
        """First time ``g ≤ tol`` on the horizon per sample (inf if none), log-linear."""
        below = gs <= self.tol  # (B, P)
        hit = below.any(1)
        j = below.float().argmax(1).clamp_min(1)  # first index at/below tol (0 cannot be: g0 > tol)
        g0 = gs.gather(1, (j - 1)[:, None])[:, 0].clamp_min(1e-300)
        g1 = gs.gather(1, j[:, None])[:, 0].clamp_min(1e-300)
        t0, t1 = ts[j - 1], ts[j]
        frac = (math.log(self.tol) - g0.log()) / (g1.log() - g0.log())
        frac = torch.nan_to_num(frac, nan=1.0).clamp(0.0, 1.0)
        return torch.where(hit, t0 + frac * (t1 - t0), torch.full_like(t0, math.inf))


@dataclass
class ODEConfig(SolverSettings):
    """Settings of the :class:`ODE` reference in a config; it settles to the relaxation's
    ``tol``.

    Args:
        rtol: local error relative to the current speed ``RMS(F)``.
    """

    solver: ClassVar[type[Solver]] = ODE

    rtol: float = 1e-6

    def __post_init__(self) -> None:
        positive(self, "rtol", self.rtol)

    def build(self, tol: float) -> ODE:
        return ODE(rtol=self.rtol, tol=tol)


def settling_time(F: FieldFn, z0: Tensor, ode: ODE | None = None, *,
                  max_steps: int = 40) -> tuple[Tensor, Solution]:
    """Continuous settling time of ``dz/dt = F(z)`` per sample: the analog emulator.

    Runs :func:`~eqprop.solvers.base.relax` with the :class:`ODE` reference and
    ``tol = ode.tol`` and returns, per sample, the first time at which
    ``‖F(z(t))‖/‖z(t)‖ ≤ ode.tol``. It gives up within ``ode.max_nfe`` evaluations per
    sample (a flow with no stable fixed point never settles) and then warns with the
    reason; those samples read inf.

    Args:
        F: batched field.
        z0: initial state ``(B, ...)``.
        ode: the reference's settings (defaults of :class:`ODE` if None).
        max_steps: horizons allowed (the time covered grows geometrically).

    Returns:
        ``(t_settle, solution)``: ``t_settle`` ``(B,)`` (inf where the sample did not
        settle), and the :class:`~eqprop.solvers.base.Solution` of the run.
    """
    ode = ODE() if ode is None else ode
    t_settle, sol, gave_up = follow_flow(F, z0, ode, max_steps=max_steps)
    if bool((gave_up > 0).any()):
        n1, n2 = int((gave_up == 1).sum()), int((gave_up == 2).sum())
        why = [f"{n1} spent the budget of {ode.max_nfe} evaluations (ODE.max_nfe)"] if n1 else []
        why += [f"{n2} spent a horizon's {ode.max_steps_per_horizon} integrator steps "
                "(ODE.max_steps_per_horizon)"] if n2 else []
        warnings.warn(f"settling_time: {int((gave_up > 0).sum())} of {len(gave_up)} samples "
                      f"did not settle and the integration gave up: {'; '.join(why)}; the "
                      f"flow may have no stable fixed point from there", RuntimeWarning,
                      stacklevel=2)
    return t_settle, sol


def follow_flow(F: FieldFn, z0: Tensor, ode: ODE, *,
                max_steps: int = 40) -> tuple[Tensor, Solution, Tensor]:
    """Follow ``dz/dt = F(z)`` with the :class:`ODE` reference (the engine of
    :func:`settling_time`, without its warning).

    Args:
        F: batched field.
        z0: initial state ``(B, ...)``.
        ode: the reference's settings (``ode.tol`` is the settling tolerance).
        max_steps: horizons allowed.

    Returns:
        ``(t_settle, solution, gave_up)``: ``gave_up`` ``(B,)`` is 0 where the
        integration ran to the end (settled, or blew up), 1 where it spent
        ``ode.max_nfe`` and 2 where a horizon spent ``ode.max_steps_per_horizon``
        before the sample settled.
    """
    rec = _Recorder(ode)
    sol = relax(F, z0, rec, tol=ode.tol, max_steps=max_steps)
    t_settle = rec.aux["t_settle"]
    gave_up = rec.aux["gave_up"] * ~sol.converged
    # relax froze finished samples; a sample that ended unsettled reads inf
    t_settle = torch.where(sol.converged, t_settle, torch.full_like(t_settle, math.inf))
    return t_settle, sol, gave_up


class _Recorder(Solver):
    """Passes steps through to an :class:`ODE` and remembers the last ``aux`` it produced."""

    follows_flow: ClassVar[bool] = True

    def __init__(self, inner: ODE):
        self.inner = inner
        self.aux: dict[str, Tensor] = {}

    def init(self, F: FieldFn, z0: Tensor) -> SolverState:
        state = self.inner.init(F, z0)
        self.aux = state.aux
        return state

    def step(self, F: FieldFn, state: SolverState) -> SolverState:
        new = self.inner.step(F, state)
        # a finished sample keeps its settling time (relax freezes it after this call)
        self.aux = dict(new.aux, t_settle=torch.minimum(new.aux["t_settle"],
                                                         state.aux["t_settle"]))
        return new
