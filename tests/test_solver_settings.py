"""Solver settings and the registry: every solver builds from its section, bad values and
names are refused in one line, a TOML section sets its solver."""

from __future__ import annotations

import dataclasses

import pytest

from eqprop.errors import ConfigError
from eqprop.gradients.registry import EstimatorConfig
from eqprop.solvers import (
    IMEX,
    ODE,
    SER,
    SOLVERS,
    AdaptiveConfig,
    AdaptiveEuler,
    Anderson,
    HeunPI,
    ImplicitEuler,
    NewtonKrylov,
    Overshoot,
    Solver,
    SolverConfig,
    StepDoubling,
    build_solver,
    relax,
)
from tests.helpers import (
    rotating_field,
)

A_, B_ = -1.0, 4.0  # a moderately stiff rotating mode: ε_crit = 2/17 ≈ 0.118
A_STIFF, B_STIFF = -1.0, 20.0  # a stiff one: ε_crit ≈ 0.005


@pytest.mark.parametrize("name", list(SOLVERS))
def test_every_registered_solver_builds(name):
    solver = build_solver(SolverConfig(name=name))
    F = rotating_field(-1.0, 4.0, B=1)
    sol = relax(F, F.z_fix + 0.5, solver, tol=1e-3, max_steps=3)
    assert sol.nfe[0] >= 1


def test_unknown_names_list_the_valid_ones():
    with pytest.raises(ConfigError, match="allowed values are euler, adaptive"):
        SolverConfig(name="rk4")
    with pytest.raises(ConfigError, match="overshoot"):
        AdaptiveConfig(controller="pid")


@pytest.mark.parametrize("make", [
    lambda: Anderson(m=0), lambda: Anderson(beta=1.5), lambda: Anderson(lam=-1.0),
    lambda: ImplicitEuler(h=0.0), lambda: IMEX(h=-1.0), lambda: NewtonKrylov(eta_max=1.5),
    lambda: ODE(method="euler"), lambda: AdaptiveEuler(controller="pi"),
    lambda: Overshoot(eps_min=1.0, eps_max=0.1), lambda: HeunPI(safety=1.5),
    lambda: SER(factor_max=0.5), lambda: StepDoubling(rtol=0.0),
    lambda: AdaptiveConfig(eps_min=2.0, eps_max=1.0),
    lambda: AdaptiveConfig(controller="overshoot", rtol=0.1),
])
def test_bad_settings_raise_config_error_naming_the_value(make):
    with pytest.raises(ConfigError) as e:
        make()
    assert "=" in str(e.value) and ("must" in str(e.value) or "allowed" in str(e.value))


def test_every_registered_solver_has_its_section():
    """Adding a solver: its class, a line in SOLVERS and its section of SolverConfig."""
    cfg = SolverConfig()
    assert [f.name for f in dataclasses.fields(cfg) if f.name in SOLVERS] == list(SOLVERS)
    for name, cls in SOLVERS.items():
        assert isinstance(getattr(cfg, name), cls)
        assert isinstance(build_solver(dataclasses.replace(cfg, name=name)), Solver)


def test_a_toml_section_sets_its_solver(tmp_path):
    from eqprop.train.configio import config_from_dict, load_config_file

    p = tmp_path / "c.toml"
    p.write_text('[solver]\nname = "anderson"\n[solver.anderson]\nm = 6\n'
                 '[estimator.nudge.adaptive]\ncontroller = "doubling"\nrtol = 0.05\n')
    cfg = config_from_dict(load_config_file(p))
    assert build_solver(cfg.solver) == Anderson(m=6)
    nudge = build_solver(dataclasses.replace(cfg.estimator.nudge, name="adaptive"))
    assert nudge.controller == StepDoubling(rtol=0.05)


@pytest.mark.parametrize("name", ["newton", "implicit", "ptc"])
def test_nudged_phases_refuse_a_solver_that_takes_jvps_of_the_field(name):
    # the nudged field's loss gradient is not forward-mode differentiable: such a solver
    # crashed at the first training step; now it is one line naming what is allowed
    with pytest.raises(ConfigError, match=rf"estimator.nudge.name='{name}'.*allow euler, "):
        EstimatorConfig(nudge=SolverConfig(name=name))
    EstimatorConfig(nudge=SolverConfig(name="anderson"))  # and the allowed ones still build
    assert SolverConfig(name=name).name == name  # the free phase keeps them
