"""Faithful convergence: no "converged" far from a fixed point, none on an unstable one.

Independent references: planted spectra (dense ``torch.linalg.eigvals``), float64.
"""

from __future__ import annotations

import math
from dataclasses import replace

import pytest
import torch

from eqprop.errors import ConfigError
from eqprop.fields import Field
from eqprop.regularizers.jacreg import JacReg
from eqprop.solvers import (
    IMEX,
    Anderson,
    Broyden,
    Euler,
    ImplicitEuler,
    NewtonKrylov,
    SolverConfig,
    Status,
    build_solver,
    relax,
)
from eqprop.solvers.stability import assess_stability, leading_real
from eqprop.split import SplitField
from tests.helpers import LinearField, TanhField, planted_matrix

#: the root finders: they can land on any zero of F
ROOT_FINDERS = {
    "anderson": lambda: Anderson(eps=0.5),
    "broyden": lambda: Broyden(eps=0.5),
    "newton": lambda: NewtonKrylov(),
    "implicit": lambda: ImplicitEuler(h=10.0),
    "ptc": lambda: build_solver(SolverConfig(name="ptc")),
}


def linear(modes, B: int = 4, seed: int = 0) -> LinearField:
    g = torch.Generator().manual_seed(seed + 100)
    A = planted_matrix(modes, seed=seed)
    return LinearField(A, torch.randn(B, A.shape[0], generator=g, dtype=torch.float64))


def near(F: LinearField, scale: float = 1.0, seed: int = 1) -> torch.Tensor:
    g = torch.Generator().manual_seed(seed)
    return F.z_fix + scale * torch.randn(F.z_fix.shape, generator=g, dtype=torch.float64)


# -- 1. the absolute residual test ------------------------------------------------------


def tanh_case(B: int = 8):
    J = planted_matrix((complex(-1, 20), complex(-0.5, 8), -2.0, -30.0))
    g = torch.Generator().manual_seed(3)
    c = torch.randn(B, 6, generator=g, dtype=torch.float64)
    return TanhField(J, c), c + 3 * torch.randn(B, 6, generator=g, dtype=torch.float64)


@pytest.mark.parametrize("name", ["broyden", "newton", "anderson"])
def test_no_convergence_far_from_a_fixed_point(name):
    """F = J tanh(z - c) stays bounded: root finders run away to ‖z‖ ~ 1e17 where ‖F‖/‖z‖
    is tiny. The relative test alone calls that converged; with the absolute test only
    samples at the fixed point c are."""
    F, z0 = tanh_case()
    make, steps = {"broyden": (Broyden, 60), "anderson": (Anderson, 200),  # n = 6:
                   "newton": (lambda: NewtonKrylov(restart=12, max_krylov=12), 30)}[name]
    rel_only = relax(F, z0, make(), tol=1e-5, max_steps=steps, atol=math.inf)
    far = rel_only.converged & ((rel_only.z - F.c).norm(dim=1) > 1.0)
    assert far.any(), "the hostile field no longer makes the solver run away"
    sol = relax(F, z0, make(), tol=1e-5, max_steps=steps)
    dist = (sol.z - F.c).norm(dim=1)
    assert not (sol.converged & (dist > 1e-3)).any(), (sol.status, dist)
    assert (sol.residual[sol.converged] <= 1e-5 * (z0.norm(dim=1) + F(z0).norm(dim=1))
            [sol.converged]).all()
    # a run-away state reads as diverged, not as a stall
    assert (sol.status[dist > 1e6] == Status.DIVERGED).all()


def test_absolute_tolerance_is_validated_and_used():
    F = linear((-1.0, complex(-0.5, 2)))
    z0 = near(F)
    with pytest.raises(ValueError, match="atol"):
        relax(F, z0, Euler(eps=0.1), atol=-1.0)
    loose = relax(F, z0, Euler(eps=0.1), tol=1e-3, max_steps=2000, atol=math.inf)
    tight = relax(F, z0, Euler(eps=0.1), tol=1e-3, max_steps=2000, atol=1e-9)
    assert loose.converged.all() and tight.converged.all()
    assert (tight.residual <= 1e-9).all() and (loose.residual > 1e-9).any()


