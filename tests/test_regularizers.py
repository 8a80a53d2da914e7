"""Jacobian regularizers (jacreg, homeostasis) and the adaptive weight (design §4)."""

from __future__ import annotations

import math

import pytest
import torch
from torch.func import jacrev

from eqprop.errors import ConfigError
from eqprop.regularizers import (
    AdaptiveConfig,
    AdaptiveWeight,
    Homeostasis,
    JacReg,
    RegularizerConfig,
    build_regularizer,
)
from tests.helpers import tiny_problem

#: probes for the Hutchinson checks: the field is rebuilt on P copies of one sequence,
#: so one call with n_probes=1 draws P independent probes in a single batched JVP
P = 4096


pytestmark = pytest.mark.usefixtures("one_thread")


def dense(fn, z: torch.Tensor) -> torch.Tensor:
    """Jacobian of ``fn`` at one sample ``z (1, ...)`` as an (N, N) matrix."""
    N = z.numel()
    return jacrev(lambda u: fn(u.view_as(z)).reshape(-1))(z.reshape(-1)).view(N, N)


def replicated(block: str):
    """(model, field on P copies of one sequence, z* repeated, field of the single sequence, z*)."""
    model, field, z = tiny_problem(block, B=1)
    many = model.field(field.tokens.expand(P, -1), field.targets.expand(P, -1))
    return model, many, z.expand(P, *z.shape[1:]).contiguous(), field, z


def hutchinson_sd(M: torch.Tensor) -> float:
    """Standard deviation of ``vᵀ M v`` for v ~ N(0, I): ``√(2 ‖sym M‖²_F)``."""
    return math.sqrt(2 * (0.5 * (M + M.T)).pow(2).sum().item())


@pytest.mark.parametrize("block", ["asym", "energy"])
def test_jacreg_is_the_frobenius_norm_of_the_nonconservative_jacobian(block):
    model, many, z_many, field, z = replicated(block)
    Jn = dense(field.nonconservative, z)  # (N, N)
    N = Jn.shape[0]
    ref = Jn.pow(2).sum().item() / N
    sd = hutchinson_sd(Jn.T @ Jn) / N / math.sqrt(P)  # of the P-probe mean
    assert 4 * sd < 0.02 * ref, "too few probes for a 2 % check"
    value = JacReg(n_probes=1).penalty(many, z_many, torch.Generator().manual_seed(0)).item()
    print(f"\njacreg {block}: Hutchinson {value:.6f}, dense {ref:.6f}, rel {value / ref - 1:+.4f}")
    assert abs(value / ref - 1) < 0.02
    # the dense norm itself changes when J_n is scaled: the check is not vacuous
    assert ref > 1e-4


def test_homeostasis_expectation_is_half_the_antisymmetric_frobenius_norm():
    model, many, z_many, field, z = replicated("asym")
    J = dense(field.forward_for_jvp, z)
    N = J.shape[0]
    ref = 0.5 * (J - J.T).pow(2).sum().item() / N
    sd = hutchinson_sd(J.T @ J - J @ J) / N / math.sqrt(P)
    assert 4 * sd < 0.02 * ref, "too few probes for a 2 % check"
    value = Homeostasis(n_probes=1).penalty(many, z_many, torch.Generator().manual_seed(1)).item()
    print(f"\nhomeostasis asym: Hutchinson {value:.6f}, dense {ref:.6f}, "
          f"rel {value / ref - 1:+.4f}")
    assert abs(value / ref - 1) < 0.02


def test_homeostasis_vanishes_on_the_symmetric_energy_block():
    _, field, z = tiny_problem("energy", B=2)
    value = Homeostasis(n_probes=4).penalty(field, z, torch.Generator().manual_seed(2)).item()
    assert abs(value) < 1e-10, value


def test_probes_are_averaged_and_repeatable():
    _, field, z = tiny_problem("asym", B=2)
    R = JacReg(n_probes=3)
    a = R.penalty(field, z, torch.Generator().manual_seed(4)).item()
    b = R.penalty(field, z, torch.Generator().manual_seed(4)).item()
    g = torch.Generator().manual_seed(4)
    singles = [JacReg(n_probes=1).penalty(field, z, g).item() for _ in range(3)]
    assert a == b
    assert a == pytest.approx(sum(singles) / 3, rel=1e-12)
    assert len(set(singles)) == 3


