"""Training: config, schedule, loop, exact resume, non-finite steps, checkpoints, sampling."""

from __future__ import annotations

import json
import math
from dataclasses import replace

import pytest
import torch

from eqprop.diagnostics.tracking import StabilityTracking
from eqprop.errors import CheckpointError, ConfigError
from eqprop.models import ModelConfig
from eqprop.regularizers import RegularizerConfig
from eqprop.solvers import Euler, relax
from eqprop.train import (
    EvalConfig,
    Hook,
    OptimConfig,
    RunConfig,
    ScheduleConfig,
    TrainConfig,
    Trainer,
    config_from_dict,
    config_to_dict,
    generate,
    load_config_file,
    load_run,
    save_config,
    train,
)
from eqprop.train.checkpoint import CKPT_DIR, load_checkpoint, save_checkpoint
from eqprop.train.configio import resolve_config
from eqprop.train.metrics import read_metrics
from eqprop.train.plots import PLOTS
from eqprop.train.schedule import lr_at
from tests.helpers import TEXT, tiny, without_clock

# -- config ---------------------------------------------------------------------------------

def test_defaults_are_valid_and_use_asymep():
    cfg = TrainConfig()
    assert cfg.estimator.name == "asymep"
    assert config_from_dict(config_to_dict(cfg)) == cfg


@pytest.mark.parametrize("make, match", [
    (lambda: OptimConfig(lr=0.0), "optim.lr=0.0"),
    (lambda: OptimConfig(beta2=1.0), "optim.beta2"),
    (lambda: OptimConfig(grad_clip=-1.0), "optim.grad_clip"),
    (lambda: ScheduleConfig(steps=0), "schedule.steps=0"),
    (lambda: ScheduleConfig(min_lr_ratio=2.0), "schedule.min_lr_ratio"),
    (lambda: EvalConfig(batches=0), "eval.batches"),
    (lambda: RunConfig(device="tpu"), "run.device='tpu'.*auto, cpu, cuda"),
    (lambda: RunConfig(name="a/b"), "run.name"),
    (lambda: RunConfig(log_every=0), "run.log_every"),
])
def test_invalid_settings_name_the_value(make, match):
    with pytest.raises(ConfigError, match=match):
        make()


@pytest.mark.parametrize("suffix", [".yaml", ".json"])
def test_saved_config_loads_back(tmp_path, suffix):
    cfg = TrainConfig(model=ModelConfig(d_model=48, n_heads=3), optim=OptimConfig(lr=0.5))
    path = tmp_path / f"c{suffix}"
    save_config(cfg, path)
    assert config_from_dict(load_config_file(path)) == cfg


def test_toml_file_partial_sections_keep_training_defaults(tmp_path):
    p = tmp_path / "c.toml"
    p.write_text('[model]\nd_model = 48\nn_heads = 3\n[optim]\nlr = 1\n'
                 '[estimator]\nname = "ep"\n[estimator.nudge]\nmax_steps = 7\n')
    cfg = config_from_dict(load_config_file(p))
    assert cfg.model.d_model == 48 and cfg.model.seq_len == TrainConfig().model.seq_len
    assert cfg.optim.lr == 1.0 and isinstance(cfg.optim.lr, float)
    assert cfg.estimator.name == "ep" and cfg.estimator.nudge.max_steps == 7
    assert cfg.estimator.nudge.tol == TrainConfig().estimator.nudge.tol


@pytest.mark.parametrize("content, match", [
    ("[model]\nwidth = 3\n", r"unknown setting model.'width': allowed are vocab_size"),
    ("[optim]\nlr = 'big'\n", r"optim.lr='big': expected float"),
    ("[schedule]\nsteps = 1.5\n", r"schedule.steps=1.5: expected int"),
    ("[bogus]\nx = 1\n", r"unknown setting 'bogus'"),
    ("model = [1\n", "cannot be parsed"),
    ("[model]\nn_heads = 5\n", "not divisible"),
])
def test_bad_config_files(tmp_path, content, match):
    p = tmp_path / "c.toml"
    p.write_text(content)
    with pytest.raises(ConfigError, match=match):
        config_from_dict(load_config_file(p))


def test_config_file_errors(tmp_path):
    with pytest.raises(ConfigError, match="does not exist"):
        load_config_file(tmp_path / "none.toml")
    (tmp_path / "c.ini").write_text("x")
    with pytest.raises(ConfigError, match="unknown format"):
        load_config_file(tmp_path / "c.ini")