# -- 2. unstable fixed points get a status of their own ---------------------------------


@pytest.mark.parametrize("name", list(ROOT_FINDERS))
def test_root_finder_on_a_spiral_source_is_unstable_not_converged(name):
    F = linear((complex(0.05, 2.0), -1.0, -3.0))
    sol = relax(F, near(F), ROOT_FINDERS[name](), tol=1e-8, max_steps=500)
    assert (sol.status == Status.UNSTABLE).all(), sol.summary()
    assert not sol.converged.any()
    assert torch.allclose(sol.z, F.z_fix, atol=1e-6, rtol=0)  # it did find the zero of F
    ref = torch.linalg.eigvals(F.A).real.max()
    assert torch.allclose(sol.max_real, ref.expand(4), atol=1e-6, rtol=0)
    assert not sol.stable.any()


@pytest.mark.parametrize("name", list(ROOT_FINDERS))
def test_root_finder_on_a_stable_point_is_converged_and_stable(name):
    F = linear((complex(-0.3, 2.0), -1.0, -3.0))
    sol = relax(F, near(F), ROOT_FINDERS[name](), tol=1e-8, max_steps=500)
    assert sol.converged.all(), sol.summary()
    assert sol.stable.all()
    assert torch.allclose(sol.max_real, torch.full((4,), -0.3, dtype=torch.float64),
                          atol=1e-6, rtol=0)


def test_ptc_on_a_saddle_and_a_spiral_source_does_what_its_docstring_says():
    """Backward Euler contracts a mode μ by |1/(1 - hμ)|. A saddle's real μ = 0.5 grows
    for h < 4 = 2/μ: from h = 1, where ‖F‖ grows and SER shrinks h, Ψtc follows the flow
    away. A spiral source 0.05 ± 2i is damped for every h > 2a/|μ|² ≈ 0.025: Ψtc lands
    on it, and relax reports it unstable."""
    saddle = linear((0.5, -1.0, -2.0))
    sol = relax(saddle, near(saddle), build_solver(SolverConfig(name="ptc")), tol=1e-8,
                max_steps=500)
    assert not sol.converged.any() and not (sol.status == Status.UNSTABLE).any()
    assert ((sol.z - saddle.z_fix).norm(dim=1) > 10).all(), sol.summary()
    source = linear((complex(0.05, 2.0), -1.0))
    sol = relax(source, near(source), build_solver(SolverConfig(name="ptc")), tol=1e-8,
                max_steps=500)
    assert torch.allclose(sol.z, source.z_fix, atol=1e-6, rtol=0)
    assert (sol.status == Status.UNSTABLE).all(), sol.summary()


def test_flow_followers_are_repelled_and_not_checked_by_default():
    F = linear((complex(0.05, 2.0), -1.0))
    sol = relax(F, near(F, 0.1), Euler(eps=0.05), tol=1e-8, max_steps=3000)
    assert not sol.converged.any() and sol.max_real is None
    assert (sol.status == Status.DIVERGED).all(), sol.summary()
    # on request the check still runs, at the final state (the same linear J)
    checked = relax(F, near(F, 0.1), Euler(eps=0.05), tol=1e-8, max_steps=50,
                    stability="always")
    assert torch.allclose(checked.max_real, torch.full((4,), 0.05, dtype=torch.float64),
                          atol=1e-6)


class BatchLinear(Field):
    """``F(z)_b = A_b (z_b - c_b)``: a different planted Jacobian per sample."""

    def __init__(self, A, c):
        self.A, self.c = A, c

    def __call__(self, z):
        return torch.einsum("bij,bj->bi", self.A, z - self.c)


def test_leading_real_per_sample_matches_dense_eigvals():
    mats = [planted_matrix(m, seed=i) for i, m in enumerate([
        (complex(-0.2, 9.0), -1.0, -5.0, -30.0),  # stiff: the rightmost is not the largest
        (complex(0.1, 1.0), -2.0, -3.0, -4.0),
        (0.3, -0.1, -7.0, complex(-1.0, 20.0)),
        (-0.01, -40.0, -0.5, complex(-5.0, 3.0)),
    ])]
    A = torch.stack(mats)
    F = BatchLinear(A, torch.randn(4, 5, dtype=torch.float64))
    est = leading_real(F, F.c + 0.1)
    ref = torch.linalg.eigvals(A).real.amax(1)
    assert torch.allclose(est.max_real, ref, atol=1e-6, rtol=0), (est.max_real, ref)
    assert est.unstable.tolist() == [False, True, True, False]
    assert est.evals == 1 + 5  # F(z), then n = 5 < KRYLOV_DIM steps: the whole space


