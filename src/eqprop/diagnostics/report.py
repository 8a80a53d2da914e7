"""The diagnose workflow: why does (or will) a model's relaxation fail? (design §5)

:func:`diagnose` runs it on one batch: relax with the run's own solver, find the fixed
point by Newton–Krylov, and measure per sample the spectrum of J there (ε_crit by
eigenvalues and by bisection, critical mode, damping ratio, largest Re μ, logarithmic
norm, ‖J‖²_F/dim) and the failure kind; then an ε-sweep and the gradient fidelity
against IFT per free-phase tolerance. The :class:`DiagnoseReport` prints as the tables
of ``eqprop diagnose`` (:meth:`~DiagnoseReport.sections`) and saves as its plots and
``diagnose.json`` (:meth:`~DiagnoseReport.save`).
"""

from __future__ import annotations

import json
import math
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING

import torch
from torch import Tensor

from ..models import EquilibriumLM
from ..solvers.registry import SolverConfig, build_relaxation, build_solver
from ..solvers.status import Status
from .classify import FailureReport, classify_failures
from .eps_crit import eps_crit
from .fidelity import FidelityResult, gradient_fidelity
from .norms import hutchinson_frobenius, log_norm
from .plots import plot_fidelity, plot_residual_traces, plot_spectrum
from .spectrum import spectrum
from .subject import subject
from .sweep import SweepResult, eps_sweep

if TYPE_CHECKING:
    from ..train.loaded import LoadedRun

__all__ = ["DiagnoseReport", "diagnose", "table"]

#: a table cell: a label, a count, a flag or a measured number
Cell = str | int | float | bool


def _fmt(x: Cell) -> str:
    if isinstance(x, str):
        return x
    if isinstance(x, bool) or isinstance(x, int):
        return str(x)
    x = float(x)
    if x != x:
        return "nan"
    return f"{x:.4g}" if 1e-3 <= abs(x) < 1e4 or x == 0 else f"{x:.3e}"


def table(rows: Sequence[Mapping[str, Cell]]) -> str:
    """Rows of equal keys as an aligned text table."""
    if not rows:
        return "(empty)"
    cols = list(rows[0])
    cells = [[_fmt(r[c]) for c in cols] for r in rows]
    width = [max(len(c), *(len(row[i]) for row in cells)) for i, c in enumerate(cols)]
    line = "  ".join(c.rjust(w) for c, w in zip(cols, width, strict=True))
    body = ["  ".join(v.rjust(w) for v, w in zip(row, width, strict=True)) for row in cells]
    return "\n".join([line, "  ".join("-" * w for w in width), *body])


def _samples_text(samples: Sequence[Mapping[str, Cell]], eps: float) -> str:
    return f"\nper sample (ε_crit at the fixed point; the run's ε = {eps:g})\n{table(samples)}"


def _sweep_text(sweep: SweepResult) -> str:
    return f"\nε-sweep: Euler, {sweep.steps} steps, tol {sweep.tol:g}\n{table(sweep.rows())}"


def _fidelity_rows(fid: FidelityResult | None) -> list[dict[str, Cell]]:
    if fid is None:
        return []
    return [{"estimator": r.estimator, "tol": r.tol, "cosine": r.cosine,
             "worst_param": min(r.per_param.values()), "residual": r.residual,
             "converged": r.converged, "nfe": r.nfe} for r in fid.rows]


def _fidelity_text(fid: FidelityResult) -> str:
    return (f"\ngradient fidelity (cosine to IFT at a tight equilibrium, residual "
            f"{fid.reference_residual:.1e})\n{table(_fidelity_rows(fid))}")


def _verdicts_text(failures: FailureReport) -> str:
    counts = failures.counts()
    return f"\nverdicts: {', '.join(f'{k} {v}' for k, v in counts.items() if v)}"


