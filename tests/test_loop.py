"""The device-side relax loop (check_every chunks, CUDA-graph capture) against a host loop."""

from __future__ import annotations

import warnings

import pytest
import torch

from eqprop import Euler, relax
from eqprop.errors import ConfigError
from eqprop.solvers import AdaptiveEuler, Anderson, Broyden, NewtonKrylov, Status
from eqprop.solvers.registry import SolverConfig
from tests.helpers import StiffNonlinearField, eps_crit, rotating_field, tiny_problem


def host_loop(F, z0, solver, tol, max_steps):
    """Independent reference: one host check per step, plain Python bookkeeping."""
    state = solver.init(F, z0)
    B = z0.shape[0]
    steps = [0] * B
    with torch.no_grad():
        for _ in range(max_steps):
            g = state.f.reshape(B, -1).norm(dim=1) / state.z.reshape(B, -1).norm(dim=1)
            active = (g > tol) & torch.isfinite(g)
            if not active.any():
                break
            state = state.where(active, solver.step(F, state))
            for b in range(B):
                steps[b] += int(active[b])
    return state, torch.tensor(steps)


SOLVERS = {
    "euler": lambda: Euler(0.3),
    "adaptive": lambda: AdaptiveEuler(),
    "anderson": lambda: Anderson(m=4, eps=0.3),
    "broyden": lambda: Broyden(m=30, eps=0.3),
}


@pytest.mark.parametrize("name", list(SOLVERS))
@pytest.mark.parametrize("check_every", [1, 7, 16])
def test_chunked_loop_matches_host_loop_on_lm(name, check_every):
    _, field, _ = tiny_problem("asym", B=4)
    z0 = field.initial_state()
    ref, ref_steps = host_loop(field, z0, SOLVERS[name](), 1e-8, 400)
    sol = relax(field, z0, SOLVERS[name](), tol=1e-8, max_steps=400, check_every=check_every,
                capture=True, stability="never")  # capture is skipped on CPU: same loop
    assert torch.allclose(sol.z, ref.z, atol=1e-6, rtol=0)
    assert torch.equal(sol.steps, ref_steps)
    assert torch.equal(sol.nfe, ref.nfe)
    assert bool(sol.converged.all()), sol.summary()


@pytest.mark.parametrize("check_every", [1, 5, 64])
def test_traces_do_not_depend_on_check_every(check_every):
    F = rotating_field(-0.5, 3.0, B=3)
    z0 = torch.zeros(3, 3, dtype=torch.float64)
    base = relax(F, z0, AdaptiveEuler(), tol=1e-9, max_steps=300, trace=True)
    sol = relax(F, z0, AdaptiveEuler(), tol=1e-9, max_steps=300, trace=True,
                check_every=check_every)
    assert sol.residual_trace.shape == base.residual_trace.shape
    assert torch.equal(sol.residual_trace, base.residual_trace)
    assert torch.equal(sol.eps_trace, base.eps_trace)
    assert torch.equal(sol.status, base.status)
    # the trace is the residual of each step: its last column is the final g
    last = sol.residual_trace[torch.arange(3), sol.steps]
    assert torch.equal(last, sol.rel_residual)


def test_budget_is_respected_when_not_a_multiple_of_check_every():
    F = rotating_field(-0.01, 1.0, B=2)  # slow: never converges in 23 steps
    sol = relax(F, torch.zeros(2, 3, dtype=torch.float64), Euler(0.01), tol=1e-12,
                max_steps=23, check_every=10, trace=True)
    assert sol.steps.tolist() == [23, 23]
    assert sol.residual_trace.shape == (2, 24)


def test_linear_blowup_far_from_fixed_point_is_diverged():
    """Above ε_crit a linear mode grows |1 + εμ| per step; g = ‖F‖/‖z‖ saturates near |μ|,
    but ‖F‖ grows geometrically: the loop passes the ‖z‖ trace so this is 'diverged'."""
    a, b = -0.1, 2.0
    F = rotating_field(a, b, B=3, extra=())
    sol = relax(F, torch.zeros(3, 2, dtype=torch.float64), Euler(1.3 * eps_crit(a, b)),
                tol=1e-8, max_steps=400)
    assert (sol.status == Status.DIVERGED).all(), sol.summary()


def test_limit_cycle_is_still_cycling():
    a, b = -0.1, 2.0
    F = StiffNonlinearField(a, b, B=3, shifted=True)
    sol = relax(F, F.z_fix + 0.01, Euler(1.5 * eps_crit(a, b)), tol=1e-8, max_steps=2000)
    assert (sol.status == Status.CYCLING).all(), sol.summary()


def test_capture_needs_a_capturable_solver():
    F = rotating_field(-1.0, 0.5)
    with pytest.raises(ValueError, match="NewtonKrylov.*cannot be captured"):
        relax(F, torch.zeros(3, 3, dtype=torch.float64), NewtonKrylov(), capture=True)
    with pytest.raises(ConfigError, match="capture=True with name='newton'"):
        SolverConfig(name="newton", capture=True)
    with pytest.raises(ConfigError, match="check_every=0"):
        SolverConfig(check_every=0)


@pytest.mark.skipif(not torch.cuda.is_available(), reason="CUDA-graph capture needs a GPU")
@pytest.mark.parametrize("name", list(SOLVERS))
def test_captured_loop_matches_eager_on_gpu(name):
    model, _, _ = tiny_problem("asym", B=4)
    model = model.cuda()
    g = torch.Generator().manual_seed(3)
    tokens = torch.randint(0, 11, (4, model.cfg.seq_len), generator=g).cuda()
    field = model.field(tokens, tokens)
    z0 = field.initial_state()
    eager = relax(field, z0, SOLVERS[name](), tol=1e-9, max_steps=300, check_every=8)
    with warnings.catch_warnings():
        # a failed capture falls back with a warning: make it fail the test
        warnings.filterwarnings("error", message="relax: CUDA-graph capture failed")
        cap = relax(field, z0, SOLVERS[name](), tol=1e-9, max_steps=300, check_every=8,
                    capture=True)
    assert torch.allclose(cap.z, eager.z, atol=1e-6, rtol=0)
    assert torch.equal(cap.steps, eager.steps)
    assert torch.equal(cap.status, eager.status)



@pytest.mark.skipif(not torch.cuda.is_available(), reason="CUDA-graph capture needs a GPU")
def test_captured_asymep_nudged_phases_match_eager_on_gpu():
    from eqprop.gradients import AsymEP

    model, _, _ = tiny_problem("asym", B=4)
    model = model.cuda()
    tokens = torch.randint(0, 11, (4, model.cfg.seq_len),
                           generator=torch.Generator().manual_seed(5)).cuda()
    field = model.field(tokens, tokens)
    z = relax(field, field.initial_state(), Euler(0.5), tol=1e-10, max_steps=2000).z
    out = {}
    for capture in (False, True):
        est = AsymEP(beta=1e-3, solver=Euler(0.5), tol=1e-6, max_steps=500, check_every=8,
                     capture=capture)
        with warnings.catch_warnings():
            warnings.filterwarnings("error", message="relax: CUDA-graph capture failed")
            out[capture] = est.estimate(field, z)
    torch.testing.assert_close(out[True].signal, out[False].signal, atol=1e-6, rtol=1e-6)
    for k in ("nudged+", "nudged-"):
        assert torch.equal(out[True].solutions[k].steps, out[False].solutions[k].steps)
