"""Is an equilibrium continuous-stable? A cheap per-sample check (design §2).

A root finder (Newton–Krylov, Broyden, Anderson, implicit Euler with a large step,
Ψtc, IMEX) converges to any zero of ``F``, also to a source or a saddle that the
continuous dynamics — the hardware — would leave. After such a solve,
:func:`check_relaxation` estimates the leading ``Re μ`` of ``J = ∂F/∂z (z*)`` for
each sample and gives the samples that landed on an unstable point the status
``unstable`` instead of ``converged``.

The estimate is ``m`` steps of Arnoldi on ``J``, batched over the samples, started from
the residual ``F(z)`` (:func:`start_vector`), with forward-difference products ``J v ≈
(F(z + δv) - F(z)) / δ``, ``δ = √ulp · max(1, ‖z‖)`` (one evaluation of ``F`` per step,
and ``F`` may be any batched callable: a nudged field, a complex state of holomorphic
EP). The Ritz values ``θ_i`` (the eigenvalues of the ``m × m`` Hessenberg matrix)
approximate the exterior of the spectrum first, where the rightmost eigenvalue lies.
Each Ritz value comes with its residual ``r_i = ‖J y_i - θ_i y_i‖`` (from the last
Arnoldi coefficient), and a sample is called unstable only when some ``Re θ_i - r_i``
exceeds a noise margin ``10 √ulp · max(1, max|θ|)``: a Ritz value in the right half
plane by more than its own error. The start matters: the residual a relaxation leaves is
made of the modes it has not damped yet, the slow and the growing ones, so Arnoldi meets
the rightmost eigenvalue there first; from a random vector 16 steps misread it by
0.85–1.44 on trained study-size fields and flagged none of their Hopf-unstable
equilibria, 64 from the residual by at most 0.23
(benchmarks/results/stability_probe_recipe_cpu.md). For a state of
``n ≤ m`` unknowns Arnoldi spans the whole space and the Ritz values are the eigenvalues
(up to the difference error). On a large ``J`` an eigenvalue that ``m`` steps do not
resolve is missed: the full-accuracy reference is :func:`eqprop.diagnostics.spectrum`
(ARPACK, ``which="LR"``). Cost and accuracy are in docs/solvers.md.

Solvers that follow the flow (``Solver.follows_flow``: explicit and adaptive Euler,
the ODE reference) are repelled by every mode with ``Re μ > 0``, so from a generic
start they never settle on an unstable point; ``stability="auto"`` skips them.
"""

from __future__ import annotations

import math
from dataclasses import replace

import torch
from torch import Tensor

from ..errors import ConfigError
from ..fields import FieldFn, evals_per_call
from .base import Solution, Solver, sample_norm
from .dense_eig import eigvals, ritz_vectors, spread
from .status import Status

__all__ = ["KRYLOV_DIM", "MODES", "Krylov", "RitzModes", "StabilityEstimate", "arnoldi",
           "assess_stability", "check_mask", "check_mode", "check_relaxation", "checks",
           "eigvals", "leading_mode", "leading_real", "probe", "ritz", "ritz_vectors", "spread",
           "start_vector"]

#: when relax checks stability: root finders' converged samples, every sample, never
MODES = ("auto", "always", "never")
#: Arnoldi steps (evaluations of F) per check
KRYLOV_DIM = 64
#: weight of the random probe in the start vector (it keeps every direction in the
#: Krylov space where the residual has none, e.g. at an exact fixed point)
PROBE_WEIGHT = 0.1


def check_mode(mode: str) -> None:
    if mode not in MODES:
        raise ConfigError(f"stability={mode!r}: allowed values are {', '.join(MODES)} (auto: "
                          "root finders' converged samples; always: every sample; never)")