def test_check_from_recorded_arnoldi_steps_equals_the_direct_check():
    """The captured path (Arnoldi on the device, Ritz values on the host) gives the same
    verdict as the direct check, on planted per-sample spectra with Re μ > 0."""
    from eqprop.solvers.base import Solution
    from eqprop.solvers.stability import arnoldi, check_relaxation, probe, start_vector

    A = torch.stack([planted_matrix(m, seed=i) for i, m in enumerate([
        (complex(0.1, 1.0), -2.0, -3.0, -4.0), (-0.01, -40.0, -0.5, complex(-5.0, 3.0))])])
    F = BatchLinear(A, torch.randn(2, 5, dtype=torch.float64))
    z = F.c + 0.1
    f = F(z)
    one = torch.ones(2, dtype=torch.long)
    sol = Solution(z=z, status=torch.full((2,), int(Status.CONVERGED)), steps=one, nfe=one,
                   residual=f.norm(dim=1), rel_residual=f.norm(dim=1))
    direct = check_relaxation(F, sol, None, "always", f=f)
    v0 = start_vector(f, probe(z))  # the start the captured check records
    recorded = check_relaxation(F, sol, None, "always", krylov=arnoldi(F, z, f, v0, 5))
    assert torch.equal(direct.max_real, recorded.max_real)
    assert recorded.status.tolist() == [int(Status.UNSTABLE), int(Status.CONVERGED)]
    assert torch.equal(direct.status, recorded.status) and torch.equal(direct.nfe, recorded.nfe)


def test_assess_stability_on_a_nudged_lm_field_and_complex_states():
    """The check needs F only: it works on a nudged field (no JVP through its loss
    gradient) and on holomorphic EP's complex states."""
    from eqprop.gradients.nudged import NudgedField
    from eqprop.solvers.stability import check_relaxation
    from tests.helpers import tiny_problem

    _, field, z = tiny_problem("asym", B=2)
    nudged = NudgedField(field, 0.01, z_star=z, antisym=True)
    sol = relax(nudged, z, Anderson(eps=0.5), tol=1e-6, max_steps=200)
    assert sol.converged.all() and sol.stable.all(), sol.summary()
    assert (sol.max_real < 0).all()
    Fc = LinearField(linear((complex(0.05, 2.0), -1.0)).A.to(torch.complex128),
                     torch.full((2, 3), 1 + 0.5j, dtype=torch.complex128))
    sol = relax(Fc, Fc.z_fix + 0.3, Broyden(), tol=1e-10, max_steps=100)
    assert (sol.status == Status.UNSTABLE).all(), sol.summary()
    assert sol is not check_relaxation(Fc, sol, None, "always")
    again = assess_stability(Fc, sol)
    assert torch.allclose(again.max_real, torch.full((2,), 0.05, dtype=torch.float64),
                          atol=1e-6)
    broken = assess_stability(Fc, replace(sol, z=torch.full_like(sol.z, float("nan"))))
    assert torch.isnan(broken.max_real).all() and not broken.stable.any()  # nothing measured


# -- 4. the split is declared, never guessed from an attribute --------------------------


def test_imex_ignores_a_tensor_named_c_and_uses_the_leak_split():
    F, z0 = tanh_case(B=2)  # TanhField stores a tensor c; it declares no split
    h = 0.5
    w = IMEX(h=h).step(F, IMEX(h=h).init(F, z0)).z
    assert torch.allclose(w, z0 + h / (1 + h) * F(z0), atol=1e-12, rtol=0)


