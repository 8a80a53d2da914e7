"""Holomorphic EP and the complex (holomorphic) forward pass of the model (design §3)."""

from __future__ import annotations

import pytest
import torch
import torch.nn.functional as Fn

from eqprop import EP, IFT, AsymEP, Euler, estimate_grads, gradient_cosine
from eqprop.errors import ConfigError
from eqprop.gradients import HoloEP
from eqprop.gradients.registry import EstimatorConfig, build_estimator
from eqprop.models.attention import gelu_tanh, masked_logsumexp, masked_softmax, softplus
from eqprop.solvers.registry import SolverConfig
from tests.helpers import tiny_problem

NUDGE = dict(tol=1e-9, max_steps=2000)


pytestmark = pytest.mark.usefixtures("one_thread")


def sharp_problem(block: str, B: int = 2, readout: float = 3.0, seed: int = 0):
    """A tiny float64 model whose readout is ``readout`` times sharper than at init, so the
    nudged equilibrium is far from linear in β at β ~ 1 (where centered EP's O(β²) shows)."""
    return tiny_problem(block, B=B, seed=seed, readout=readout)


# -- the complex forward --------------------------------------------------------------------

def test_complex_ops_equal_real_ops_on_real_inputs():
    g = torch.Generator().manual_seed(0)
    x = 3 * torch.randn(4, 6, 6, generator=g, dtype=torch.float64)
    mask = torch.ones(6, 6, dtype=torch.bool).tril()
    xc = x.to(torch.complex128)
    pairs = [(masked_softmax(x, mask), masked_softmax(xc, mask)),
             (masked_logsumexp(x, mask), masked_logsumexp(xc, mask)),
             (Fn.gelu(x, approximate="tanh"), gelu_tanh(xc)),
             (Fn.softplus(x), softplus(xc))]
    for real, cplx in pairs:
        torch.testing.assert_close(cplx.real, real, rtol=0, atol=1e-12)
        assert cplx.imag.abs().max() == 0


@pytest.mark.parametrize("block", ["asym", "energy"])
def test_complex_forward_on_real_inputs_equals_real_forward(block):
    model, field, z_star = sharp_problem(block)
    g = torch.Generator().manual_seed(2)
    z = z_star + 0.3 * torch.randn(z_star.shape, generator=g, dtype=z_star.dtype)  # off z*
    zc = z.to(torch.complex128)
    with torch.no_grad():
        for name in ("__call__", "nonconservative", "conservative", "logits", "loss", "grad_loss"):
            real, cplx = getattr(field, name)(z), getattr(field, name)(zc)
            assert cplx.is_complex(), name
            torch.testing.assert_close(cplx.real, real, rtol=0, atol=1e-12, msg=name)
            assert cplx.imag.abs().max() <= 1e-12, name


@pytest.mark.parametrize("block", ["asym", "energy"])
def test_complex_forward_is_holomorphic(block):
    """Complex step: ``Im F(z + i h v) / h = J v`` and ``Im ∇L(z + i h v) / h = H v`` (h = 1e-20)
    hold only if every op is holomorphic (a conj or abs would break them)."""
    model, field, z_star = sharp_problem(block)
    g = torch.Generator().manual_seed(3)
    v = torch.randn(z_star.shape, generator=g, dtype=z_star.dtype)
    h = 1e-20
    zc = z_star.to(torch.complex128) + 1j * h * v
    with torch.no_grad():
        torch.testing.assert_close(field(zc).imag / h, field.jvp(z_star, v), rtol=1e-9, atol=1e-12)
        # the loss gradient's directional derivative, by central differences on the real path
        w = 1e-5
        fd = (field.grad_loss(z_star + w * v) - field.grad_loss(z_star - w * v)) / (2 * w)
        torch.testing.assert_close(field.grad_loss(zc).imag / h, fd, rtol=1e-5, atol=1e-9)


# -- the estimator --------------------------------------------------------------------------

