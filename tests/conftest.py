"""Shared fixtures: tiny float64 models for exactness checks."""

from __future__ import annotations

import pytest
import torch

from eqprop import EquilibriumLM, Euler, ModelConfig, relax


def tiny_config(**overrides) -> ModelConfig:
    base = dict(vocab_size=11, d_model=16, n_heads=2, d_ff=32, n_layers=2, seq_len=8)
    base.update(overrides)
    return ModelConfig(**base)


def tiny_problem(block: str = "asym", B: int = 3, seed: int = 0, **overrides):
    """(model, field, z_star) in float64 with z* solved to g ≤ 1e-12."""
    torch.manual_seed(seed)
    model = EquilibriumLM(tiny_config(block=block, **overrides)).double()
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
