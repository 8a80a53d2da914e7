"""Anderson's in-place ring-buffer history against the cat-based implementation it replaced.

``OldAnderson`` below keeps the previous implementation's formulas (histories ``ΔZ``,
``ΔR`` rebuilt by ``torch.cat`` every step, newest first, the Gram matrix recomputed):
the independent reference. The new solver must follow it step by step (z, F, count,
restarts), also through restarts, on complex states and end to end in ``relax``.
"""

from __future__ import annotations

import warnings
from dataclasses import replace

import pytest
import torch
from torch import Tensor

from eqprop.solvers import Anderson, relax
from eqprop.solvers.anderson import _valid
from eqprop.solvers.base import Solver, SolverState, bcast, sample_norm

gpu = pytest.mark.skipif(not torch.cuda.is_available(), reason="needs a GPU")
SHAPE = (2, 4)  # a state of N = 8, not flat: the solver flattens it


# -- the reference: the previous implementation, verbatim in its formulas ----------------
def old_mix(s: Anderson, r: Tensor, dZ: Tensor, dR: Tensor, count: Tensor) -> Tensor:
    B, m, _ = dR.shape
    valid = torch.arange(m)[None, :] < count[:, None]  # (B, m) newest first
    pair = valid[:, :, None] & valid[:, None, :]
    H = torch.einsum("bin,bjn->bij", dR.conj(), dR)
    scale = torch.diagonal(H, dim1=1, dim2=2).real.sum(1) / count.clamp_min(1)
    eye = torch.eye(m, dtype=H.dtype)
    ridge = (s.lam * scale).clamp_min(torch.finfo(scale.dtype).tiny)
    H = torch.where(pair, H, torch.zeros((), dtype=H.dtype))
    H = H + eye * torch.where(valid, ridge[:, None], 1.0).to(H.dtype)[:, None, :]
    rhs = torch.einsum("bin,bn->bi", dR.conj(), r) * valid
    gamma = torch.linalg.solve_ex(H, rhs.unsqueeze(-1))[0].squeeze(-1)
    gamma = torch.nan_to_num(gamma) * valid
    return s.beta * r - torch.einsum("bi,bin->bn", gamma.to(dZ.dtype), dZ + s.beta * dR)


def old_step(s: Anderson, F, state: SolverState) -> SolverState:
    z, f, aux = state.z, state.f, state.aux
    r = (bcast(state.eps, z) * f).reshape(z.shape[0], -1)
    count = aux["count"]
    dz = old_mix(s, r, aux["dZ"], aux["dR"], count)
    z_new = z + dz.reshape(z.shape)
    f_new = F(z_new)
    f0, f1 = sample_norm(f), sample_norm(f_new)
    ok = (count == 0) | (torch.isfinite(f1) & (f1 <= s.restart_growth * f0))
    r_new = (bcast(state.eps, z) * f_new).reshape(z.shape[0], -1)
    dZ = torch.cat([dz[:, None], aux["dZ"][:, :-1]], 1)
    dR = torch.cat([(r_new - r)[:, None], aux["dR"][:, :-1]], 1)
    keep = ok[:, None, None]
    new_aux = {"dZ": torch.where(keep, dZ, torch.zeros_like(dZ)),
               "dR": torch.where(keep, dR, torch.zeros_like(dR)),
               "count": torch.where(ok, (count + 1).clamp_max(s.m), torch.zeros_like(count)),
               "restarts": aux["restarts"] + ~ok}
    k = bcast(ok, z)
    return SolverState(z=torch.where(k, z_new, z), f=torch.where(k, f_new, f),
                       nfe=s.charge(state, F), eps=state.eps, aux=new_aux)


class OldAnderson(Anderson):
    """The previous implementation as a solver (so that ``relax`` can drive it)."""

    def init(self, F, z0: Tensor) -> SolverState:
        state = Solver.init(self, F, z0)
        B, N = z0.shape[0], z0[0].numel()
        hist = torch.zeros(B, self.m, N, dtype=z0.dtype)
        aux = {"dZ": hist, "dR": hist.clone(), "count": torch.zeros(B, dtype=torch.long),
               "restarts": torch.zeros(B, dtype=torch.long)}
        return replace(state, eps=torch.full((B,), float(self.eps), dtype=z0.real.dtype),
                       aux=aux)

    def step(self, F, state: SolverState) -> SolverState:
        return old_step(self, F, state)


