"""The committed config files load, validate and describe what they say."""

from __future__ import annotations

from dataclasses import replace
from pathlib import Path

from eqprop.train.configio import config_from_dict, load_config_file

ROOT = Path(__file__).resolve().parents[1]


def test_study_config_is_the_study_size():
    cfg = config_from_dict(load_config_file(ROOT / "configs" / "study.toml"))
    m = cfg.model
    assert (m.d_model, m.n_heads, m.d_ff, m.n_layers, m.seq_len) == (128, 4, 512, 1, 128)
    assert cfg.data.batch_size == 64 and cfg.data.path is None  # Shakespeare
    assert cfg.estimator.name == "asymep"
    assert cfg.solver.name == cfg.estimator.nudge.name == "anderson"
    assert cfg.solver.tol == 1e-4
    assert cfg.solver.capture and cfg.estimator.nudge.capture  # CUDA graphs (CPU: eager)


def test_abscissa_recipe_is_the_study_size_with_the_hinge_and_a_deep_anderson_history():
    base = config_from_dict(load_config_file(ROOT / "configs" / "study.toml"))
    cfg = config_from_dict(load_config_file(ROOT / "configs" / "study_abscissa.toml"))
    assert cfg.model == base.model and cfg.data == base.data
    assert cfg.optim == replace(base.optim, ema_decay=0.999)
    r = cfg.regularizer
    assert (r.name, r.weight, r.margin, r.samples) == ("abscissa", 10.0, 0.1, 16)
    assert cfg.estimator.beta == 0.2 and base.estimator.beta == 0.5
    for phase in (cfg.solver, cfg.estimator.nudge):
        assert (phase.anderson.eps, phase.anderson.m) == (0.25, 20)
    assert (cfg.solver.max_steps, cfg.estimator.nudge.max_steps) == (1000, 150)