@dataclass
class DiagnoseReport:
    """What :func:`diagnose` measured on a batch of ``B`` samples.

    Attributes:
        run: the run directory examined ("" for a bare model).
        eps: the step ε of the diagnosed free-phase solver.
        samples: ``B`` rows, one per sample: its relaxation (status, steps, residual,
            stable), ε_crit by eigenvalues and by bisection, the critical mode
            ``crit_a ± i crit_|b|``, its damping ratio, the largest Re μ, the logarithmic
            norm, ``‖J‖²_F/dim`` and the failure verdict.
        eigvals: ``(B, m)`` complex eigenvalues of J at the fixed point (the leading ones
            by magnitude, then those of the ε_crit route; NaN pads), as plotted.
        critical: ``(B,)`` complex: each sample's critical mode.
        failures: the failure classification (verdicts and the fixed points found).
        sweep: the ε-sweep of the free phase.
        fidelity: gradient fidelity per free-phase tolerance (None when not measured).
    """

    run: str
    eps: float
    samples: list[dict[str, Cell]]
    eigvals: Tensor
    critical: Tensor
    failures: FailureReport
    sweep: SweepResult
    fidelity: FidelityResult | None

    def fidelity_rows(self) -> list[dict[str, Cell]]:
        """One row per estimator and tolerance: cosine, worst parameter, free-phase
        residual, converged samples, NFE (empty when fidelity was not measured)."""
        return _fidelity_rows(self.fidelity)

    def sections(self) -> list[str]:
        """The report as ``eqprop diagnose`` prints it, one text per measurement."""
        out = [_samples_text(self.samples, self.eps), _sweep_text(self.sweep)]
        if self.fidelity is not None:
            out.append(_fidelity_text(self.fidelity))
        return [*out, _verdicts_text(self.failures)]

    def to_text(self) -> str:
        """Every section, as one text."""
        return "\n".join(self.sections())

    def to_dict(self, args: Mapping[str, str] | None = None) -> dict[str, object]:
        """What ``diagnose.json`` holds; ``args``: the settings to record with it."""
        out: dict[str, object] = {"run": self.run, "eps": self.eps}
        if args is not None:
            out["args"] = dict(args)
        return {**out, "samples": self.samples, "sweep": self.sweep.rows(),
                "fidelity": self.fidelity_rows(), "verdicts": self.failures.counts()}

    def save(self, out: str | Path, args: Mapping[str, str] | None = None) -> list[Path]:
        """Write ``spectrum.png``, ``residual_traces.png``, ``fidelity.png`` (when measured)
        and ``diagnose.json`` into ``out`` (created); returns the paths, the JSON last."""
        out = Path(out)
        out.mkdir(parents=True, exist_ok=True)
        B = len(self.samples)
        sweep_eps = tuple(float(e) for e in self.sweep.eps)
        paths = [plot_spectrum(self.eigvals, self.eps, out / "spectrum.png",
                               critical=self.critical, extra_eps=sweep_eps,
                               title=f"J at z* ({B} samples), run's ε = {self.eps:g}"),
                 plot_residual_traces(self.sweep, out / "residual_traces.png")]
        if self.fidelity is not None:
            paths.append(plot_fidelity(self.fidelity, out / "fidelity.png"))
        path = out / "diagnose.json"
        path.write_text(json.dumps(self.to_dict(args), indent=2, default=str))
        return [*paths, path]


