"""Per-sample Jacobian operators and the ARPACK wrapper the diagnostics share (design §5).

``J = ∂F/∂z (z*)`` is never formed for real models: :class:`SampleJacobian`
applies one sample's ``J_b v`` by a JVP and ``J_bᵀ v`` by a VJP, as flat vectors,
so that ARPACK (``scipy.sparse.linalg``) can run on it. :func:`arnoldi` is the one
place that calls ARPACK; it falls back to a dense eigensolve when the operator is
too small for Arnoldi (ARPACK needs ``k < n - 1``).
"""

from __future__ import annotations

import warnings
from collections.abc import Callable

import numpy as np
import torch
from torch import Tensor
from torch.func import vjp as func_vjp

from ..errors import ConfigError
from ..fields import Field, FieldFn, jvp

__all__ = ["METHODS", "WHICH", "SampleJacobian", "arnoldi", "check_method", "check_which",
           "per_sample",
           "sort_eigs"]

#: eigenvalue orderings: largest magnitude, largest real part
WHICH = ("LM", "LR")
#: how eigenvalues are computed: ARPACK, dense Jacobian, or dense when the sample is small
METHODS = ("auto", "arpack", "dense")
#: "auto" uses the dense Jacobian up to this many unknowns per sample
DENSE_MAX = 128

MatVec = Callable[[np.ndarray], np.ndarray]


def check_which(which: str) -> None:
    if which not in WHICH:
        raise ConfigError(f"which={which!r}: allowed values are {', '.join(WHICH)} "
                          "(LM largest magnitude, LR largest real part)")


def check_method(method: str) -> None:
    if method not in METHODS:
        raise ConfigError(f"method={method!r}: allowed values are {', '.join(METHODS)}")


def sort_eigs(mu: Tensor, which: str) -> Tensor:
    """Sort eigenvalues ``(..., m)`` complex along the last dim, leading first by ``which``."""
    check_which(which)
    key = mu.abs() if which == "LM" else mu.real
    key = torch.nan_to_num(key, nan=-float("inf"))
    return torch.gather(mu, -1, key.argsort(dim=-1, descending=True))


def default_tol(dtype: torch.dtype) -> float:
    """ARPACK tolerance matched to the precision of the JVPs (float32 cannot reach 1e-15)."""
    return 1e-12 if dtype == torch.float64 else 1e-6


class SampleJacobian:
    """``J_b = ∂F/∂z (z*)_b`` of one sample as flat matrix-free products.

    A :class:`~eqprop.fields.Field` that builds its one-sample field
    (:meth:`~eqprop.fields.Field.sample`, e.g. the LM's) is restricted to it, so a
    product costs one sample's JVP; any other field is evaluated on the whole
    batch with a tangent that is zero outside sample ``b`` (samples are
    independent, so row ``b`` of the product is ``J_b v``).

    Args:
        F: batched field.
        z_star: the point of linearisation ``(B, ...)``.
        b: which sample.
    """

    def __init__(self, F: FieldFn, z_star: Tensor, b: int):
        if not 0 <= b < z_star.shape[0]:
            raise IndexError(f"sample {b} out of range for a batch of {z_star.shape[0]}")
        self.shape = tuple(z_star.shape[1:])
        self.n = int(np.prod(self.shape))
        self.dtype, self.device = z_star.dtype, z_star.device
        one = F.sample(b) if isinstance(F, Field) else None
        if one is not None:  # one sample's own field: B× cheaper products
            self.F, self.z, self.b = one, z_star[b : b + 1], 0
        else:
            self.F, self.z, self.b = F, z_star, b
        self.z = self.z.detach()
        self._vjp: Callable[[Tensor], Tensor] | None = None
        self.matvecs = 0

    def _embed(self, v: Tensor) -> Tensor:  # (n,) -> (B', ...) zero outside sample b
        if self.z.shape[0] == 1:
            return v.reshape(1, *self.shape)
        t = torch.zeros_like(self.z)
        t[self.b] = v.reshape(self.shape)
        return t

    def jvp(self, v: Tensor) -> Tensor:
        """``J_b v``: ``(n,) -> (n,)``."""
        self.matvecs += 1
        with torch.no_grad():
            return jvp(self.F, self.z, self._embed(v))[self.b].reshape(-1)

    def vjp(self, v: Tensor) -> Tensor:
        """``J_bᵀ v``: ``(n,) -> (n,)`` (linearised once, the graph is reused)."""
        self.matvecs += 1
        if self._vjp is None:
            if isinstance(self.F, Field):
                self._vjp = self.F.vjp_at(self.z)
            else:
                _, fn = func_vjp(self.F, self.z)
                self._vjp = lambda u: fn(u)[0]
        with torch.no_grad():
            return self._vjp(self._embed(v))[self.b].reshape(-1)

    def dense(self) -> Tensor:
        """The full ``(n, n)`` Jacobian from ``n`` JVPs (small samples only)."""
        eye = torch.eye(self.n, dtype=self.dtype, device=self.device)
        return torch.stack([self.jvp(eye[i]) for i in range(self.n)], dim=1)

    def numpy_op(self, fn: Callable[[Tensor], Tensor]) -> MatVec:
        """Wrap a torch product ``(n,) -> (n,)`` as a float64 numpy matvec for ARPACK."""

        def matvec(x: np.ndarray) -> np.ndarray:
            v = torch.as_tensor(np.ascontiguousarray(x).reshape(-1), dtype=self.dtype)
            return fn(v.to(self.device)).detach().to("cpu", torch.float64).numpy()

        return matvec


