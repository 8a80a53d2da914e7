"""Does the in-loop stability check see the rightmost eigenvalue? At a run's checkpoint,
against ARPACK.

    python benchmarks/stability_probe.py RUN [RUN ...] [--samples 8] [--split train]
        [--average] [--device cpu] [--out table.md]

For each run: relaxes ``--samples`` sequences with the run's training solver (its free
phase), then estimates the leading ``Re μ`` of ``J`` at each end point three ways:
Arnoldi from a random vector with 16 steps (the check before), from the residual with
16, 32 and 64 steps (64 = ``KRYLOV_DIM``: the check now, :func:`eqprop.solvers.stability.
check_relaxation`), and compares them with ARPACK's rightmost eigenvalues
(``which="LR"``, the reference). Reports per run the samples ARPACK finds unstable
(converged ones: an equilibrium the hardware would leave), what each estimate calls
unstable, and each estimate's largest error.
"""

from __future__ import annotations

import argparse
import time
from dataclasses import replace

import torch

from eqprop.bench.output import emit
from eqprop.data import load_corpus
from eqprop.diagnostics.spectrum import spectrum
from eqprop.solvers import Status
from eqprop.solvers.registry import build_relaxation
from eqprop.solvers.stability import (
    KRYLOV_DIM,
    arnoldi,
    check_relaxation,
    probe,
    ritz,
    start_vector,
)
from eqprop.train import load_run

#: (label, start, Arnoldi steps) of the estimates compared with ARPACK; "(now)" marks the
#: library's check (``KRYLOV_DIM`` steps from the residual)
ESTIMATES = tuple((f"{start}, {m}" + (" (before)" if start == "random" else
                                       " (now)" if m == KRYLOV_DIM else ""), start, m)
                  for start, m in (("random", 16), ("residual", 16), ("residual", 32),
                                   ("residual", 64)))


def probe_run(path: str, samples: int, split: str, average: bool, device: str) -> dict:
    run = load_run(path, device=device, average=average)
    cfg = run.config
    corpus = load_corpus(cfg.data, seq_len=cfg.model.seq_len, vocab=run.vocab)
    tokens, targets = corpus.get_batch(split, samples, cfg.model.seq_len,
                                       generator=torch.Generator().manual_seed(0))
    field = run.model.field(tokens.to(device), targets.to(device))
    relax = build_relaxation(replace(cfg.solver, capture=False, stability="never"))
    with torch.no_grad():
        sol = relax.run(field, field.initial_state())
        z, f = sol.z, field(sol.z)
        t0 = time.perf_counter()
        ref = spectrum(field, z, k=4, which="LR", method="arpack").eigvals  # (B, 4)
        t_ref = time.perf_counter() - t0
        lead = ref.real.nan_to_num(nan=-float("inf")).amax(1)  # (B,)
        ulp = torch.finfo(z.dtype).eps
        est = {}
        for label, start, m in ESTIMATES:
            v0 = probe(z) if start == "random" else start_vector(f)
            est[label] = ritz(arnoldi(field, z, f, v0, m), ulp, m)
        now = check_relaxation(field, sol, None, "always", f=f)  # the library's check
    conv = sol.status == Status.CONVERGED
    return {"run": path, "step": run.step, "samples": samples, "converged": int(conv.sum()),
            "ref_unstable": int((conv & (lead > 0)).sum()), "lead": lead, "ref": ref,
            "est": est, "conv": conv, "check_unstable": int((now.status == Status.UNSTABLE).sum()),
            "t_ref": t_ref, "field": field, "z": z}


def table(rows: list[dict]) -> str:
    head = ["run (step)", "converged", "ARPACK: unstable (rightmost μ, max)"]
    for label, *_ in ESTIMATES:
        head.append(f"{label}: flagged / max error")
    lines = ["| " + " | ".join(head) + " |", "|---" * len(head) + "|"]
    for r in rows:
        i = int(r["lead"].argmax())
        mu = r["ref"][i][r["ref"][i].real.nan_to_num(nan=-float("inf")).argmax()]
        cells = [f"{r['run']} ({r['step']})", f"{r['converged']}/{r['samples']}",
                 f"{r['ref_unstable']} ({mu.real:+.3f} ± {abs(mu.imag):.2f}i)"]
        for label, *_ in ESTIMATES:
            e = r["est"][label]
            flagged = int((e.unstable & r["conv"]).sum())
            err = float((e.max_real - r["lead"]).abs().max())
            cells.append(f"{flagged} / {err:.3f}")
        lines.append("| " + " | ".join(cells) + " |")
    return "\n".join(lines) + "\n"


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("runs", nargs="+", help="run directories with a checkpoint")
    p.add_argument("--samples", type=int, default=8)
    p.add_argument("--split", default="train", choices=("train", "val"))
    p.add_argument("--average", action="store_true",
                   help="the run's moving average (what validation relaxes), not the raw "
                        "parameters (what training relaxes)")
    p.add_argument("--device", default="cpu")
    p.add_argument("--out", default=None, help="markdown file to append to (default: print)")
    a = p.parse_args()
    if a.samples < 1:
        p.error(f"--samples {a.samples}: must be ≥ 1")
    rows = []
    for path in a.runs:
        rows.append(probe_run(path, a.samples, a.split, a.average, a.device))
        r = rows[-1]
        print(f"{path}: step {r['step']}, {r['converged']}/{a.samples} converged, ARPACK "
              f"unstable {r['ref_unstable']} ({r['t_ref']:.0f} s); the check now flags "
              f"{r['check_unstable']}", flush=True)
    text = (f"{a.samples} {a.split} sequences, {'moving average' if a.average else 'raw'} "
            f"parameters, device {a.device}\n\n" + table(rows))
    emit(text, a.out)


if __name__ == "__main__":
    main()
