"""The fewest F-evaluations any Krylov-type solver can need on the bench's stiff field.

    python benchmarks/krylov_bound.py

Euler, Anderson, Broyden and Newton–GMRES all put the iterate after k products with J
in ``z0 + K_k(J, F(z0))``; on the linear field ``F(z) = A (z - z*)`` of
``eqprop bench solvers`` (case ``stiff``, same sizes and seed) GMRES gives the smallest
``‖F‖`` on that space. The first k at which it reaches ``‖F‖ ≤ 1e-5 ‖z‖`` plus the one
evaluation of ``F(z0)`` bounds the NFE of every such solver from below (float64, exact
arithmetic up to round-off).
"""

from __future__ import annotations

import torch

from eqprop.bench.solvers import SolverBenchConfig, stiff_field
from eqprop.solvers.base import sample_norm
from eqprop.solvers.krylov import gmres


def krylov_bound(cfg: SolverBenchConfig) -> torch.Tensor:
    """Per sample ``(B,)``: the smallest NFE at which ``z0 + K_k`` holds a point at the target."""
    F = stiff_field(cfg.stiff_dim, cfg.stiff_b, cfg.batch, cfg.seed, torch.float64)
    z0 = torch.zeros_like(F.z_fix) + 1.0  # as the bench
    f0 = F(z0)
    bound = torch.full((cfg.batch,), -1, dtype=torch.long)
    for k in range(1, cfg.stiff_dim + 1):
        delta, _ = gmres(lambda v: v @ F.A.T, -f0, tol=1e-300, restart=cfg.stiff_dim,
                         max_iter=k)  # the minimal-residual point of z0 + K_k
        z = z0 + delta
        hit = (sample_norm(F(z)) <= cfg.tol * sample_norm(z)) & (bound < 0)
        bound[hit] = k + 1  # k products and F(z0)
    return bound


def main() -> None:
    cfg = SolverBenchConfig()
    b = krylov_bound(cfg)
    print(f"stiff field (dim {cfg.stiff_dim}, |b| ≤ {cfg.stiff_b:g}, batch {cfg.batch}, "
          f"seed {cfg.seed}), target {cfg.tol:g}: lower bound on NFE per sample "
          f"min {int(b.min())}, median {int(b.median())}, max {int(b.max())}"
          + ("" if bool((b > 0).all()) else "; some samples never reach it"))


if __name__ == "__main__":
    main()
