"""Stability by construction (damping, normalised q/k), by control (the controller), and
the parameters' moving average."""

from __future__ import annotations

import math
from dataclasses import replace

import pytest
import torch
import yaml

from eqprop.diagnostics.spectrum import dense_jacobian, dense_spectrum
from eqprop.errors import ConfigError
from eqprop.gradients import IFT, AsymEP, HoloEP, estimate_grads, gradient_cosine
from eqprop.models import ModelConfig
from eqprop.regularizers import RegularizerConfig
from eqprop.solvers import Anderson, Euler
from eqprop.train import TrainConfig, train
from eqprop.train.checkpoint import load_checkpoint
from eqprop.train.configio import config_from_dict
from eqprop.train.ema import EMA
from eqprop.train.metrics import read_metrics
from eqprop.train.stability import StabilityConfig, StabilityController
from tests.helpers import LinearField, rotating_field, tiny, tiny_problem, without_clock

pytestmark = pytest.mark.usefixtures("one_thread")


# -- stability by construction ----------------------------------------------------------

def test_damping_of_a_one_layer_prenorm_block_rescales_time_only():
    """n reads LN(z), which is blind to the scale of z: with the leak 1 + γ the fixed point
    of one layer is z*/(1 + γ) and the Jacobian (1 + γ) J. The spectrum scales, it does not
    shift: the Hopf point stays where it is; only time (and Euler's ε_crit) is rescaled.
    (In a stack the drive of layer l > 1 is z_(l-1), not x, and the identity breaks.)"""
    gamma = 1.5
    _, f0, z0 = tiny_problem("asym", B=2, n_layers=1)
    _, f1, z1 = tiny_problem("asym", B=2, n_layers=1, damping=gamma)
    # exact up to the layer norm's ε (1e-5 against a variance of ~1e-2 here)
    torch.testing.assert_close(z1, z0 / (1 + gamma), atol=1e-4, rtol=1e-2)
    J0, J1 = dense_jacobian(f0, z0), dense_jacobian(f1, z1)
    torch.testing.assert_close(J1, (1 + gamma) * J0, atol=1e-3, rtol=1e-2)
    torch.testing.assert_close(f1.loss(z1), f0.loss(z0), atol=1e-4, rtol=1e-4)
    right0, right1 = (torch.linalg.eigvals(J).real.amax(-1) for J in (J0, J1))
    torch.testing.assert_close(right1, (1 + gamma) * right0, atol=1e-3, rtol=1e-2)
    assert ((right1 - (right0 - gamma)).abs() > 0.3).all()  # not the shift J - γI


def test_damping_shifts_the_spectrum_of_a_field_without_normalisation():
    """On a field whose n does not renormalise z, the leak is the documented shift J - γI."""
    F = rotating_field(-0.1, 2.0, extra=(-1.0,))
    z = F.z_fix.clone()
    gamma = 0.7
    A = F.A - gamma * torch.eye(F.A.shape[0], dtype=F.A.dtype)
    mu0 = torch.linalg.eigvals(F.A)
    mu1 = dense_spectrum(LinearField(A, F.z_fix), z)[0]
    assert torch.allclose(torch.sort(mu1.real).values, torch.sort(mu0.real).values - gamma,
                          atol=1e-10)


def test_a_soft_norm_lets_the_leak_shift_the_spectrum():
    """With a large norm ε the block is no longer blind to the scale of z, and the leak
    moves the rightmost eigenvalue left (where with ε 1e-5 it only scaled it)."""
    right = {}
    for gamma in (0.0, 1.0):
        _, f, z = tiny_problem("asym", B=2, n_layers=1, norm_eps=10.0, damping=gamma)
        right[gamma] = torch.linalg.eigvals(dense_jacobian(f, z)).real.amax(-1)
    shift, rescale = right[0.0] - 1.0, 2.0 * right[0.0]  # J - γI against (1 + γ) J
    assert ((right[1.0] - shift).abs() < 0.01).all()
    assert ((right[1.0] - rescale).abs() > 0.05).all()