def test_holoep_beats_centered_ep_on_energy_block_at_finite_radius():
    model, field, z_star = sharp_problem("energy")
    ref, _ = estimate_grads(model, field, z_star, IFT(tol=1e-12))
    r = 1.0
    g_holo, res = estimate_grads(model, field, z_star, HoloEP(r=r, N=4, antisym=False, **NUDGE))
    g_ep, _ = estimate_grads(model, field, z_star, EP(beta=r, centered=True, **NUDGE))
    cos_holo, cos_ep = gradient_cosine(g_holo, ref)[0], gradient_cosine(g_ep, ref)[0]
    print(f"\nenergy block, r = β = {r}: HoloEP(N=4) {cos_holo:.6f}, centered EP {cos_ep:.6f}")
    assert all(bool(s.converged.all()) for s in res.solutions.values())
    assert cos_holo >= 0.999
    assert cos_ep < 0.999 and (1 - cos_ep) > 5 * (1 - cos_holo)


def test_holoep_with_antisym_term_matches_ift_on_asym_stack():
    model, field, z_star = sharp_problem("asym")
    ref, _ = estimate_grads(model, field, z_star, IFT(tol=1e-12))
    g_holo, _ = estimate_grads(model, field, z_star, HoloEP(r=1.0, N=4, antisym=True, **NUDGE))
    g_plain, _ = estimate_grads(model, field, z_star, HoloEP(r=1.0, N=4, antisym=False, **NUDGE))
    cos, cos_plain = gradient_cosine(g_holo, ref)[0], gradient_cosine(g_plain, ref)[0]
    print(f"\nasym stack, r = 1: HoloEP with -2A {cos:.6f}, without {cos_plain:.6f}")
    assert cos >= 0.999
    assert cos_plain < 0.99  # without the -2A term it estimates J⁻¹∇L, not J⁻ᵀ∇L


def test_two_nudges_are_centered_ep_and_conjugate_pairs_change_nothing():
    model, field, z_star = sharp_problem("asym", B=1)
    # both sides run the same arithmetic (and conj-symmetric arithmetic), so they agree to
    # rounding at any tolerance: a loose one keeps the test fast
    kw = dict(solver=Euler(0.5), tol=1e-4, max_steps=500)
    s2 = HoloEP(r=0.7, N=2, **kw).estimate(field, z_star).signal
    s_asym = AsymEP(beta=0.7, **kw).estimate(field, z_star).signal
    torch.testing.assert_close(s2, s_asym, rtol=1e-12, atol=1e-12)
    paired = HoloEP(r=0.7, N=3, **kw).estimate(field, z_star)
    full = HoloEP(r=0.7, N=3, conjugate_pairs=False, **kw).estimate(field, z_star)
    assert set(paired.nfe) == {"nudged0", "nudged1"}
    assert set(full.nfe) == {"nudged0", "nudged1", "nudged2"}
    # NFE: a real nudge costs F + JVP + VJP a step, a complex one F + 2 JVPs + 2 VJPs
    for k, calls in (("nudged0", 3), ("nudged1", 5)):
        sol = paired.solutions[k]
        torch.testing.assert_close(sol.nfe, calls * (sol.steps + 1))
    torch.testing.assert_close(paired.signal, full.signal, rtol=1e-8, atol=1e-10)


def test_registry_builds_holoep_and_bad_settings_name_the_value():
    est = build_estimator(EstimatorConfig(name="holoep", radius=0.3, n_nudges=6,
                                          holo_antisym=False), SolverConfig())
    assert isinstance(est, HoloEP) and (est.r, est.N, est.antisym) == (0.3, 6, False)
    with pytest.raises(ConfigError, match=r"HoloEP\(N=0\).*integer ≥ 1"):
        HoloEP(N=0)
    with pytest.raises(ConfigError, match=r"HoloEP\(r=-1.0\).*> 0"):
        HoloEP(r=-1.0)
    with pytest.raises(ConfigError, match=r"radius=0.*> 0"):
        EstimatorConfig(name="holoep", radius=0)
    with pytest.raises(ConfigError, match=r"n_nudges=0.*integer ≥ 1"):
        EstimatorConfig(name="holoep", n_nudges=0)
