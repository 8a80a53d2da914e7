"""The host's small dense eigenproblems (``eqprop.solvers.dense_eig``) spread over the
intra-op threads: the same results as one batched call, bit for bit."""

from __future__ import annotations

import torch

from eqprop.solvers.dense_eig import eigvals, ritz_vectors, spread


def test_small_dense_problems_spread_over_threads_equal_one_batched_call():
    """The batch split over the intra-op threads gives one call's results bit for bit
    (eigenvalues and inverse iteration), also for a batch smaller than the threads."""
    g = torch.Generator().manual_seed(3)
    A = torch.triu(torch.randn(13, 9, 9, generator=g, dtype=torch.float64), -1)
    n = torch.get_num_threads()
    try:
        torch.set_num_threads(4)
        for batch in (A, A[:3], A[:1]):
            theta = torch.linalg.eigvals(batch)
            assert torch.equal(eigvals(batch), theta)
            assert torch.equal(spread(ritz_vectors, batch, theta[:, 0]),
                               ritz_vectors(batch, theta[:, 0]))
    finally:
        torch.set_num_threads(n)
