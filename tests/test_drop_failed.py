"""Samples not to learn from (a failed nudged relaxation, an unstable free equilibrium)
leave the learning signal; the update keeps the others' (``estimator.drop_failed``)."""

from __future__ import annotations

from dataclasses import replace

import pytest
import torch
from torch import Tensor

from eqprop import IFT, AsymEP, Euler
from eqprop.errors import ConfigError
from eqprop.fields import Field
from eqprop.gradients.base import drop_samples
from eqprop.gradients.registry import EstimatorConfig
from eqprop.solvers import Status
from eqprop.train import Trainer
from tests.helpers import TEXT, rotation_block, tiny


class PerSampleLinear(Field):
    """``F_b(z) = A_b (z_b - z_fix_b) + d_b`` with its own ``A_b`` per sample, a drive
    ``d = 0`` that is the parameter (``∂S/∂d_b = -s_b / B`` for a surrogate ``S``), and the
    loss ``L_b = ½‖z_b - y_b‖²``: the adjoint ``A_b⁻ᵀ (z*_b - y_b)`` is known per sample."""

    def __init__(self, A: Tensor, z_fix: Tensor, y: Tensor):
        self.A, self.z_fix, self.y = A, z_fix, y  # (B, n, n), (B, n), (B, n)
        self.d = torch.zeros_like(z_fix, requires_grad=True)  # (B, n)

    def __call__(self, z: Tensor) -> Tensor:
        return torch.einsum("bij,bj->bi", self.A, z - self.z_fix) + self.d

    def loss(self, z: Tensor) -> Tensor:
        return 0.5 * ((z - self.y) ** 2).sum(-1)


def field_with_one_stiff_sample() -> PerSampleLinear:
    """Three samples with a rotating mode -0.5 ± 2i and a real one: -1 for the outer two,
    -21 (stiff: Euler ε 0.1 diverges on it, |1 - 2.1| > 1) for the middle one."""
    g = torch.Generator().manual_seed(0)
    n = 3
    A = torch.zeros(3, n, n, dtype=torch.float64)
    for b, stiff in enumerate((-1.0, -21.0, -1.0)):
        D = torch.zeros(n, n, dtype=torch.float64)
        D[:2, :2] = rotation_block(-0.5, 2.0)
        D[2, 2] = stiff
        Q, _ = torch.linalg.qr(torch.randn(n, n, generator=g, dtype=torch.float64))
        A[b] = Q @ D @ Q.T
    return PerSampleLinear(A, torch.randn(3, n, generator=g, dtype=torch.float64),
                           torch.randn(3, n, generator=g, dtype=torch.float64))


def test_the_failed_sample_is_dropped_and_the_others_keep_the_exact_adjoint():
    field = field_with_one_stiff_sample()
    z_star = field.z_fix.clone()  # the exact equilibrium: only the nudged phases relax
    exact = torch.linalg.solve(field.A.transpose(1, 2), (z_star - field.y).unsqueeze(-1))[..., 0]
    torch.testing.assert_close(IFT(tol=1e-13).estimate(field, z_star).signal, exact)
    kept = AsymEP(beta=1e-3, solver=Euler(0.1), tol=1e-8, max_steps=1500).estimate(field, z_star)
    for sol in kept.solutions.values():
        assert sol.status.tolist() == [Status.CONVERGED, Status.DIVERGED, Status.CONVERGED]
    failed = torch.stack([v.failed for v in kept.solutions.values()]).any(0)
    assert failed.tolist() == [False, True, False]
    dropped = drop_samples(kept, field, z_star, failed)
    # without the drop the diverged end point is the middle sample's "signal"
    assert (kept.signal[1] - exact[1]).abs().max() > 1e3
    assert torch.equal(dropped.signal[1], torch.zeros(3, dtype=torch.float64))
    torch.testing.assert_close(dropped.signal[[0, 2]], exact[[0, 2]], rtol=1e-6, atol=1e-6)
    # the surrogate is rebuilt from the new signal: its gradient in the drive is -s / B
    (g,) = torch.autograd.grad(dropped.surrogate, field.d)
    torch.testing.assert_close(g, -dropped.signal / 3)
    (g_kept,) = torch.autograd.grad(kept.surrogate, field.d)
    assert (g_kept[1] - g[1]).abs().max() > 1e2


