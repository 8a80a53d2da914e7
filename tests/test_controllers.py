"""Step-size controllers of AdaptiveEuler on a stiff rotating and on a smooth field."""

from __future__ import annotations

import pytest
import torch

from eqprop.solvers import CONTROLLERS, AdaptiveEuler, Naive, relax
from eqprop.solvers.controllers import Decision, StepInfo
from tests.helpers import eps_crit, rotating_field, smooth_field

A_, B_ = -1.0, 4.0
EC = eps_crit(A_, B_)  # ≈ 0.118
EPS_MIN, EPS_MAX, EPS0 = 1e-3, 1.0, 0.1
GOOD = ("overshoot", "ema", "noise", "pi", "doubling", "ser")


def run(field, name: str, max_steps: int, tol: float = 1e-9):
    g = torch.Generator().manual_seed(1)
    z0 = field.z_fix + torch.randn(field.z_fix.shape, generator=g, dtype=torch.float64)
    ctl = CONTROLLERS[name](eps_min=EPS_MIN, eps_max=EPS_MAX)
    return relax(field, z0, AdaptiveEuler(ctl, eps0=EPS0), tol=tol, max_steps=max_steps,
                 trace=True)


@pytest.mark.parametrize("name", GOOD)
def test_settles_below_eps_crit_and_converges_on_stiff_rotating_field(name):
    sol = run(rotating_field(A_, B_, B=3), name, max_steps=3000)
    assert sol.converged.all(), f"{name}: {sol.summary()}"
    eps = sol.eps_trace[:, sol.eps_trace.shape[1] // 2:]  # second half of the run
    assert (eps.median(1).values < EC).all(), eps.median(1).values
    assert (eps.min(1).values > 10 * EPS_MIN).all()  # it settled, it did not collapse


@pytest.mark.parametrize("name", GOOD)
def test_grows_eps_toward_eps_max_on_smooth_field(name):
    # ε_max = 0.2, twice ε0 and far below ε_crit ≈ 6.7: the error controllers (pi,
    # doubling) stop where the trajectory's curvature per step reaches their rtol
    # (ε ≈ 0.24 for pi's default here), so the cap is set below that
    eps_max = 0.2
    g = torch.Generator().manual_seed(1)
    field = smooth_field(B=3)
    z0 = field.z_fix + torch.randn(field.z_fix.shape, generator=g, dtype=torch.float64)
    ctl = CONTROLLERS[name](eps_min=EPS_MIN, eps_max=eps_max)
    sol = relax(field, z0, AdaptiveEuler(ctl, eps0=EPS0), tol=1e-12, max_steps=200, trace=True)
    assert (sol.eps_trace.amax(1) >= 0.99 * eps_max).all(), sol.eps_trace.amax(1)
    assert (sol.eps_trace[:, -20:].median(1).values >= 0.9 * eps_max).all()


@pytest.mark.parametrize("field", [rotating_field(A_, B_, B=3), smooth_field(B=3)],
                         ids=["stiff", "smooth"])
def test_naive_parks_at_eps_min_its_documented_failure(field):
    g = torch.Generator().manual_seed(1)
    z0 = field.z_fix + torch.randn(field.z_fix.shape, generator=g, dtype=torch.float64)
    sol = relax(field, z0, AdaptiveEuler(Naive(eps_min=EPS_MIN, eps_max=EPS_MAX), eps0=EPS0),
                tol=1e-9, max_steps=300, trace=True)
    assert torch.allclose(sol.eps_trace[:, -1], torch.full((3,), EPS_MIN, dtype=torch.float64))
    assert not sol.converged.any()


@pytest.mark.parametrize("name", list(CONTROLLERS))
def test_proposals_stay_in_range_and_are_per_sample(name):
    ctl = CONTROLLERS[name](eps_min=0.01, eps_max=0.5)
    eps = torch.tensor([0.01, 0.2, 0.5], dtype=torch.float64)
    memory = ctl.init(eps)
    # sample 0 improves a lot, 1 stalls, 2 blows up (non-finite residual)
    info = StepInfo(eps=eps, f_norm=torch.tensor([1.0, 1.0, 1.0], dtype=torch.float64),
                    f_new_norm=torch.tensor([1e-3, 1.0, float("inf")], dtype=torch.float64),
                    z_norm=torch.ones(3, dtype=torch.float64),
                    z_new_norm=torch.ones(3, dtype=torch.float64),
                    err=torch.tensor([1e-9, 0.1, float("inf")], dtype=torch.float64),
                    memory=memory)
    d = ctl.propose(eps, info)
    assert isinstance(d, Decision)
    assert ((d.eps >= 0.01) & (d.eps <= 0.5)).all() and torch.isfinite(d.eps).all()
    assert d.eps[2] <= eps[2]  # a blow-up never grows ε
    assert set(d.memory) == set(memory)
    assert all(v.shape == (3,) for v in d.memory.values())


def test_rejected_steps_leave_the_state_unchanged():
    F = rotating_field(-1.0, 20.0, B=2)  # ε_crit ≈ 0.005: the first trial steps are too big
    ctl = CONTROLLERS["pi"](eps_min=1e-4, eps_max=1.0)
    solver = AdaptiveEuler(ctl, eps0=0.5)
    state = solver.init(F, F.z_fix + 1.0)
    new = solver.step(F, state)
    rejected = new.eps < state.eps
    assert rejected.any()
    assert torch.equal(new.z[rejected], state.z[rejected])
    assert (new.nfe == state.nfe + 1).all()  # the rejected trial is still paid for
