"""Issue 4's measurement: relaxation solvers side by side on stiff problems (CPU).

    python benchmarks/solvers.py --solvers.out benchmarks/results/solvers_cpu.md

A thin script over ``eqprop bench solvers`` (same options; ``--help`` lists them):
an analytic stiff rotating field and an equilibrium LM (a trained run with
``--solvers.run DIR``, else a fresh model with sharpened attention), every solver of
``eqprop.solvers`` plus torchdeq's Anderson and Broyden when ``pip install
'eqprop[peers]'`` is done. The table gives, per solver, the fraction of samples that
reach the relative residual target, the fraction that reach it on the equilibrium
where the continuous flow settles, their NFE and the wall time.
"""

from __future__ import annotations

import sys

from eqprop.cli.main import main

if __name__ == "__main__":
    sys.exit(main(["bench", "solvers", *sys.argv[1:]]))