@pytest.mark.parametrize("kw", [dict(qk_norm=True), dict(damping=1.0, qk_norm=True),
                                dict(qk_norm=True, qk_scale=2.0),
                                dict(damping=1.0, norm_eps=1.0)])
def test_asymep_stays_exact_with_the_stabilisers(kw):
    model, field, z = tiny_problem("asym", B=2, **kw)
    ref, _ = estimate_grads(model, field, z, IFT(tol=1e-12, max_iter=2000))
    est, _ = estimate_grads(model, field, z, AsymEP(beta=1e-4, solver=Anderson(eps=0.5),
                                                    tol=1e-8, max_steps=2000))
    cos, _ = gradient_cosine(est, ref)
    assert cos > 0.9999


def test_holoep_runs_through_normalised_queries_and_keys():
    model, field, z = tiny_problem("asym", B=2, qk_norm=True)
    ref, _ = estimate_grads(model, field, z, IFT(tol=1e-12, max_iter=2000))
    est, _ = estimate_grads(model, field, z, HoloEP(r=0.05, N=4, solver=Anderson(eps=0.5),
                                                    tol=1e-9, max_steps=2000))
    cos, _ = gradient_cosine(est, ref)
    assert cos > 0.999


def test_qk_norm_bounds_the_logits():
    from eqprop.models.attention import unit
    q = 100 * torch.randn(2, 3, 5, 4, dtype=torch.float64)
    k = 100 * torch.randn(2, 3, 5, 4, dtype=torch.float64)
    assert float((unit(q) @ unit(k).transpose(-1, -2)).abs().max()) <= 1 + 1e-9


@pytest.mark.parametrize("kw, match", [
    (dict(damping=-0.1), "model.damping=-0.1"),
    (dict(qk_scale=2.0), "qk_norm is off"),
    (dict(qk_norm=True, qk_scale=0.0), "model.qk_scale=0.0"),
    (dict(norm_eps=0.0), "model.norm_eps=0.0"),
])
def test_model_options_are_validated(kw, match):
    with pytest.raises(ConfigError, match=match):
        ModelConfig(**kw)


# -- the controller -----------------------------------------------------------------------

def _controller(**kw) -> StabilityController:
    return StabilityController(StabilityConfig(enabled=True, **kw))


def test_weight_follows_the_nfe_towards_its_target():
    F = rotating_field(-1.0, 0.5)
    c = _controller(target_nfe=20.0, gain=0.5, w_init=0.1, every=0)
    up = c.decide(1, 40.0, F, F.z_fix).weight
    assert up == pytest.approx(0.1 * math.exp(0.5 * math.log(2.0)))
    down = c.decide(2, 10.0, F, F.z_fix).weight
    assert down == pytest.approx(0.1)  # ×√2 then ×1/√2
    for _ in range(200):
        w = c.decide(3, 1.0, F, F.z_fix).weight
    assert w == c.cfg.w_min


def test_kick_when_the_leading_mode_crosses_the_margin():
    stable, unstable = rotating_field(-0.5, 2.0), rotating_field(0.1, 2.0)
    c = _controller(target_nfe=20.0, gain=0.0, w_init=0.1, every=1, samples=3, krylov=4,
                    margin=0.05, kick=3.0)
    d = c.decide(1, 20.0, stable, stable.z_fix)
    assert d.weight == pytest.approx(0.1) and not d.events
    assert d.metrics["stab_re"] == pytest.approx(-0.5, abs=1e-6)
    d = c.decide(2, 20.0, unstable, unstable.z_fix)
    assert d.weight == pytest.approx(0.3)
    (event,) = d.events
    assert event["event"] == "stability_kick" and event["re_mu"] == pytest.approx(0.1, abs=1e-6)
    state = c.state_dict()
    again = _controller(target_nfe=20.0, gain=0.0, w_init=0.1, every=1, samples=3, krylov=4)
    again.load_state_dict(state)
    assert again.weight == c.weight and again.last_re == c.last_re


