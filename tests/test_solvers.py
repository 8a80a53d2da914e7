"""Relaxation solvers on analytic fields with known fixed points and eigenvalues."""

from __future__ import annotations

import math

import pytest
import torch

from eqprop.errors import ConfigError
from eqprop.solvers import (
    CONTROLLERS,
    IMEX,
    ODE,
    AdaptiveEuler,
    Anderson,
    Euler,
    ImplicitEuler,
    NewtonKrylov,
    SolverConfig,
    Status,
    build_solver,
    relax,
    settling_time,
)
from eqprop.solvers.status import classify
from tests.helpers import (
    CountingField,
    LinearField,
    StiffNonlinearField,
    analytic_settling_time,
    eps_crit,
    rotating_field,
)

A_, B_ = -1.0, 4.0  # a moderately stiff rotating mode: ε_crit = 2/17 ≈ 0.118
A_STIFF, B_STIFF = -1.0, 20.0  # a stiff one: ε_crit ≈ 0.005


def start(F, seed: int = 1) -> torch.Tensor:
    g = torch.Generator().manual_seed(seed)
    return F.z_fix + torch.randn(F.z_fix.shape, generator=g, dtype=torch.float64)


def ptc() -> ImplicitEuler:
    return build_solver(SolverConfig(name="ptc"))


#: every solver, set to converge on the moderately stiff field (ε-based ones below ε_crit)
EC = eps_crit(A_, B_)
ALL_SOLVERS = {
    "euler": lambda: Euler(eps=0.5 * EC),
    **{f"adaptive:{n}": (lambda n=n: AdaptiveEuler(CONTROLLERS[n](eps_min=1e-3, eps_max=1.0),
                                                   eps0=0.05))
       for n in CONTROLLERS if n != "naive"},
    "anderson": lambda: Anderson(eps=0.5),
    "newton": NewtonKrylov,
    "implicit": lambda: ImplicitEuler(h=2.0),
    "ptc": ptc,
    "imex": lambda: IMEX(h=0.5 * EC / (1 - 0.5 * EC)),  # ε = h/(1+h) = EC/2
    "ode": lambda: ODE(tol=1e-9, rtol=1e-8),
}
#: the solvers that must also handle the stiff field (|b| = 20) in few evaluations
STIFF_SOLVERS = ("anderson", "newton", "implicit", "ptc")


# -- Euler and ε_crit ---------------------------------------------------------------------


@pytest.mark.parametrize("b", [2.0, 4.0])
def test_euler_converges_below_eps_crit_and_diverges_above_linear(b):
    F = rotating_field(A_, b, B=3)
    ec = eps_crit(A_, b)
    below = relax(F, start(F), Euler(eps=0.95 * ec), tol=1e-6, max_steps=4000)
    assert below.converged.all(), below.summary()
    assert torch.allclose(below.z, F.z_fix, atol=1e-4)
    # the instability grows from a perturbation of z*, as it does in a relaxation
    z_near = F.z_fix + 1e-6 * (start(F) - F.z_fix)
    above = relax(F, z_near, Euler(eps=1.05 * ec), tol=1e-9, max_steps=800)
    assert (above.status == Status.DIVERGED).all(), above.summary()


def test_euler_above_eps_crit_nonlinear_is_cycling_or_diverged_never_converged():
    F = StiffNonlinearField(A_, 2.0, B=3, shifted=True)
    ec = eps_crit(A_, 2.0)
    z0 = F.z_fix + 0.3 * torch.randn(F.z_fix.shape, dtype=torch.float64,
                                     generator=torch.Generator().manual_seed(2))
    below = relax(F, z0, Euler(eps=0.95 * ec), tol=1e-6, max_steps=4000)
    assert below.converged.all(), below.summary()
    above = relax(F, z0, Euler(eps=1.05 * ec), tol=1e-6, max_steps=2000)
    assert not above.converged.any()
    assert torch.isin(above.status, torch.tensor([Status.CYCLING, Status.DIVERGED])).all()
    # the cubic term bounds the orbit: a limit cycle of the simulation, not a blow-up
    assert (above.status == Status.CYCLING).all(), above.summary()


# -- every solver -------------------------------------------------------------------------