# -- fields ---------------------------------------------------------------------------
def planted(mus: list[complex], dtype=torch.float64, seed: int = 0) -> Tensor:
    """``A = S D S⁻¹`` with the eigenvalues ``mus`` (a real ``A`` takes each ``a + ib``,
    b > 0, as a rotation block with ``a ± ib``); ``S`` non-normal, well conditioned."""
    g = torch.Generator().manual_seed(seed)
    if dtype.is_complex:
        D = torch.diag(torch.tensor(mus, dtype=dtype))
        S = torch.randn(len(mus), len(mus), generator=g, dtype=dtype)
    else:
        D = torch.block_diag(*[torch.tensor([[mu.real, -mu.imag], [mu.imag, mu.real]])
                               if mu.imag else torch.tensor([[mu.real]]) for mu in mus])
        S = torch.randn(*D.shape, generator=g, dtype=dtype)
    S = torch.eye(S.shape[0], dtype=dtype) + 0.3 * S / S.shape[0] ** 0.5  # cond(S) ≈ 2.4
    return (S @ D.to(dtype) @ torch.linalg.inv(S)).to(dtype)


class Affine:
    """``F(z) = A z + b (+ cubic z³)`` per sample, no leak beyond ``A``; equilibrium
    ``-A⁻¹ b`` when ``cubic = 0``."""

    def __init__(self, A: Tensor, b: Tensor, cubic: float = 0.0):
        self.A, self.b, self.cubic = A, b, cubic

    def __call__(self, z: Tensor) -> Tensor:
        x = z.reshape(z.shape[0], -1)
        return (x @ self.A.T + self.b - self.cubic * x ** 3).reshape(z.shape)

    def solution(self) -> Tensor:
        return -torch.linalg.solve(self.A, self.b.T).T.reshape(-1, *SHAPE)


STIFF = [complex(-0.1, 3.0), complex(-0.4, 0.7), -1.0, -0.3, -2.0, -0.6]  # N = 8
STIFF_C = [complex(-0.1, 3.0), complex(-0.1, -2.5), -1.0, complex(-0.3, 0.2), -2.0,
           complex(-0.6, -0.4), -0.05, complex(-1.5, 1.0)]


def affine(dtype=torch.float64, cubic: float = 0.0, B: int = 3) -> Affine:
    mus = STIFF_C if dtype.is_complex else STIFF
    g = torch.Generator().manual_seed(1)
    return Affine(planted(mus, dtype), torch.randn(B, 8, generator=g, dtype=dtype), cubic)


def z0_for(F: Affine, scales=(0.5, 1.0, 2.0)) -> Tensor:
    g = torch.Generator().manual_seed(2)
    z = torch.randn(len(scales), *SHAPE, generator=g, dtype=F.b.dtype)
    return z * torch.tensor(scales, dtype=F.A.real.dtype)[:, None, None]


# -- step by step ---------------------------------------------------------------------
def gram_error(state: SolverState, m: int) -> Tensor:
    """Per sample ``(B,)``: relative error of the carried Gram matrix ``G`` and of ``c``
    against recomputing them from the valid columns of the ring buffer."""
    aux = state.aux
    valid = _valid(aux["pos"], aux["count"], m)
    pair = valid[:, :, None] & valid[:, None, :]
    H = torch.einsum("bin,bjn->bij", aux["dR"].conj(), aux["dR"])
    r = (bcast(state.eps, state.z) * state.f).reshape(state.z.shape[0], -1)
    c = torch.einsum("bin,bn->bi", aux["dR"].conj(), r)
    zero = torch.zeros((), dtype=H.dtype)
    eG = torch.where(pair, aux["G"] - H, zero).abs().amax((1, 2)) / H.abs().amax((1, 2))
    ec = torch.where(valid, aux["c"] - c, zero).abs().amax(1) / c.abs().amax(1)
    return torch.maximum(eG, ec).nan_to_num(0.0)  # an empty history: 0/0


def ring_in_age_order(state: SolverState, key: str, m: int) -> Tensor:
    """The ring buffer's columns newest first, the invalid ones zeroed (the old layout)."""
    aux = state.aux
    ages = torch.arange(m)
    idx = (aux["pos"][:, None] - ages[None, :]) % m  # (B, m) column of each age
    cols = torch.gather(aux[key], 1, idx[:, :, None].expand(-1, -1, aux[key].shape[2]))
    return cols * (ages[None, :] < aux["count"][:, None])[:, :, None]


def close(a: Tensor, b: Tensor, tol: float = 1e-10) -> bool:
    """``a ≈ b`` to ``tol`` relative to the size of ``b`` (entries of order 1 or less: absolute)."""
    return a.numel() == 0 or bool((a - b).abs().max() <= tol * (1.0 + b.abs().max()))


