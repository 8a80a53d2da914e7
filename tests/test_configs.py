"""The committed config files load, validate and describe what they say."""

from __future__ import annotations

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


def test_abscissa_recipe_is_the_study_size_with_the_hinge_and_a_small_anderson_eps():
    base = config_from_dict(load_config_file(ROOT / "configs" / "study.toml"))
    cfg = config_from_dict(load_config_file(ROOT / "configs" / "study_abscissa.toml"))
    assert cfg.model == base.model and cfg.data == base.data and cfg.optim == base.optim
    r = cfg.regularizer
    assert (r.name, r.weight, r.margin, r.samples) == ("abscissa", 100.0, 0.5, 16)
    assert cfg.solver.anderson.eps == cfg.estimator.nudge.anderson.eps == 0.1
    assert (cfg.solver.max_steps, cfg.estimator.nudge.max_steps) == (300, 150)
