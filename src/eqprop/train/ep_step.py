"""The equilibrium model's training step, phase by phase (the backprop baseline's is
:func:`~eqprop.train.backprop.backprop_step`).

Each phase runs under a profiler range named in :data:`STEP_PHASES`
(``torch.profiler.record_function``: free when no profiler is on), so that a profile of
the step splits its time by phase (``benchmarks/study_step.py --top``). The pieces are
the trainer's (its relaxation, estimator, penalties, update filter and hooks); this
function is their order.
"""

from __future__ import annotations

import time
from typing import TYPE_CHECKING, Any

from torch import Tensor
from torch.profiler import record_function

from ..gradients.base import drop_failed
from .schedule import lr_at
from .step import measure

if TYPE_CHECKING:
    from .trainer import Trainer

__all__ = ["STEP_PHASES", "equilibrium_step"]

#: the profiler ranges of one step, in order: the free phase (with its stability check),
#: the estimator (nudged phases or adjoint, and the surrogate), the penalties, the backward
#: pass, the one host transfer and the update, the spectrum tracking when due
STEP_PHASES = ("eqprop.free", "eqprop.estimate", "eqprop.penalties", "eqprop.backward",
               "eqprop.update", "eqprop.track")


def equilibrium_step(tr: Trainer, tokens: Tensor, targets: Tensor) -> dict[str, Any]:
    """One update of the trainer's equilibrium model on ``tokens, targets (B, T)``; returns
    its metrics record (see :meth:`~eqprop.train.trainer.Trainer.train_step`)."""
    t0 = time.perf_counter()
    tr.model.train()
    field = tr.model.field(tokens, targets)
    with record_function("eqprop.free"):
        sol = tr.relax(field)
    with record_function("eqprop.estimate"):  # the surrogate: backward() fills .grad
        result = tr.estimator.estimate(field, sol.z)
        if tr.cfg.estimator.drop_failed:  # samples not to learn from: out of the signal
            result = drop_failed(result, field, sol)
    with record_function("eqprop.penalties"):
        penalties = tr.penalties(field, sol)
    with record_function("eqprop.backward"):
        grad_norm = tr.backward(result.surrogate, penalties)
    with record_function("eqprop.update"):
        nudged = list(result.solutions.values())
        m = measure(sol, result.loss, result.nfe, nudged, grad_norm, penalties,  # one transfer
                    lr=lr_at(tr.step, tr.cfg.optim, tr.cfg.schedule), dropped=result.dropped)
        verdict = tr.judge(m)  # is the update sound, does the guard let it through
        tr.update(verdict, m)  # apply it (or count the skip)
    record = tr.record(m, verdict, batch=tokens.shape[0], nudged=bool(nudged))
    z_star = sol.z.detach()
    with record_function("eqprop.track"):
        record.update(tr.track(field, z_star))
    record = tr.settle(record, tr.decide(record, field, z_star, m.host["nfe.free"]))
    record["step_time"] = time.perf_counter() - t0
    return record