def follow(F, z0: Tensor, m: int, steps: int = 60, floor: float = 1e-10,
           **kw) -> tuple[SolverState, SolverState]:
    """Run new and old Anderson side by side and check every step against the reference.

    A sample stops stepping once its relative residual is below ``floor``, as in
    ``relax`` (below it the safeguard would compare round-off: the restarts it then
    triggers are noise, in either implementation); its ring columns are then
    overwritten by the masked steps, so the history is compared on stepping samples.
    """
    new_s, old_s = Anderson(m=m, **kw), OldAnderson(m=m, **kw)
    new, old = new_s.init(F, z0), old_s.init(F, z0)
    for t in range(steps):
        g = sample_norm(old.f) / sample_norm(old.z)
        go = torch.isfinite(g) & (g > floor)  # (B,) still relaxing
        with torch.no_grad():
            new = new.where(go, new_s.step(F, new))
            old = old.where(go, old_s.step(F, old))
        assert close(new.z, old.z) and close(new.f, old.f), f"z or F differs at step {t}"
        assert torch.equal(new.aux["count"], old.aux["count"]), t
        assert torch.equal(new.aux["restarts"], old.aux["restarts"]), t
        assert torch.equal(new.nfe, old.nfe), t
        err = gram_error(new, m)[go]
        assert (err <= 1e-9).all(), (t, err)
        assert close(ring_in_age_order(new, "dR", m)[go], old.aux["dR"][go]), t
        comb = old.aux["dZ"] + new_s.beta * old.aux["dR"]
        assert close(ring_in_age_order(new, "dG", m)[go], comb[go]), t
    return new, old


@pytest.mark.parametrize("m", [5, 20])
@pytest.mark.parametrize("beta", [1.0, 0.7])
def test_follows_the_reference_on_a_stiff_rotating_linear_field(m, beta):
    F = affine()
    new, _ = follow(F, z0_for(F), m, eps=0.3, beta=beta)
    assert (new.aux["count"] == min(m, 60)).any()  # the history filled (and wrapped for m=5)


def test_follows_the_reference_through_restarts():
    F = affine(cubic=0.1)
    _, old = follow(F, z0_for(F, (0.3, 1.0, 2.0)), m=6, eps=1.5, restart_growth=1.2)
    restarts = old.aux["restarts"]
    assert (restarts > 0).all() and len(set(restarts.tolist())) > 1, restarts


@pytest.mark.parametrize("m", [5, 20])
def test_follows_the_reference_on_complex_states(m):
    F = affine(torch.complex128)
    new, _ = follow(F, z0_for(F), m, eps=0.3)
    # a complex state that stayed complex, with a history that filled
    assert new.z.dtype == torch.complex128 and bool((new.z.imag != 0).any())
    assert (new.aux["count"] > 0).all() and torch.is_complex(new.aux["G"])


def test_history_is_updated_in_place_and_where_keeps_it():
    F = affine()
    s = Anderson(m=4, eps=0.3)
    state = s.init(F, z0_for(F))
    with torch.no_grad():
        new = s.step(F, state)
    assert new.aux["dR"] is state.aux["dR"] and new.aux["dG"] is state.aux["dG"]
    kept = state.where(torch.tensor([True, False, True]), new)
    assert kept.aux["dR"] is new.aux["dR"] and kept.aux["dG"] is new.aux["dG"]
    assert torch.equal(kept.aux["count"], torch.tensor([1, 0, 1]))
    assert torch.equal(kept.z[1], state.z[1]) and torch.equal(kept.z[0], new.z[0])


def test_unrolled_steps_differentiate_like_the_reference():
    """With autograd recording (an unrolled BPTT), the buffers are written out of place:
    the gradient through 12 steps equals the reference's."""
    F0 = affine()
    grads = []
    for solver in (Anderson(m=4, eps=0.3), OldAnderson(m=4, eps=0.3)):
        b = F0.b.clone().requires_grad_(True)
        F = Affine(F0.A, b)
        state = solver.init(F, z0_for(F0))
        for _ in range(12):
            state = solver.step(F, state)
        (state.z ** 2).sum().backward()
        grads.append(b.grad)
    torch.testing.assert_close(grads[0], grads[1], rtol=1e-9, atol=1e-12)


# -- end to end -----------------------------------------------------------------------
@pytest.mark.parametrize("m", [5, 20])
def test_relax_converges_to_the_planted_solution_like_the_reference(m):
    F = affine()
    z0 = z0_for(F)
    kw = dict(tol=1e-11, max_steps=400, stability="never")
    sol = relax(F, z0, Anderson(m=m, eps=0.3), **kw)
    ref = relax(F, z0, OldAnderson(m=m, eps=0.3), **kw)
    assert sol.converged.all(), sol.summary()
    torch.testing.assert_close(sol.z, F.solution(), rtol=0, atol=1e-9)
    assert torch.equal(sol.status, ref.status)
    assert torch.equal(sol.steps, ref.steps) and torch.equal(sol.nfe, ref.nfe)
    torch.testing.assert_close(sol.z, ref.z, rtol=0, atol=1e-12)


