"""Failure classification rests on evidence: a fixed point found, or the flow's verdict."""

from __future__ import annotations

import pytest
import torch

from eqprop.diagnostics import ClassifySettings, Evidence, Failure, classify_failures
from eqprop.diagnostics.fixed_point import NewtonSettings
from eqprop.errors import ConfigError
from eqprop.solvers import Broyden, Euler, Status, relax
from tests.helpers import LinearField, TanhField, eps_crit, planted_matrix


def tanh_rotating(B: int = 4):
    """No leak and a stiff rotating mode -1 ± 20i at the fixed point c: Euler above
    ε_crit cycles, and a Newton search from the orbit runs off to ‖z‖ ~ 1e17."""
    J = planted_matrix((complex(-1, 20), -0.5, -2.0))
    g = torch.Generator().manual_seed(0)
    c = torch.randn(B, 4, generator=g, dtype=torch.float64)
    z0 = c + 0.5 * torch.randn(B, 4, generator=g, dtype=torch.float64)
    return TanhField(J, c), z0, 3.0 * eps_crit(-1, 20)


def test_artifact_from_the_flow_where_the_search_runs_off():
    F, z0, eps = tanh_rotating()
    sol = relax(F, z0, Euler(eps), tol=1e-9, max_steps=3000)
    assert (sol.status == Status.CYCLING).all(), sol.summary()
    rep = classify_failures(F, sol, eps)
    assert not rep.fixed_point_found.any()  # the search ran off (the hostile part)
    assert rep.labels() == ["artifact"] * 4
    assert (rep.evidence == Evidence.FLOW_SETTLED).all()
    torch.testing.assert_close(rep.z_best, F.c, atol=1e-8, rtol=0)  # the flow's z*
    torch.testing.assert_close(rep.max_real, torch.full((4,), -0.5, dtype=torch.float64))


def test_no_evidence_is_unknown():
    F, z0, eps = tanh_rotating()
    sol = relax(F, z0, Euler(eps), tol=1e-9, max_steps=3000)
    rep = classify_failures(F, sol, eps, ClassifySettings(flow_nfe=0))
    assert rep.labels() == ["unknown"] * 4
    assert (rep.evidence == Evidence.NONE).all()
    assert torch.isnan(rep.max_real).all() and torch.isnan(rep.eps_crit).all()


def test_converged_on_a_source_is_a_lost_fixed_point():
    A = planted_matrix((complex(0.05, 2.0), -1.0))
    F = LinearField(A, torch.randn(3, 3, dtype=torch.float64,
                                   generator=torch.Generator().manual_seed(1)))
    sol = relax(F, F.z_fix + 0.5, Broyden(), tol=1e-10, max_steps=100, stability="never")
    assert sol.converged.all()  # the unchecked root finder calls it a success
    rep = classify_failures(F, sol, 0.1)
    assert rep.labels() == ["lost_fixed_point"] * 3
    torch.testing.assert_close(rep.max_real, torch.full((3,), 0.05, dtype=torch.float64))
    checked = relax(F, F.z_fix + 0.5, Broyden(), tol=1e-10, max_steps=100)
    assert (checked.status == Status.UNSTABLE).all()
    assert classify_failures(F, checked, 0.1).labels() == ["lost_fixed_point"] * 3


def test_flow_that_blows_up_is_a_lost_fixed_point():
    """A source and no fixed point found (the search is given no iterations' worth of
    tolerance): the flow from the state blows up, which is the dynamics' own verdict."""
    A = planted_matrix((0.5, -1.0))
    F = LinearField(A, torch.zeros(2, 2, dtype=torch.float64))
    z = torch.tensor([[1.0, 2.0], [-2.0, 1.0]], dtype=torch.float64)
    # one Newton step with a one-vector Krylov space: it cannot reach the fixed point
    s = ClassifySettings(newton=NewtonSettings(tol=1e-300, max_iter=1, gmres_restart=1,
                                               gmres_iter=1), flow_nfe=5000)
    rep = classify_failures(F, z, 0.1, s)
    assert (rep.evidence == Evidence.FLOW_UNSETTLED).all(), rep.evidence
    assert rep.labels() == [Failure.LOST_FIXED_POINT.label] * 2


def test_settings_are_validated():
    with pytest.raises(ConfigError, match="flow_nfe"):
        ClassifySettings(flow_nfe=-1)
    with pytest.raises(ConfigError, match="flow_tol"):
        ClassifySettings(flow_tol=2.0)


def dense_damped_newton(F, z0: torch.Tensor, tol: float, max_iter: int, backtracks: int):
    """The reference for ``best_fixed_point``: one sample at a time, the Newton step by a
    dense solve on the Jacobian from ``torch.func.jacrev``, Armijo backtracking on ‖F‖,
    the lowest ‖F(z)‖/‖z0‖ kept."""
    out_z, out_r = [], []
    for b in range(z0.shape[0]):
        def f(z):
            return F(z[None])[0]
        z = z0[b].clone()
        fz, scale = f(z), z.norm()
        best_z, best_r = z, float(fz.norm() / scale)
        for _ in range(max_iter):
            if best_r <= tol and float(fz.norm() / scale) <= tol:
                break
            d = torch.linalg.lstsq(torch.func.jacrev(f)(z), -fz[:, None]).solution[:, 0]
            for k in range(backtracks):
                t = 0.5**k
                f_try = f(z + t * d)
                if float(f_try.norm()) <= (1 - 1e-4 * t) * float(fz.norm()):
                    z, fz = z + t * d, f_try
                    break
            else:
                break  # no descent along the Newton direction
            if float(fz.norm() / scale) < best_r:
                best_z, best_r = z, float(fz.norm() / scale)
        out_z.append(best_z)
        out_r.append(best_r)
    return torch.stack(out_z), torch.tensor(out_r, dtype=torch.float64)


def test_best_fixed_point_is_damped_newton():
    """The fixed-point search (the solver's Newton–Krylov step) against dense Newton, on a
    leak-free field with a source at c, from starts where the full Newton step overshoots
    (the line search halves it) and one start already at c (it must not move); GMRES on 3
    unknowns is an exact solve."""
    from eqprop.diagnostics.fixed_point import best_fixed_point

    F = TanhField(planted_matrix((0.3, complex(-0.1, 2.0))),
                  torch.zeros(6, 3, dtype=torch.float64) + 0.5)
    g = torch.Generator().manual_seed(0)
    z0 = 0.5 + 0.8 * torch.randn(6, 3, dtype=torch.float64, generator=g)
    z0[1] = F.c[1]
    got = best_fixed_point(F, z0, NewtonSettings(tol=1e-10))
    z_ref, r_ref = dense_damped_newton(F, z0, tol=1e-10, max_iter=30, backtracks=12)
    assert got.converged.all() and (r_ref <= 1e-10).all()
    torch.testing.assert_close(got.z, z_ref, atol=1e-12, rtol=0)
    torch.testing.assert_close(got.z, F.c, atol=1e-10, rtol=0)  # the source itself
    assert torch.equal(got.z[1], F.c[1])