def test_eps_is_cut_at_the_simulators_wall_and_only_there():
    """Failing relaxations with a stable measured mode: the phases' ε shrinks (not below
    eps_min); with an unstable mode the weight is kicked and ε stays; with converging
    relaxations nothing changes."""
    stable, unstable = rotating_field(-0.5, 2.0), rotating_field(0.1, 2.0)
    eps = {"solver.euler.eps": 0.8, "estimator.nudge.anderson.eps": 0.5}
    kw = dict(target_nfe=20.0, gain=0.0, w_init=0.1, every=1, samples=3, krylov=4,
              margin=0.05, eps_factor=0.5, eps_min=0.3, converged_min=0.9)
    d = _controller(**kw).decide(1, 20.0, stable, stable.z_fix, converged=0.2, eps=eps)
    assert d.changes == {"solver.euler.eps": 0.4, "estimator.nudge.anderson.eps": 0.3}
    assert [e["event"] for e in d.events] == ["stability_eps"] and d.weight == 0.1
    d = _controller(**kw).decide(1, 20.0, unstable, unstable.z_fix, converged=0.2, eps=eps)
    assert not d.changes and [e["event"] for e in d.events] == ["stability_kick"]
    d = _controller(**kw).decide(1, 20.0, stable, stable.z_fix, converged=0.95, eps=eps)
    assert not d.changes and not d.events
    floor = {"solver.euler.eps": 0.3}
    d = _controller(**kw).decide(1, 20.0, stable, stable.z_fix, converged=0.2, eps=floor)
    assert not d.changes  # already at eps_min


def test_controller_walks_a_too_large_euler_eps_down_until_relaxations_converge(
        tmp_path, text_file):
    """Euler at ε 2.5 on a tiny model whose flow is stable (Re μ ≈ -0.6): every free
    relaxation fails; the controller halves ε in both phases at each measured step until
    they converge, logs each cut as an event, and the config on disk says the new ε."""
    cfg = tiny(text_file, tmp_path)
    cfg = replace(cfg, schedule=replace(cfg.schedule, steps=8),
                  solver=replace(cfg.solver, name="euler", euler=Euler(eps=2.5)),
                  regularizer=RegularizerConfig(name="jacreg", weight=0.01, samples=2),
                  stability=StabilityConfig(enabled=True, every=1, samples=2, krylov=8,
                                            gain=0.0, eps_factor=0.5, eps_min=0.1))
    summary = train(cfg)
    recs = read_metrics(summary.run_dir / "metrics.jsonl")
    cuts = [r for r in recs if r.get("event") == "stability_eps"]
    assert cuts and all(r["re_mu"] <= -0.05 for r in cuts)
    steps = [r for r in recs if "event" not in r]
    assert steps[0]["status_frac"]["converged"] < 0.9  # walled at ε 2.5
    assert steps[-1]["status_frac"]["converged"] == 1.0  # converging at the cut ε
    saved = config_from_dict(yaml.safe_load((summary.run_dir / "config.yaml").read_text()))
    assert saved.solver.euler.eps <= 2.5 * 0.5 ** len(cuts) + 1e-12 < 2.5


@pytest.mark.parametrize("kw, match", [
    (dict(w_init=20.0), "w_min ≤ w_init ≤ w_max"),
    (dict(kick=0.5), "stability.kick=0.5"),
    (dict(krylov=1), "stability.krylov=1"),
    (dict(eps_factor=0.0), "stability.eps_factor=0.0"),
    (dict(converged_min=1.5), "stability.converged_min=1.5"),
])
def test_stability_config_is_validated(kw, match):
    with pytest.raises(ConfigError, match=match):
        StabilityConfig(**kw)


