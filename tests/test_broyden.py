"""Limited-memory Broyden (``eqprop.solvers.Broyden``) against analytic references."""

from __future__ import annotations

import math

import pytest
import torch
from torch import Tensor
from torch.utils._python_dispatch import TorchDispatchMode

from eqprop.errors import ConfigError
from eqprop.fields import Field
from eqprop.solvers import Broyden, Euler, SolverConfig, Status, build_solver, relax
from eqprop.solvers.registry import CAPTURABLE
from tests.helpers import (
    CountingField,
    LinearField,
    StiffNonlinearField,
    eps_crit,
    rotating_field,
)

A_, B_ = -1.0, 4.0  # moderately stiff rotating mode: ε_crit ≈ 0.118
A_STIFF, B_STIFF = -1.0, 20.0  # stiff: ε_crit ≈ 0.005, a hundred times below Broyden's ε
EXTRA = (-1.0, -0.5, -2.0, -0.2)  # more real modes: a 6-dimensional field


def start(F, seed: int = 1, scale: float = 1.0) -> Tensor:
    g = torch.Generator().manual_seed(seed)
    return F.z_fix + scale * torch.randn(F.z_fix.shape, generator=g, dtype=torch.float64)


class PerSampleLinear(Field):
    """``F(z)_b = A_b (z_b - z*_b)``: every sample its own matrix (a batch of different
    problems, unlike ``LinearField`` whose A is shared)."""

    def __init__(self, A: Tensor, z_fix: Tensor):
        self.A, self.z_fix = A, z_fix  # (B, n, n), (B, n)

    def __call__(self, z: Tensor) -> Tensor:
        return torch.einsum("bij,bj->bi", self.A, z - self.z_fix)

    def take(self, i: int) -> PerSampleLinear:
        return PerSampleLinear(self.A[i:i + 1], self.z_fix[i:i + 1])


def mixed_batch() -> PerSampleLinear:
    """Three 6-dimensional linear problems of very different stiffness (|b| = 2, 20, 60)."""
    fields = [rotating_field(A_, b, B=1, extra=EXTRA, seed=s) for s, b in enumerate((2., 20., 60.))]
    return PerSampleLinear(torch.stack([f.A for f in fields]), torch.cat([f.z_fix for f in fields]))


# -- convergence to the analytic fixed point --------------------------------------------


@pytest.mark.parametrize("extra", [(-1.0,), EXTRA])
def test_stiff_rotating_linear_field_where_euler_fails(extra):
    F = rotating_field(A_STIFF, B_STIFF, B=3, extra=extra)
    n = F.A.shape[0]
    z0 = start(F)
    ec = eps_crit(A_STIFF, B_STIFF)
    euler = relax(F, z0, Euler(eps=2 * ec), tol=1e-9, max_steps=400)
    assert not euler.converged.any()  # above ε_crit Euler cannot settle
    # the solver's own cost (the stability check at the end is tested in test_stability.py)
    sol = relax(F, z0, Broyden(eps=0.5), tol=1e-12, max_steps=200, stability="never")
    assert sol.converged.all(), sol.summary()
    assert torch.allclose(sol.z, F.z_fix, atol=1e-10, rtol=0)
    assert sol.nfe.max() <= 3 * n, sol.nfe  # a handful of evaluations per dimension
    # Gay (1979): on an affine field, Broyden without a safeguard ends in ≤ 2n steps
    pure = relax(F, z0, Broyden(eps=0.5, restart_growth=math.inf), tol=1e-12, max_steps=200)
    assert pure.converged.all() and pure.steps.max() <= 2 * n, pure.steps
    assert torch.allclose(pure.z, F.z_fix, atol=1e-10, rtol=0)


@pytest.mark.parametrize("b", [B_, B_STIFF])
def test_nonlinear_field_with_known_fixed_point(b):
    F = StiffNonlinearField(A_, b, B=3, shifted=True)
    z0 = start(F, seed=3, scale=0.5)
    sol = relax(F, z0, Broyden(), tol=1e-12, max_steps=300)
    assert sol.converged.all(), sol.summary()
    assert torch.allclose(sol.z, F.z_fix, atol=1e-10, rtol=0)
    assert sol.nfe.max() <= 40, sol.nfe  # superlinear: Euler at ε_crit/2 needs thousands


def test_complex_states_for_holomorphic_ep():
    F = rotating_field(A_, B_, B=2)
    Fc = LinearField(F.A.to(torch.complex128), F.z_fix.to(torch.complex128) * (1 + 0.5j))
    sol = relax(Fc, Fc.z_fix + 1.0, Broyden(), tol=1e-12, max_steps=100)
    assert sol.converged.all(), sol.summary()
    assert (sol.z - Fc.z_fix).abs().max() < 1e-10


