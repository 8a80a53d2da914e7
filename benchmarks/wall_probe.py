"""At a checkpoint where training's relaxations fail: is it the budget, the solver or
the continuous dynamics?

    python benchmarks/wall_probe.py --out benchmarks/results/wall_probe_h200.md RUN_DIR ...

For one training batch (B 64) of each run's newest checkpoint, relaxes the free phase
from the input drive with

- Anderson with the run's own settings (its budget),
- Anderson with ten times that budget, and with ε 0.1 and 0.02 (below ε_crit of a
  stiff rotating mode, where the map it accelerates contracts),
- adaptive Euler (the Heun PI controller) and explicit Euler ε 0.2, up to 5000 steps,
- the continuous-time reference (:class:`~eqprop.solvers.ode.ODE`, dopri5) on 8
  samples: the settling time of the flow, the hardware's answer,

and reports the converged fraction, the median relative residual and NFE of each,
plus the leading ``Re μ`` at Euler's end point: the batched 16-step Ritz estimate
(:func:`~eqprop.solvers.stability.leading_real`, what the training step's check
and the abscissa penalty see), the same with 64 steps, and ARPACK (``which="LR"``)
on 2 samples.

``--row NAME:KEY=VALUE,...`` (repeatable) replaces the rows above by that solver with
those settings (``anderson:eps=0.5,m=20``), each with ``--budget`` steps, and
``--no-reference`` leaves out the ODE and the spectra: a grid of solver settings at
the walled checkpoint, seconds a checkpoint.
"""

from __future__ import annotations

import argparse
import math
import sys
import time
from dataclasses import fields
from pathlib import Path

import torch

from eqprop.data import load_corpus
from eqprop.diagnostics import spectrum
from eqprop.errors import ConfigError
from eqprop.solvers import AdaptiveEuler, Anderson, Euler, relax
from eqprop.solvers.base import SolverSettings
from eqprop.solvers.ode import ODE, settling_time
from eqprop.solvers.registry import SOLVERS
from eqprop.solvers.stability import leading_real
from eqprop.train import load_run


def _row(name: str, sol, seconds: float) -> str:
    conv = sol.converged
    res = float(sol.rel_residual.float().nan_to_num(nan=math.inf).median())
    nfe_conv = float(sol.nfe[conv].float().median()) if bool(conv.any()) else math.nan
    return (f"| {name} | {float(conv.float().mean()):.2f} | {res:.1e} "
            f"| {float(sol.nfe.float().mean()):.0f} | {nfe_conv:.0f} | {seconds:.1f} |")


def _row_spec(text: str) -> tuple[str, object]:
    """``NAME[:key=value,...]``: a solver of :data:`~eqprop.solvers.registry.SOLVERS` with
    its section's settings, e.g. ``anderson:eps=0.5,m=20``."""
    name, _, rest = text.partition(":")
    if name not in SOLVERS:
        raise argparse.ArgumentTypeError(
            f"--row {text!r}: unknown solver {name!r}; one of {', '.join(SOLVERS)}")
    section = SOLVERS[name]
    types = {f.name: f.type for f in fields(section)}
    kwargs = {}
    for item in filter(None, rest.split(",")):
        key, _, value = item.partition("=")
        if key not in types:
            raise argparse.ArgumentTypeError(
                f"--row {text!r}: {name} has no setting {key!r}; one of {', '.join(types)}")
        kind = {"int": int, "float": float, "bool": _boolean}.get(str(types[key]), str)
        try:
            kwargs[key] = kind(value)
        except ValueError:
            raise argparse.ArgumentTypeError(
                f"--row {text!r}: {key}={value!r} is not a {types[key]}") from None
    try:
        return text, section(**kwargs)
    except ConfigError as e:  # a value out of its range
        raise argparse.ArgumentTypeError(f"--row {text!r}: {e}") from None


def _boolean(value: str) -> bool:
    if value.lower() not in ("true", "false"):
        raise ValueError(value)
    return value.lower() == "true"


