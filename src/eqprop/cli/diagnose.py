"""``eqprop diagnose RUN``: why does (or will) this run's relaxation fail? (design §5)

On a validation batch: relax with the run's own solver, find the fixed point by
Newton–Krylov, and report per sample the spectrum of J there (ε_crit by
eigenvalues and by bisection, critical mode, damping ratio, largest Re μ,
logarithmic norm, ‖J‖²_F/dim) and the failure kind; then an ε-sweep and the
gradient fidelity against IFT per free-phase tolerance. Tables go to the
terminal; plots (PNG) and ``diagnose.json`` to ``RUN/diagnose/``.
"""

from __future__ import annotations

import json
import math
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Any

import torch
import tyro

from ..errors import ConfigError

__all__ = ["Args", "run"]


@dataclass
class Args:
    """Spectrum, ε_crit, ε-sweep and gradient fidelity of a trained run."""

    run: tyro.conf.Positional[Path]
    """run directory (or a checkpoint inside it)"""
    eps_sweep: tuple[float, ...] = (0.05, 0.1, 0.2, 0.4)
    """Euler step sizes of the ε-sweep"""
    steps: int = 300
    """step budget T of each ε-sweep relaxation"""
    k: int = 6
    """eigenvalues per ARPACK call"""
    batch_size: int = 4
    """validation samples examined (ARPACK runs one sample at a time)"""
    method: str = "auto"
    """eigenvalues by arpack, dense (full Jacobian, small models) or auto"""
    bisect: bool = True
    """also compute ε_crit by bisection on ρ(I + εJ) (about 15 ARPACK runs a sample)"""
    fidelity: bool = True
    """measure gradient fidelity (EP, AsymEP, IFT) against IFT"""
    tols: tuple[float, ...] = (1e-2, 1e-3, 1e-4)
    """free-phase tolerances of the fidelity measurement"""
    split: str = "val"
    """data split of the batch (train or val)"""
    seed: int = 0
    """seed of the batch draw"""
    device: str = "auto"
    """cpu, cuda, or auto (cuda when available)"""
    out: Path | None = None
    """where plots and diagnose.json go (default RUN/diagnose)"""

    def check(self) -> None:
        """Raise :class:`~eqprop.errors.ConfigError` on a value that is not allowed (called by
        :func:`run`, so that the CLI reports it as one line with exit code 2)."""
        for name in ("steps", "k", "batch_size"):
            v = getattr(self, name)
            if not (isinstance(v, int) and v >= 1):
                raise ConfigError(f"--{name.replace('_', '-')}={v!r}: must be an integer ≥ 1")
        if not self.eps_sweep or not all(e > 0 and math.isfinite(e) for e in self.eps_sweep):
            raise ConfigError(f"--eps-sweep {' '.join(map(str, self.eps_sweep))}: give one or "
                              "more finite step sizes > 0")
        if not self.tols or not all(t > 0 for t in self.tols):
            raise ConfigError(f"--tols {' '.join(map(str, self.tols))}: give tolerances > 0")
        if self.method not in ("auto", "arpack", "dense"):
            raise ConfigError(f"--method={self.method!r}: allowed values are auto, arpack, dense")
        if self.split not in ("train", "val"):
            raise ConfigError(f"--split={self.split!r}: allowed values are train, val")
        if self.device not in ("auto", "cpu") and not self.device.startswith("cuda"):
            raise ConfigError(f"--device={self.device!r}: allowed values are auto, cpu, cuda[:N]")


def _fmt(x: Any) -> str:
    if isinstance(x, str):
        return x
    if isinstance(x, bool) or isinstance(x, int):
        return str(x)
    x = float(x)
    if x != x:
        return "nan"
    return f"{x:.4g}" if 1e-3 <= abs(x) < 1e4 or x == 0 else f"{x:.3e}"


def table(rows: list[dict[str, Any]]) -> str:
    """Rows of equal keys as an aligned text table."""
    if not rows:
        return "(empty)"
    cols = list(rows[0])
    cells = [[_fmt(r[c]) for c in cols] for r in rows]
    width = [max(len(c), *(len(row[i]) for row in cells)) for i, c in enumerate(cols)]
    line = "  ".join(c.rjust(w) for c, w in zip(cols, width, strict=True))
    body = ["  ".join(v.rjust(w) for v, w in zip(row, width, strict=True)) for row in cells]
    return "\n".join([line, "  ".join("-" * w for w in width), *body])


def _device(name: str) -> torch.device:
    if name == "auto":
        return torch.device("cuda" if torch.cuda.is_available() else "cpu")
    if name.startswith("cuda") and not torch.cuda.is_available():
        raise ConfigError(f"--device={name}: CUDA is not available here; use --device cpu")
    return torch.device(name)


