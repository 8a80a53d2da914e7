"""IFT's adjoint relaxed as a flow (Anderson on ds/dt = Jᵀ s - ∇L) against GMRES and
against the dense adjoint solve."""

from __future__ import annotations

import pytest
import torch

from eqprop.gradients import IFT
from eqprop.gradients.adjoint import AdjointField
from tests.helpers import field_batches, tiny_problem


def _dense_adjoint(field, z):
    """``s_b = J_bᵀ⁻¹ ∇L_b`` from each sample's dense Jacobian (independent of any solver)."""
    g = field.grad_loss(z)
    out = torch.empty_like(z)
    n = z[0].numel()
    for b in range(z.shape[0]):
        def F1(zb, b=b):
            full = torch.cat([z[:b], zb[None], z[b + 1:]])
            return field.forward_for_jvp(full)[b].flatten()
        J = torch.autograd.functional.jacobian(F1, z[b]).reshape(n, n)
        out[b] = torch.linalg.solve(J.T, g[b].flatten()).reshape(z[b].shape)
    return out


@pytest.mark.usefixtures("one_thread")
def test_relaxed_adjoint_equals_dense_solve_and_gmres():
    _, field, z = tiny_problem("asym", B=3)
    ref = _dense_adjoint(field, z)
    relaxed = IFT(tol=1e-10, adjoint="anderson", max_iter=2000).estimate(field, z)
    krylov = IFT(tol=1e-10).estimate(field, z)
    err = (relaxed.signal - ref).norm() / ref.norm()
    assert err < 1e-7, err
    assert (krylov.signal - ref).norm() / ref.norm() < 1e-7
    sol = relaxed.solutions["adjoint"]
    assert sol.converged.all() and torch.equal(relaxed.nfe["adjoint"], sol.nfe)


@pytest.mark.usefixtures("one_thread")
def test_adjoint_field_is_the_linear_flow_and_its_copy_owns_its_inputs():
    _, field, z = tiny_problem("asym", B=2)
    g = field.grad_loss(z)
    A = AdjointField(field, z, g)
    s = torch.randn_like(z)
    expected = field.vjp(z, s) - g
    torch.testing.assert_close(A(s), expected, atol=1e-12, rtol=0)
    c = A.static_copy()
    c.refresh()
    assert all(a.data_ptr() != b.data_ptr() for a, b in zip(c.static_inputs(),
                                                           A.static_inputs(), strict=True))
    torch.testing.assert_close(c(s), expected, atol=1e-12, rtol=0)


def test_adjoint_choice_is_checked():
    with pytest.raises(Exception, match="adjoint='lsqr'"):
        IFT(adjoint="lsqr")


@pytest.mark.skipif(not torch.cuda.is_available(), reason="CUDA graphs need a GPU")
def test_replayed_adjoint_matches_eager_on_gpu():
    """The adjoint relaxation's graphs (linearisation at z* in the prologue) are reused
    across batches and read in-place parameter updates."""
    from eqprop.solvers import Euler, relax


    model, _, _ = tiny_problem("asym", B=4)
    model = model.cuda()
    cap = IFT(tol=1e-9, adjoint="anderson", capture=True, check_every=8, max_iter=1000)
    eager = IFT(tol=1e-9, adjoint="anderson", max_iter=1000)
    for i, field in enumerate(field_batches(model, 3)):
        z = relax(field, field.initial_state(), Euler(0.5), tol=1e-10, max_steps=2000).z
        a, b = cap.estimate(field, z), eager.estimate(field, z)
        torch.testing.assert_close(a.signal, b.signal, atol=1e-7, rtol=1e-6)
        assert torch.equal(a.nfe["adjoint"], b.nfe["adjoint"])
        if i == 0:
            with torch.no_grad():
                for p in model.parameters():
                    p.mul_(1.05)
    assert len(cap.relaxation._graphs) == 1
