"""The Relaxation object: built once, run on many batches; replayed CUDA graphs = eager; a
failed capture reaches the user; validation's reference relaxation converges where Euler cycles."""

from __future__ import annotations

import warnings

import pytest
import torch

from eqprop.gradients import AsymEP
from eqprop.gradients.nudged import NudgedField
from eqprop.regularizers import Abscissa
from eqprop.solvers import (
    Anderson,
    CaptureFallback,
    Euler,
    NewtonKrylov,
    SolverConfig,
    build_solver,
    relax,
)
from eqprop.solvers.loop import fall_back
from eqprop.solvers.registry import build_relaxation
from eqprop.solvers.relaxation import Relaxation
from eqprop.solvers.stability import leading_mode
from eqprop.train import train
from eqprop.train.config import EvalConfig
from eqprop.train.metrics import read_metrics
from tests.helpers import field_batches, tiny, tiny_problem
from tests.test_anderson_history import Affine, planted

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


@gpu
def test_the_replayed_check_leaves_the_eager_checks_modes_on_gpu():
    """The check's Arnoldi steps replayed from their graph leave the eager check's
    rightmost Ritz value and the same hinge (the Rayleigh quotient of its vector, which a
    conjugate pair shares), and a basis of the solution's own: the next replay does not
    overwrite it."""
    model, _, _ = tiny_problem("asym", B=4)
    model = model.cuda()
    cap = Relaxation(Anderson(eps=0.5), tol=1e-9, max_steps=300, check_every=8, capture=True)
    kept = []
    for field in field_batches(model, 2):
        z0 = field.initial_state()
        a = cap.run(field, z0)
        b = relax(field, z0, Anderson(eps=0.5), tol=1e-9, max_steps=300)
        (ta, ya), (tb, yb) = (leading_mode(field, s.z, modes=s.modes) for s in (a, b))
        torch.testing.assert_close(ta.real, tb.real, atol=1e-6, rtol=0)
        torch.testing.assert_close(ta.imag.abs(), tb.imag.abs(), atol=1e-6, rtol=0)
        rho_a, rho_b = (Abscissa().rayleigh(field, s.z, y) for s, y in ((a, ya), (b, yb)))
        torch.testing.assert_close(rho_a, rho_b, atol=1e-6, rtol=0)
        kept.append((a.modes, a.modes.V.clone()))
    assert torch.equal(kept[0][0].V, kept[0][1])


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


def test_a_failed_capture_is_an_event_and_a_line_on_stderr(tmp_path, text_file, capsys):
    """A relaxation that falls back to eager runs (CUDA only, simulated here at step 3)
    is logged where the user looks: a ``capture_failed`` event, a line on stderr."""
    calls: list[int] = []

    def fail_at_3(field, z_star, sol):
        calls.append(1)
        if len(calls) == 3:
            with pytest.warns(CaptureFallback, match="Anderson on a state of shape"):
                fall_back("Relaxation", Anderson(m=20), z_star, RuntimeError("MAGMA\nmore"))
        return 0.0 * sum(p.sum() for p in field.model.parameters())

    summary = train(tiny(text_file, tmp_path), penalty=fail_at_3)
    records = read_metrics(summary.run_dir / "metrics.jsonl")
    (event,) = [r for r in records if r.get("event") == "capture_failed"]
    assert event["step"] == 3 and event["detail"].endswith(": MAGMA)")
    assert event["detail"].startswith("Relaxation: CUDA-graph capture failed, running eagerly")
    err = capsys.readouterr().err
    assert f"capture_failed at step 3: {event['detail']}" in err


def test_the_default_reference_solve_finds_the_equilibrium_where_euler_cycles():
    """Validation's reference on a stiff rotating field with no leak beyond A (a pair
    μ = -0.05 ± 3i: ε_crit = 0.011, so Euler at 0.2 is unstable) started near the fixed
    point: the default (Anderson m 20) reaches -A⁻¹b to 1e-6 and says it is stable; the
    previous default, Euler ε 0.2, does not converge."""
    A = planted([complex(-0.05, 3.0), complex(-0.4, 0.7), -1.0, -0.3, -2.0, -0.6])
    b = torch.randn(4, 8, generator=torch.Generator().manual_seed(5), dtype=torch.float64)
    F = Affine(A, b)
    exact = F.solution()  # (4, 2, 4)
    z0 = exact + 1e-2 * torch.randn(exact.shape, generator=torch.Generator().manual_seed(6),
                                    dtype=torch.float64)
    ref = build_relaxation(EvalConfig().reference, capture=False).run(F, z0)
    assert bool((ref.status == 0).all()) and bool(ref.stable.all())
    assert float((ref.z - exact).abs().max()) < 1e-5 * float(exact.abs().max())
    euler = build_relaxation(SolverConfig(euler=Euler(eps=0.2), tol=1e-6, max_steps=1000),
                             capture=False).run(F, z0)
    assert not bool((euler.status == 0).any())
