"""The update filter: no update from failed relaxations or with an absurd gradient norm."""

from __future__ import annotations

from dataclasses import replace

import pytest
import torch

from eqprop.errors import ConfigError
from eqprop.gradients.registry import EstimatorConfig
from eqprop.solvers import Solution, SolverConfig, Status
from eqprop.train import Trainer
from eqprop.train.update_filter import UpdateFilter
from tests.helpers import TEXT, tiny


def solution(*codes: Status) -> dict[str, int]:
    """The status counts of a solution with these statuses."""
    B = len(codes)
    one = torch.ones(B)
    return Solution(z=torch.zeros(B, 2), status=torch.tensor([int(c) for c in codes]),
                    steps=one.long(), nfe=one.long(), residual=one, rel_residual=one).counts()


OK = solution(Status.CONVERGED, Status.CONVERGED)


@pytest.mark.parametrize("bad", [Status.DIVERGED, Status.UNSTABLE, Status.NONFINITE])
def test_failed_relaxations_reject_the_update(bad):
    f = UpdateFilter()
    assert f.check(OK, [OK, OK], 1.0) is None
    why = f.check(solution(Status.CONVERGED, bad), [OK], 1.0)
    if bad == Status.DIVERGED:  # a diverging free phase is the wall: the guard's policy
        assert why is None
    else:
        assert why == f"free relaxation failed in 1/2 samples ({bad.label} 1)"
    why = f.check(OK, [OK, solution(bad, bad)], 1.0)
    assert why == f"nudged #2 relaxation failed in 2/2 samples ({bad.label} 2)"
    # still contracting or cycling free samples are the wall guard's business
    assert f.check(solution(Status.CYCLING, Status.CONTRACTING), [OK], 1.0) is None
    assert UpdateFilter(max_failed=0.5).check(OK, [solution(Status.CONVERGED, bad)], 1.0) is None
    # samples dropped from the gradient: a nudged phase's up to max_dropped, and the free
    # phase's unstable ones (the penalty in the update moves them back); non-finite rejects
    dropping = UpdateFilter(max_dropped=0.5)
    assert dropping.check(OK, [solution(Status.CONVERGED, bad)], 1.0) is None
    assert dropping.check(OK, [solution(bad, bad)], 1.0) is not None
    free_verdict = dropping.check(solution(bad, bad), [OK], 1.0)
    assert (free_verdict is None) == (bad != Status.NONFINITE), free_verdict


def test_absurd_gradient_norm_relative_to_its_history():
    f = UpdateFilter(window=8, min_history=4, max_ratio=100.0)
    assert f.check(OK, [], 1e140) is None  # no history yet: nothing to compare with
    for g in (1.0, 2.0, 1.5, 0.5):
        f.accept(g)
    assert f.check(OK, [], 120.0) is None  # median 1.25: 96×
    why = f.check(OK, [], 1e140)
    assert why is not None and why.startswith("gradient norm 1e+140 is 8e+139× the median 1.25")
    assert f.check(OK, [], float("nan")) == "gradient norm nan"
    g = UpdateFilter(window=8, min_history=4, max_ratio=100.0)
    g.load_state_dict(f.state_dict())  # the same decisions after a resume
    assert g.check(OK, [], 1e140) == why and g.check(OK, [], 120.0) is None


@pytest.mark.parametrize("kwargs, match", [
    ({"reject_nudged": ("diverged", "bogus")}, "reject_nudged=.*status labels"),
    ({"reject_free": "diverged"}, "reject_free='diverged'"),
    ({"max_failed": 1.0}, r"max_failed=1.0\): must lie in \[0, 1\)"),
    ({"max_dropped": -0.1}, r"max_dropped=-0.1\): must lie in \[0, 1\)"),
    ({"window": 0}, "window=0"),
    ({"min_history": 30}, "min_history=30"),
    ({"max_ratio": 1.0}, "max_ratio=1.0"),
])
def test_settings_are_validated(kwargs, match):
    with pytest.raises(ConfigError, match=match):
        UpdateFilter(**kwargs)


def test_trainer_skips_and_logs_an_update_from_diverged_nudged_relaxations(tmp_path):
    """Holomorphic EP with a nudge radius far outside where the nudged equilibria exist:
    the nudged relaxations diverge and the estimate is garbage (finite, or not)."""
    p = tmp_path / "text.txt"
    p.write_text(TEXT, encoding="utf-8")
    cfg = tiny(str(p), tmp_path / "runs")
    cfg = replace(cfg, estimator=EstimatorConfig(  # Euler nudges: they blow up out there
        name="holoep", radius=1e4, nudge=SolverConfig(name="euler", tol=1e-2, max_steps=100)))
    trainer = Trainer(cfg)
    before = [q.detach().clone() for q in trainer.model.parameters()]
    tokens, targets = trainer.corpus.get_batch("train", 4, 8, trainer.data_gen)
    record = trainer.train_step(tokens, targets)
    failed = sum(record["nudge_status"].get(k, 0) for k in ("diverged", "unstable"))
    assert failed > 0, record["nudge_status"]
    assert record["skipped"] and record["skip_reason"] in ("rejected", "nonfinite")
    if record["skip_reason"] == "rejected":
        assert "nudged" in record["skip_detail"]
        events = trainer.events  # the guard's decision, applied in the step
        assert events and events[0]["event"] == "rejected"
    assert trainer.skipped == 1
    for a, b in zip(before, trainer.model.parameters(), strict=True):
        assert torch.equal(a, b)  # the weights never saw it
