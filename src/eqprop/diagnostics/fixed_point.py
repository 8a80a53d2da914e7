"""The best fixed point near a state: damped Newton–Krylov on ``F(z) = 0`` (design §5).

The failure classification must look at the Jacobian *at a fixed point*, not on
the orbit a failed relaxation ended on: on a limit cycle of the continuous
dynamics the instantaneous Jacobian can look perfectly stable. A root finder goes
where no relaxation goes, also to unstable fixed points (which is the point: an
unstable fixed point is what a bifurcation leaves behind). This one is a small
probe for the diagnostics: the Newton–Krylov step of the solver
(:func:`~eqprop.solvers.newton_krylov.newton_step`: batched GMRES on JVPs, a per-sample
backtracking line search on ``‖F‖``) with a fixed linear tolerance, and the lowest-residual
point kept.
"""

from __future__ import annotations

from dataclasses import dataclass

import torch
from torch import Tensor

from ..errors import ConfigError
from ..fields import FieldFn
from ..solvers.base import bcast, sample_norm
from ..solvers.newton_krylov import newton_step

__all__ = ["BestPoint", "NewtonSettings", "best_fixed_point"]

#: sufficient-decrease constant of the line search
ARMIJO = 1e-4


@dataclass
class NewtonSettings:
    """Settings of :func:`best_fixed_point`.

    Args:
        tol: residual ``‖F(z)‖/‖z0‖`` (relative to the start) at which a sample counts
            as a fixed point.
        max_iter: Newton iterations.
        gmres_tol: relative tolerance of each linear solve ``J d = -F``.
        gmres_restart: Krylov dimension between GMRES restarts.
        gmres_iter: JVP budget of each linear solve.
        backtracks: step lengths tried by the line search (1, ½, …).
    """

    tol: float = 1e-9
    max_iter: int = 30
    gmres_tol: float = 1e-6
    gmres_restart: int = 40
    gmres_iter: int = 200
    backtracks: int = 12

    def __post_init__(self) -> None:
        if not self.tol > 0:
            raise ConfigError(f"NewtonSettings(tol={self.tol!r}): must be > 0")
        if not 0 < self.gmres_tol < 1:
            raise ConfigError(f"NewtonSettings(gmres_tol={self.gmres_tol!r}): must be in (0, 1)")
        for name in ("max_iter", "gmres_restart", "gmres_iter", "backtracks"):
            v = getattr(self, name)
            if not (isinstance(v, int) and v >= 1):
                raise ConfigError(f"NewtonSettings({name}={v!r}): must be an integer ≥ 1")


@dataclass
class BestPoint:
    """The lowest-residual point found per sample.

    Attributes:
        z: ``(B, ...)`` the best point.
        residual: ``(B,)`` its residual relative to the start, ``‖F(z)‖/‖z0‖``.
        converged: ``(B,)`` bool, ``residual ≤ tol``: a fixed point was found.
        iterations: Newton iterations run.
    """

    z: Tensor
    residual: Tensor
    converged: Tensor
    iterations: int


def _rel(f: Tensor, scale: Tensor) -> Tensor:  # (B,)
    return torch.nan_to_num(sample_norm(f) / scale, nan=float("inf"))


def best_fixed_point(F: FieldFn, z0: Tensor, settings: NewtonSettings | None = None) -> BestPoint:
    """Damped Newton–Krylov from ``z0`` towards ``F(z) = 0``, every sample on its own.

    Args:
        F: batched field.
        z0: start ``(B, ...)`` (e.g. where a failed relaxation stopped); must be finite.
        settings: :class:`NewtonSettings`.

    Returns:
        A :class:`BestPoint`.
    """
    s = NewtonSettings() if settings is None else settings
    if not bool(torch.isfinite(z0).all()):
        raise ValueError("best_fixed_point: z0 has NaN/Inf entries; start from a finite state")
    with torch.no_grad():
        z = z0.detach().clone()
        f = F(z)
        # a fixed normaliser (the start's size, not ‖z‖): fixed points may sit at z = 0
        scale = sample_norm(z)
        scale = torch.where(scale > 0, scale, torch.ones_like(scale))
        r = _rel(f, scale)
        best_z, best_r = z.clone(), r.clone()
        iterations = 0
        for _ in range(s.max_iter):
            active = r > s.tol
            if not bool(active.any()):
                break
            # the solver's Newton step, with a fixed linear tolerance and the plain Armijo
            # test (no forcing term: η = 0 in the line search)
            z_new, f_new, ok, _ = newton_step(
                F, z, f, torch.zeros_like(r), gmres_tol=s.gmres_tol, restart=s.gmres_restart,
                max_krylov=s.gmres_iter, c=ARMIJO, max_backtracks=s.backtracks - 1)
            iterations += 1
            moved = ok & active  # a sample already at a fixed point stays where it is
            if not bool(moved.any()):  # stuck everywhere: no descent direction left
                break
            z, f = torch.where(bcast(moved, z), z_new, z), torch.where(bcast(moved, f), f_new, f)
            r = _rel(f, scale)
            better = r < best_r
            best_z = torch.where(bcast(better, z), z, best_z)
            best_r = torch.where(better, r, best_r)
    return BestPoint(best_z, best_r, best_r <= s.tol, iterations)
