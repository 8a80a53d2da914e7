"""The abscissa penalty: the leading Ritz pair and its Rayleigh quotient against the
dense Jacobian, its gradient against finite differences, and its effect on a field
whose leading mode is right of the imaginary axis."""

from __future__ import annotations

import pytest
import torch

from eqprop.regularizers import Abscissa, RegularizerConfig, build_regularizer
from eqprop.solvers.stability import leading_mode
from tests.helpers import tiny_problem

#: 1 layer, T 4, D 4: 16 unknowns per sample, so 16 Arnoldi steps span the whole space
SMALL = dict(d_model=4, n_heads=2, d_ff=8, n_layers=1, seq_len=4)


def _dense_J(field, z, b: int) -> torch.Tensor:
    """The Jacobian of sample ``b`` at ``z`` ``(N, N)`` by reverse mode (independent of Arnoldi)."""
    def F1(zb):
        full = z.detach().clone()
        full = torch.cat([full[:b], zb[None], full[b + 1:]])
        return field.forward_for_jvp(full)[b].flatten()
    return torch.autograd.functional.jacobian(F1, z[b].detach()).reshape(z[0].numel(), -1)


def _hostile(scale: float = 4.0):
    """The tiny model's weights scaled up at its old equilibrium: a mode with Re μ > 0."""
    model, field, z = tiny_problem("asym", B=2, **SMALL)
    with torch.no_grad():
        for p in model.blocks.parameters():
            if p.dim() == 2:
                p.mul_(scale)
    return model, field, z


@pytest.mark.usefixtures("one_thread")
def test_leading_mode_and_rayleigh_quotient_equal_the_dense_rightmost_eigenvalue():
    _, field, z = _hostile()
    theta, y = leading_mode(field, z)
    rho = Abscissa().rayleigh(field, z, y).detach()
    for b in range(2):
        mu = torch.linalg.eigvals(_dense_J(field, z, b))
        lead = mu[mu.real.argmax()]
        assert abs(theta[b].real - lead.real) < 1e-6
        assert abs(abs(theta[b].imag) - abs(lead.imag)) < 1e-6
        assert abs(rho[b] - lead.real) < 1e-6, (rho[b], lead)
    assert (theta.real > 0).all()  # the field is hostile: the check would catch a sign slip


@pytest.mark.usefixtures("one_thread")
def test_penalty_gradient_matches_finite_differences_with_the_mode_held():
    model, field, z = _hostile()
    reg = Abscissa(weight=1.0, margin=0.5)
    _, y = leading_mode(field, z)
    W = model.blocks[0].W_1.weight
    R = torch.relu(reg.rayleigh(field, z, y) + reg.margin).pow(2).mean()
    (g,) = torch.autograd.grad(R, W)
    d = torch.randn(W.shape, generator=torch.Generator().manual_seed(0), dtype=W.dtype)

    def R_dense(h: float) -> float:  # y fixed, J from the dense Jacobian at θ + h d
        with torch.no_grad():
            W.add_(h * d)
        rho = []
        for b in range(2):
            J = _dense_J(field, z, b)
            u, w = y[b].real.flatten(), y[b].imag.flatten()
            rho.append(u @ J @ u + w @ J @ w)
        with torch.no_grad():
            W.sub_(h * d)
        return float(torch.relu(torch.stack(rho) + reg.margin).pow(2).mean())

    h = 1e-5
    fd = (R_dense(h) - R_dense(-h)) / (2 * h)
    assert abs(float((g * d).sum()) - fd) < 1e-6 * max(1.0, abs(fd)), (float((g * d).sum()), fd)


@pytest.mark.usefixtures("one_thread")
def test_descent_on_the_penalty_moves_the_leading_eigenvalue_left_and_it_vanishes_below_margin():
    model, field, z = _hostile()
    reg = build_regularizer(RegularizerConfig(name="abscissa", weight=1.0, margin=0.2))
    def lead() -> float:
        return max(float(torch.linalg.eigvals(_dense_J(field, z, b)).real.max())
                   for b in range(2))
    before = lead()
    assert before > 0
    opt = torch.optim.SGD(model.blocks.parameters(), lr=0.05)
    for _ in range(40):
        opt.zero_grad()
        reg.term(field, z).backward()
        opt.step()
    after = lead()
    assert after < -0.1, (before, after)  # pushed across the axis, to about -margin
    assert float(reg.penalty(field, z).detach()) < 0.05 * (before + 0.2) ** 2


def test_abscissa_settings_are_checked():
    with pytest.raises(Exception, match="margin"):
        Abscissa(margin=-1.0)


@pytest.mark.usefixtures("one_thread")
def test_the_hinge_reuses_the_checks_arnoldi_steps():
    """A check leaves its Ritz decomposition on the solution: the rightmost pair from it is
    the dense Jacobian's (right of the axis here), for the batch and for a head of it, and
    the penalty on a head of the batch equals the one that takes its own Arnoldi steps."""
    from eqprop.solvers import Anderson, relax

    _, field, z = _hostile()  # no steps: the check measures J at the hostile point itself
    sol = relax(field, z, Anderson(eps=0.5, m=5), max_steps=0, stability="always")
    assert sol.modes is not None and sol.modes.V.shape[0] == 2
    theta, _ = leading_mode(field, sol.z, modes=sol.modes)
    for b in range(2):
        mu = torch.linalg.eigvals(_dense_J(field, sol.z, b))
        assert abs(theta[b].real - mu.real.max()) < 1e-6
    assert (theta.real > 0).all()
    def never(_):
        raise AssertionError("the Arnoldi steps were taken again")
    head, _ = leading_mode(never, sol.z[:1], modes=sol.modes[:1])
    assert head[0] == theta[0]
    reg = Abscissa(weight=1.0, margin=0.5, samples=1)
    reused = float(reg.term(field, sol.z, modes=sol.modes).detach())
    own = float(reg.term(field, sol.z).detach())
    assert reused > 0.25 and abs(reused - own) < 1e-8 * own
    with pytest.raises(ValueError, match="modes of 2 samples"):
        leading_mode(field.head(1), sol.z[:1], modes=sol.modes)
