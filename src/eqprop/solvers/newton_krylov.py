"""Inexact Newton–Krylov root finding on ``F(z) = 0`` (design §2)."""

from __future__ import annotations

from dataclasses import dataclass, replace
from typing import ClassVar

import torch
from torch import Tensor

from ..fields import FieldFn, jvp
from ..validate import integer, interval
from .base import Solver, SolverState, bcast, sample_norm
from .krylov import gmres

__all__ = ["NewtonKrylov", "batch_forcing", "line_search", "newton_step"]


def batch_forcing(eta: Tensor, k: Tensor) -> float:
    """One GMRES tolerance for the batch: the smallest η among the samples still relaxing.

    ``krylov.gmres`` takes a single tolerance, so per-sample forcing terms are
    merged into the tightest one (oversolving the others slightly; their matvecs are
    still charged per sample). :func:`~eqprop.solvers.base.relax` freezes the state of
    a finished sample, including the step counter ``k`` ``(B,)`` kept in ``aux``, so the
    samples still relaxing are those with the largest ``k``.
    """
    live = k == k.max()
    return float(eta[live].min())


def line_search(F: FieldFn, z: Tensor, f_norm: Tensor, dz: Tensor, eta: Tensor, *,
                c: float, max_backtracks: int) -> tuple[Tensor, Tensor, Tensor, Tensor]:
    """Backtracking on ``‖F(z + t dz)‖ ≤ (1 - c t (1 - η)) ‖F(z)‖``, t = 1, ½, ¼, … per sample.

    The sufficient-decrease test of inexact Newton methods (Eisenstat & Walker 1994).
    A sample that finds no such t in ``max_backtracks`` halvings does not move.

    Args:
        F: the field; z, dz: ``(B, ...)``; f_norm, eta: ``(B,)``.
        c: sufficient-decrease constant; max_backtracks: halvings allowed.

    Returns:
        ``(z_new, f_new, accepted (B,) bool, evaluations (B,) long)``.
    """
    t = torch.ones_like(f_norm)
    pending = torch.ones_like(f_norm, dtype=torch.bool)
    z_new, f_new = z, torch.full_like(z, float("nan"))
    evals = torch.zeros_like(f_norm, dtype=torch.long)
    for _ in range(max_backtracks + 1):
        z_try = z + bcast(t, z) * dz
        f_try = F(z_try)
        evals = evals + pending
        n = sample_norm(f_try)
        good = pending & torch.isfinite(n) & (n <= (1 - c * t * (1 - eta)) * f_norm)
        g = bcast(good, z)
        z_new, f_new = torch.where(g, z_try, z_new), torch.where(g, f_try, f_new)
        pending = pending & ~good
        if not bool(pending.any()):
            break
        t = torch.where(pending, 0.5 * t, t)
    return z_new, f_new, ~pending, evals


def newton_step(F: FieldFn, z: Tensor, f: Tensor, eta: Tensor, *, gmres_tol: float, restart: int,
                max_krylov: int, c: float,
                max_backtracks: int) -> tuple[Tensor, Tensor, Tensor, Tensor]:
    """One damped Newton–Krylov step from ``z`` (``f = F(z)``), every sample on its own.

    Solves ``J δ = -F(z)`` by GMRES on JVPs to the relative tolerance ``gmres_tol``, then
    backtracks along δ (:func:`line_search` with the forcing terms ``eta``); the one step
    of :class:`NewtonKrylov` and of the diagnostics' fixed-point search
    (:func:`~eqprop.diagnostics.fixed_point.best_fixed_point`).

    Args:
        F: the field; z, f: ``(B, ...)``; eta: ``(B,)`` forcing terms of the line search.
        gmres_tol, restart, max_krylov: the linear solve's tolerance, Krylov dimension and
            JVP budget.
        c, max_backtracks: the line search's sufficient-decrease constant and halvings.

    Returns:
        ``(z_new, f_new, accepted (B,) bool, evaluations (B,) long)``: a sample whose line
        search failed keeps ``z`` and ``f``; evaluations count JVPs and line-search F's.
    """
    dz, info = gmres(lambda v: jvp(F, z, v), -f, tol=gmres_tol, restart=restart,
                     max_iter=max_krylov)  # (B, ...) J δ = -F
    z_new, f_new, ok, evals = line_search(F, z, sample_norm(f), dz, eta, c=c,
                                          max_backtracks=max_backtracks)
    keep = bcast(ok, z)
    return (torch.where(keep, z_new, z), torch.where(keep, f_new, f), ok,
            info.matvecs + evals)