def diagnose(model_or_run: EquilibriumLM | LoadedRun, batch: tuple[Tensor, Tensor], *,
             solver: SolverConfig | None = None,
             sweep_eps: Sequence[float] = (0.05, 0.1, 0.2, 0.4), steps: int = 300,
             k: int = 6, method: str = "auto", bisect: bool = True, fidelity: bool = True,
             tols: Sequence[float] = (1e-2, 1e-3, 1e-4),
             on_text: Callable[[str], None] | None = None) -> DiagnoseReport:
    """Diagnose the relaxation of a model on one batch (what ``eqprop diagnose`` prints).

    Args:
        model_or_run: an :class:`~eqprop.models.EquilibriumLM`, or a loaded run
            (:func:`eqprop.train.load_run`), on the device to run on.
        batch: ``(tokens, targets)``, ``(B, T)`` each; ARPACK runs one sample at a time.
        solver: the free-phase solver settings (default: the run's, else
            ``SolverConfig()``): its relaxation is the one diagnosed, its ε the one
            ε_crit is compared with, its tolerance the ε-sweep's.
        sweep_eps: Euler step sizes of the ε-sweep.
        steps: step budget of each ε-sweep relaxation.
        k: eigenvalues per ARPACK call.
        method: eigenvalues by ``"arpack"``, ``"dense"`` (full Jacobian) or ``"auto"``.
        bisect: also compute ε_crit by bisection on ρ(I + εJ) (about 15 ARPACK runs a
            sample).
        fidelity: measure the gradient fidelity of EP, AsymEP and IFT against IFT.
        tols: free-phase tolerances of the fidelity measurement.
        on_text: called with each section of the report as soon as it is measured
            (``print`` streams it, as the CLI does).

    Returns:
        A :class:`DiagnoseReport`.
    """
    from ..train.loaded import LoadedRun  # the training package imports this one

    model, run_solver = subject(model_or_run, "diagnose")
    cfg = solver if solver is not None else run_solver or SolverConfig()
    run = str(model_or_run.run_dir) if isinstance(model_or_run, LoadedRun) else ""
    device = next(model.parameters()).device
    tokens, targets = (t.to(device) for t in batch)
    field = model.field(tokens, targets)
    eps = float(cfg.eps)
    say = on_text or (lambda _text: None)

    # 1. the run's own relaxation, and why each failed sample failed
    sol = build_relaxation(cfg, stability="always").run(field, field.initial_state(), trace=True)
    failures = classify_failures(field, sol, eps, start=field.initial_state())
    z_star = failures.z_best  # the fixed point found (Newton–Krylov), not the orbit
    # 2. the spectrum there
    ec = eps_crit(field, z_star, k=k, bisect=bisect, method=method)
    lm = spectrum(field, z_star, k, "LM", method=method)
    nu = log_norm(field, z_star, method=method)
    fro = hutchinson_frobenius(field, z_star, generator=torch.Generator().manual_seed(0))
    labels = failures.labels()
    samples: list[dict[str, Cell]] = []
    for b in range(z_star.shape[0]):
        mode = ec.mode[b]
        samples.append({
            "sample": b, "status": Status(int(sol.status[b])).label, "steps": int(sol.steps[b]),
            "residual": float(sol.rel_residual[b]), "stable": bool(sol.stable[b]),
            "eps_crit": float(ec.eig[b]),
            "eps_crit_bisect": float(ec.bisect[b]) if ec.bisect is not None else math.nan,
            "crit_a": float(mode.real), "crit_|b|": abs(float(mode.imag)),
            "damping": float(-mode.real / mode.abs()), "max_Re_mu": float(ec.max_real[b]),
            "log_norm": float(nu[b]), "|J|_F^2/dim": float(fro[b]), "verdict": labels[b],
        })
    say(_samples_text(samples, eps))
    # 3. ε-sweep of the free phase
    sweep = eps_sweep(model, (tokens, targets), sweep_eps, steps, tol=cfg.tol)
    say(_sweep_text(sweep))
    # 4. gradient fidelity against IFT per free-phase tolerance
    fid = None
    if fidelity:
        fid = gradient_fidelity(model, (tokens, targets), tols=tols, solver=build_solver(cfg),
                                max_steps=cfg.max_steps)
        say(_fidelity_text(fid))
    say(_verdicts_text(failures))
    return DiagnoseReport(run=run, eps=eps, samples=samples,
                          eigvals=torch.cat([lm.eigvals, ec.eigvals], 1), critical=ec.mode,
                          failures=failures, sweep=sweep, fidelity=fid)