@pytest.mark.parametrize("name", list(ALL_SOLVERS))
def test_every_solver_converges_on_rotating_linear_field(name):
    F = rotating_field(A_, B_, B=3)
    sol = relax(F, start(F), ALL_SOLVERS[name](), tol=1e-9, max_steps=3000)
    assert sol.converged.all(), f"{name}: {sol.summary()}"
    assert torch.allclose(sol.z, F.z_fix, atol=1e-7)


@pytest.mark.parametrize("name", list(ALL_SOLVERS))
def test_every_solver_converges_on_nonlinear_field(name):
    F = StiffNonlinearField(A_, B_, B=3, shifted=True)
    z0 = F.z_fix + 0.5 * torch.randn(F.z_fix.shape, dtype=torch.float64,
                                     generator=torch.Generator().manual_seed(3))
    sol = relax(F, z0, ALL_SOLVERS[name](), tol=1e-9, max_steps=3000)
    assert sol.converged.all(), f"{name}: {sol.summary()}"
    assert torch.allclose(sol.z, F.z_fix, atol=1e-7)


@pytest.mark.parametrize("name", STIFF_SOLVERS)
def test_stiff_field_converges_fast_where_euler_cannot(name):
    F = rotating_field(A_STIFF, B_STIFF, B=3)
    sol = relax(F, start(F), ALL_SOLVERS[name](), tol=1e-9, max_steps=200)
    assert sol.converged.all(), f"{name}: {sol.summary()}"
    assert sol.nfe.max() < 400, sol.nfe
    euler = relax(F, start(F), Euler(eps=0.9 * eps_crit(A_STIFF, B_STIFF)), tol=1e-9,
                  max_steps=400)
    assert not euler.converged.any()  # contraction ≈ 1 - 1e-3 a step


@pytest.mark.parametrize("name", list(ALL_SOLVERS))
def test_per_sample_mask_freezes_converged_samples(name):
    F = rotating_field(A_, B_, B=3)
    z0 = start(F)
    z0[1] = F.z_fix[1]  # sample 1 starts at its equilibrium: converged before any step
    solver = ALL_SOLVERS[name]()
    sol = relax(F, z0, solver, tol=1e-9, max_steps=3000)
    assert torch.equal(sol.z[1], F.z_fix[1])  # it never moved
    # only the initial evaluation, and a root finder's stability check (n = 3 Arnoldi steps)
    assert sol.steps[1] == 0 and sol.nfe[1] == 1 + (0 if solver.follows_flow else 3)
    assert sol.steps[0] > 0 and sol.steps[2] > 0 and sol.converged.all()


@pytest.mark.parametrize("name", list(ALL_SOLVERS))
def test_nfe_accounting_matches_a_counter(name):
    F = CountingField(StiffNonlinearField(A_, B_, B=1, shifted=True))
    z0 = F.field.z_fix + 0.5
    sol = relax(F, z0, ALL_SOLVERS[name](), tol=1e-9, max_steps=3000)
    assert sol.converged.all()
    assert int(sol.nfe[0]) == F.total, (int(sol.nfe[0]), F.calls, F.jvps)


def test_nfe_is_charged_per_sample_only_while_active():
    F = rotating_field(A_, B_, B=2)
    z0 = start(F)
    z0[0] = F.z_fix[0] + 1e-3  # sample 0 starts close and stops early
    sol = relax(F, z0, Euler(eps=0.5 * EC), tol=1e-8, max_steps=3000)
    assert sol.converged.all()
    assert sol.nfe[0] < sol.nfe[1]
    assert torch.equal(sol.nfe, sol.steps + 1)  # one evaluation per Euler step, plus F(z0)


# -- Newton–Krylov, implicit, IMEX, Anderson --------------------------------------------


def test_newton_krylov_few_outer_iterations_on_nonlinear_field():
    F = StiffNonlinearField(A_STIFF, B_STIFF, B=3, shifted=True)
    z0 = F.z_fix + 0.3 * torch.randn(F.z_fix.shape, dtype=torch.float64,
                                     generator=torch.Generator().manual_seed(4))
    sol = relax(F, z0, NewtonKrylov(), tol=1e-12, max_steps=50)
    assert sol.converged.all(), sol.summary()
    assert sol.steps.max() <= 8, sol.steps
    assert torch.allclose(sol.z, F.z_fix, atol=1e-10)