class StabilityEstimate:
    """Per-sample outcome of :func:`leading_real`, ``(B,)`` tensors on the state's device.

    Attributes:
        max_real: the largest ``Re θ`` of the Ritz values (float64; NaN where ``F`` was
            not finite).
        unstable: some Ritz value lies right of the imaginary axis by more than its
            residual and the noise margin.
        evals: evaluations of ``F`` spent per sample.
        modes: the Ritz decomposition behind the verdict (:class:`RitzModes`).
    """

    def __init__(self, max_real: Tensor, unstable: Tensor, evals: int,
                 modes: RitzModes | None = None):
        self.max_real, self.unstable, self.evals, self.modes = max_real, unstable, evals, modes


class RitzModes:
    """The Ritz decomposition of ``m`` Arnoldi steps at a state, per sample: the square
    Hessenberg matrices ``Hm`` ``(B, m, m)`` and their eigenvalues ``theta`` ``(B, m)`` on
    the host, the orthonormal basis ``V`` ``(B, m, N)`` on the state's device.

    A check leaves one on its :class:`~eqprop.solvers.base.Solution` (``modes``), so
    that the abscissa hinge takes the rightmost pair of the free equilibrium from the
    check's Arnoldi steps instead of taking them again. ``modes[i]`` (a slice) is the
    decomposition of those samples.
    """

    def __init__(self, Hm: Tensor, theta: Tensor, V: Tensor):
        self.Hm, self.theta, self.V = Hm, theta, V

    def __getitem__(self, idx: slice) -> RitzModes:
        return RitzModes(self.Hm[idx], self.theta[idx], self.V[idx])

    def leading(self) -> tuple[Tensor, Tensor]:
        """The Ritz value with the largest real part ``(B,)`` (complex128, on the host) and
        its unit Ritz vector ``(B, N)`` (complex128, on ``V``'s device)."""
        lead = self.theta.real.argmax(1)  # (B,); past a sample's basis -C, never rightmost
        rows = torch.arange(self.theta.shape[0])
        theta = self.theta[rows, lead]
        coef = spread(ritz_vectors, self.Hm, theta).to(self.V.device)  # (B, m) in the basis
        y = torch.einsum("bk,bkn->bn", coef, self.V.to(torch.complex128))
        return theta, y / sample_norm(y).clamp_min(torch.finfo(torch.float64).tiny)[:, None]


def _flat(v: Tensor) -> Tensor:  # (B, ...) -> (B, N)
    return v.reshape(v.shape[0], -1)


def leading_real(F: FieldFn, z: Tensor, f: Tensor | None = None, *,
                 m: int = KRYLOV_DIM) -> StabilityEstimate:
    """Estimate the leading ``Re μ`` of ``J = ∂F/∂z (z)`` per sample by ``m`` Arnoldi steps.

    Args:
        F: batched field (any callable; samples independent).
        z: the point ``(B, ...)``, real or complex (for a complex state ``F`` must be
            holomorphic, as holomorphic EP requires).
        f: ``F(z)`` if known (saves one evaluation).
        m: Krylov dimension (≥ 1; capped at the number of unknowns).

    Returns:
        A :class:`StabilityEstimate`.
    """
    if isinstance(m, bool) or not isinstance(m, int) or m < 1:
        raise ConfigError(f"leading_real(m={m!r}): must be an integer ≥ 1")
    # differences at √ulp of the state's dtype need F in that dtype: under autocast they
    # would measure bf16 rounding (Re θ ≈ +4 on a stable tiny LM), not J
    if torch.is_autocast_enabled(z.device.type):
        f = None  # evaluated under autocast: recompute it at full precision
    with torch.no_grad(), torch.autocast(z.device.type, enabled=False):
        return _leading_real(F, z, f, m)


def probe(z: Tensor) -> Tensor:
    """The Arnoldi start vector for a state like ``z`` ``(B, ...)``: ``(B, N)`` unit rows,
    the same every time (reproducible), drawn where the state lives."""
    zf = _flat(z)
    B, N = zf.shape
    rdt = zf.real.dtype
    gen = torch.Generator(device=zf.device).manual_seed(0)
    v = torch.randn(B, N, generator=gen, dtype=rdt, device=zf.device)
    if zf.is_complex():
        v = torch.complex(v, torch.randn(B, N, generator=gen, dtype=rdt, device=zf.device))
    v = v.to(zf.dtype)
    return v / sample_norm(v)[:, None]


