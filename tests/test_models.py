"""The equilibrium LM's field: Jacobian products, symmetry, causality, settings."""

from __future__ import annotations

import pytest
import torch
from torch.func import jacrev

from eqprop import EquilibriumLM, Euler, ModelConfig, relax
from eqprop.errors import ConfigError
from eqprop.models.attention import causal_attention
from tests.helpers import tiny_config, tiny_problem


def dense_jacobian(field, z: torch.Tensor) -> torch.Tensor:
    """Full Jacobian of one sample ``z (1, ...)`` as an (N, N) matrix, by reverse mode."""
    N = z.numel()
    flat = jacrev(lambda u: field.forward_for_jvp(u.view_as(z)).reshape(-1))(z.reshape(-1))
    return flat.view(N, N)


@pytest.mark.parametrize("block", ["asym", "energy"])
def test_jvp_vjp_match_dense_jacobian(block):
    model, field, z = tiny_problem(block, B=1)
    J = dense_jacobian(field, z)
    g = torch.Generator().manual_seed(3)
    v = torch.randn(z.shape, generator=g, dtype=z.dtype)
    jv, jtv = field.jvp(z, v), field.vjp(z, v)
    torch.testing.assert_close(jv.reshape(-1), J @ v.reshape(-1), rtol=1e-10, atol=1e-10)
    torch.testing.assert_close(jtv.reshape(-1), J.T @ v.reshape(-1), rtol=1e-10, atol=1e-10)


@pytest.mark.parametrize("block", ["asym", "energy"])
def test_linearization_matches_dense_jacobian(block):
    """``Field.linearize``: J v by the double VJP and Jᵀ v from one graph, several products
    at one point (the graph is reused), against the dense Jacobian by reverse mode."""
    model, field, z = tiny_problem(block, B=1)
    J = dense_jacobian(field, z)
    lin = field.linearize(z)
    g = torch.Generator().manual_seed(4)
    for _ in range(3):
        v = torch.randn(z.shape, generator=g, dtype=z.dtype)
        torch.testing.assert_close(lin.jvp(v).reshape(-1), J @ v.reshape(-1), rtol=1e-10,
                                   atol=1e-10)
        torch.testing.assert_close(lin.vjp(v).reshape(-1), J.T @ v.reshape(-1), rtol=1e-10,
                                   atol=1e-10)
    with pytest.raises(ValueError, match="must be real"):
        field.linearize(z.to(torch.complex128))


def test_asym_jacobian_is_not_symmetric_and_energy_is():
    _, f_asym, z_asym = tiny_problem("asym", B=1)
    _, f_energy, z_energy = tiny_problem("energy", B=1)
    Ja, Je = dense_jacobian(f_asym, z_asym), dense_jacobian(f_energy, z_energy)
    assert (Je - Je.T).abs().max() < 1e-10
    assert (Ja - Ja.T).abs().max() > 1e-2


def test_fused_and_explicit_attention_agree():
    g = torch.Generator().manual_seed(0)
    q, k, v = (torch.randn(2, 3, 7, 5, generator=g, dtype=torch.float64) for _ in range(3))
    torch.testing.assert_close(causal_attention(q, k, v, explicit=True),
                               causal_attention(q, k, v, explicit=False), rtol=1e-10, atol=1e-12)
    model, field, z = tiny_problem("asym")
    torch.testing.assert_close(field(z), field.forward_for_jvp(z), rtol=1e-10, atol=1e-12)


def test_samples_are_independent():
    model, field, z = tiny_problem("asym", B=3)
    whole = field(z)
    for b in range(3):
        single = model.field(field.tokens[b : b + 1], field.targets[b : b + 1])
        torch.testing.assert_close(single(z[b : b + 1]), whole[b : b + 1], rtol=1e-12, atol=1e-12)


def test_equilibrium_is_causal():
    """Changing token t leaves every position < t of z* unchanged, and changes position t."""
    model, field, z_star = tiny_problem("asym", B=1)
    t = 5
    tokens = field.tokens.clone()
    tokens[0, t] = (tokens[0, t] + 1) % model.cfg.vocab_size
    other = model.field(tokens, field.targets)
    z_other = relax(other, other.initial_state(), Euler(0.5), tol=1e-12, max_steps=3000).z
    before = (z_other - z_star)[:, :, :t].abs().max()
    at_t = (z_other - z_star)[:, :, t].abs().max()
    assert before < 1e-10, before
    assert at_t > 1e-3, at_t


def test_stack_is_one_field_driven_from_below():
    """c(z) = -z + drive: layer 1 is driven by x, layer 2 by z_1 (asym block)."""
    model, field, z = tiny_problem("asym", B=2)
    c = field.conservative(z)
    torch.testing.assert_close(c[:, 0], -z[:, 0] + field.x)
    torch.testing.assert_close(c[:, 1], -z[:, 1] + z[:, 0])
    torch.testing.assert_close(field(z), field.conservative(z) + field.nonconservative(z))


def test_tied_readout_shares_the_embedding():
    model = EquilibriumLM(tiny_config(tied_readout=True))
    assert model.W_out is None
    z = torch.randn(2, 2, 8, 16)
    torch.testing.assert_close(model.logits(z), model.norm_f(z[:, -1]) @ model.emb.weight.T)


def test_loss_is_per_sample_cross_entropy():
    model, field, z = tiny_problem("asym", B=2)
    logits = model.logits(z)
    ce = torch.nn.functional.cross_entropy(logits[1], field.targets[1])
    torch.testing.assert_close(field.loss(z)[1], ce)


@pytest.mark.parametrize(
    ("overrides", "message"),
    [
        (dict(d_model=30, n_heads=4), r"d_model=30 is not divisible by model.n_heads=4"),
        (dict(block="hopfield"), r"block='hopfield': allowed values are asym, energy"),
        (dict(n_layers=0), r"n_layers=0: must be an integer ≥ 1"),
        (dict(init_scale=-1.0), r"init_scale=-1.0: must be a finite number > 0"),
    ],
)
def test_bad_model_settings_name_the_value(overrides, message):
    with pytest.raises(ConfigError, match=message):
        ModelConfig(**overrides)


@pytest.mark.parametrize("eps", [-0.1, 0.0])
def test_bad_euler_step_names_the_value(eps):
    with pytest.raises(ConfigError, match=rf"Euler\(eps={eps}\).*> 0"):
        Euler(eps)


def test_too_long_input_is_refused():
    model = EquilibriumLM(tiny_config())
    with pytest.raises(ValueError, match="exceeds model.seq_len=8"):
        model.embed(torch.zeros(1, 9, dtype=torch.long))