def test_precedence_defaults_file_command_line():
    defaults = TrainConfig()
    cli = replace(defaults, optim=replace(defaults.optim, lr=0.123))  # a flag was given
    merged = resolve_config(cli, {"optim": {"lr": 0.5, "weight_decay": 0.2},
                                  "schedule": {"steps": 77}})
    assert merged.optim.lr == 0.123  # command line beats the file
    assert merged.optim.weight_decay == 0.2 and merged.schedule.steps == 77  # file beats defaults
    assert merged.model == defaults.model


# -- schedule -------------------------------------------------------------------------------

def test_warmup_then_cosine_to_the_floor():
    o, s = OptimConfig(lr=1.0), ScheduleConfig(steps=100, warmup=10, min_lr_ratio=0.1)
    lrs = [lr_at(i, o, s) for i in range(100)]
    assert lrs[0] == pytest.approx(1 / 11)
    assert all(a < b for a, b in zip(lrs[:10], lrs[1:11], strict=True))
    assert lrs[10] == pytest.approx(1.0)
    assert all(a >= b for a, b in zip(lrs[10:-1], lrs[11:], strict=True))
    assert lr_at(100, o, s) == pytest.approx(0.1)
    assert lrs[55] == pytest.approx(0.55, abs=1e-9)  # cosine midpoint


# -- the loop -------------------------------------------------------------------------------

def test_train_writes_the_run(tmp_path, text_file):
    summary = train(tiny(text_file, tmp_path / "runs", eval_every=3))
    d = summary.run_dir
    assert d.parent == tmp_path / "runs"
    for name in ("config.yaml", "metrics.jsonl", "samples.txt", "summary.json"):
        assert (d / name).is_file(), name
    for name in PLOTS:
        assert (d / "plots" / name).stat().st_size > 1000
    records = read_metrics(d / "metrics.jsonl")
    assert [r["step"] for r in records] == [1, 2, 3, 4, 5, 6]
    r = records[2]
    for key in ("train_ce", "res_max", "res_mean", "nfe", "status", "status_frac", "lr",
                "grad_norm", "time", "val_ce", "val_ce_ref", "val_status", "ref_status"):
        assert key in r, key
    assert set(r["nfe"]) == {"free", "nudged+", "nudged-", "residual"}
    assert sum(r["status"].values()) == 4 and math.isclose(sum(r["status_frac"].values()), 1)
    assert "val_ce" not in records[1]
    assert summary.steps == 6 and summary.skipped == 0
    assert summary.val_ce == records[-1]["val_ce"]
    assert summary.unigram_entropy > 2
    assert config_from_dict(load_config_file(d / "config.yaml")).model.vocab_size == len(
        set(TEXT))
    assert json.loads((d / "summary.json").read_text())["steps"] == 6


def test_resume_continues_exactly(tmp_path, text_file):
    full = train(tiny(text_file, tmp_path / "a", eval_every=3))

    def interrupt(model, field, z_star, step):
        if step == 5:
            raise KeyboardInterrupt
        return {}

    cfg = tiny(text_file, tmp_path / "b", eval_every=3)
    with pytest.raises(KeyboardInterrupt):
        train(cfg, trackers=[interrupt])
    (run_b,) = (tmp_path / "b").iterdir()
    assert load_checkpoint(run_b).step == 3
    resumed = train(cfg, resume=run_b)
    a = read_metrics(full.run_dir / "metrics.jsonl")
    b = read_metrics(run_b / "metrics.jsonl")
    assert without_clock(a) == without_clock(b)
    wa, wb = load_checkpoint(full.run_dir).weights, load_checkpoint(run_b).weights
    assert all(torch.equal(wa[k], wb[k]) for k in wa)
    assert resumed.val_ce == full.val_ce


def test_resume_of_a_finished_run_does_nothing_more(tmp_path, text_file):
    cfg = tiny(text_file, tmp_path)
    first = train(cfg)
    again = train(cfg, resume=first.run_dir)
    assert again.steps == 6 and again.val_ce == pytest.approx(first.val_ce)
    assert len(read_metrics(first.run_dir / "metrics.jsonl")) == 6


def test_nonfinite_step_is_skipped_and_logged(tmp_path, text_file):
    calls: list[int] = []

    def nan_at_2(field, z_star, sol):
        calls.append(1)
        scale = float("nan") if len(calls) == 2 else 0.0
        return scale * sum(p.sum() for p in field.model.parameters())

    summary = train(tiny(text_file, tmp_path), penalty=nan_at_2)
    records = read_metrics(summary.run_dir / "metrics.jsonl")
    events = [r for r in records if r.get("event") == "nonfinite"]
    assert [e["step"] for e in events] == [2]
    steps = [r for r in records if "event" not in r]
    assert steps[1]["skipped"] is True and "skipped" not in steps[0]
    assert summary.skipped == 1 and summary.steps == 6
    weights = load_checkpoint(summary.run_dir).weights
    assert all(torch.isfinite(w).all() for w in weights.values())