# -- the update itself ------------------------------------------------------------------


def dense_H(solver: Broyden, state, n: int) -> Tensor:
    """The low-rank inverse Jacobian of every sample as a dense ``(B, n, n)`` matrix."""
    B = state.z.shape[0]
    eye = torch.eye(n, dtype=state.z.dtype).expand(B, n, n)
    U, V, count = state.aux["U"], state.aux["V"], state.aux["count"]
    cols = [solver._H(U, V, count, eye[:, :, j]) for j in range(n)]
    return torch.stack(cols, -1)


@pytest.mark.parametrize("dtype", [torch.float64, torch.complex128])
def test_first_step_is_euler_and_updates_match_the_dense_formula(dtype):
    F = rotating_field(A_, B_, B=2, extra=EXTRA)
    if dtype.is_complex:  # a complex-linear field with complex states
        F = LinearField(F.A.to(dtype), F.z_fix.to(dtype) * (1 + 0.5j))
    n = F.A.shape[0]
    solver = Broyden(eps=0.05, restart_growth=math.inf)  # every step accepted
    state = solver.init(F, start(F) + (0.3j if dtype.is_complex else 0.0))  # complex offset
    H = -0.05 * torch.eye(n, dtype=dtype).expand(2, n, n)  # dense reference
    for k in range(5):
        z, f = state.z, state.f
        new = solver.step(F, state)
        if k == 0:
            assert torch.allclose(new.z, z + 0.05 * f, atol=1e-15)  # H_0 = -εI
        s = new.z - z
        y = new.f - f
        assert torch.allclose(s, -(H @ f[..., None])[..., 0], atol=1e-12)
        Hy = (H @ y[..., None])[..., 0]
        sH = (s.conj()[:, None, :] @ H)[:, 0]  # sᴴH
        H = H + (s - Hy)[:, :, None] * sH[:, None, :] / (sH * y).sum(-1)[:, None, None]
        state = new
        low_rank = dense_H(solver, state, n)
        assert torch.allclose(low_rank, H, atol=1e-10), k
        # the secant condition H y = s holds for the newest pair
        assert torch.allclose((low_rank @ y[..., None])[..., 0], s, atol=1e-10)
    assert torch.equal(state.aux["count"], torch.full((2,), 5))


def test_rejected_step_keeps_the_state_but_learns_from_it():
    F = rotating_field(A_STIFF, B_STIFF, B=2, extra=EXTRA)
    solver = Broyden(eps=0.5, restart_growth=2.0)
    state = solver.init(F, start(F))
    new = solver.step(F, state)  # Euler at ε = 0.5 ≫ ε_crit: ‖F‖ grows ~10×
    assert torch.equal(new.aux["rejected"], torch.ones(2, dtype=torch.long))
    assert torch.equal(new.z, state.z) and torch.equal(new.f, state.f)
    assert torch.equal(new.nfe, state.nfe + 1)  # the evaluation is still paid
    assert torch.equal(new.aux["count"], torch.ones(2, dtype=torch.long))  # pair kept
    # the secant of the rejected step: H (F(z + s) - F(z)) = s with s = εF(z)
    s = 0.5 * state.f
    y = F(state.z + s) - state.f
    assert torch.allclose(solver._H(new.aux["U"], new.aux["V"], new.aux["count"], y), s, atol=1e-10)
    assert not torch.allclose(new.aux["U"], torch.zeros_like(new.aux["U"]))


def test_full_history_restarts_and_still_converges():
    F = rotating_field(A_, B_, B=2, extra=EXTRA)
    sol_solver = Broyden(m=2, eps=0.05)
    state = sol_solver.init(F, start(F))
    for _ in range(7):
        state = sol_solver.step(F, state)
        assert (state.aux["count"] <= 2).all()
    assert (state.aux["restarts"] >= 2).all(), state.aux["restarts"]  # full at steps 3, 5, 7
    sol = relax(F, start(F), Broyden(m=2, eps=0.05), tol=1e-11, max_steps=2000)
    assert sol.converged.all(), sol.summary()
    assert torch.allclose(sol.z, F.z_fix, atol=1e-9, rtol=0)


def test_nonfinite_evaluation_is_rejected_and_restarts():
    F = rotating_field(A_, B_, B=2)
    calls = {"n": 0}

    def poisoned(z: Tensor) -> Tensor:
        calls["n"] += 1
        out = F(z)
        if calls["n"] == 3:  # the second step's evaluation: NaN for sample 0 only
            out = out.clone()
            out[0] = float("nan")
        return out

    solver = Broyden(m=2, eps=0.05)
    state = solver.step(poisoned, solver.init(poisoned, start(F)))
    before = state
    state = solver.step(poisoned, state)
    assert torch.equal(state.z[0], before.z[0]) and torch.isfinite(state.f).all()
    assert state.aux["count"].tolist() == [0, 2] and state.aux["restarts"].tolist() == [1, 0]
    assert state.aux["rejected"].tolist() == [1, 0]
    assert not torch.equal(state.z[1], before.z[1])
    # the next step: only sample 1 has a full history, only it restarts
    state = solver.step(poisoned, state)
    assert state.aux["count"].tolist() == [1, 1] and state.aux["restarts"].tolist() == [1, 1]


