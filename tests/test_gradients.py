"""Gradient estimators against independent references (float64)."""

from __future__ import annotations

import pytest
import torch

from eqprop import (
    BPTT,
    EP,
    IFT,
    Anderson,
    AsymEP,
    Euler,
    estimate_grads,
    gmres,
    gradient_cosine,
    relax,
)
from eqprop.errors import ConfigError
from eqprop.gradients.registry import EstimatorConfig, build_estimator
from eqprop.solvers.registry import SolverConfig
from tests.helpers import rotating_field, tiny_problem

NUDGE = dict(tol=1e-8, max_steps=3000)


def test_gmres_matches_dense_solve():
    g = torch.Generator().manual_seed(0)
    B, N = 4, 30
    A = torch.randn(B, N, N, generator=g, dtype=torch.float64) / N**0.5 - 2 * torch.eye(N)
    b = torch.randn(B, N, generator=g, dtype=torch.float64)
    x, info = gmres(lambda v: (A @ v[..., None])[..., 0], b, tol=1e-12, restart=10, max_iter=300)
    torch.testing.assert_close(x, torch.linalg.solve(A, b), rtol=1e-9, atol=1e-10)
    assert bool(info.converged.all())
    assert int(info.matvecs.max()) < 300


def test_ift_matches_finite_differences_of_the_equilibrium_loss():
    """dL(z*(θ))/dθ along a random direction: IFT vs central differences, z* to 1e-12."""
    model, field, z_star = tiny_problem("asym", B=2)
    grads, _ = estimate_grads(model, field, z_star, IFT(tol=1e-13, max_iter=800))
    g = torch.Generator().manual_seed(7)
    params = dict(model.named_parameters())
    direction = {n: torch.randn(p.shape, generator=g, dtype=p.dtype) for n, p in params.items()}
    analytic = sum((grads[n] * direction[n]).sum() for n in params)

    def loss_at(h: float) -> float:
        with torch.no_grad():
            for n, p in params.items():
                p.add_(h * direction[n])
            f = model.field(field.tokens, field.targets)
            sol = relax(f, f.initial_state(), Euler(0.5), tol=1e-13, max_steps=5000)
            value = float(f.loss(sol.z).mean())
            for n, p in params.items():
                p.sub_(h * direction[n])
        assert bool(sol.converged.all())
        return value

    h = 1e-5
    numeric = (loss_at(h) - loss_at(-h)) / (2 * h)
    assert abs(float(analytic) - numeric) / abs(numeric) < 1e-5, (float(analytic), numeric)


def test_ift_signal_is_the_analytic_adjoint_on_a_linear_field():
    """On F(z) = A(z - z_fix), the IFT signal is s = A⁻ᵀ ∇L exactly."""
    field = rotating_field(-0.5, 4.0, B=3)
    z_star = field.z_fix.clone()
    result = IFT(tol=1e-13).estimate(field, z_star)
    grad_l = z_star - field.y  # ∇ of ½‖z - y‖²
    expected = torch.linalg.solve(field.A.T, grad_l.T).T
    torch.testing.assert_close(result.signal, expected, rtol=1e-10, atol=1e-10)


def test_asymep_signal_is_the_adjoint_on_a_non_symmetric_linear_field():
    field = rotating_field(-0.5, 2.0, B=2)
    z_star = field.z_fix.clone()
    ref = IFT(tol=1e-13).estimate(field, z_star).signal
    asym = AsymEP(beta=1e-3, solver=Euler(0.05), **NUDGE).estimate(field, z_star).signal
    plain = EP(beta=1e-3, solver=Euler(0.05), **NUDGE).estimate(field, z_star).signal
    torch.testing.assert_close(asym, ref, rtol=1e-6, atol=1e-6)
    assert (plain - ref).abs().max() > 0.1  # plain EP gives J⁻¹∇L, not J⁻ᵀ∇L


def test_asymep_matches_ift_on_causal_stack_and_plain_ep_does_not():
    model, field, z_star = tiny_problem("asym", B=3)
    ref, _ = estimate_grads(model, field, z_star, IFT(tol=1e-12))
    g_asym, _ = estimate_grads(model, field, z_star, AsymEP(beta=1e-3, **NUDGE))
    g_ep, _ = estimate_grads(model, field, z_star, EP(beta=1e-3, **NUDGE))
    cos_asym, _ = gradient_cosine(g_asym, ref)
    cos_ep, _ = gradient_cosine(g_ep, ref)
    print(f"\ncosine vs IFT: AsymEP {cos_asym:.6f}, plain EP {cos_ep:.6f}")
    assert cos_asym >= 0.999
    assert cos_ep < 0.99 and cos_ep < cos_asym - 0.01


def test_centered_ep_matches_ift_on_energy_block():
    model, field, z_star = tiny_problem("energy", B=3)
    ref, _ = estimate_grads(model, field, z_star, IFT(tol=1e-12))
    g_ep, _ = estimate_grads(model, field, z_star, EP(beta=1e-3, **NUDGE))
    cos, per = gradient_cosine(g_ep, ref)
    assert cos >= 0.999, cos
    assert min(per.values()) > 0.99, per