def test_imex_uses_a_declared_split():
    class Split(SplitField):
        def __init__(self, base: LinearField):
            self.base = base

        def __call__(self, z):
            return self.base(z)

        def conservative(self, z):  # the whole linear field: IMEX is then backward Euler
            return self.base(z)

        def nonconservative(self, z):
            return torch.zeros_like(z)

    base = linear((complex(-1.0, 1.0), -2.0))  # the sweeps contract by h ρ(A + I)/(1 + h)
    F, z0, h = Split(base), near(base), 0.3
    # c(z) = A(z - z*) is affine; the implicit solve gives (I - hA) w = z0 - hA z*
    w = IMEX(h=h, sweeps=200).step(F, IMEX(h=h, sweeps=200).init(F, z0)).z
    M = torch.eye(3, dtype=torch.float64) - h * base.A
    ref = torch.linalg.solve(M, (z0 - h * base.z_fix @ base.A.T).T).T
    assert torch.allclose(w, ref, atol=1e-8, rtol=0)


def test_jacreg_needs_a_split_field():
    F, z0 = tanh_case(B=2)
    with pytest.raises(ConfigError, match="SplitField"):
        JacReg(weight=1.0).penalty(F, z0)


# -- 7. settling_time gives up within a bounded number of evaluations -------------------


class HopfCycle(Field):
    """``F(z) = A d - ‖d‖² d``, ``d = z - c``, with a source 0.3 ± 2i at c: the flow
    circles c on a limit cycle and never settles."""

    def __init__(self):
        self.A = planted_matrix((complex(0.3, 2.0), -1.0))
        self.c = torch.full((2, 3), 2.0, dtype=torch.float64)

    def __call__(self, z):
        d = z - self.c
        return d @ self.A.T - d * (d * d).sum(-1, keepdim=True)


def test_settling_time_gives_up_within_its_budget_and_says_why():
    from eqprop.solvers import ODE, settling_time

    F = HopfCycle()
    z0 = F.c + 0.1
    ode = ODE(tol=1e-6, max_nfe=5000)
    with pytest.warns(RuntimeWarning, match="did not settle.*ODE.max_nfe"):
        t, sol = settling_time(F, z0, ode)
    assert torch.isinf(t).all() and not sol.converged.any()
    assert (sol.nfe <= ode.max_nfe + 13 + ode.grid + 1).all(), sol.nfe
    with pytest.raises(ConfigError, match="max_nfe"):
        ODE(max_nfe=0)


# -- reported wherever a result reaches a user ------------------------------------------


def test_tracking_and_validation_report_stability(tmp_path):
    from dataclasses import replace as dc_replace

    from eqprop.diagnostics import dense_spectrum, track_stability
    from eqprop.train import Trainer
    from tests.helpers import TEXT, tiny, tiny_problem

    model, field, z = tiny_problem("asym", B=2, d_model=8, d_ff=16, seq_len=6)
    out = track_stability(model, field, z, samples=1)
    ref = float(dense_spectrum(field, z).real.max())
    assert out["stable_frac"] == 1.0 and out["max_re_est"] < 0
    assert out["max_re_est"] == pytest.approx(ref, abs=0.1)  # 16 Arnoldi steps, n = 96
    p = tmp_path / "text.txt"
    p.write_text(TEXT, encoding="utf-8")
    cfg = tiny(str(p), tmp_path / "runs")
    trainer = Trainer(dc_replace(cfg, solver=dc_replace(cfg.solver, name="broyden")))
    m = trainer.validate()
    assert m["val_stable_frac"] == 1.0 and m["val_max_re"] < 0


