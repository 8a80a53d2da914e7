"""Do the nudged phases settle, and how good is their gradient, as β varies? At a run's
checkpoint, against the exact adjoint.

    python benchmarks/nudge_probe.py RUN [RUN ...] [--betas 0.5,0.2,0.1] [--samples 16]
        [--budgets 150,75] [--device cpu] [--out table.md]

For each run: relaxes ``--samples`` training sequences with the run's free phase (its
raw parameters, what training relaxes), keeps those whose free phase converged (and
reports how far the estimate over all of them, the others kept, is from their exact
gradient), computes the exact gradient by IFT (the adjoint
``A⁻ᵀ∇L`` by GMRES to 1e-8), then for each β runs the run's own estimator (AsymEP or EP,
its nudged solver, tolerance and budget) and reports the nudged phases' outcomes
(converged, still contracting or cycling at the budget, diverged) and NFE, and the
estimate's cosine to the exact gradient. Large β leaves the linear regime of the nudged
dynamics (their relaxations diverge); small β asks the nudged tolerance, which is relative
to the nudge ``β‖∇L‖``, to resolve a smaller displacement. ``--budgets`` repeats each β
with those step budgets of the nudged phases (default: the run's own): late in training
most of a step's evaluations are nudged phases that end at their budget.
"""

from __future__ import annotations

import argparse
import time
from dataclasses import replace

import torch

from eqprop.bench.output import emit
from eqprop.data import load_corpus
from eqprop.gradients import gradient_cosine
from eqprop.gradients.fidelity import estimate_grads
from eqprop.gradients.registry import build_estimator
from eqprop.solvers import Status
from eqprop.solvers.registry import build_relaxation
from eqprop.train import load_run

#: the outcomes tabulated, in order (a nudged phase never reads unstable: it is not checked)
OUTCOMES = (Status.CONVERGED, Status.CONTRACTING, Status.CYCLING, Status.DIVERGED,
            Status.NONFINITE)


def probe_run(path: str, betas: list[float], samples: int, device: str,
              budgets: list[int] | None = None) -> dict:
    """One run's rows: per β (and nudged step budget: the run's own when None) the nudged
    outcomes (summed over the phases), the mean NFE per phase and the cosine to IFT."""
    run = load_run(path, device=device, average=False)
    cfg = run.config
    corpus = load_corpus(cfg.data, seq_len=cfg.model.seq_len, vocab=run.vocab)
    tokens, targets = corpus.get_batch("train", samples, cfg.model.seq_len,
                                       generator=torch.Generator().manual_seed(0))
    field = run.model.field(tokens.to(device), targets.to(device))
    free = build_relaxation(replace(cfg.solver, capture=False))
    sol = free.run(field, field.initial_state())
    # the gradients compare at equilibria: a sample whose free phase missed its tolerance
    # (cycling or contracting at the budget) has no EP or IFT gradient to compare
    keep = sol.status == Status.CONVERGED
    if not bool(keep.any()):
        raise SystemExit(f"nudge_probe: no free relaxation of {path} converged on the "
                         f"{samples} sequences ({sol.summary()})")
    own = replace(cfg.estimator, nudge=replace(cfg.estimator.nudge, capture=False))
    everyone = None  # the run's estimate with the unconverged samples kept, as it trained
    if not bool(keep.all()):
        everyone, _ = estimate_grads(run.model, field, sol.z.detach(),
                                     build_estimator(own, cfg.solver))
    field = run.model.field(tokens.to(device)[keep], targets.to(device)[keep])
    z = sol.z.detach()[keep]
    ift = build_estimator(replace(cfg.estimator, name="ift", ift_tol=1e-8), cfg.solver)
    exact, _ = estimate_grads(run.model, field, z, ift)
    rows = []
    for beta, budget in [(b, n) for b in betas for n in budgets or [cfg.estimator.nudge.max_steps]]:
        est_cfg = replace(own, beta=beta, nudge=replace(own.nudge, max_steps=budget))
        t0 = time.perf_counter()
        grads, res = estimate_grads(run.model, field, z, build_estimator(est_cfg, cfg.solver))
        phases = list(res.solutions.values())
        counts = {s: sum(int((p.status == s).sum()) for p in phases) for s in OUTCOMES}
        rows.append({"beta": beta, "budget": budget, "counts": counts, "phases": len(phases),
                     "nfe": sum(float(p.nfe.float().mean()) for p in phases) / len(phases),
                     "cos": gradient_cosine(grads, exact)[0],
                     "seconds": time.perf_counter() - t0})
    return {"run": path, "step": run.step, "estimator": cfg.estimator.name,
            "samples": samples, "free_converged": int(keep.sum()), "rows": rows,
            "cos_unconverged_kept": None if everyone is None
            else gradient_cosine(everyone, exact)[0]}