def test_centered_ep_beats_one_sided_at_large_beta():
    model, field, z_star = tiny_problem("energy", B=2)
    ref, _ = estimate_grads(model, field, z_star, IFT(tol=1e-12))
    cos = {}
    for centered in (True, False):
        g, _ = estimate_grads(model, field, z_star, EP(beta=0.5, centered=centered, **NUDGE))
        cos[centered] = gradient_cosine(g, ref)[0]
    assert 1 - cos[True] < 0.5 * (1 - cos[False]), cos


def test_long_bptt_unroll_from_equilibrium_approaches_ift():
    model, field, z_star = tiny_problem("asym", B=2)
    ref, _ = estimate_grads(model, field, z_star, IFT(tol=1e-12))
    g_short, _ = estimate_grads(model, field, z_star, BPTT(steps=2))
    g_long, _ = estimate_grads(model, field, z_star, BPTT(steps=60))
    assert gradient_cosine(g_long, ref)[0] > 0.9999
    assert gradient_cosine(g_short, ref)[0] < gradient_cosine(g_long, ref)[0]


def test_nfe_is_reported_per_phase():
    model, field, z_star = tiny_problem("asym", B=2)
    _, res_ep = estimate_grads(model, field, z_star, EP(beta=1e-2, solver=Euler(0.5)))
    _, res_asym = estimate_grads(model, field, z_star, AsymEP(beta=1e-2, solver=Euler(0.5)))
    assert set(res_ep.nfe) == {"nudged+", "nudged-", "residual"}  # residual: one F(z*)
    assert res_ep.nfe["residual"].tolist() == [1, 1]
    # one AsymEP nudged evaluation is F + JVP + VJP: three times the plain EP cost per step
    sol = res_asym.solutions["nudged+"]
    torch.testing.assert_close(sol.nfe, 3 * (sol.steps + 1))


def test_gradient_cosine_global_and_per_parameter():
    a = {"w": torch.tensor([1.0, 0.0]), "b": torch.tensor([2.0])}
    b = {"w": torch.tensor([-1.0, 0.0]), "b": torch.tensor([2.0])}
    glob, per = gradient_cosine(a, b)
    assert per == {"b": 1.0, "w": -1.0}
    assert glob == pytest.approx((-1 + 4) / 5)
    with pytest.raises(ValueError, match="parameter names differ"):
        gradient_cosine(a, {"w": a["w"]})


@pytest.mark.parametrize("name", ["asymep", "ep", "ift", "bptt"])
def test_registry_builds_every_estimator(name):
    est = build_estimator(EstimatorConfig(name=name), SolverConfig())
    model, field, z_star = tiny_problem("asym", B=2)
    grads, res = estimate_grads(model, field, z_star, est)
    assert torch.isfinite(res.surrogate)
    assert sum(float(g.abs().sum()) for g in grads.values()) > 0


def test_unknown_estimator_lists_the_valid_ones():
    with pytest.raises(ConfigError, match="allowed values are asymep, ep, ift, bptt"):
        EstimatorConfig(name="adjoint")


def test_residual_correction_finishes_sooner_with_the_same_gradient():
    """A free phase stopped at g ≈ 1e-4 leaves F(z*) ≠ 0; subtracting it makes z* the exact
    β = 0 equilibrium, so the nudged phase only resolves the nudge (fewer steps), and the
    centered signal still matches IFT's adjoint at that z*."""
    model, field, _ = tiny_problem("asym", B=3)
    z = relax(field, field.initial_state(), Euler(0.5), tol=1e-4, max_steps=3000).z
    ref, _ = estimate_grads(model, field, z, IFT(tol=1e-10, max_iter=2000))
    steps = {}
    for corr in (True, False):
        est = AsymEP(beta=1e-3, solver=Euler(0.5), tol=1e-3, max_steps=2000,
                     correct_residual=corr)
        grads, res = estimate_grads(model, field, z, est)
        assert gradient_cosine(grads, ref)[0] > 0.9999
        steps[corr] = res.solutions["nudged+"].steps
    assert (steps[True] < 0.8 * steps[False]).all(), steps


@pytest.mark.parametrize("cls", [EP, AsymEP])
@pytest.mark.parametrize("solver", [Euler(0.5), Anderson(eps=0.5)])
def test_nudges_relaxed_as_one_batch_equal_one_after_the_other(cls, solver):
    """``batch_nudges``: the ±β phases as one 2B batch give each sample the same nudged
    equilibrium, steps, NFE and status as two separate relaxations."""
    model, field, z_star = tiny_problem("asym", B=3)
    assert field.repeated(2) is not None
    res = {}
    for batched in (True, False):
        est = cls(beta=1e-2, solver=solver, tol=1e-6, max_steps=400, batch_nudges=batched)
        res[batched] = est.estimate(field, z_star)
    torch.testing.assert_close(res[True].signal, res[False].signal, rtol=1e-9, atol=1e-9)
    for key in ("nudged+", "nudged-"):
        a, b = res[True].solutions[key], res[False].solutions[key]
        assert a.z.shape == z_star.shape
        for name in ("steps", "nfe", "status"):
            assert getattr(a, name).tolist() == getattr(b, name).tolist(), (key, name)
    assert res[True].solutions["nudged+"].converged.all()