def test_controller_needs_a_fixed_weight_penalty():
    with pytest.raises(ConfigError, match="stability.enabled=true"):
        TrainConfig(stability=StabilityConfig(enabled=True))
    with pytest.raises(ConfigError, match="stability.enabled=true"):
        TrainConfig(stability=StabilityConfig(enabled=True),
                    regularizer=RegularizerConfig(name="jacreg", adaptive=True))


# -- the moving average ------------------------------------------------------------------

def test_ema_update_and_swap():
    lin = torch.nn.Linear(3, 2).double()
    ema = EMA(lin, decay=0.9)
    start = [p.detach().clone() for p in lin.parameters()]
    with torch.no_grad():
        for p in lin.parameters():
            p.add_(1.0)
    ema.update()  # the first update's warmed-up decay: min(0.9, 2/11)
    d1 = 2 / 11
    for s, p, t in zip(ema.shadow, lin.parameters(), start, strict=True):
        torch.testing.assert_close(s, d1 * t + (1 - d1) * p.detach())
    current = [p.detach().clone() for p in lin.parameters()]
    with ema.swapped():
        assert all(torch.equal(p, s) for p, s in zip(lin.parameters(), ema.shadow, strict=True))
    assert all(torch.equal(p, c) for p, c in zip(lin.parameters(), current, strict=True))
    with pytest.raises(ValueError, match="decay=1"):
        EMA(lin, decay=1)


def test_ema_warmup_reaches_the_full_decay_and_resumes():
    lin = torch.nn.Linear(2, 1).double()
    ema = EMA(lin, decay=0.99)
    ref = [p.detach().clone() for p in lin.parameters()]  # an independent recursion
    for n in range(1, 2001):
        with torch.no_grad():
            for p in lin.parameters():
                p.add_(0.01)
        d = min(0.99, (1 + n) / (10 + n))
        ref = [d * r + (1 - d) * p.detach() for r, p in zip(ref, lin.parameters(), strict=True)]
        ema.update()
    assert ema.current_decay() == 0.99
    for s, r in zip(ema.shadow, ref, strict=True):
        torch.testing.assert_close(s, r)
    # at the full decay the average lags a ramp of slope 0.01 by 0.01·d/(1-d) = 0.99
    lag = [float((p.detach() - s).max()) for p, s in zip(lin.parameters(), ema.shadow,
                                                          strict=True)]
    assert lag == pytest.approx([0.99, 0.99], rel=1e-3)
    again = EMA(lin, decay=0.99)
    again.load_state_dict(ema.state_dict())
    assert again.updates == 2000 and again.current_decay() == 0.99
    old = EMA(lin, decay=0.99)  # a checkpoint from before the warm-up: the full decay
    old.load_state_dict({"shadow": ema.state_dict()["shadow"]})
    assert old.current_decay() == 0.99


def test_the_backprop_baseline_keeps_its_moving_average(tmp_path, text_file):
    """The feed-forward baseline's update moves the average too (it stayed at the initial
    weights, so its validation read the untrained CE): against the recursion by hand."""
    from eqprop.gradients.registry import EstimatorConfig
    from eqprop.train import Trainer

    cfg = tiny(text_file, tmp_path)
    cfg = replace(cfg, model=replace(cfg.model, block="standard"),
                  estimator=EstimatorConfig(name="backprop"),
                  optim=replace(cfg.optim, ema_decay=0.5))
    trainer = Trainer(cfg)
    ref = [p.detach().clone() for p in trainer.model.parameters()]
    for n in range(1, 5):
        tokens, targets = trainer.corpus.get_batch("train", 4, 8, trainer.data_gen)
        assert not trainer.train_step(tokens, targets).get("skipped")
        d = min(0.5, (1 + n) / (10 + n))
        ref = [d * r + (1 - d) * p.detach() for r, p in zip(ref, trainer.model.parameters(),
                                                             strict=True)]
    for s, r, p in zip(trainer.ema.shadow, ref, trainer.model.parameters(), strict=True):
        torch.testing.assert_close(s, r)
        assert not torch.equal(s, p.detach())


