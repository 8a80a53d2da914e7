"""The wall guard: forced walls (a large ε makes Euler cycle), each policy's events and
actions, its checkpointed state (exact resume), and the marks on the plots."""

from __future__ import annotations

from dataclasses import replace

import pytest
import torch

import eqprop.train.plots as plots
from eqprop.cli.main import main
from eqprop.errors import ConfigError
from eqprop.regularizers import RegularizerConfig
from eqprop.solvers import Euler
from eqprop.train import Trainer, load_run, resume_config, train
from eqprop.train.checkpoint import load_checkpoint
from eqprop.train.config import GuardConfig
from eqprop.train.decisions import Decision
from eqprop.train.metrics import read_metrics
from tests.helpers import TINY, one_line_error, tiny, without_clock


def walled(text_file, out, policy, **guard):
    """A tiny run whose free relaxations cycle from the first step (ε = 2.5 > ε_crit)."""
    cfg = tiny(text_file, out)
    return replace(cfg, solver=replace(cfg.solver, euler=Euler(eps=2.5)),
                   guard=GuardConfig(policy=policy, window=2, **guard))


def events(run_dir):
    return [r for r in read_metrics(run_dir / "metrics.jsonl") if "event" in r]


def steps(run_dir):
    return [r for r in read_metrics(run_dir / "metrics.jsonl") if "event" not in r]


@pytest.mark.parametrize("kwargs, match", [
    ({"policy": "panic"}, "guard.policy='panic': allowed values are off, warn, stop, skip"),
    ({"window": 0}, "guard.window=0: must be an integer ≥ 1"),
    ({"threshold": 0.0}, r"guard.threshold=0.0: must be a number in \(0, 1\]"),
    ({"ladder": "eps,pray"}, "guard.ladder='eps,pray': a comma-separated list of eps, jacreg"),
    ({"ladder": ""}, "guard.ladder=''"),
    ({"eps_factor": 1.0}, "guard.eps_factor=1.0"),
    ({"robust_solver": "magic"}, "guard.robust_solver='magic': allowed values are euler"),
])
def test_guard_settings_are_validated(kwargs, match):
    with pytest.raises(ConfigError, match=match):
        GuardConfig(**kwargs)


def test_warn_logs_the_wall_and_goes_on(tmp_path, text_file, monkeypatch):
    marked = []
    monkeypatch.setattr(plots, "_mark", lambda ax, ev: marked.append(list(ev)))
    s = train(walled(text_file, tmp_path, "warn"))
    ev = events(s.run_dir)
    assert [(e["step"], e["event"], e["action"]) for e in ev] == [(2, "wall", "warn")]
    assert ev[0]["fail"] == 1.0 and "100% of free relaxations failed" in ev[0]["detail"]
    assert s.steps == 6 and s.stopped is None and s.skipped == s.wall_skipped == 0
    assert all(r["guard_fail"] == 1.0 for r in steps(s.run_dir))
    assert len(marked) == len(plots.PLOTS) and all(m == [(2, "wall: warn", "tab:orange")]
                                                   for m in marked)


def test_stop_ends_the_run_with_exit_code_3(tmp_path, text_file, capsys):
    out = tmp_path / "runs"
    code = main(["train", *TINY, "--schedule.steps", "6", "--data", text_file, "--run.out-dir",
                 str(out), "--run.name", "s", "--solver.euler.eps", "2.5", "--guard.policy", "stop",
                 "--guard.window", "2"])
    cap = capsys.readouterr()
    assert code == 3
    assert "stopped        wall guard at step 2: 100% of free relaxations failed" in cap.out
    assert cap.err.strip().endswith(f"continue with: eqprop train --resume {out / 's'}")
    assert [(e["step"], e["action"]) for e in events(out / "s")] == [(2, "stop")]
    assert load_checkpoint(out / "s").step == 2  # checkpointed at the stop
    assert "val_ce" in steps(out / "s")[-1]  # and validated
    # the user lowers ε and continues: the stop is not carried over
    assert main(["train", "--resume", str(out / "s"), "--solver.euler.eps", "0.4"]) == 0
    assert load_checkpoint(out / "s").step == 6


def test_skip_freezes_the_model_while_the_wall_stands(tmp_path, text_file):
    snaps = {}

    def snapshot(model, field, z_star, step):
        snaps[step] = [p.detach().clone() for p in model.parameters()]
        return {}

    s = train(walled(text_file, tmp_path, "skip"), trackers=[snapshot])
    assert [(e["step"], e["action"]) for e in events(s.run_dir)] == [(2, "skip")]
    recs = steps(s.run_dir)
    assert [r.get("skip_reason") for r in recs] == [None, None, "wall", "wall", "wall", "wall"]
    assert s.wall_skipped == 4 and s.skipped == 0
    assert all(torch.equal(a, b) for a, b in zip(snaps[2], snaps[6], strict=True))
    assert not all(torch.equal(a, b) for a, b in zip(snaps[1], snaps[2], strict=True))