def test_implicit_euler_step_is_the_resolvent_on_a_linear_field():
    F = rotating_field(A_STIFF, B_STIFF, B=2)
    z0 = start(F)
    h = 3.0
    solver = ImplicitEuler(h=h, newton_tol=1e-12, restart=10, max_krylov=10)
    state = solver.step(F, solver.init(F, z0))
    I = torch.eye(F.A.shape[0], dtype=torch.float64)
    expected = F.z_fix + (z0 - F.z_fix) @ torch.linalg.inv(I - h * F.A).T
    assert torch.allclose(state.z, expected, atol=1e-10)


def test_imex_is_euler_with_eps_h_over_1_plus_h_for_a_leak_split():
    F = rotating_field(A_, B_, B=2)
    z0, h = start(F), 0.1
    imex = IMEX(h=h).step(F, IMEX(h=h).init(F, z0))
    eul = Euler(eps=h / (1 + h))
    assert torch.allclose(imex.z, eul.step(F, eul.init(F, z0)).z, atol=1e-14)


def test_imex_solves_the_layer_coupled_implicit_equation():
    from eqprop.models import EquilibriumLM, ModelConfig

    torch.manual_seed(0)
    model = EquilibriumLM(ModelConfig(vocab_size=11, d_model=8, n_heads=2, d_ff=16,
                                      n_layers=3, seq_len=5)).double()
    F = model.field(torch.randint(0, 11, (2, 5)))
    z0 = F.initial_state() + 0.1
    h = 0.7
    w = IMEX(h=h).step(F, IMEX(h=h).init(F, z0)).z
    n0 = F(z0) - F.conservative(z0)
    # c implicit, n explicit
    assert torch.allclose(w, z0 + h * (F.conservative(w) + n0), atol=1e-10)
    # the drive of the new state climbed the stack: it differs from the leak-only split
    leak_only = z0 + h / (1 + h) * F(z0)
    assert not torch.allclose(w[:, 1:], leak_only[:, 1:], atol=1e-6)
    sol = relax(F, z0, IMEX(h=h), tol=1e-9, max_steps=500)
    assert sol.converged.all(), sol.summary()


def test_anderson_safeguard_restarts_and_counts_them():
    F = rotating_field(A_STIFF, B_STIFF, B=2, extra=(-1.0, -0.5, -2.0, -0.2))
    sol_solver = Anderson(m=2, eps=2.0, restart_growth=1.0)
    state = sol_solver.init(F, start(F))
    for _ in range(30):
        state = sol_solver.step(F, state)
    assert (state.aux["restarts"] > 0).all()
    # a restart leaves the state and residual where they were before the rejected step
    sol = relax(F, start(F), Anderson(m=6, eps=2.0), tol=1e-9, max_steps=300)
    assert sol.converged.all(), sol.summary()


def test_anderson_is_per_sample():
    F = rotating_field(A_, B_, B=3)
    z0 = start(F)
    full = relax(F, z0, Anderson(eps=0.5), tol=1e-10, max_steps=200)
    one = relax(LinearField(F.A, F.z_fix[1:2]), z0[1:2], Anderson(eps=0.5), tol=1e-10,
                max_steps=200)
    assert torch.allclose(full.z[1], one.z[0], atol=1e-12)
    assert full.nfe[1] == one.nfe[0]


@pytest.mark.parametrize("name", ["euler", "adaptive:pi", "adaptive:overshoot", "anderson",
                                  "imex"])
def test_complex_states_for_holomorphic_ep(name):
    F = rotating_field(A_, B_, B=2)
    Fc = LinearField(F.A.to(torch.complex128), F.z_fix.to(torch.complex128) * (1 + 0.5j))
    sol = relax(Fc, Fc.z_fix + 1.0, ALL_SOLVERS[name](), tol=1e-10, max_steps=3000)
    assert sol.converged.all(), sol.summary()
    assert (sol.z - Fc.z_fix).abs().max() < 1e-8


# -- ODE reference ------------------------------------------------------------------------


def test_ode_reference_fixed_point_and_settling_time():
    F = rotating_field(-0.5, 3.0, B=2)
    z0 = start(F)
    tol = 1e-6
    t_settle, sol = settling_time(F, z0, ODE(tol=tol, rtol=1e-8))
    assert sol.converged.all(), sol.summary()
    assert torch.allclose(sol.z, F.z_fix, atol=1e-6)
    t_true = analytic_settling_time(F, z0, tol, t_max=80.0)
    assert torch.allclose(t_settle, t_true, rtol=0.05), (t_settle, t_true)