@dataclass
class NewtonKrylov(Solver):
    """Newton's method on ``F(z) = 0`` with GMRES on exact JVPs (Knoll & Keyes 2004).

    Each step solves ``J δ = -F(z)`` to the relative tolerance η_k (the forcing
    term, choice 2 of Eisenstat & Walker 1996: ``η_k = γ (‖F_k‖/‖F_(k-1)‖)^α``,
    safeguarded by ``γ η_(k-1)^α`` when that exceeds 0.1, capped at ``eta_max`` and kept
    above 10 ulp of the dtype, which GMRES cannot resolve), then backtracks along δ
    (:func:`line_search`). The first step is solved tightly (``eta0 = 1e-6``): on a
    near-linear field that one step is the answer, in as many JVPs as the Krylov
    dimension the spectrum needs (the textbook ``eta0 = 0.1`` costs more: its later steps
    rebuild the Krylov space from scratch; measured in docs/solvers.md). A root finder converges
    to any equilibrium, also one that is not continuous-stable (a saddle the hardware
    would never settle on): check the spectrum at the result when it matters.

    NFE: one per JVP (GMRES matvec) and one per line-search evaluation, per sample.

    Args:
        eta0: forcing term of the first step, in (0, 1) (tight by default: see above).
        eta_max: cap of the forcing term, in (0, 1).
        gamma, alpha: Eisenstat–Walker constants, γ in (0, 1], α in (1, 2].
        restart: GMRES Krylov dimension.
        max_krylov: JVPs per Newton step.
        c: sufficient-decrease constant of the line search, in (0, 1).
        max_backtracks: step halvings per line search.
    """

    uses_jvp: ClassVar[bool] = True

    eta0: float = 1e-6
    eta_max: float = 0.9
    gamma: float = 0.9
    alpha: float = 2.0
    restart: int = 60
    max_krylov: int = 120
    c: float = 1e-4
    max_backtracks: int = 8

    def __post_init__(self) -> None:
        for name in ("eta0", "eta_max", "c"):
            interval(self, name, getattr(self, name), 0.0, 1.0, lo_open=True, hi_open=True)
        interval(self, "gamma", self.gamma, 0.0, 1.0, lo_open=True)
        interval(self, "alpha", self.alpha, 1.0, 2.0, lo_open=True)
        integer(self, "restart", self.restart)
        integer(self, "max_krylov", self.max_krylov)
        integer(self, "max_backtracks", self.max_backtracks, minimum=0)

    def init(self, F: FieldFn, z0: Tensor) -> SolverState:
        state = super().init(F, z0)
        B = z0.shape[0]
        real = dict(dtype=z0.real.dtype, device=z0.device)
        aux = {"eta": torch.full((B,), float(self.eta0), **real),
               "f_prev": torch.full((B,), float("nan"), **real),  # ‖F‖ one step back
               "k": torch.zeros(B, dtype=torch.long, device=z0.device),
               "failed": torch.zeros(B, dtype=torch.long, device=z0.device)}  # line searches
        return replace(state, aux=aux)

    def forcing(self, f_norm: Tensor, f_prev: Tensor, eta_prev: Tensor) -> Tensor:
        """Eisenstat–Walker choice 2 per sample ``(B,)``."""
        eta = self.gamma * (f_norm / f_prev) ** self.alpha
        floor = self.gamma * eta_prev**self.alpha
        eta = torch.where(floor > 0.1, torch.maximum(eta, floor), eta)
        eta = torch.where(torch.isnan(f_prev), eta_prev, eta)  # first step: eta0
        # below ~10 ulp GMRES cannot reach η and would spend its whole budget trying
        lowest = max(1e-12, 10 * torch.finfo(f_norm.dtype).eps)
        return torch.nan_to_num(eta, nan=self.eta_max).clamp(lowest, self.eta_max)

    def step(self, F: FieldFn, state: SolverState) -> SolverState:
        z, f, aux = state.z, state.f, state.aux
        f_norm = sample_norm(f)  # (B,)
        eta = self.forcing(f_norm, aux["f_prev"], aux["eta"])
        z_new, f_new, ok, evals = newton_step(
            F, z, f, eta, gmres_tol=batch_forcing(eta, aux["k"]), restart=self.restart,
            max_krylov=self.max_krylov, c=self.c, max_backtracks=self.max_backtracks)
        new_aux = {"eta": eta, "f_prev": torch.where(ok, f_norm, aux["f_prev"]),
                   "k": aux["k"] + 1, "failed": aux["failed"] + ~ok}
        return SolverState(z=z_new, f=f_new, nfe=self.charge(state, F, evals), aux=new_aux)