def run(args: Args) -> int:
    """Diagnose a run; print tables, write plots and ``diagnose.json``. Returns 0."""
    args.check()
    from ..data import load_corpus
    from ..diagnostics import (
        classify_failures,
        eps_crit,
        eps_sweep,
        gradient_fidelity,
        hutchinson_frobenius,
        log_norm,
        plot_fidelity,
        plot_residual_traces,
        plot_spectrum,
        spectrum,
    )
    from ..solvers import Status, relax
    from ..solvers.registry import build_solver
    from ..train.loaded import load_run

    loaded = load_run(args.run)
    cfg, model = loaded.config, loaded.model
    if cfg.model.block == "standard":
        raise ConfigError(f"run {str(loaded.run_dir)!r} is the feed-forward baseline "
                          "(model.block standard): it has no equilibrium to diagnose")
    device = _device(args.device)
    model.to(device).eval()
    out = Path(args.out) if args.out is not None else Path(loaded.run_dir) / "diagnose"
    out.mkdir(parents=True, exist_ok=True)
    T = cfg.model.seq_len
    corpus = load_corpus(cfg.data, seq_len=T, vocab=loaded.vocab)
    g = torch.Generator().manual_seed(args.seed)
    tokens, targets = corpus.get_batch(args.split, args.batch_size, T, generator=g)
    tokens, targets = tokens.to(device), targets.to(device)
    field = model.field(tokens, targets)
    eps = float(cfg.solver.eps)
    print(f"run {loaded.run_dir}: {args.batch_size} {args.split} samples, T={T}, "
          f"solver {cfg.solver.name} ε={eps:g}, tol={cfg.solver.tol:g}")

    # 1. the run's own relaxation, and why each failed sample failed
    sol = relax(field, field.initial_state(), build_solver(cfg.solver), tol=cfg.solver.tol,
                max_steps=cfg.solver.max_steps, trace=True, stability="always")
    report = classify_failures(field, sol, eps, start=field.initial_state())
    z_star = report.z_best  # the fixed point found (Newton–Krylov), not the orbit
    # 2. the spectrum there
    ec = eps_crit(field, z_star, k=args.k, bisect=args.bisect, method=args.method)
    lm = spectrum(field, z_star, args.k, "LM", method=args.method)
    nu = log_norm(field, z_star, method=args.method)
    fro = hutchinson_frobenius(field, z_star, generator=torch.Generator().manual_seed(0))
    samples = []
    for b in range(args.batch_size):
        mode = ec.mode[b]
        samples.append({
            "sample": b, "status": Status(int(sol.status[b])).label, "steps": int(sol.steps[b]),
            "residual": float(sol.rel_residual[b]), "stable": bool(sol.stable[b]),
            "eps_crit": float(ec.eig[b]),
            "eps_crit_bisect": float(ec.bisect[b]) if ec.bisect is not None else math.nan,
            "crit_a": float(mode.real), "crit_|b|": abs(float(mode.imag)),
            "damping": float(-mode.real / mode.abs()), "max_Re_mu": float(ec.max_real[b]),
            "log_norm": float(nu[b]), "|J|_F^2/dim": float(fro[b]),
            "verdict": report.labels()[b],
        })
    print(f"\nper sample (ε_crit at the fixed point; the run's ε = {eps:g})")
    print(table(samples))
    spec_png = plot_spectrum(torch.cat([lm.eigvals, ec.eigvals], 1), eps, out / "spectrum.png",
                             critical=ec.mode, extra_eps=args.eps_sweep,
                             title=f"J at z* ({args.batch_size} samples), run's ε = {eps:g}")

    # 3. ε-sweep of the free phase
    sweep = eps_sweep(model, (tokens, targets), args.eps_sweep, args.steps, tol=cfg.solver.tol)
    print(f"\nε-sweep: Euler, {args.steps} steps, tol {cfg.solver.tol:g}")
    print(table(sweep.rows()))
    traces_png = plot_residual_traces(sweep, out / "residual_traces.png")
    pngs = [spec_png, traces_png]

    # 4. gradient fidelity against IFT per free-phase tolerance
    fid_rows: list[dict[str, Any]] = []
    if args.fidelity:
        fid = gradient_fidelity(model, (tokens, targets), tols=args.tols,
                                solver=build_solver(cfg.solver),
                                max_steps=cfg.solver.max_steps)
        fid_rows = [{"estimator": r.estimator, "tol": r.tol, "cosine": r.cosine,
                     "worst_param": min(r.per_param.values()), "residual": r.residual,
                     "converged": r.converged, "nfe": r.nfe} for r in fid.rows]
        print(f"\ngradient fidelity (cosine to IFT at a tight equilibrium, "
              f"residual {fid.reference_residual:.1e})")
        print(table(fid_rows))
        pngs.append(plot_fidelity(fid, out / "fidelity.png"))

    counts = report.counts()
    print(f"\nverdicts: {', '.join(f'{k} {v}' for k, v in counts.items() if v)}")
    summary = {"run": str(loaded.run_dir), "eps": eps, "args": {k: str(v) for k, v in
                                                                 asdict(args).items()},
               "samples": samples, "sweep": sweep.rows(), "fidelity": fid_rows,
               "verdicts": counts}
    (out / "diagnose.json").write_text(json.dumps(summary, indent=2, default=str))
    print(f"wrote {', '.join(str(p) for p in pngs)} and {out / 'diagnose.json'}")
    return 0

