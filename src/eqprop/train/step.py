"""The pieces of a training step that are plain data: the one device-to-host transfer of
its numbers, the verdict on its update and its metrics record (used by
:meth:`eqprop.train.trainer.Trainer.train_step`)."""

from __future__ import annotations

import math
from dataclasses import dataclass
from typing import Any

import torch
from torch import Tensor

from ..solvers import Solution, Status

__all__ = ["Measured", "Verdict", "mark_skipped", "measure", "step_record", "to_host"]


def to_host(scalars: dict[str, Tensor], free: Solution, nudged: list[Solution]
             ) -> tuple[dict[str, float], dict[str, int], list[dict[str, int]]]:
    """Scalars and status counts of a step in one device-to-host transfer: ``(scalars,
    free-phase counts, counts of each nudged phase)``."""
    n = len(Status)
    codes = [torch.bincount(free.status.flatten(), minlength=n)]
    codes += [torch.bincount(s.status.flatten(), minlength=n) for s in nudged]
    packed = torch.cat([torch.stack([v.detach().float().reshape(()) for v in scalars.values()]),
                        torch.stack(codes).flatten().float()]).tolist()
    host = dict(zip(scalars, packed[:len(scalars)], strict=True))
    rows = [packed[len(scalars) + k * n: len(scalars) + (k + 1) * n] for k in range(len(codes))]
    counts = [{s.label: int(r[s]) for s in Status} for r in rows]
    return host, counts[0], counts[1:]


@dataclass
class Measured:
    """A step's numbers on the host: scalars, the free phase's status counts, each nudged
    phase's counts and their sum, the learning rate of the step."""

    host: dict[str, float]
    counts: dict[str, int]
    nudge_phases: list[dict[str, int]]
    nudge_counts: dict[str, int]
    lr: float


@dataclass
class Verdict:
    """Whether a step's update is applied: ``finite``, ``sound`` (finite and not rejected
    by the update filter, whose ``reason`` is given), ``apply`` (sound and let through by
    the wall guard)."""

    finite: bool
    sound: bool
    apply: bool
    reason: str | None


def measure(sol: Solution, loss: Tensor, nfe: dict[str, Tensor], nudged: list[Solution],
            grad_norm: Tensor, penalties: list[Tensor], *, lr: float,
            dropped: Tensor | None = None) -> Measured:
    """Everything a step reports (free phase ``sol``, the estimator's ``loss`` and NFE,
    the ``nudged`` phases, the gradient norm, the penalties, the samples ``dropped`` from
    the signal), in one transfer."""
    scalars = {"loss": loss, "grad_norm": grad_norm,
               "res_max": sol.rel_residual.max(), "res_mean": sol.rel_residual.mean(),
               "nfe.free": sol.nfe.float().mean()}
    scalars.update({f"nfe.{k}": v.float().mean() for k, v in nfe.items()})
    if penalties:
        scalars["penalty"] = sum(p.detach() for p in penalties)
    if dropped is not None:
        scalars["dropped"] = dropped.sum()
    if sol.max_real is not None:  # the stability check's leading Re μ over the batch
        scalars["lead_re"] = sol.max_real.nan_to_num(nan=-math.inf).max()
    host, counts, nudge_phases = to_host(scalars, sol, nudged)
    nudge_counts = {k: sum(c[k] for c in nudge_phases) for k in counts}
    return Measured(host, counts, nudge_phases, nudge_counts, lr)


def step_record(step: int, m: Measured, *, batch: int, nudged: bool) -> dict[str, Any]:
    """The metrics record of step ``step`` (this process's batch of ``batch`` sequences)."""
    host, counts = m.host, m.counts
    nfe = {k[4:]: v for k, v in host.items() if k.startswith("nfe.")}
    record: dict[str, Any] = {
        "step": step, "train_ce": host["loss"], "lr": m.lr, "grad_norm": host["grad_norm"],
        "res_max": host["res_max"], "res_mean": host["res_mean"],
        "nfe": nfe, "nfe_total": sum(nfe.values()), "status": counts,
        "status_frac": {k: v / batch for k, v in counts.items()},
    }
    if "penalty" in host:
        record["penalty"] = host["penalty"]
    if math.isfinite(host.get("lead_re", math.nan)):
        record["lead_re"] = host["lead_re"]
    if nudged:
        record["nudge_status"] = m.nudge_counts
    if "dropped" in host:  # samples left out of the signal (drop_samples)
        record["dropped"] = int(host["dropped"])
    return record


def mark_skipped(record: dict[str, Any], verdict: Verdict) -> dict[str, Any]:
    """A skipped update's reason (and the update filter's detail) into its record."""
    if not verdict.apply:
        record.update(skipped=True, skip_reason="wall" if verdict.sound else
                      "nonfinite" if not verdict.finite else "rejected")
        if verdict.finite and not verdict.sound:
            record["skip_detail"] = verdict.reason or "rejected on another rank"
    return record
