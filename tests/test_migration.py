"""Runs written before the per-solver sections (issue 17) keep loading, evaluating and
resuming.

``tests/data/flat_run_v0`` was written by the code of commit 121a442 (flat
``SolverConfig``: one ``eps`` for all solvers, ``anderson_m``, ...)::

    eqprop train --run.device cpu --run.name flat_v0 --model.d-model 8 --model.n-heads 2 \\
        --model.d-ff 16 --model.seq-len 8 --schedule.steps 3 --schedule.warmup 1 \\
        --data.batch-size 4 --eval.every 0 --eval.batches 1 --eval.batch-size 2 \\
        --eval.reference.max-steps 50 --tracking.every 0 --run.sample-tokens 5 \\
        --solver.name anderson --solver.eps 0.4 --solver.anderson-m 3 --solver.max-steps 2 \\
        --estimator.nudge.name euler --estimator.nudge.eps 0.3 --guard.policy escalate \\
        --guard.window 1 --guard.threshold 0.1 --guard.ladder eps --guard.count-contracting

The wall guard shrank both ε at step 1 (its checkpoint records the change under the
old key ``solver.eps``) and stopped the run at step 2.
"""

from __future__ import annotations

import json
import shutil
from pathlib import Path

import pytest
import yaml

from eqprop.cli.main import main
from eqprop.solvers import Anderson, Euler, build_solver
from eqprop.train import load_run, resume_config
from eqprop.train.checkpoint import load_checkpoint
from eqprop.train.configio import config_from_dict, load_config_file

RUN = Path(__file__).parent / "data" / "flat_run_v0"


@pytest.fixture
def run_dir(tmp_path):
    dst = tmp_path / "flat_v0"
    shutil.copytree(RUN, dst)
    return dst


def test_the_fixture_is_in_the_flat_format():
    flat = yaml.safe_load((RUN / "config.yaml").read_text())
    assert flat["solver"]["eps"] == 0.2 and flat["solver"]["anderson_m"] == 3
    assert "euler" not in flat["solver"] and flat["run"]["track_every"] == 50


def test_a_flat_config_builds_the_solvers_it_built_before(run_dir):
    """The reference is what the flat registry of 121a442 built from the file's values:
    ``Anderson(m=anderson_m, beta=anderson_beta, lam=anderson_lam, eps=eps,
    restart_growth=anderson_restart)`` and ``Euler(eps=eps)``."""
    flat = yaml.safe_load((run_dir / "config.yaml").read_text())
    s, n = flat["solver"], flat["estimator"]["nudge"]
    for cfg in (config_from_dict(load_config_file(run_dir / "config.yaml")),
                resume_config(run_dir), load_run(run_dir).config):
        assert build_solver(cfg.solver) == Anderson(
            m=s["anderson_m"], beta=s["anderson_beta"], lam=s["anderson_lam"], eps=s["eps"],
            restart_growth=s["anderson_restart"])
        assert build_solver(cfg.estimator.nudge) == Euler(eps=n["eps"])
        assert (cfg.solver.tol, cfg.solver.max_steps) == (s["tol"], s["max_steps"])
        assert cfg.eval.reference.euler.eps == flat["eval"]["reference"]["eps"]
        # the one ε was every solver's: a switch of solver (the guard's) keeps it
        assert cfg.solver.adaptive.eps == cfg.solver.broyden.eps == s["eps"]
        assert cfg.solver.implicit.h == cfg.solver.imex.h == s["h"]


def test_eval_accepts_the_flat_run(run_dir, capsys):
    assert main(["eval", str(run_dir), "--device", "cpu", "--json"]) == 0
    metrics = json.loads(capsys.readouterr().out)
    assert metrics["eval_nfe"] > 0


def test_resume_continues_the_flat_run(run_dir, capsys):
    assert load_checkpoint(run_dir).step == 2
    assert main(["train", "--resume", str(run_dir), "--schedule.steps", "3",
                 "--guard.policy", "warn"]) == 0
    assert load_checkpoint(run_dir).step == 3
    cfg = resume_config(run_dir)  # now saved in sections
    assert cfg.solver.anderson.eps == 0.2 and cfg.estimator.nudge.euler.eps == 0.15
    saved = yaml.safe_load((run_dir / "config.yaml").read_text())
    assert saved["solver"]["anderson"]["m"] == 3 and "eps" not in saved["solver"]
    # the guard's escalation, recorded under the old key, was re-applied
    guard = load_checkpoint(run_dir).state["extra"]["guard"]
    assert guard["changes"]["solver.eps"] == 0.2
