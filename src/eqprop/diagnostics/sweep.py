"""ε-sweep: what fixed-step Euler does with each step size (design §5).

For each ε the free phase is relaxed for T steps from the model's initial state;
the residual floor (the lowest relative residual reached), the final residual and
the per-sample status show where Euler stops converging and what it does instead
(cycling above ε_crit, diverging far above it).
"""

from __future__ import annotations

import math
from collections.abc import Sequence
from dataclasses import dataclass
from typing import TYPE_CHECKING

import torch
from torch import Tensor

from ..errors import ConfigError
from ..fields import FieldFn
from ..models import EquilibriumLM
from ..solvers.euler import Euler
from ..solvers.relaxation import Relaxation
from ..solvers.status import Status
from .subject import subject

if TYPE_CHECKING:
    from ..train.loaded import LoadedRun

__all__ = ["SweepResult", "eps_sweep", "sweep_field"]


@dataclass
class SweepResult:
    """Euler relaxations for several ε; ``E`` step sizes, ``B`` samples, ``S = steps + 1``.

    Attributes:
        eps: ``(E,)`` the step sizes.
        floor: ``(E, B)`` lowest relative residual ``‖F‖/‖z‖`` reached.
        final: ``(E, B)`` relative residual when the relaxation stopped.
        status: ``(E, B)`` :class:`~eqprop.solvers.Status` codes.
        traces: ``(E, B, S)`` relative residual per step (NaN after an early stop).
        steps: the step budget T.
        tol: the convergence tolerance used.
    """

    eps: Tensor
    floor: Tensor
    final: Tensor
    status: Tensor
    traces: Tensor
    steps: int
    tol: float

    def counts(self) -> list[dict[str, int]]:
        """Per ε, the number of samples in each status."""
        return [{s.label: int((row == s).sum()) for s in Status} for row in self.status]

    def rows(self) -> list[dict[str, float | int]]:
        """One summary row per ε: median floor and final residual, status counts."""
        out = []
        for i, counts in enumerate(self.counts()):
            out.append({"eps": float(self.eps[i]), "floor_median": float(self.floor[i].median()),
                        "final_median": float(self.final[i].median()),
                        **{k: v for k, v in counts.items()}})
        return out


def _check(eps_list: Sequence[float], steps: int, tol: float) -> list[float]:
    eps = [float(e) for e in eps_list]
    if not eps or not all(e > 0 and math.isfinite(e) for e in eps):
        raise ConfigError(f"eps_list={list(eps_list)!r}: give one or more finite step sizes > 0")
    if not (isinstance(steps, int) and steps >= 1):
        raise ConfigError(f"steps={steps!r}: must be an integer ≥ 1")
    if not tol > 0:
        raise ConfigError(f"tol={tol!r}: must be > 0")
    return eps


def sweep_field(F: FieldFn, z0: Tensor, eps_list: Sequence[float], steps: int = 200, *,
                tol: float = 1e-5) -> SweepResult:
    """Relax ``F`` from ``z0`` with Euler at each ε for at most ``steps`` steps.

    Args:
        F: batched field.
        z0: initial state ``(B, ...)``.
        eps_list: step sizes.
        steps: step budget T.
        tol: relative residual at which a sample counts as converged (and stops).

    Returns:
        A :class:`SweepResult`.
    """
    eps = _check(eps_list, steps, tol)
    B, S = z0.shape[0], steps + 1
    traces = torch.full((len(eps), B, S), math.nan, dtype=torch.float64)
    final = torch.empty(len(eps), B, dtype=torch.float64)
    status = torch.empty(len(eps), B, dtype=torch.long)
    for i, e in enumerate(eps):
        sol = Relaxation(Euler(eps=e), tol=tol, max_steps=steps).run(F, z0, trace=True)
        tr = sol.residual_trace.to("cpu", torch.float64)  # (B, S')
        traces[i, :, : tr.shape[1]] = tr
        final[i], status[i] = sol.rel_residual.to("cpu", torch.float64), sol.status.cpu()
    floor = torch.nan_to_num(traces, nan=math.inf).amin(-1)
    return SweepResult(torch.tensor(eps, dtype=torch.float64), floor, final, status, traces,
                       steps, tol)


def eps_sweep(model_or_run: EquilibriumLM | LoadedRun, batch: tuple[Tensor, Tensor] | Tensor,
              eps_list: Sequence[float], steps: int = 200, *,
              tol: float | None = None) -> SweepResult:
    """ε-sweep of a model's free phase on a batch.

    Args:
        model_or_run: an :class:`~eqprop.models.EquilibriumLM`, or a loaded run
            (:func:`eqprop.train.load_run`), whose free-phase tolerance is then the default.
        batch: ``(tokens, targets)`` ``(B, T)`` each, or just ``tokens``.
        eps_list: step sizes.
        steps: step budget T.
        tol: convergence tolerance (default: the run's solver tol, else 1e-5).

    Returns:
        A :class:`SweepResult`.
    """
    model, run_solver = subject(model_or_run, "eps_sweep")
    if tol is None:
        tol = 1e-5 if run_solver is None else float(run_solver.tol)
    tokens, targets = batch if isinstance(batch, (tuple, list)) else (batch, None)
    device = next(model.parameters()).device
    field = model.field(tokens.to(device), None if targets is None else targets.to(device))
    return sweep_field(field, field.initial_state(), eps_list, steps, tol=tol)