def test_the_setting_is_validated():
    with pytest.raises(ConfigError,
                       match=r"estimator.drop_failed=1.0: must be a number in \[0.0, 1.0\)"):
        EstimatorConfig(drop_failed=1.0)
    with pytest.raises(ConfigError, match="drop_failed=0.1: bptt has no learning signal"):
        EstimatorConfig(name="bptt", drop_failed=0.1)


def test_a_step_reports_how_many_samples_it_dropped(tmp_path):
    p = tmp_path / "text.txt"
    p.write_text(TEXT, encoding="utf-8")
    cfg = tiny(str(p), tmp_path / "runs")
    cfg = replace(cfg, estimator=replace(cfg.estimator, drop_failed=0.25))
    trainer = Trainer(cfg)
    assert trainer.update_filter.max_dropped == 0.25
    tokens, targets = trainer.corpus.get_batch("train", 4, 8, trainer.data_gen)
    record = trainer.train_step(tokens, targets)
    assert record["dropped"] == 0 and not record.get("skipped")
    plain = Trainer(tiny(str(p), tmp_path / "runs2"))
    assert "dropped" not in plain.train_step(tokens, targets)


def _flag_first_sample_unstable(trainer: Trainer, monkeypatch) -> None:
    """Inject the stability check's verdict: the free phase's sample 0 ends on an
    unstable equilibrium."""
    relax = trainer.relax

    def flagged(field):
        sol = relax(field)
        status = sol.status.clone()
        status[0] = int(Status.UNSTABLE)
        return replace(sol, status=status)

    monkeypatch.setattr(trainer, "relax", flagged)


def test_an_unstable_free_sample_is_dropped_and_the_update_still_applied(tmp_path, monkeypatch):
    p = tmp_path / "text.txt"
    p.write_text(TEXT, encoding="utf-8")
    cfg = tiny(str(p), tmp_path / "runs")
    runs = {}
    for drop in (0.0, 0.25):
        trainer = Trainer(replace(cfg, estimator=replace(cfg.estimator, drop_failed=drop)))
        _flag_first_sample_unstable(trainer, monkeypatch)
        before = [q.detach().clone() for q in trainer.model.parameters()]
        tokens, targets = trainer.corpus.get_batch("train", 4, 8, torch.Generator().manual_seed(5))
        record = trainer.train_step(tokens, targets)
        moved = any(not torch.equal(a, b) for a, b in zip(before, trainer.model.parameters(),
                                                            strict=True))
        runs[drop] = record, moved
    record, moved = runs[0.0]  # the rule without dropping: the whole update is rejected
    assert record["skipped"] and moved is False
    assert record["skip_detail"] == "free relaxation failed in 1/4 samples (unstable 1)"
    record, moved = runs[0.25]
    assert record["status"]["unstable"] == 1 and record["dropped"] >= 1
    assert not record.get("skipped") and moved


def test_a_free_phase_that_missed_its_tolerance_leaves_the_signal():
    """A sample whose free relaxation ended cycling (no equilibrium) or on an unstable point
    is dropped like a failed nudged one; the converged samples keep the exact adjoint."""
    from eqprop.gradients.base import drop_failed
    from eqprop.solvers.base import Solution

    field = field_with_one_stiff_sample()
    z_star = field.z_fix.clone()
    exact = torch.linalg.solve(field.A.transpose(1, 2), (z_star - field.y).unsqueeze(-1))[..., 0]
    result = IFT(tol=1e-13).estimate(field, z_star)
    for status in (Status.CYCLING, Status.CONTRACTING, Status.UNSTABLE):
        codes = torch.tensor([Status.CONVERGED, Status.CONVERGED, status])
        free = Solution(z=z_star, status=codes, steps=torch.zeros(3), nfe=torch.zeros(3),
                        residual=torch.zeros(3), rel_residual=torch.zeros(3))
        out = drop_failed(result, field, free)
        assert out.dropped.tolist() == [False, False, True]
        assert torch.equal(out.signal[2], torch.zeros(3, dtype=torch.float64))
        torch.testing.assert_close(out.signal[:2], exact[:2], rtol=1e-9, atol=1e-9)