def start_vector(f: Tensor, p: Tensor | None = None) -> Tensor:
    """The Arnoldi start vector ``(B, N)`` unit rows: the residual direction
    ``F(z)/‖F(z)‖`` plus ``PROBE_WEIGHT`` times the unit probe ``p`` (:func:`probe`),
    the probe alone where ``F(z)`` is zero or not finite. Device work only (it is
    recorded in the check's CUDA graph).

    Args:
        f: ``F(z)`` ``(B, ...)``.
        p: ``probe(f)`` ``(B, N)`` when None; a captured check passes its own buffer.
    """
    p = probe(f) if p is None else p
    ff = _flat(f).to(p.dtype)
    n = sample_norm(ff)  # (B,)
    ok = torch.isfinite(n) & (n > 0)
    r = torch.where(ok[:, None], ff / torch.where(ok, n, 1.0)[:, None], torch.zeros_like(ff))
    v = r + PROBE_WEIGHT * p
    return v / sample_norm(v)[:, None]


class Krylov:
    """What ``m`` Arnoldi steps leave on the device: the Hessenberg matrix ``H``
    ``(B, m+1, m)`` (float64 or complex128), the valid columns per sample ``k`` ``(B,)``
    and the orthonormal basis ``V`` ``(B, m+1, N)`` (columns past ``k`` are zero)."""

    def __init__(self, H: Tensor, k: Tensor, V: Tensor):
        self.H, self.k, self.V = H, k, V


def arnoldi(F: FieldFn, z: Tensor, f: Tensor, v0: Tensor, m: int) -> Krylov:
    """``m`` Arnoldi steps on ``J = ∂F/∂z (z)`` from ``v0`` ``(B, N)``, batched, by forward
    differences; device work only (no host synchronisation: it can be recorded in a CUDA
    graph). ``f = F(z)``; ``m ≤ N``."""
    shape = z.shape
    zf, ff = _flat(z), _flat(f)  # (B, N)
    B = zf.shape[0]
    ulp = torch.finfo(zf.real.dtype).eps
    tiny = torch.finfo(zf.real.dtype).tiny
    delta = math.sqrt(ulp) * sample_norm(zf).clamp_min(1.0)  # (B,)
    hdt = torch.complex128 if zf.is_complex() else torch.float64
    H = torch.zeros(B, m + 1, m, dtype=hdt, device=zf.device)  # Hessenberg
    V = torch.zeros(B, m + 1, zf.shape[1], dtype=zf.dtype, device=zf.device)  # (B, m+1, N)
    V[:, 0] = v0
    alive = torch.ones(B, dtype=torch.bool, device=zf.device)
    k = torch.zeros(B, dtype=torch.long, device=zf.device)  # valid columns per sample
    for j in range(m):
        w = (_flat(F((zf + delta[:, None] * V[:, j]).reshape(shape))) - ff) / delta[:, None]
        w = torch.where(alive[:, None], w, torch.zeros_like(w))
        w0 = sample_norm(w)
        for _ in range(2):  # classical Gram–Schmidt, twice (the basis stays orthogonal)
            h = torch.einsum("bkn,bn->bk", V[:, : j + 1].conj(), w)  # (B, j+1)
            H[:, : j + 1, j] += h.to(hdt)
            w = w - torch.einsum("bk,bkn->bn", h, V[:, : j + 1])
        hn = sample_norm(w)
        H[:, j + 1, j] = hn.to(hdt)
        k = k + alive
        # an invariant subspace (n ≤ m, or an exact one) ends the sample's basis
        alive = alive & torch.isfinite(hn) & (hn > math.sqrt(ulp) * w0.clamp_min(tiny))
        V[:, j + 1] = torch.where(alive[:, None], w / hn.clamp_min(tiny)[:, None],
                                  torch.zeros_like(w))
    return Krylov(H, k, V)


