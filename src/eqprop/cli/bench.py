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
from typing import Annotated

import tyro

from ..bench.solvers import SolverBenchConfig
from ..bench.train_step import TrainBenchConfig

__all__ = ["Args", "SolversArgs", "SolversCommand", "TrainCommand", "run"]


@dataclass
class SolversArgs(SolverBenchConfig):
    """The solver benchmark (design §2), with where to write its table.

    Args:
        out: write the markdown table here (with the command on top); print it always.
    """

    out: Path | None = None


@dataclass
class SolversCommand:
    """Compare the relaxation solvers: NFE and wall time to a residual, fraction of samples
    that get there (docs/solvers.md)."""

    solvers: SolversArgs = field(default_factory=SolversArgs)
    """settings of the solver benchmark"""


@dataclass
class TrainCommand:
    """Time one training step of AsymEP, IFT, BPTT and a same-size standard transformer
    (benchmarks/train_step.py adds the sweeps). Its defaults (width 512, 256 positions) take
    minutes per kind on a CPU: --train.d-model 64 --train.d-ff 256 --train.seq-len 64 is
    quick there."""

    train: TrainBenchConfig = field(default_factory=TrainBenchConfig)
    """settings of the training-step benchmark"""


#: ``eqprop bench solvers ...`` or ``eqprop bench train ...``, each with its own --help
Args = Annotated[SolversCommand, tyro.conf.subcommand("solvers")] | \
    Annotated[TrainCommand, tyro.conf.subcommand("train")]


def run(args: SolversCommand | TrainCommand) -> int:
    """Run the chosen benchmark; returns the exit code."""
    if isinstance(args, SolversCommand):
        return _solvers(args.solvers)
    return _train(args.train)


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
    from ..bench.train_step import KINDS, bench_train_step

    cols = ["kind", "step", "free", "gradient", "update", "nfe", "tokens_per_s", "tflops",
            "peak_mem_gb"]
    print("| " + " | ".join(cols) + " |\n|" + "---|" * len(cols), flush=True)
    for i, kind in enumerate(KINDS, 1):  # a row as soon as it is measured
        print(f"eqprop bench train: timing {kind} ({i}/{len(KINDS)}, {cfg.warmup} + "
              f"{cfg.repeats} steps, d_model {cfg.d_model}, {cfg.batch_size} x {cfg.seq_len} "
              f"tokens on {cfg.device})", file=sys.stderr, flush=True)
        (r,) = bench_train_step(cfg, kinds=(kind,))
        print("| " + " | ".join(f"{r[c]:.4g}" if isinstance(r[c], float) else str(r[c])
                                for c in cols) + " |", flush=True)
    return 0