def test_ode_marks_a_blow_up_nonfinite_instead_of_hanging():
    F = rotating_field(0.5, 1.0, B=1)  # unstable: Re μ > 0
    sol = relax(F, start(F), ODE(max_steps_per_horizon=200), tol=1e-6, max_steps=30)
    assert not sol.converged.any()
    assert sol.status[0] in (Status.DIVERGED, Status.NONFINITE)


# -- status classification ----------------------------------------------------------------


def test_classify_traces():
    t = torch.arange(200, dtype=torch.float64)
    traces = torch.stack([
        0.98**t,  # still contracting
        1.0 + 0.3 * torch.sin(0.7 * t),  # stalls with an oscillation: cycling
        1.03**t,  # growing: diverged
        torch.ones_like(t),  # constant ‖F‖ (a limit cycle of constant speed): cycling
    ])
    no = torch.zeros(4, dtype=torch.bool)
    s = classify(traces, converged=no, finite=~no)
    assert s.tolist() == [Status.CONTRACTING, Status.CYCLING, Status.DIVERGED, Status.CYCLING]
    s = classify(traces, converged=torch.tensor([True, False, False, False]),
                 finite=torch.tensor([True, True, False, True]))
    assert s[0] == Status.CONVERGED and s[2] == Status.NONFINITE


def test_classify_sees_a_saturated_blow_up_through_the_norms():
    t = torch.arange(200, dtype=torch.float64)[None]
    g = 2.0 - torch.exp(-t)  # ‖F‖/‖z‖ saturates at ‖J‖ while z blows up
    norms = 1.05**t
    no = torch.zeros(1, dtype=torch.bool)
    assert classify(g, no, ~no)[0] == Status.CYCLING  # g alone: a stall
    assert classify(g, no, ~no, norms=norms)[0] == Status.DIVERGED


def test_eps_crit_helper():
    assert math.isclose(eps_crit(-1.0, 4.0), 2 / 17)


# -- the benchmark ------------------------------------------------------------------------


def test_bench_solvers_smoke(tmp_path):
    from eqprop.bench.solvers import SolverBenchConfig, bench_solvers, markdown_table
    from eqprop.cli.main import main

    cfg = SolverBenchConfig(cases=("stiff", "lm"), solvers=("euler@0.2", "newton"), peers=False,
                            batch=2, max_nfe=300, stiff_dim=4, stiff_b=2.0, d_model=8,
                            n_layers=1, seq_len=4, eps_crit_samples=1, flow_horizons=10,
                            dtype="float64", threads=0, verbose=False)
    results = bench_solvers(cfg)
    assert [case for case, _, _ in results] == ["stiff", "lm"]
    stiff = {r["solver"]: r for r in results[0][2]}
    assert stiff["newton"]["reached"] == 1.0 and stiff["newton"]["flow"] == 1.0
    assert "ε_crit at the flow's z*" in results[1][1]
    table = markdown_table(results, cfg, command="eqprop bench solvers")
    assert "| newton | 100 % | 100 % |" in table
    out = tmp_path / "t.md"
    assert main(["bench", "solvers", "--solvers.cases", "stiff", "--solvers.solvers", "newton",
                 "--solvers.no-peers", "--solvers.batch", "1", "--solvers.stiff-dim", "4",
                 "--solvers.threads", "0", "--solvers.out", str(out)]) == 0
    assert "| newton |" in out.read_text()
    with pytest.raises(ConfigError, match="allowed: euler"):
        SolverBenchConfig(solvers=("rk4",))


def test_anderson_runs_under_bf16_autocast():
    """The m×m least-squares problem runs outside autocast (LU has no bf16 kernel, and a
    bf16 Gram matrix would lose the differences it is made of); the LM still relaxes."""
    from tests.helpers import tiny_problem

    model, field, z64 = tiny_problem("asym", B=2)
    model.float()
    field = model.field(field.tokens, field.targets)
    z_ref = z64.float()
    with torch.autocast("cpu", dtype=torch.bfloat16):
        sol = relax(field, field.initial_state(), Anderson(eps=0.5), tol=2e-2, max_steps=200)
    assert sol.converged.all(), sol.summary()
    start_err = (field.initial_state() - z_ref).norm() / z_ref.norm()
    err = (sol.z - z_ref).norm() / z_ref.norm()
    assert err < 0.04 and start_err > 0.3, (err, start_err)  # z* at bf16 accuracy