def test_relax_with_frozen_samples_matches_the_reference():
    """Samples that converge early stop stepping while the others go on (their ring
    columns are overwritten by the masked steps: harmless, the state is frozen)."""
    F = affine(cubic=0.05)
    z0 = z0_for(F, (0.01, 1.0, 3.0))
    kw = dict(tol=1e-10, max_steps=300, check_every=4, stability="never")
    sol = relax(F, z0, Anderson(m=5, eps=0.5), **kw)
    ref = relax(F, z0, OldAnderson(m=5, eps=0.5), **kw)
    assert len(set(ref.steps.tolist())) > 1, ref.steps  # they did finish at different steps
    assert torch.equal(sol.status, ref.status) and torch.equal(sol.steps, ref.steps)
    assert torch.equal(sol.nfe, ref.nfe)
    torch.testing.assert_close(sol.z, ref.z, rtol=0, atol=1e-10)


# -- on a GPU -------------------------------------------------------------------------
@gpu
def test_step_never_synchronises_and_captures_on_gpu():
    F = affine(torch.float32)
    F = Affine(F.A.cuda(), F.b.cuda())
    z0 = z0_for(F).cuda()
    s = Anderson(m=5, eps=0.3)
    state = s.init(F, z0)
    torch.cuda.synchronize()
    torch.cuda.set_sync_debug_mode("error")
    try:
        with torch.no_grad():
            for _ in range(8):
                state = s.step(F, state)
    finally:
        torch.cuda.set_sync_debug_mode("default")
    eager, captured = eager_and_captured(F, z0, s, tol=1e-6, max_steps=200)
    assert torch.equal(eager.steps, captured.steps) and torch.equal(eager.nfe, captured.nfe)
    assert torch.equal(eager.status, captured.status)
    torch.testing.assert_close(eager.z, captured.z, rtol=0, atol=1e-6)


def eager_and_captured(F, z0: Tensor, s: Anderson, **kw):
    """``relax`` eagerly and recorded as CUDA graphs (a failed capture is an error)."""
    kw.update(check_every=5, stability="never")
    eager = relax(F, z0, s, **kw)
    with warnings.catch_warnings():
        warnings.filterwarnings("error", message="relax: CUDA-graph capture failed")
        return eager, relax(F, z0, s, capture=True, **kw)


@gpu
@pytest.mark.parametrize("m", [17, 20])
def test_deep_history_captures_at_a_large_batch_on_gpu(m):
    """B 64 and m > 16: the sizes at which PyTorch's default LU heuristic takes MAGMA,
    which cannot be recorded (the study's Anderson m 20 ran eagerly before
    ``batched_solve``). Captured = eager, and both reach ``-A⁻¹ b``."""
    g = torch.Generator().manual_seed(3)
    N, B = 48, 64  # N > m: the history has m independent columns
    A = -torch.eye(N, dtype=torch.float64) + 0.9 * torch.randn(N, N, generator=g,
                                                               dtype=torch.float64) / N ** 0.5
    b = torch.randn(B, N, generator=g, dtype=torch.float64)
    F = Affine(A.float().cuda(), b.float().cuda())
    z0 = torch.zeros(B, N, device="cuda")
    eager, captured = eager_and_captured(F, z0, Anderson(m=m, eps=0.3), tol=1e-5, max_steps=300)
    assert torch.equal(eager.steps, captured.steps) and torch.equal(eager.nfe, captured.nfe)
    assert torch.equal(eager.status, captured.status)
    torch.testing.assert_close(eager.z, captured.z, rtol=0, atol=1e-6)
    exact = -torch.linalg.solve(A, b.T).T  # float64 on the CPU
    assert bool((captured.status == 0).all())
    assert (captured.z.double().cpu() - exact).abs().max() < 1e-3 * exact.abs().max()


@gpu
def test_batched_solve_is_recorded_and_restores_the_backend_on_gpu():
    from eqprop.solvers.base import batched_solve

    g = torch.Generator().manual_seed(4)
    A64 = torch.randn(64, 20, 20, generator=g, dtype=torch.float64) + 5 * torch.eye(20)
    b64 = torch.randn(64, 20, 1, generator=g, dtype=torch.float64)
    A, b = A64.float().cuda(), b64.float().cuda()
    before = torch.backends.cuda.preferred_linalg_library()
    x = torch.zeros_like(b)
    batched_solve(A, b)  # warm-up outside the capture (handles, workspaces)
    graph = torch.cuda.CUDAGraph()
    with torch.cuda.graph(graph):
        x.copy_(batched_solve(A, b))
    A.mul_(2.0)  # the replay reads the new A: x = (2A)⁻¹ b
    graph.replay()
    torch.cuda.synchronize()
    assert torch.backends.cuda.preferred_linalg_library() == before
    exact = torch.linalg.solve(2 * A64, b64)
    assert (x.double().cpu() - exact).abs().max() < 1e-4 * exact.abs().max()