def table(results: list[dict]) -> str:
    """Markdown: one row per run and β."""
    head = " | ".join(s.name.lower() for s in OUTCOMES)
    lines = [f"| run (step) | free converged | β | nudged budget | nudged {head} | NFE per "
             "phase | cos to IFT | s |", "|---|---|---|---|" + "---|" * (len(OUTCOMES) + 3)]
    for r in results:
        for row in r["rows"]:
            n = r["free_converged"] * row["phases"]  # the converged samples
            cells = " | ".join(f"{row['counts'][s]}/{n}" for s in OUTCOMES)
            lines.append(f"| {r['run']} ({r['step']}) | {r['free_converged']}/{r['samples']} "
                         f"| {row['beta']:g} | {row['budget']} | {cells} | {row['nfe']:.0f} | "
                         f"{row['cos']:.4f} | {row['seconds']:.0f} |")
    for r in results:
        if r["cos_unconverged_kept"] is not None:
            lines.append(f"\n{r['run']} ({r['step']}): the run's own estimate over all "
                         f"{r['samples']} sequences, the {r['samples'] - r['free_converged']} "
                         "whose free phase missed the tolerance kept (as training used them "
                         "before they were dropped), has cosine "
                         f"{r['cos_unconverged_kept']:.4f} to the exact gradient of the "
                         "converged ones.")
    return "\n".join(lines)


def _betas(text: str) -> list[float]:
    try:
        out = [float(x) for x in text.split(",")]
    except ValueError:
        raise argparse.ArgumentTypeError(f"{text!r}: expected numbers > 0 separated by commas "
                                         "(e.g. 0.5,0.2,0.1)") from None
    if not out or not all(b > 0 for b in out):
        raise argparse.ArgumentTypeError(f"{text!r}: every β must be > 0")
    return out


def _budgets(text: str) -> list[int]:
    try:
        out = [int(x) for x in text.split(",")]
    except ValueError:
        out = []
    if not out or not all(n >= 1 for n in out):
        raise argparse.ArgumentTypeError(f"{text!r}: expected integers ≥ 1 separated by commas "
                                         "(e.g. 150,75)")
    return out


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("runs", nargs="+", help="run directories with a checkpoint")
    p.add_argument("--betas", type=_betas, default=[0.5, 0.2, 0.1])
    p.add_argument("--samples", type=int, default=16)
    p.add_argument("--budgets", type=_budgets, default=None,
                   help="step budgets of the nudged phases (default: the run's own)")
    p.add_argument("--device", default="cpu")
    p.add_argument("--out", default=None, help="markdown file to append to (default: print)")
    a = p.parse_args()
    if a.samples < 1:
        p.error(f"--samples {a.samples}: must be ≥ 1")
    results = []
    for path in a.runs:
        results.append(probe_run(path, a.betas, a.samples, a.device, a.budgets))
        print(f"{path}: step {results[-1]['step']} done", flush=True)
    text = (f"{a.samples} training sequences, raw parameters, device {a.device}, torch "
            f"{torch.__version__}\n\n" + table(results))
    emit(text, a.out)


if __name__ == "__main__":
    main()
