"""The Relaxation object: built once, run on many batches; replayed CUDA graphs = eager."""

from __future__ import annotations

import warnings

import pytest
import torch

from eqprop.gradients import AsymEP
from eqprop.gradients.nudged import NudgedField
from eqprop.solvers import Anderson, Euler, NewtonKrylov, SolverConfig, build_solver, relax
from eqprop.solvers.relaxation import Relaxation
from tests.helpers import field_batches, tiny_problem

gpu = pytest.mark.skipif(not torch.cuda.is_available(), reason="CUDA graphs need a GPU")


def _same(a, b, atol: float) -> None:
    torch.testing.assert_close(a.z, b.z, atol=atol, rtol=0)
    assert torch.equal(a.steps, b.steps)
    assert torch.equal(a.nfe, b.nfe)
    assert torch.equal(a.status, b.status)
    assert (a.max_real is None) == (b.max_real is None)
    if a.max_real is not None:  # the stability check: captured Arnoldi = eager Arnoldi
        torch.testing.assert_close(a.max_real, b.max_real, atol=1e-4, rtol=1e-4,
                                   equal_nan=True)
        assert torch.equal(a.stable, b.stable)


@pytest.mark.usefixtures("one_thread")
def test_relaxation_equals_relax_on_every_batch():
    model, _, _ = tiny_problem("asym", B=4)
    r = Relaxation(Anderson(eps=0.5), tol=1e-9, max_steps=200, check_every=7)
    for field in field_batches(model, 3):
        z0 = field.initial_state()
        _same(r.run(field, z0), relax(field, z0, Anderson(eps=0.5), tol=1e-9, max_steps=200),
              atol=0)


@pytest.mark.usefixtures("one_thread")
def test_budget_is_respected_when_chunks_overrun_it():
    # 10 steps in chunks of 4: the third chunk runs 2 steps past the budget on the device
    model, field, _ = tiny_problem("asym", B=3)
    z0 = field.initial_state()
    sol = Relaxation(Euler(0.5), tol=1e-14, max_steps=10, check_every=4).run(field, z0)
    assert sol.steps.tolist() == [10, 10, 10]
    ref = relax(field, z0, Euler(0.5), tol=1e-14, max_steps=10)
    _same(sol, ref, atol=0)


def test_relaxation_validates_its_settings():
    with pytest.raises(ValueError, match="tol=0"):
        Relaxation(Euler(0.5), tol=0)
    with pytest.raises(ValueError, match="check_every=0"):
        Relaxation(Euler(0.5), check_every=0)
    with pytest.raises(ValueError, match="NewtonKrylov.*cannot be captured"):
        Relaxation(NewtonKrylov(), capture=True)


@pytest.mark.usefixtures("one_thread")
def test_static_copy_owns_its_inputs():
    """The graphs read the field's own copy: refilling it never touches the caller's tensors."""
    model, field, z = tiny_problem("asym", B=3)
    beta = torch.full((3,), 0.1, dtype=torch.float64)
    nf = NudgedField(field, beta, z, antisym=True, r_star=field(z))
    copy = nf.static_copy()
    assert len(copy.static_inputs()) == len(nf.static_inputs())
    for a, b in zip(copy.static_inputs(), nf.static_inputs(), strict=True):
        assert a.data_ptr() != b.data_ptr() and torch.equal(a, b)
    copy.refresh()
    torch.testing.assert_close(copy(z + 0.01), nf(z + 0.01), atol=1e-12, rtol=0)
    assert nf.static_key() == copy.static_key()


@gpu
@pytest.mark.parametrize("name", ["euler", "adaptive", "anderson", "broyden"])
def test_replayed_graphs_match_eager_across_batches_on_gpu(name):
    model, _, _ = tiny_problem("asym", B=4)
    model = model.cuda()
    cap = Relaxation(build_solver(SolverConfig(name=name)), tol=1e-9, max_steps=300, check_every=8,
                     capture=True)
    with warnings.catch_warnings():
        warnings.filterwarnings("error", message="Relaxation: CUDA-graph capture failed")
        for field in field_batches(model, 3):
            z0 = field.initial_state()
            eager = relax(field, z0, build_solver(SolverConfig(name=name)), tol=1e-9, max_steps=300)
            _same(cap.run(field, z0), eager, atol=1e-6)
    assert len(cap._graphs) == 1  # recorded once, replayed for the later batches


@gpu
def test_replayed_asymep_matches_eager_across_batches_on_gpu():
    """The nudged phases' graphs (linearisation at z* in the prologue) are reused: the
    signal of every later batch equals the eager one, also after a parameter update."""
    model, _, _ = tiny_problem("asym", B=4)
    model = model.cuda()
    kw = dict(beta=1e-3, solver=Anderson(eps=0.5), tol=1e-6, max_steps=300, check_every=8)
    cap, eager = AsymEP(capture=True, **kw), AsymEP(**kw)
    for i, field in enumerate(field_batches(model, 3)):
        z = relax(field, field.initial_state(), Euler(0.5), tol=1e-10, max_steps=2000).z
        with warnings.catch_warnings():
            warnings.filterwarnings("error", message="Relaxation: CUDA-graph capture failed")
            a = cap.estimate(field, z)
        b = eager.estimate(field, z)
        torch.testing.assert_close(a.signal, b.signal, atol=1e-6, rtol=1e-6)
        for k in ("nudged+", "nudged-"):
            _same(a.solutions[k], b.solutions[k], atol=1e-7)
        if i == 0:  # an in-place update, as an optimizer does: the graphs read it
            with torch.no_grad():
                for p in model.parameters():
                    p.mul_(1.05)
    assert len(cap.relaxation._graphs) == 1


@pytest.mark.usefixtures("one_thread")
def test_evaluation_budget_stops_each_sample_after_the_step_that_reaches_it():
    model, field, _ = tiny_problem("asym", B=3)
    z0 = field.initial_state()
    sol = Relaxation(Euler(0.5), tol=1e-14, max_steps=100, max_nfe=7, check_every=4).run(
        field, z0)
    assert sol.nfe.tolist() == [7, 7, 7] and sol.steps.tolist() == [6, 6, 6]  # F(z0) + 6 steps
    _same(sol, relax(field, z0, Euler(0.5), tol=1e-14, max_steps=6), atol=0)
    # a sample that converges first is not held to the budget
    loose = Relaxation(Euler(0.5), tol=1e-3, max_steps=100, max_nfe=10_000).run(field, z0)
    assert loose.converged.all() and (loose.nfe < 10_000).all()
    with pytest.raises(ValueError, match="max_nfe=0"):
        Relaxation(Euler(0.5), max_nfe=0)