def test_hooks_penalty_and_trackers(tmp_path, text_file):
    seen = []

    def tracker(model, field, z_star, step):  # called every step: it decides when it is due
        if step % 2:
            return {}
        seen.append((step, tuple(z_star.shape)))
        return {"my_stat": float(step) * 2}

    penalty = lambda field, z_star, sol: 0.0 * field.loss(z_star).mean()  # noqa: E731
    summary = train(tiny(text_file, tmp_path), penalty=penalty,
                    trackers=[tracker])
    records = read_metrics(summary.run_dir / "metrics.jsonl")
    assert [s for s, _ in seen] == [2, 4, 6] and seen[0][1] == (4, 1, 8, 8)
    assert records[1]["my_stat"] == 4.0 and "my_stat" not in records[0]
    assert all(r["penalty"] == 0.0 for r in records)


def test_hook_objects_join_the_one_hook_list(tmp_path, text_file):
    class Probe(Hook):
        def penalty(self, field, z_star, sol):
            return 0.0 * field.loss(z_star).mean()

        def track(self, model, field, z_star, step):
            return {"probe_step": float(step)}

    cfg = tiny(text_file, tmp_path)
    cfg = replace(cfg, schedule=replace(cfg.schedule, steps=2))
    trainer = Trainer(cfg, penalty=lambda field, z_star, sol: None, hooks=[Probe()])
    assert [type(h).__name__ for h in trainer.hooks] == ["PenaltyHook", "Probe", "ConfigHooks"]
    trainer.run()
    records = read_metrics(trainer.run_dir / "metrics.jsonl")
    assert [r["probe_step"] for r in records] == [1.0, 2.0]
    assert all(r["penalty"] == 0.0 for r in records)


@pytest.mark.parametrize("name", ["asymep", "ep", "ift", "bptt"])
def test_every_estimator_trains_the_same_model(tmp_path, text_file, name):
    cfg = tiny(text_file, tmp_path)
    cfg = replace(cfg, estimator=replace(cfg.estimator, name=name, bptt_steps=5),
                  schedule=replace(cfg.schedule, steps=2), eval=replace(cfg.eval, every=0))
    summary = train(cfg)
    records = read_metrics(summary.run_dir / "metrics.jsonl")
    assert all(math.isfinite(r["train_ce"]) and r["grad_norm"] > 0 for r in records)
    assert summary.skipped == 0


def test_training_lowers_the_loss(tmp_path, text_file):
    cfg = tiny(text_file, tmp_path)
    cfg = replace(cfg, schedule=ScheduleConfig(steps=40, warmup=3),
                  optim=OptimConfig(lr=3e-2), model=replace(cfg.model, d_model=16, d_ff=32),
                  data=replace(cfg.data, batch_size=8), eval=replace(cfg.eval, every=0,
                                                                      batches=2, batch_size=8))
    summary = train(cfg)
    first = read_metrics(summary.run_dir / "metrics.jsonl")[0]["train_ce"]
    assert first > 3.0
    assert summary.val_ce < summary.unigram_entropy - 0.5
    assert summary.train_ce < first - 1.0


def test_new_run_never_overwrites(tmp_path, text_file):
    cfg = tiny(text_file, tmp_path, name="x")
    cfg = replace(cfg, schedule=replace(cfg.schedule, steps=1))
    train(cfg)
    with pytest.raises(ConfigError, match="exists already.*--resume"):
        train(cfg)
    unnamed = replace(cfg, run=replace(cfg.run, name=None))
    a, b = train(unnamed).run_dir, train(unnamed).run_dir
    assert a != b and a.parent == b.parent == tmp_path


# -- checkpoints ----------------------------------------------------------------------------

@pytest.fixture
def trained(tmp_path, text_file):
    return train(tiny(text_file, tmp_path)).run_dir


def test_load_run(trained):
    run = load_run(trained)
    assert not run.model.training and run.step == 6 and run.run_dir == trained
    assert run.config.model.vocab_size == len(run.vocab) == len(set(TEXT))
    assert load_run(trained / CKPT_DIR).step == 6
    ckpt = sorted(p.name for p in (trained / CKPT_DIR).iterdir())
    assert ckpt == ["latest.json", "step_0000006.pt", "step_0000006.safetensors"]


def test_checkpoint_refuses_nonfinite_weights(trained):
    run = load_run(trained)
    with torch.no_grad():
        next(run.model.parameters())[0] = float("nan")
    opt = torch.optim.AdamW(run.model.parameters())
    with pytest.raises(CheckpointError, match="non-finite"):
        save_checkpoint(trained, model=run.model, optimizer=opt, step=7, vocab=run.vocab,
                        config=run.config, rng={})
    assert load_checkpoint(trained).step == 6  # the old one is untouched