# -- accounting and independence --------------------------------------------------------


def test_nfe_accounting_matches_a_counter():
    F = CountingField(StiffNonlinearField(A_, B_STIFF, B=1, shifted=True))
    z0 = F.field.z_fix + 0.5
    sol = relax(F, z0, Broyden(), tol=1e-11, max_steps=300, stability="never")
    assert sol.converged.all(), sol.summary()
    assert int(sol.nfe[0]) == F.total == F.calls, (int(sol.nfe[0]), F.calls, F.jvps)
    assert F.jvps == 0  # no Jacobian products: F only
    assert torch.equal(sol.nfe, sol.steps + 1)  # one F a step (rejected or not), plus F(z0)


def test_batch_of_different_problems_equals_each_alone():
    F = mixed_batch()
    z0 = F.z_fix + torch.randn(F.z_fix.shape, dtype=torch.float64,
                               generator=torch.Generator().manual_seed(5))
    z0[1] = F.z_fix[1]  # sample 1 starts at its equilibrium: converged before any step
    solver = Broyden(m=8, eps=0.5)  # small history: restarts happen at different times
    full = relax(F, z0, solver, tol=1e-11, max_steps=500, stability="never")
    assert full.converged.all(), full.summary()
    assert full.steps[1] == 0 and full.nfe[1] == 1 and torch.equal(full.z[1], z0[1])
    assert len(set(full.nfe.tolist())) == 3  # genuinely different problems
    for i in range(3):
        one = relax(F.take(i), z0[i:i + 1], solver, tol=1e-11, max_steps=500,
                    stability="never")
        assert torch.allclose(full.z[i], one.z[0], atol=1e-12, rtol=0), i
        assert full.nfe[i] == one.nfe[0] and full.steps[i] == one.steps[0], i
        assert torch.allclose(full.z[i], F.z_fix[i], atol=1e-9, rtol=0)


class _NoHostSync(TorchDispatchMode):
    """Fails on any op that copies a device value to the host (``.item()``, ``bool(t)``)."""

    def __torch_dispatch__(self, func, types, args=(), kwargs=None):
        if func in (torch.ops.aten._local_scalar_dense.default, torch.ops.aten.item.default):
            raise AssertionError(f"host synchronisation: {func}")
        return func(*args, **(kwargs or {}))


def test_step_never_synchronises_with_the_host():
    assert Broyden.capturable and "broyden" in CAPTURABLE
    F = rotating_field(A_STIFF, B_STIFF, B=3, extra=EXTRA)
    solver = Broyden(m=3, eps=0.5)
    state = solver.init(F, start(F))
    with _NoHostSync():
        for _ in range(6):  # rejections, updates and restarts (m = 3) all on the device
            state = solver.step(F, state)
    assert (state.aux["rejected"] > 0).all() and (state.aux["restarts"] > 0).all()
    with pytest.raises(AssertionError, match="host synchronisation"), _NoHostSync():
        bool(state.z.sum() > 0)  # the mode does see a sync


# -- settings and registry --------------------------------------------------------------


@pytest.mark.parametrize("make", [
    lambda: Broyden(m=0), lambda: Broyden(m=2.5), lambda: Broyden(m=True),
    lambda: Broyden(eps=0.0), lambda: Broyden(eps=-1.0), lambda: Broyden(eps=math.inf),
    lambda: Broyden(eps=math.nan), lambda: Broyden(restart_growth=0.5),
    lambda: Broyden(restart_growth=math.nan), lambda: Broyden(m=0),
    lambda: Broyden(m=3.0),
])
def test_bad_settings_raise_config_error_naming_the_value(make):
    with pytest.raises(ConfigError) as e:
        make()
    assert "=" in str(e.value) and "must" in str(e.value)


def test_registry_builds_broyden_from_the_config():
    solver = build_solver(SolverConfig(name="broyden", broyden=Broyden(m=7, eps=0.3),
                                       capture=True))
    assert isinstance(solver, Broyden) and solver.m == 7 and solver.eps == 0.3
    F = rotating_field(A_STIFF, B_STIFF, B=2)
    sol = relax(F, start(F), solver, tol=1e-10, max_steps=100)
    assert (sol.status == Status.CONVERGED).all(), sol.summary()
