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
"""

from __future__ import annotations

import argparse
import math
import time
from pathlib import Path

import torch

from eqprop.data import load_corpus
from eqprop.diagnostics import spectrum
from eqprop.solvers import AdaptiveEuler, Anderson, Euler, relax
from eqprop.solvers.ode import ODE, settling_time
from eqprop.solvers.stability import leading_real
from eqprop.train import load_run


def _row(name: str, sol, seconds: float) -> str:
    conv = float(sol.converged.float().mean())
    res = float(sol.rel_residual.float().nan_to_num(nan=math.inf).median())
    return (f"| {name} | {conv:.2f} | {res:.1e} | {float(sol.nfe.float().mean()):.0f} "
            f"| {seconds:.1f} |")


def probe(run_dir: str, device: str) -> list[str]:
    run = load_run(run_dir, device=device)
    cfg = run.config
    corpus = load_corpus(cfg.data, seq_len=cfg.model.seq_len, vocab=run.vocab)
    gen = torch.Generator().manual_seed(0)
    tokens, targets = corpus.get_batch("train", 64, cfg.model.seq_len, generator=gen)
    field = run.model.field(tokens.to(device), targets.to(device))
    z0 = field.initial_state()
    sc = cfg.solver
    lines = [f"### {Path(run_dir).name} (step {run.step})", "",
             "| relaxation | converged | median g | mean NFE | s |", "|---|---|---|---|---|"]
    sol = None
    for name, solver, budget, k in (
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
                    capture=z0.is_cuda)
        lines.append(_row(name, sol, time.perf_counter() - t))
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
    a = p.parse_args()
    dev = torch.cuda.get_device_name() if a.device.startswith("cuda") else "CPU"
    lines = ["# Is the wall the budget, the solver or the dynamics?", "",
             f"`python benchmarks/wall_probe.py --out {a.out} {' '.join(a.runs)}` on {dev}, "
             f"torch {torch.__version__}; one training batch (64 sequences, seed 0) per "
             "checkpoint.",
             ""]
    for r in a.runs:
        lines += probe(r, a.device)
        Path(a.out).write_text("\n".join(lines) + "\n")
        print("\n".join(lines))


if __name__ == "__main__":
    main()