def arnoldi(matvec: MatVec, n: int, k: int, which: str, *, symmetric: bool = False,
            tol: float = 1e-12, ncv: int | None = None, maxiter: int | None = None,
            v0: np.ndarray | None = None) -> tuple[np.ndarray, np.ndarray | None, bool]:
    """Leading eigenvalues of a real ``n × n`` operator by ARPACK (implicitly restarted Arnoldi).

    Args:
        matvec: ``x (n,) -> A x (n,)``, float64 numpy.
        n: dimension.
        k: how many eigenvalues.
        which: ``"LM"`` or ``"LR"`` (``"LR"`` means largest algebraic for ``symmetric``).
        symmetric: the operator is symmetric (Lanczos, real eigenvalues).
        tol: ARPACK's relative accuracy of the Ritz values.
        ncv: Krylov basis size (default ``max(2k + 1, 20)``).
        maxiter: restart budget (ARPACK's default when None).
        v0: starting vector (a warm start).

    Returns:
        ``(eigvals (k',) complex, leading eigenvector (n,) or None, converged)``; the
        values are sorted leading first by ``which`` and ``k' = min(k, n)``. When
        ARPACK does not converge, the Ritz values that did are returned with
        ``converged=False`` (a warning says so).
    """
    from scipy.sparse.linalg import ArpackNoConvergence, LinearOperator, eigs, eigsh

    check_which(which)
    k = min(k, n)
    if k >= n - 1:  # too small for ARPACK: build the matrix from n products
        A = np.stack([matvec(e) for e in np.eye(n)], axis=1)
        w, V = (np.linalg.eigh(A) if symmetric else np.linalg.eig(A))
        key = np.abs(w) if which == "LM" else w.real
        order = np.argsort(-key)[:k]
        return w[order].astype(np.complex128), V[:, order[0]], True
    ncv = min(n, max(2 * k + 1, 20) if ncv is None else max(ncv, k + 2))
    op = LinearOperator((n, n), matvec=matvec, dtype=np.float64)
    converged = True
    try:
        if symmetric:
            w, V = eigsh(op, k=k, which="LA" if which == "LR" else "LM", tol=tol, ncv=ncv,
                         maxiter=maxiter, v0=v0)
        else:
            w, V = eigs(op, k=k, which=which, tol=tol, ncv=ncv, maxiter=maxiter, v0=v0)
    except ArpackNoConvergence as e:  # keep what converged, say so
        warnings.warn(f"ARPACK converged {len(e.eigenvalues)} of {k} eigenvalues "
                      f"({which}, n={n}); raise maxiter or ncv", RuntimeWarning, stacklevel=2)
        w, V, converged = e.eigenvalues, e.eigenvectors, False
    w = np.asarray(w).astype(np.complex128)
    if w.size == 0:
        return w, None, False
    key = np.abs(w) if which == "LM" else w.real
    order = np.argsort(-key)
    return w[order], np.asarray(V)[:, order[0]], converged


def per_sample(F: FieldFn, z_star: Tensor, method: str, tol: float | None,
               dense: Callable[[Tensor], float],
               sparse: Callable[[SampleJacobian, float], float]) -> Tensor:
    """One float per sample ``(B,)`` float64 from each sample's Jacobian operator: ``dense``
    gets the float64 CPU matrix (small systems, or ``method="dense"``), ``sparse`` gets the
    matrix-free :class:`SampleJacobian` and the ARPACK tolerance."""
    check_method(method)
    tol = default_tol(z_star.dtype) if tol is None else tol
    B, n = z_star.shape[0], z_star[0].numel()
    out = torch.empty(B, dtype=torch.float64)
    for b in range(B):
        J = SampleJacobian(F, z_star, b)
        if method == "dense" or (method == "auto" and n <= DENSE_MAX):
            out[b] = dense(J.dense().to("cpu", torch.float64))
        else:
            out[b] = sparse(J, tol)
    return out