def probe(run_dir: str, device: str, grid: list[tuple[str, object]] | None = None,
          budget: int = 300, reference: bool = True) -> list[str]:
    run = load_run(run_dir, device=device, average=False)  # the field training relaxes
    cfg = run.config
    corpus = load_corpus(cfg.data, seq_len=cfg.model.seq_len, vocab=run.vocab)
    gen = torch.Generator().manual_seed(0)
    tokens, targets = corpus.get_batch("train", 64, cfg.model.seq_len, generator=gen)
    field = run.model.field(tokens.to(device), targets.to(device))
    z0 = field.initial_state()
    sc = cfg.solver
    lines = [f"### {Path(run_dir).name} (step {run.step})", "",
             "| relaxation | converged | median g | mean NFE | median NFE converged "
             "| s |", "|---|---|---|---|---|---|"]
    rows = [(f"{text}, {budget} steps",
             section.build(sc.tol) if isinstance(section, SolverSettings) else section, budget, 4)
            for text, section in grid or ()]
    sol = None
    for name, solver, budget, k in rows or (
            (f"anderson ε {sc.eps}, {sc.max_steps} steps (training)", Anderson(eps=sc.eps),
             sc.max_steps, 4),
            (f"anderson ε {sc.eps}, {10 * sc.max_steps} steps", Anderson(eps=sc.eps),
             10 * sc.max_steps, 16),
            (f"anderson ε 0.1, {10 * sc.max_steps} steps", Anderson(eps=0.1),
             10 * sc.max_steps, 16),
            (f"anderson ε 0.02, {10 * sc.max_steps} steps", Anderson(eps=0.02),
             10 * sc.max_steps, 16),
            ("adaptive Euler (Heun PI), 5000 steps", AdaptiveEuler(), 5000, 50),
            ("euler ε 0.2, 5000 steps", Euler(0.2), 5000, 50)):
        t = time.perf_counter()
        sol = relax(field, z0, solver, tol=sc.tol, max_steps=budget, check_every=k,
                    capture=z0.is_cuda and solver.capturable)
        lines.append(_row(name, sol, time.perf_counter() - t))
    if not reference:
        return lines + [""]
    t = time.perf_counter()
    sub = field.head(8)
    t_settle, ode_sol = settling_time(sub, z0[:8], ODE(tol=sc.tol, max_nfe=20_000))
    finite = t_settle[torch.isfinite(t_settle)]
    lines.append(_row("ODE (dopri5), 8 samples", ode_sol, time.perf_counter() - t))
    lines += ["", f"ODE settling time, 8 samples: {finite.numel()}/8 settled"
              + (f", median t = {float(finite.median()):.1f}" if finite.numel() else ""), ""]
    z = sol.z
    r16 = leading_real(field, z, m=16).max_real
    r64 = leading_real(field, z, m=64).max_real
    t = time.perf_counter()
    sp = spectrum(field.head(2), z[:2], k=4, which="LR")
    lead = sp.eigvals[:, 0]
    lines += ["| leading Re μ at Euler's end point | samples | max | median |", "|---|---|---|---|",
              f"| Ritz, 16 steps | 64 | {float(r16.max()):+.3f} | {float(r16.median()):+.3f} |",
              f"| Ritz, 64 steps | 64 | {float(r64.max()):+.3f} | {float(r64.median()):+.3f} |",
              f"| ARPACK LR ({time.perf_counter() - t:.0f} s) | 2 | "
              f"{float(lead.real.max()):+.3f} (Im {float(lead.imag[lead.real.argmax()]):+.2f}) "
              f"| — |", ""]
    return lines


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("runs", nargs="+")
    p.add_argument("--out", required=True)
    p.add_argument("--device", default="cuda" if torch.cuda.is_available() else "cpu")
    p.add_argument("--row", type=_row_spec, action="append", metavar="NAME:KEY=VALUE,...",
                   help="a grid row (repeatable), e.g. anderson:eps=0.5,m=20; replaces the "
                        "default rows")
    p.add_argument("--budget", type=int, default=300, help="steps of each grid row")
    p.add_argument("--no-reference", action="store_true",
                   help="leave out the ODE reference and the spectra")
    a = p.parse_args()
    dev = torch.cuda.get_device_name() if a.device.startswith("cuda") else "CPU"
    lines = ["# Is the wall the budget, the solver or the dynamics?", "",
             f"`python {' '.join(sys.argv)}` on {dev}, "
             f"torch {torch.__version__}; one training batch (64 sequences, seed 0) per "
             "checkpoint.",
             ""]
    for r in a.runs:
        lines += probe(r, a.device, a.row, a.budget, not a.no_reference)
        Path(a.out).write_text("\n".join(lines) + "\n")
        print("\n".join(lines))


if __name__ == "__main__":
    main()