@pytest.mark.parametrize("target, damage, match", [
    ("step_0000006.pt", lambda b: b[: len(b) // 2], "truncated, corrupted or unsafe"),
    ("step_0000006.safetensors", lambda b: b[:100], "missing or corrupted"),
    ("latest.json", lambda b: b"{", "corrupted"),
])
def test_damaged_checkpoints_are_clear_errors(trained, target, damage, match):
    p = trained / CKPT_DIR / target
    p.write_bytes(damage(p.read_bytes()))
    with pytest.raises(CheckpointError, match=match):
        load_run(trained)


def test_missing_run_is_a_checkpoint_error(tmp_path):
    with pytest.raises(CheckpointError, match="does not exist"):
        load_run(tmp_path / "nope")
    with pytest.raises(CheckpointError, match="holds no checkpoint"):
        load_run(tmp_path)


# -- sampling -------------------------------------------------------------------------------

def test_warm_start_keeps_the_prefix_equilibrium(trained):
    run = load_run(trained)
    m, T, tol = run.model, run.config.model.seq_len, 1e-6
    ids = run.vocab.encode("To be, o")[None]  # (1, 8) = seq_len
    solver = Euler(eps=0.5)
    with torch.no_grad():
        f_prefix = m.field(ids[:, :-1])
        z_prefix = relax(f_prefix, f_prefix.initial_state(), solver, tol=tol, max_steps=500).z
        f = m.field(ids)
        cold = relax(f, f.initial_state(), solver, tol=tol, max_steps=500)
        z0 = torch.cat([z_prefix, f.initial_state()[:, :, -1:]], dim=2)
        warm = relax(f, z0, solver, tol=tol, max_steps=500)
    assert ids.shape[1] == T
    assert torch.allclose(warm.z[:, :, :-1], z_prefix, atol=1e-5)  # causal: prefix stays put
    assert torch.allclose(warm.z, cold.z, atol=1e-4)
    assert int(warm.nfe) <= int(cold.nfe)


def test_generate_beyond_the_context_and_greedy_is_deterministic(trained):
    run = load_run(trained)
    kw = dict(solver=Euler(eps=0.5), tol=1e-4, max_steps=100)
    g = generate(run.model, run.vocab, "To", 20, temperature=0.0, **kw)  # 22 > seq_len 8
    assert len(g.text) == 20 and set(g.text) <= set(run.vocab.chars)
    assert len(g.nfe) == 20 and sum(g.status.values()) == 20
    assert generate(run.model, run.vocab, "To", 20, temperature=0.0, **kw).text == g.text
    cold = generate(run.model, run.vocab, "To", 20, temperature=0.0, warm_start=False, **kw)
    assert cold.mean_nfe > g.mean_nfe


def test_config_regularizer_and_tracking_are_logged_and_resume_exactly(tmp_path, text_file):
    """jacreg with an adaptive weight and ε_crit tracking, built from the config: their
    values reach metrics.jsonl and the stability plot, and a resumed run equals an
    uninterrupted one (the adaptive weight and ε_crit margin are checkpointed)."""
    def cfg_in(out):
        c = tiny(text_file, out, eval_every=3)
        return replace(c, regularizer=RegularizerConfig(name="jacreg", weight=0.1, adaptive=True),
                       tracking=StabilityTracking(every=2, samples=1, method="dense"))

    full = train(cfg_in(tmp_path / "a"))
    recs = [r for r in read_metrics(full.run_dir / "metrics.jsonl") if "event" not in r]
    assert all("reg_weight" in r and "reg_value" in r and r["penalty"] > 0 for r in recs)
    tracked = [r for r in recs if "eps_crit_min" in r]
    assert [r["step"] for r in tracked] == [2, 4, 6]
    assert all(r["eps_crit_min"] > 0 and r["crit_a"] < 0 for r in tracked)
    assert len({r["reg_weight"] for r in recs}) > 1  # the adaptive weight moved
    assert (full.run_dir / "plots" / "stability.png").stat().st_size > 0

    def interrupt(model, field, z_star, step):
        if step == 5:
            raise KeyboardInterrupt
        return {}

    cfg = cfg_in(tmp_path / "b")
    with pytest.raises(KeyboardInterrupt):
        train(cfg, trackers=[interrupt])
    (run_b,) = (tmp_path / "b").iterdir()
    train(cfg, resume=run_b)
    a = read_metrics(full.run_dir / "metrics.jsonl")
    b = read_metrics(run_b / "metrics.jsonl")
    assert without_clock(a) == without_clock(b)