def _recipe(text_file, out_dir):
    cfg = tiny(text_file, out_dir, eval_every=3)
    return replace(cfg, optim=replace(cfg.optim, ema_decay=0.5),
                   regularizer=RegularizerConfig(name="jacreg", weight=0.1, samples=2),
                   stability=StabilityConfig(enabled=True, every=2, samples=2, krylov=4,
                                             target_nfe=5.0))


def test_recipe_resumes_exactly_and_checkpoints_its_state(tmp_path, text_file):
    full = train(_recipe(text_file, tmp_path / "a"))

    def interrupt(model, field, z_star, step):
        if step == 5:
            raise KeyboardInterrupt
        return {}

    cfg = _recipe(text_file, tmp_path / "b")
    with pytest.raises(KeyboardInterrupt):
        train(cfg, trackers=[interrupt])
    (run_b,) = (tmp_path / "b").iterdir()
    extra = load_checkpoint(run_b).state["extra"]
    assert len(extra["ema"]["shadow"]) > 0 and "weight" in extra["stability"]
    train(cfg, resume=run_b)
    a = read_metrics(full.run_dir / "metrics.jsonl")
    b = read_metrics(run_b / "metrics.jsonl")
    assert without_clock(a) == without_clock(b)
    assert any("stab_re" in r for r in a)
    # validation of the average, and of the raw parameters beside it
    val = [r for r in a if "val_ce_ref" in r]
    assert val and all(math.isfinite(r["val_raw_ce_ref"]) for r in val)
    assert any(r["val_raw_ce_ref"] != r["val_ce_ref"] for r in val)
    # the trainer applies each decision at the next step
    steps = [r for r in a if "event" not in r]
    assert [r["reg_weight"] for r in steps[1:]] == [r["stab_weight_next"] for r in steps[:-1]]


def test_a_run_with_a_moving_average_loads_and_evaluates_with_it(tmp_path, text_file, capsys):
    """load_run and ``eqprop eval`` use the average that the run's own validation used
    (its CE reproduced), ``--raw`` the raw parameters (its raw CE reproduced)."""
    import json

    from eqprop.cli.main import main
    from eqprop.train import load_run

    cfg = tiny(text_file, tmp_path, eval_every=6)
    summary = train(replace(cfg, optim=replace(cfg.optim, ema_decay=0.5)))
    ck = load_checkpoint(summary.run_dir)
    shadow, raw = ck.state["extra"]["ema"]["shadow"], ck.weights
    avg = load_run(summary.run_dir)
    assert avg.averaged
    for p, s in zip(avg.model.parameters(), shadow, strict=True):
        assert torch.equal(p.detach(), s)
    plain = load_run(summary.run_dir, average=False)
    assert not plain.averaged
    assert all(torch.equal(t, raw[k]) for k, t in plain.model.state_dict().items())
    assert any(not torch.equal(p.detach(), s)
               for p, s in zip(plain.model.parameters(), shadow, strict=True))
    last = [r for r in read_metrics(summary.run_dir / "metrics.jsonl") if "val_ce" in r][-1]
    args = ["eval", str(summary.run_dir), "--json", "--seed", str(cfg.run.seed)]
    assert main(args) == 0
    got = json.loads(capsys.readouterr().out)
    assert got["averaged"] and got["eval_ce"] == pytest.approx(last["val_ce"], abs=1e-6)
    assert main([*args, "--raw"]) == 0
    got = json.loads(capsys.readouterr().out)
    assert not got["averaged"] and got["eval_ce"] == pytest.approx(last["val_raw_ce"], abs=1e-6)
    assert main(["eval", str(summary.run_dir)]) == 0
    assert "the parameters' moving average (decay 0.5" in capsys.readouterr().out