def test_the_check_starts_from_the_residual_and_finds_a_hopf_pair_a_random_start_misses():
    """A planted 302-unknown field: a cloud of 150 damped rotating pairs (Re μ in
    [-3, -0.3], |Im μ| up to 6, like a trained field's) and one pair +0.05 ± 2i. The
    state is the continuous flow's end after t = 10 from a random start: what a
    relaxation leaves is the modes it has not damped. From a random vector Arnoldi
    finds only the cloud; from the residual it finds the unstable pair (dense reference)."""
    from eqprop.solvers.base import Solution
    from eqprop.solvers.stability import arnoldi, check_relaxation, probe, ritz

    g = torch.Generator().manual_seed(1)
    cloud = [complex(-0.3 - 2.7 * float(torch.rand(1, generator=g)),
                     0.1 + 6 * float(torch.rand(1, generator=g))) for _ in range(150)]
    A = planted_matrix((*cloud, complex(0.05, 2.0)), seed=3)
    n = A.shape[0]
    assert torch.linalg.eigvals(A).real.max().item() == pytest.approx(0.05, abs=1e-12)
    F = BatchLinear(A[None], torch.randn(1, n, generator=g, dtype=torch.float64))
    e = torch.randn(1, n, generator=g, dtype=torch.float64) @ torch.linalg.matrix_exp(10 * A).T
    z = F.c + 1e-3 * e / e.norm()
    f = F(z)
    ulp = torch.finfo(torch.float64).eps
    for m in (16, 32):  # the check before (16 steps), and twice as many: blind to the pair
        blind = ritz(arnoldi(F, z, f, probe(z), m), ulp, m)
        assert blind.max_real.item() < -0.3 and not blind.unstable.item()
    one = torch.ones(1, dtype=torch.long)
    sol = Solution(z=z, status=torch.full((1,), int(Status.CONVERGED)), steps=one, nfe=one,
                   residual=f.norm(dim=1), rel_residual=f.norm(dim=1))
    checked = check_relaxation(F, sol, None, "always", f=f)
    assert checked.max_real.item() == pytest.approx(0.05, abs=1e-3)
    assert checked.status.tolist() == [int(Status.UNSTABLE)]


def _reference_verdict(H: torch.Tensor, k: torch.Tensor, ulp: float) -> torch.Tensor:
    """The check's rule from every Ritz pair (``torch.linalg.eig``: values and vectors)."""
    m = H.shape[2]
    B = H.shape[0]
    theta, Y = torch.linalg.eig(H[:, :m])
    rows, last = torch.arange(B), k - 1
    resid = H[rows, last + 1, last].abs()[:, None] * Y[rows, last, :].abs()
    margin = 10 * math.sqrt(ulp) * theta.abs().amax(1).clamp_min(1.0)
    return (theta.real - resid).amax(1) > margin


def test_ritz_vectors_and_the_verdict_match_the_full_eigendecomposition():
    """Inverse iteration on the candidates right of the axis gives the verdict that every
    Ritz pair (values and vectors) gives, on Hessenberg matrices with planted spectra."""
    from eqprop.solvers.stability import Krylov, ritz, ritz_vectors

    g = torch.Generator().manual_seed(0)
    B, m = 24, 16
    H = torch.zeros(B, m + 1, m, dtype=torch.float64)
    for b in range(B):
        # damped modes, weakly coupled (unreduced), and a rotating pair a ± 2i in the last
        # two columns: its Ritz vector lies there, so the coupling out of the space sets
        # its residual
        a = (b % 6 - 2) * 0.05  # -0.1 ... +0.15
        Hb = 0.1 * torch.triu(torch.rand(m, m, generator=g, dtype=torch.float64), 1)
        Hb += torch.diag(-1.0 - torch.rand(m, generator=g, dtype=torch.float64))
        Hb += torch.diag(torch.full((m - 1,), 0.1, dtype=torch.float64), -1)
        Hb[m - 2:, m - 2:] = torch.tensor([[a, 2.0], [-2.0, a]], dtype=torch.float64)
        H[b, :m] = Hb
        H[b, m, m - 1] = 0.5 * (b % 2)  # the coupling: odd samples' residual ~0.35 > a
    k = torch.full((B,), m)
    theta, Y = torch.linalg.eig(H[:, :m])
    y = ritz_vectors(H[:, :m], theta[:, 0])
    # the same eigenvector up to a phase
    overlap = (Y[:, :, 0].conj() * y).sum(1).abs()
    torch.testing.assert_close(overlap, torch.ones(B, dtype=torch.float64), atol=1e-9, rtol=0)
    ulp = torch.finfo(torch.float32).eps
    est = ritz(Krylov(H, k, torch.zeros(B, m + 1, 1)), ulp, m)
    want = _reference_verdict(H, k, ulp)
    assert want.any() and not want.all()  # the planted set has both verdicts
    # and right of the axis by less than the residual (the inverse iteration decides)
    assert ((est.max_real > 0.01) & ~want).any()
    assert torch.equal(est.unstable, want)
    torch.testing.assert_close(est.max_real, theta.real.amax(1), atol=1e-12, rtol=0)
