"""``eqprop bench <target>``: benchmarks; ``solvers`` compares the relaxation solvers,
``train`` times an AsymEP, IFT, BPTT and standard-transformer training step side by side.

Examples::

    eqprop bench solvers --solvers.cases stiff lm --solvers.out benchmarks/results/solvers_cpu.md
    eqprop bench train --train.d-model 512 --train.precision tf32
"""

from __future__ import annotations

import shlex
import sys
from dataclasses import dataclass, field
from pathlib import Path
from typing import Literal

import tyro

from ..bench.solvers import SolverBenchConfig
from ..bench.train_step import TrainBenchConfig

__all__ = ["Args", "SolversArgs", "run"]


@dataclass
class SolversArgs(SolverBenchConfig):
    """The solver benchmark (DESIGN.md §2), with where to write its table.

    Args:
        out: write the markdown table here (with the command on top); print it always.
    """

    out: Path | None = None


@dataclass
class Args:
    """Run one benchmark."""

    target: tyro.conf.Positional[Literal["solvers", "train"]] = "solvers"
    """which benchmark to run"""
    solvers: SolversArgs = field(default_factory=SolversArgs)
    """settings of the solver benchmark"""
    train: TrainBenchConfig = field(default_factory=TrainBenchConfig)
    """settings of the training-step benchmark (benchmarks/train_step.py adds the sweeps)"""


def run(args: Args) -> int:
    """Run the benchmark ``args.target``; returns the exit code."""
    if args.target == "solvers":
        return _solvers(args.solvers)
    if args.target == "train":
        return _train(args.train)
    raise AssertionError(f"unknown bench target {args.target!r}")  # tyro restricts the choices


def _solvers(a: SolversArgs) -> int:
    from dataclasses import fields

    from ..bench.solvers import bench_solvers, markdown_table

    cfg = SolverBenchConfig(**{f.name: getattr(a, f.name) for f in fields(SolverBenchConfig)})
    command = "eqprop " + " ".join(shlex.quote(x) for x in sys.argv[1:]) if sys.argv else ""
    table = markdown_table(bench_solvers(cfg), cfg, command=command)
    print(table)
    if a.out is not None:
        a.out.parent.mkdir(parents=True, exist_ok=True)
        a.out.write_text("# Relaxation solvers (CPU)\n\n" + table)
    return 0


def _train(cfg: TrainBenchConfig) -> int:
    from ..bench.train_step import bench_train_step

    cols = ["kind", "step", "free", "gradient", "update", "nfe", "tokens_per_s", "tflops",
            "peak_mem_gb"]
    rows = bench_train_step(cfg)
    print("| " + " | ".join(cols) + " |\n|" + "---|" * len(cols))
    for r in rows:
        print("| " + " | ".join(f"{r[c]:.4g}" if isinstance(r[c], float) else str(r[c])
                                for c in cols) + " |")
    return 0