def _hessenberg(kr: Krylov) -> tuple[Tensor, Tensor, Tensor, Tensor]:
    """The square Hessenberg matrices of ``kr`` on the CPU (small dense eigenproblems; on
    CUDA ``torch.linalg.eig`` is far slower), padded past each sample's basis by a block
    ``-C`` on the diagonal (never the rightmost value): ``(Hm (B, m, m), H (B, m+1, m), k
    (B,), finite (B,))`` after one transfer."""
    H, k = kr.H.cpu(), kr.k.cpu()
    m = H.shape[2]
    finite = torch.isfinite(H.abs().sum((1, 2)))  # (B,)
    H = torch.where(finite[:, None, None], H, torch.zeros_like(H))
    idx = torch.arange(m)
    valid = idx[None, :] < k[:, None]  # (B, m)
    Hm = torch.where(valid[:, :, None] & valid[:, None, :], H[:, :m, :], torch.zeros_like(H[:, :m]))
    C = 1.0 + 2.0 * Hm.abs().amax((1, 2))  # (B,)
    Hm = Hm + torch.diag_embed(torch.where(valid, 0.0, -C[:, None]).to(Hm.dtype))
    return Hm, H, k, finite


def ritz(kr: Krylov, ulp: float, evals: int) -> StabilityEstimate:
    """The verdict from the Ritz values of ``kr`` (see the module docstring), returned on
    ``kr``'s device. ``ulp``: the state's unit round-off."""
    device = kr.H.device
    Hm, H, k, finite = _hessenberg(kr)
    theta = eigvals(Hm)  # (B, m)
    re = theta.real.to(torch.float64)
    margin = 10 * math.sqrt(ulp) * theta.abs().amax(1).clamp_min(1.0)  # (B,)
    # Re θ_i - r_i > margin needs Re θ_i > margin: only those Ritz values need their
    # residual r_i = β_k |e_kᵀ y_i| (β_k the coupling out of the Krylov space)
    b, i = torch.nonzero((re > margin[:, None]) & (finite & (k > 0))[:, None], as_tuple=True)
    last = (k[b] - 1).clamp_min(0)  # (c,) index of each candidate's last basis column
    y = spread(ritz_vectors, Hm[b], theta[b, i])  # (c, m)
    resid = H[b, last + 1, last].abs() * y[torch.arange(b.numel()), last].abs()  # (c,)
    excess = torch.zeros_like(re).index_put_((b, i), re[b, i] - resid)  # (B, m)
    unstable = (excess > margin[:, None]).any(1)
    max_real = torch.where(finite & (k > 0), re.amax(1), torch.full_like(margin, math.nan))
    return StabilityEstimate(max_real.to(device), unstable.to(device), evals,
                             RitzModes(Hm, theta, kr.V[:, : Hm.shape[1]]))


def leading_mode(F: FieldFn, z: Tensor, m: int = KRYLOV_DIM,
                 modes: RitzModes | None = None) -> tuple[Tensor, Tensor]:
    """The rightmost Ritz pair of ``J = ∂F/∂z (z)`` per sample, from ``m`` Arnoldi steps.

    Args:
        F: batched real field.
        z: the point ``(B, ...)``, real.
        m: Krylov dimension (capped at the number of unknowns).
        modes: the Ritz decomposition of a check at ``z`` (``Solution.modes``): its
            Arnoldi steps are reused and ``m`` is theirs.

    Returns:
        ``(theta, y)``: the Ritz value with the largest real part ``(B,)`` (complex128) and
        its Ritz vector ``(B, ...)`` (complex, unit norm per sample), on ``z``'s device.
    """
    if modes is None:
        with torch.no_grad(), torch.autocast(z.device.type, enabled=False):
            m = min(m, _flat(z).shape[1])
            f = F(z)
            kr = arnoldi(F, z, f, start_vector(f), m)
            Hm, *_ = _hessenberg(kr)
            modes = RitzModes(Hm, eigvals(Hm), kr.V[:, :m])
    elif modes.V.shape[0] != z.shape[0]:
        raise ValueError(f"leading_mode: modes of {modes.V.shape[0]} samples for a state of "
                         f"{z.shape[0]}")
    theta, y = modes.leading()
    cdt = torch.complex64 if z.dtype == torch.float32 else torch.complex128
    return theta.to(z.device), y.to(cdt).reshape(z.shape)


