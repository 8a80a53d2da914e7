"""Which reference solve finds the equilibrium of a trained run? Validation's reference
against the continuous flow, at a checkpoint.

    python benchmarks/reference_probe.py RUN [--samples 8] [--device cpu] [--raw] [--out table.md]

Relaxes ``--samples`` validation sequences with the run's training solver (the free phase
of its config), then from that z* with each reference: explicit Euler at ε 0.2 (the
reference before Anderson) and 0.05 (same flow-time budget), Anderson with a 20-deep
history (validation's reference now), and dopri5 (the continuous flow: what hardware
with no ε settles to). All to the relative residual 1e-6, end points checked for
stability. Reports per solve the statuses, mean NFE, largest residual, the CE, the
largest distance from the training z* and from the flow's end point, and the wall time.
"""

from __future__ import annotations

import argparse
import time
from pathlib import Path

import torch

from eqprop.data import load_corpus
from eqprop.solvers import Anderson, Euler, SolverConfig, Status
from eqprop.solvers.registry import build_relaxation
from eqprop.train import load_run

REFERENCES = {
    "Euler ε 0.2": SolverConfig(euler=Euler(eps=0.2), tol=1e-6, max_steps=1000),
    "Euler ε 0.05": SolverConfig(euler=Euler(eps=0.05), tol=1e-6, max_steps=4000),
    "Anderson m 20": SolverConfig(name="anderson", anderson=Anderson(eps=0.25, m=20),
                                  tol=1e-6, max_steps=1000),
    "dopri5 (the flow)": SolverConfig(name="ode", tol=1e-6, max_steps=12),
}


def _dist(a: torch.Tensor, b: torch.Tensor) -> float:
    """Largest per-sample ``‖a - b‖ / ‖b‖``."""
    return float(((a - b).flatten(1).norm(dim=1) / b.flatten(1).norm(dim=1)).max())


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("run", help="a run directory with a checkpoint")
    p.add_argument("--samples", type=int, default=8)
    p.add_argument("--device", default="cpu")
    p.add_argument("--out", default=None, help="markdown file (default: print only)")
    p.add_argument("--raw", action="store_true",
                   help="the raw parameters, not the run's moving average")
    a = p.parse_args()
    if a.samples < 1:
        p.error(f"--samples {a.samples}: must be ≥ 1")
    run = load_run(a.run, device=a.device, average=not a.raw)
    cfg = run.config
    corpus = load_corpus(cfg.data, seq_len=cfg.model.seq_len, vocab=run.vocab)
    tokens, targets = corpus.get_batch("val", a.samples, cfg.model.seq_len,
                                       generator=torch.Generator().manual_seed(0))
    field = run.model.field(tokens.to(a.device), targets.to(a.device))
    solves = []
    t0 = time.perf_counter()
    z_star = build_relaxation(cfg.solver, stability="always", capture=False).run(
        field, field.initial_state())
    solves.append(("training solver (free phase)", z_star, time.perf_counter() - t0))
    for name, c in REFERENCES.items():
        t0 = time.perf_counter()
        sol = build_relaxation(c, stability="always", capture=False).run(field, z_star.z)
        solves.append((name, sol, time.perf_counter() - t0))
    flow = solves[-1][1].z
    lines = [f"`python benchmarks/reference_probe.py {a.run} --samples {a.samples} "
             f"--device {a.device}{' --raw' if a.raw else ''}` (step {run.step}, {a.samples} "
             f"validation sequences, {'the moving average' if run.averaged else 'raw parameters'}; "
             "the references start at the training solver's z*)", "",
             "| solve | converged | other statuses | mean NFE | max residual | CE | "
             "max ‖z − z*‖/‖z*‖ | max ‖z − z_flow‖/‖z_flow‖ | s |",
             "|---|---|---|---|---|---|---|---|---|"]
    for name, sol, dt in solves:
        with torch.no_grad():
            ce = float(field.loss(sol.z).mean())
        st = sol.status.tolist()
        other = ", ".join(f"{Status(v).name.lower()} {st.count(v)}" for v in sorted(set(st))
                          if v != Status.CONVERGED) or "—"
        lines.append(f"| {name} | {st.count(Status.CONVERGED)}/{len(st)} | {other} | "
                     f"{float(sol.nfe.float().mean()):.0f} | "
                     f"{float(sol.rel_residual.max()):.1e} | {ce:.4f}"
                     f" | {_dist(sol.z, z_star.z):.3f} | {_dist(sol.z, flow):.3f} | {dt:.1f} |")
    text = "\n".join(lines) + "\n"
    if a.out:
        Path(a.out).parent.mkdir(parents=True, exist_ok=True)
        Path(a.out).write_text(text)
    print(text, end="")


if __name__ == "__main__":
    main()