def test_escalate_shrinks_eps_and_resumes_exactly(tmp_path, text_file):
    full = train(walled(text_file, tmp_path / "a", "escalate"))
    (ev,) = events(full.run_dir)
    assert ev["step"] == 2 and ev["action"] == "eps"
    assert ev["changes"] == {"solver.euler.eps": [2.5, 1.25],
                            "estimator.nudge.anderson.eps": [0.5, 0.25]}
    after = steps(full.run_dir)[2:]
    # of 16 (0 of 8 before the escalation): below the wall again
    assert sum(r["status"]["converged"] for r in after) >= 12
    assert all(r["guard_fail"] < 0.5 for r in after)
    assert load_run(full.run_dir).config.solver.euler.eps == 1.25  # config.yaml and checkpoint
    assert "eps: 1.25" in (full.run_dir / "config.yaml").read_text()

    def interrupt(model, field, z_star, step):
        if step == 5:
            raise KeyboardInterrupt
        return {}

    cfg = walled(text_file, tmp_path / "b", "escalate")
    with pytest.raises(KeyboardInterrupt):
        train(cfg, trackers=[interrupt])
    (run_b,) = (tmp_path / "b").iterdir()
    assert resume_config(run_b).solver.euler.eps == 1.25
    train(cfg, resume=run_b)  # the original settings: the guard re-applies its escalation
    assert without_clock(read_metrics(full.run_dir / "metrics.jsonl")) == \
        without_clock(read_metrics(run_b / "metrics.jsonl"))


def test_the_ladder_ends_in_a_stop(tmp_path, text_file):
    cfg = walled(text_file, tmp_path, "escalate", ladder="solver", robust_solver="euler")
    s = train(cfg)  # "switching" to plain Euler changes nothing: the wall stays
    ev = events(s.run_dir)
    assert [(e["step"], e["action"]) for e in ev] == [(2, "solver"), (4, "stop")]
    assert "escalation ladder used up" in s.stopped and s.steps == 4


@pytest.mark.parametrize("reg, expect", [
    (RegularizerConfig(), {"regularizer.name": ["none", "jacreg"],
                           "regularizer.weight": [0.01, 0.1]}),
    (RegularizerConfig(name="jacreg", weight=0.02), {"regularizer.weight": [0.02, 0.2]}),
    (RegularizerConfig(name="jacreg", weight=0.02, adaptive=True),
     {"regularizer.adapt.w_min": [1e-4, 0.2], "regularizer.weight": [0.02, 0.2]}),
])
def test_jacreg_step(tmp_path, text_file, reg, expect):
    cfg = replace(walled(text_file, tmp_path, "escalate", ladder="jacreg"), regularizer=reg)
    t = Trainer(cfg)
    changes = t.guard.escalation("jacreg", t.cfg, t.config_hooks.reg and
                                 t.config_hooks.reg.current_weight)
    t.apply(Decision(changes={k: new for k, (_, new) in changes.items()}))
    assert set(changes) == set(expect)
    for k, (old, new) in changes.items():
        assert (old, new) == (expect[k][0], pytest.approx(expect[k][1]))
    assert t.cfg.regularizer.name == "jacreg" and t.config_hooks.reg is not None
    assert t.config_hooks.reg.current_weight == pytest.approx(0.1 if reg.name == "none" else 0.2)


def test_robust_solver_step(tmp_path, text_file):
    t = Trainer(walled(text_file, tmp_path, "escalate", ladder="solver"))
    changes = t.guard.escalation("solver", t.cfg)
    t.apply(Decision(changes={k: new for k, (_, new) in changes.items()}))
    assert changes == {"solver.name": ("euler", "adaptive"),
                       "estimator.nudge.name": ("anderson", "adaptive")}
    assert type(t.solver).__name__ == "AdaptiveEuler"


def test_decisions_compose_in_order():
    a = Decision(changes={"solver.euler.eps": 1.0}, events=[{"event": "wall"}], stop="why")
    b = Decision(weight=0.5, events=[{"event": "stability_kick"}], metrics={"x": 1.0})
    d = a.then(b)
    assert (d.changes, d.weight, d.stop, d.metrics) == (a.changes, 0.5, "why", {"x": 1.0})
    assert [e["event"] for e in d.events] == ["wall", "stability_kick"]


def test_guard_flags_are_one_line_errors(capsys, tmp_path):
    assert main(["train", "--guard.threshold", "2", "--run.out-dir", str(tmp_path)]) == 2
    assert "guard.threshold=2.0: must be a number in (0, 1]" in one_line_error(capsys, "train")
