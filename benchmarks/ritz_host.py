"""The host's share of the stability check: the Ritz verdict of a batch of Hessenberg
matrices, against the full eigendecomposition it replaced.

    python benchmarks/ritz_host.py [--batch 64] [--m 64] [--repeats 5] [--out table.md]

After the Arnoldi steps on the device, the check moves ``H (B, m+1, m)`` to the host and
decides per sample from the Ritz values and the residuals of those right of the axis
(:func:`eqprop.solvers.stability.ritz`: the eigenvalues, then inverse iteration for the
candidates, the batch spread over torch's intra-op threads). Before, every Ritz pair was
computed (``torch.linalg.eig``, values and vectors, one batched call). They are timed side
by side on the same matrices, ``ritz`` also on one thread: damped modes and one rotating
pair per sample at ``a ± 2i``, with ``a > 0`` (a candidate) on the given share of the
samples.
"""

from __future__ import annotations

import argparse
import os
import platform
import statistics
import time

import torch

from eqprop.bench.output import emit
from eqprop.solvers.stability import Krylov, ritz


def hessenberg_batch(B: int, m: int, unstable: int, seed: int = 0) -> torch.Tensor:
    """``(B, m+1, m)`` Hessenberg matrices: damped modes weakly coupled, a pair ``a ± 2i``
    in the last two columns, ``a = +0.1`` on the first ``unstable`` samples, else -0.1."""
    g = torch.Generator().manual_seed(seed)
    H = torch.zeros(B, m + 1, m, dtype=torch.float64)
    for b in range(B):
        Hb = 0.1 * torch.triu(torch.rand(m, m, generator=g, dtype=torch.float64), 1)
        Hb += torch.diag(-1.0 - torch.rand(m, generator=g, dtype=torch.float64))
        Hb += torch.diag(torch.full((m - 1,), 0.1, dtype=torch.float64), -1)
        a = 0.1 if b < unstable else -0.1
        Hb[m - 2:, m - 2:] = torch.tensor([[a, 2.0], [-2.0, a]], dtype=torch.float64)
        H[b, :m] = Hb
        H[b, m, m - 1] = 1e-3
    return H


def median_ms(fn, repeats: int) -> float:
    fn()
    times = []
    for _ in range(repeats):
        t0 = time.perf_counter()
        fn()
        times.append(1e3 * (time.perf_counter() - t0))
    return statistics.median(times)


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--batch", type=int, default=64)
    p.add_argument("--m", type=int, default=64, help="Arnoldi steps (the check's KRYLOV_DIM)")
    p.add_argument("--repeats", type=int, default=5)
    p.add_argument("--out", default=None, help="markdown file to append to (default: print)")
    a = p.parse_args()
    if a.batch < 1 or a.m < 2 or a.repeats < 1:
        p.error(f"--batch {a.batch} --m {a.m} --repeats {a.repeats}: need batch ≥ 1, m ≥ 2, "
                "repeats ≥ 1")
    ulp = torch.finfo(torch.float32).eps
    threads = torch.get_num_threads()
    lines = [f"`python benchmarks/ritz_host.py --batch {a.batch} --m {a.m} --repeats "
             f"{a.repeats}` on {platform.processor() or platform.machine()} "
             f"({os.cpu_count()} CPUs), torch {torch.__version__}; median ms", "",
             "| samples right of the axis | `torch.linalg.eig` (all pairs, before) | "
             "`ritz`, 1 thread | `ritz`, eigenvalues on "
             f"{threads} threads | ratio to `eig` |", "|---|---|---|---|---|"]

    def on_threads(n: int, fn):
        def timed():
            torch.set_num_threads(n)
            try:
                return fn()
            finally:
                torch.set_num_threads(threads)
        return timed

    for share in (0, 1, a.batch // 8, a.batch):
        H = hessenberg_batch(a.batch, a.m, share)
        kr = Krylov(H, torch.full((a.batch,), a.m), torch.zeros(a.batch, a.m + 1, 1))
        full = median_ms(lambda: torch.linalg.eig(H[:, : a.m]), a.repeats)  # noqa: B023
        one = median_ms(on_threads(1, lambda: ritz(kr, ulp, a.m)), a.repeats)  # noqa: B023
        now = median_ms(lambda: ritz(kr, ulp, a.m), a.repeats)  # noqa: B023
        assert int(ritz(kr, ulp, a.m).unstable.sum()) == share  # the planted verdicts
        lines.append(f"| {share}/{a.batch} | {full:.1f} | {one:.1f} | {now:.1f} | "
                     f"{full / now:.2f} |")
    emit("\n".join(lines), a.out)


if __name__ == "__main__":
    main()