@pytest.mark.parametrize("cls", [JacReg, Homeostasis])
def test_penalty_gradient_matches_central_differences(cls):
    """∇_θ R (through the JVP) against central differences of R along a random direction."""
    model, field, z = tiny_problem("asym", B=2)
    R = cls(n_probes=2)
    params = dict(model.named_parameters())
    model.zero_grad(set_to_none=True)
    R.penalty(field, z, torch.Generator().manual_seed(5)).backward()
    g = torch.Generator().manual_seed(6)
    direction = {k: torch.randn(p.shape, generator=g, dtype=p.dtype) for k, p in params.items()}
    analytic = sum((p.grad * direction[k]).sum() for k, p in params.items() if p.grad is not None)
    assert sum(p.grad is not None for p in params.values()) >= 6  # reaches the weights

    def shifted(h: float) -> float:
        with torch.no_grad():
            for k, p in params.items():
                p.add_(h * direction[k])
        value = R.penalty(field, z, torch.Generator().manual_seed(5)).item()
        with torch.no_grad():
            for k, p in params.items():
                p.sub_(h * direction[k])
        return value

    h = 1e-5
    fd = (shifted(h) - shifted(-h)) / (2 * h)
    assert abs(fd) > 1e-3
    assert float(analytic) == pytest.approx(fd, rel=1e-6)


def test_penalty_does_not_move_the_equilibrium_and_term_applies_the_weight():
    _, field, z = tiny_problem("asym", B=2)
    z = z.clone().requires_grad_(True)
    R = JacReg(weight=0.25)
    term = R.term(field, z, torch.Generator().manual_seed(7))
    term.backward()
    assert z.grad is None  # z* is detached inside
    assert R.metrics() == {"reg_weight": 0.25, "reg_value": pytest.approx(term.item() / 0.25)}
    assert JacReg(weight=0.0).term(field, z).item() == 0.0


# -- the adaptive weight ---------------------------------------------------------------------

def test_adaptive_weight_rises_on_failures_and_thin_margin_and_decays_otherwise():
    w = AdaptiveWeight(init=0.1, w_min=0.01, w_max=0.5, grow=2.0, decay=0.5,
                       target_converged=0.9, min_margin=0.2)
    assert w.update(0.5, None) == pytest.approx(0.2)  # relaxations failing
    assert w.update(1.0, 0.05) == pytest.approx(0.4)  # all converged but close to ε_crit
    assert w.update(1.0, -0.3) == pytest.approx(0.5)  # beyond ε_crit; capped at w_max
    assert w.update(0.95, 0.5) == pytest.approx(0.25)  # healthy: decay
    assert w.update(1.0, None) == pytest.approx(0.125)  # margin unmeasured: fraction decides
    assert w.update(1.0, float("nan")) == pytest.approx(0.0625)
    for _ in range(10):
        w.update(1.0, 1.0)
    assert w.weight == pytest.approx(0.01)  # floored at w_min
    state = w.state_dict()
    w2 = AdaptiveWeight(init=0.1, w_min=0.01, w_max=0.5)
    w2.load_state_dict(state)
    assert w2.weight == w.weight
    with pytest.raises(ValueError, match=r"converged_fraction=1.5"):
        w.update(1.5, None)


def test_regularizer_update_drives_the_adaptive_weight_only():
    fixed = JacReg(weight=0.3)
    assert fixed.update(0.0, -1.0) == 0.3
    adaptive = build_regularizer(RegularizerConfig(name="jacreg", weight=0.1, adaptive=True,
                                                   adapt=AdaptiveConfig(grow=3.0)))
    assert adaptive.current_weight == pytest.approx(0.1)
    assert adaptive.update(0.0, None) == pytest.approx(0.3)


@pytest.mark.parametrize(
    ("kwargs", "message"),
    [
        (dict(name="l2"), r"name='l2': allowed values are none, jacreg, homeostasis"),
        (dict(name="jacreg", weight=-1.0), r"weight=-1.0: must be a number ≥ 0"),
        (dict(name="jacreg", n_probes=0), r"n_probes=0: must be an integer ≥ 1"),
        (dict(name="jacreg", adaptive=True, adapt=AdaptiveConfig(grow=0.5)),
         r"adapt: AdaptiveWeight\(grow=0.5\): must be > 1"),
        (dict(name="jacreg", adaptive=True, adapt=AdaptiveConfig(decay=0.0)),
         r"decay=0.0\): must be in \(0, 1\]"),
    ],
)
def test_bad_regularizer_settings_name_the_value(kwargs, message):
    with pytest.raises(ConfigError, match=message):
        RegularizerConfig(**kwargs)


def test_build_regularizer_by_name():
    assert build_regularizer(RegularizerConfig()) is None
    assert isinstance(build_regularizer(RegularizerConfig(name="jacreg")), JacReg)
    h = build_regularizer(RegularizerConfig(name="homeostasis", weight=0.2, n_probes=3))
    assert isinstance(h, Homeostasis) and (h.weight, h.n_probes, h.adaptive) == (0.2, 3, None)
