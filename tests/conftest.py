"""Shared fixtures: tiny float64 models for exactness checks."""

from __future__ import annotations

import pytest
import torch

from eqprop import EquilibriumLM, Euler, ModelConfig, relax


def tiny_config(**overrides) -> ModelConfig:
    base = dict(vocab_size=11, d_model=16, n_heads=2, d_ff=32, n_layers=2, seq_len=8)
    base.update(overrides)
    return ModelConfig(**base)


def tiny_problem(block: str = "asym", B: int = 3, seed: int = 0, readout: float = 1.0,
                 **overrides):
    """(model, field, z_star) in float64 with z* solved to g ≤ 1e-12; ``readout`` scales
    the readout weights (sharper than at init: the nudged equilibrium turns nonlinear in β)."""
    torch.manual_seed(seed)
    model = EquilibriumLM(tiny_config(block=block, **overrides)).double()
    with torch.no_grad():
        model.W_out.weight.mul_(readout)
    g = torch.Generator().manual_seed(seed + 1)
    tokens = torch.randint(0, 11, (B, model.cfg.seq_len), generator=g)
    targets = torch.randint(0, 11, (B, model.cfg.seq_len), generator=g)
    field = model.field(tokens, targets)
    sol = relax(field, field.initial_state(), Euler(0.5), tol=1e-12, max_steps=3000)
    assert bool(sol.converged.all()), sol.summary()
    return model, field, sol.z


@pytest.fixture
def asym_problem():
    return tiny_problem("asym")


@pytest.fixture
def energy_problem():
    return tiny_problem("energy")


@pytest.fixture
def one_thread():
    """Tiny float64 models: intra-op threads only add synchronisation (10x slower on a
    busy 2-core machine); use with ``pytest.mark.usefixtures("one_thread")``."""
    n = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(n)
