"""Small dense eigenproblems on the host: the Ritz values and vectors of the stability
check's Hessenberg matrices (:mod:`~eqprop.solvers.stability`), a batch of them at a
time, split over torch's intra-op threads.
"""

from __future__ import annotations

import functools
import math
import os
from collections.abc import Callable
from concurrent.futures import ThreadPoolExecutor

import torch
from torch import Tensor

__all__ = ["eigvals", "ritz_vectors", "spread"]


@functools.cache
def _pool(n: int) -> ThreadPoolExecutor:
    return ThreadPoolExecutor(n, thread_name_prefix="eqprop-ritz")


# a forked child inherits the pools but not their threads: it makes its own
os.register_at_fork(after_in_child=_pool.cache_clear)


def spread(fn: Callable[..., Tensor], *batches: Tensor) -> Tensor:
    """``fn(*batches)`` for small dense problems on the CPU, the batch (dim 0 of every
    argument) split over torch's intra-op threads: LAPACK takes one small matrix at a time
    and torch does not spread a batch of them. The result equals one call's bit for bit
    (each matrix is solved alone either way)."""
    n = min(torch.get_num_threads(), batches[0].shape[0])
    if n < 2:
        return fn(*batches)
    parts = zip(*(b.tensor_split(n) for b in batches), strict=True)
    return torch.cat(list(_pool(n).map(lambda p: fn(*p), parts)))


def eigvals(A: Tensor) -> Tensor:
    """The eigenvalues ``(B, m)`` of a batch of small dense matrices ``A`` ``(B, m, m)`` on
    the CPU (``torch.linalg.eigvals``, :func:`spread` over the threads)."""
    return spread(torch.linalg.eigvals, A)


def ritz_vectors(Hm: Tensor, theta: Tensor) -> Tensor:
    """Unit eigenvectors of ``Hm`` ``(c, m, m)`` for its eigenvalues ``theta`` ``(c,)``, by two
    steps of inverse iteration: ``(c, m)`` complex128.

    A batch of small dense eigenproblems costs half as much for the values alone
    (``torch.linalg.eigvals`` against ``eig``), and the check needs the vectors of only the
    Ritz values right of the axis (the hinge: of the rightmost one). The shift
    ``θ + 1e-10·max|Hm|`` keeps the solve nonsingular while the eigenvector's component
    grows by ~1e10 a step.
    """
    A = Hm.to(torch.complex128)
    c, m = A.shape[0], A.shape[1]
    scale = A.abs().amax((1, 2)).clamp_min(1.0)  # (c,)
    shift = (theta.to(torch.complex128) + 1e-10 * scale)[:, None, None]
    M = A - shift * torch.eye(m, dtype=A.dtype)
    y = torch.ones(c, m, 1, dtype=A.dtype) / math.sqrt(m)
    for _ in range(2):
        y = torch.linalg.solve(M, y)
        y = y / torch.linalg.vector_norm(y, dim=1, keepdim=True)
    return y[..., 0]