def _leading_real(F: FieldFn, z: Tensor, f: Tensor | None, m: int) -> StabilityEstimate:
    evals = 0
    if f is None or f.dtype != z.dtype:
        f, evals = F(z), 1
    m = min(m, _flat(z).shape[1])
    kr = arnoldi(F, z, f, start_vector(f), m)
    return ritz(kr, torch.finfo(z.real.dtype).eps, evals + m)


def _apply(F: FieldFn, sol: Solution, est: StabilityEstimate, mask: Tensor) -> Solution:
    nan = torch.full_like(est.max_real, math.nan)
    unstable = mask & est.unstable
    status = torch.where(unstable & (sol.status == Status.CONVERGED),
                         torch.full_like(sol.status, int(Status.UNSTABLE)), sol.status)
    nfe = sol.nfe + mask.to(sol.nfe.dtype) * est.evals * evals_per_call(F)
    return replace(sol, status=status, nfe=nfe, max_real=torch.where(mask, est.max_real, nan),
                   stable=mask & ~est.unstable & torch.isfinite(est.max_real), modes=est.modes)


def checks(solver: Solver | None, mode: str) -> bool:
    """Whether :func:`check_relaxation` measures anything for this solver and mode."""
    check_mode(mode)
    return not (mode == "never" or (mode == "auto" and solver is not None
                                    and solver.follows_flow))


def check_mask(sol: Solution, mode: str) -> Tensor:
    """The samples a check in ``mode`` applies to ``(B,)``: converged ones (auto), finite
    ones (always)."""
    if mode == "auto":
        return sol.status == Status.CONVERGED
    return torch.isfinite(_flat(sol.z)).all(1)


def check_relaxation(F: FieldFn, sol: Solution, solver: Solver | None, mode: str = "auto",
                     f: Tensor | None = None, krylov: Krylov | None = None) -> Solution:
    """The stability check of :func:`~eqprop.solvers.base.relax` (see the module docstring).

    Args:
        F: the field that was relaxed.
        sol: the relaxation's solution.
        solver: the solver that produced it (``follows_flow`` decides ``"auto"``).
        mode: one of ``MODES``.
        f: ``F(sol.z)`` if known.
        krylov: the Arnoldi steps at ``sol.z`` if already taken (e.g. replayed from a
            CUDA graph by :class:`~eqprop.solvers.relaxation.Relaxation`).

    Returns:
        ``sol`` with ``max_real`` and ``stable`` filled where measured, converged samples
        on an unstable point marked ``unstable``, and the evaluations charged to ``nfe``.
    """
    if not checks(solver, mode):
        return sol
    B = sol.z.shape[0]
    mask = check_mask(sol, mode)
    if krylov is not None:
        m = krylov.H.shape[2]
        est = ritz(krylov, torch.finfo(sol.z.real.dtype).eps, m)
    else:
        if not bool(mask.any()):  # nothing to measure (e.g. every sample non-finite)
            nan = torch.full((B,), math.nan, dtype=torch.float64, device=sol.z.device)
            return replace(sol, max_real=nan, stable=torch.zeros_like(mask))
        est = leading_real(F, sol.z, f)
    return _apply(F, sol, est, mask.reshape(B))


def assess_stability(F: FieldFn, sol: Solution) -> Solution:
    """Measure the stability of every finite sample of ``sol`` (on request: eval, diagnose,
    tracking). A converged sample on an unstable point becomes ``unstable``.

    Args:
        F: the field that was relaxed.
        sol: a :class:`~eqprop.solvers.base.Solution`.

    Returns:
        The solution with ``max_real`` and ``stable`` filled.
    """
    return check_relaxation(F, sol, None, "always")
