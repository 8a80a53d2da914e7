"""The wall guard: watch the free relaxations and act when they stop converging.

Training that sharpens attention lowers ε_crit until a fixed ε crosses it and the
free relaxation starts to cycle or diverge (design §2, "the wall"); from then on
the estimator's gradient is taken away from any fixed point. The guard measures,
per step, the fraction of the batch's free relaxations that failed, averages it
over a window, and when that mean reaches a threshold applies the policy of
:class:`~eqprop.train.config.GuardConfig` (warn, stop, skip, escalate). Every
decision is a ``wall`` / ``wall_cleared`` event in ``metrics.jsonl`` (drawn on the
plots), and the guard's whole state is checkpointed, so a resumed run decides
exactly as an uninterrupted one. The guard only decides: it returns a
:class:`~eqprop.train.decisions.Decision` (settings to change, a stop, events), which
the trainer applies.
"""

from __future__ import annotations

import math
from collections import deque
from typing import Any

from ..solvers import Solution
from ..solvers.status import Status
from .config import GuardConfig, TrainConfig
from .configio import config_to_dict, flatten
from .decisions import Decision, phase_eps

__all__ = ["FAILED", "WallGuard", "nonfinite_detail", "relaxations_finite"]

#: free-phase statuses that count as a failed relaxation
FAILED = ("cycling", "diverged", "nonfinite", "unstable")


def relaxations_finite(*solutions: Solution) -> bool:
    """No sample of these relaxations met NaN/Inf. A diverged state can overflow only in
    ‖F‖ while LayerNorm still maps it to a finite loss: such an update is garbage too."""
    return not any(bool((sol.status == Status.NONFINITE).any()) for sol in solutions)


def nonfinite_detail(record: dict[str, Any]) -> str:
    """What was NaN/Inf in a step (relaxation, loss, gradient, penalty), for its event."""
    parts, status = [], record.get("status") or {}
    n, B = status.get("nonfinite", 0), sum(status.values())
    if n:
        parts.append(f"free relaxation non-finite in {n}/{B} samples")
    if (record.get("nudge_status") or {}).get("nonfinite"):
        parts.append(f"nudged relaxation non-finite in {record['nudge_status']['nonfinite']}")
    for key, name in (("train_ce", "loss"), ("grad_norm", "gradient norm"),
                      ("penalty", "penalty")):
        v = record.get(key)
        if isinstance(v, float) and not math.isfinite(v):
            parts.append(f"{name} {v}")
    return "; ".join(parts or ["non-finite value"]) + ": update skipped"


class WallGuard:
    """The guard of one training run.

    Args:
        cfg: its settings.

    Attributes:
        wall_skipped: updates skipped by the ``skip`` policy.
        stop_reason: why the guard stopped the run (None while it runs).
        changes: the settings its escalations changed, ``{"solver.eps": 0.25, ...}``
            (absolute values, so applying them again changes nothing).
    """

    def __init__(self, cfg: GuardConfig):
        self.cfg = cfg
        self.window: deque[float] = deque(maxlen=cfg.window)
        self.tripped = False
        self.rung = 0
        self.changes: dict[str, Any] = {}
        self.wall_skipped = 0
        self.stop_reason: str | None = None

    @property
    def active(self) -> bool:
        return self.cfg.policy != "off"

    @property
    def stopped(self) -> bool:
        return self.stop_reason is not None

    def failed_fraction(self, counts: dict[str, float]) -> float:
        """Fraction of failed relaxations from status counts (or fractions)."""
        total = sum(counts.values())
        labels = FAILED + (("contracting",) if self.cfg.count_contracting else ())
        return sum(counts.get(k, 0) for k in labels) / total if total else 0.0

    def allow_update(self, counts: dict[str, int]) -> bool:
        """Whether this batch's update may be applied: False under the ``skip`` policy
        while tripped, for a batch whose failed fraction reaches the threshold (under
        torchrun: the counts of the global batch, summed over the ranks)."""
        return not (self.cfg.policy == "skip" and self.tripped
                    and self.failed_fraction(counts) >= self.cfg.threshold)

    # -- after each step ------------------------------------------------------
    def update(self, record: dict[str, Any], cfg: TrainConfig,
               reg_weight: float | None = None) -> Decision:
        """Feed one step's record; trip, clear or decide. Adds ``guard_fail`` (the window's
        mean) to the record. The decision's events: a ``nonfinite`` event for an update
        skipped for NaN/Inf, a ``rejected`` one for an update that the update filter
        rejected (with any policy), then the guard's own.

        Args:
            record: the step's metrics record.
            cfg: the settings in use (an escalation changes them).
            reg_weight: the regularizer's current weight (None: no regularizer on).
        """
        events = []
        if record.get("skip_reason") == "nonfinite":
            events.append({"step": record["step"], "event": "nonfinite",
                           "detail": nonfinite_detail(record)})
        elif record.get("skip_reason") == "rejected":  # see train/update_filter.py
            events.append({"step": record["step"], "event": "rejected",
                           "detail": f"{record.get('skip_detail', 'rejected')}: update skipped"})
        if not self.active:
            return Decision(events=events)
        decision = self._watch(record, cfg, reg_weight)
        decision.events[:0] = events
        return decision

    def _watch(self, record: dict[str, Any], cfg: TrainConfig,
               reg_weight: float | None) -> Decision:
        self.window.append(self.failed_fraction(record.get("status") or {}))
        mean = sum(self.window) / len(self.window)
        record["guard_fail"] = mean
        step, c = record["step"], self.cfg
        base = {"step": step, "fail": mean, "window": len(self.window), "policy": c.policy}
        if self.tripped:
            if mean < c.threshold:
                self.tripped = False
                return Decision(events=[{
                    **base, "event": "wall_cleared",
                    "detail": f"failed fraction {mean:.0%} < {c.threshold:.0%} over the "
                              f"last {len(self.window)} steps"}])
            return Decision()
        if len(self.window) < c.window or mean < c.threshold:
            return Decision()
        self.tripped = True
        what = (f"{mean:.0%} of free relaxations failed over the last {c.window} steps "
                f"(threshold {c.threshold:.0%})")
        event: dict[str, Any] = {**base, "event": "wall"}
        decision = Decision(events=[event])
        ladder = c.ladder_steps()
        if c.policy == "warn":
            event.update(action="warn", detail=f"{what}: no action (policy warn)")
        elif c.policy == "skip":
            event.update(action="skip", detail=f"{what}: updates of failing batches are "
                                               "skipped until it clears")
        elif c.policy == "escalate" and self.rung < len(ladder):
            action = ladder[self.rung]
            self.rung += 1
            changes = self.escalation(action, cfg, reg_weight)
            decision.changes = {k: new for k, (_, new) in changes.items()}
            self.changes.update(decision.changes)
            shown = "; ".join(f"{k} {a!r} -> {b!r}" for k, (a, b) in changes.items())
            event.update(action=action, changes=changes,
                         detail=f"{what}: escalation {self.rung}/{len(ladder)}: {shown}")
            self.window.clear()  # the new settings need fresh evidence
            self.tripped = False
        else:
            used = " (escalation ladder used up)" if c.policy == "escalate" else ""
            self.stop_reason = decision.stop = f"wall guard at step {step}: {what}{used}"
            event.update(action="stop", detail=f"{what}{used}: training stops")
        return decision

    # -- escalation -------------------------------------------------------------
    def escalation(self, action: str, cfg: TrainConfig, reg_weight: float | None = None
                   ) -> dict[str, tuple[Any, Any]]:
        """The settings one ladder step changes, ``{setting: (old, new)}`` (nothing is
        changed here: the decision carries the new values to the trainer)."""
        c = self.cfg
        new: dict[str, Any] = {}
        if action == "eps":  # the ε of each phase's solver, where it has one
            new.update({k: v * c.eps_factor for k, v in phase_eps(cfg).items()})
        elif action == "jacreg":
            reg = cfg.regularizer
            if reg.name == "none":
                new.update({"regularizer.name": "jacreg", "regularizer.weight": c.jacreg_weight})
            elif reg.adaptive:  # raise the adaptive weight's floor (and the weight with it)
                current = reg_weight if reg_weight is not None else reg.weight
                floor = min(reg.adapt.w_max, max(current, reg.adapt.w_min) * c.jacreg_factor)
                new.update({"regularizer.adapt.w_min": floor,
                            "regularizer.weight": min(max(reg.weight, floor), reg.adapt.w_max)})
            else:
                new["regularizer.weight"] = reg.weight * c.jacreg_factor
        else:  # "solver"
            new["solver.name"] = c.robust_solver
            new["estimator.nudge.name"] = c.robust_solver
        before = {k: v for k, v in flatten(config_to_dict(cfg)).items() if k in new}
        return {k: (before.get(k), v) for k, v in new.items()}

    # -- checkpoints ------------------------------------------------------------
    def state_dict(self) -> dict[str, Any]:
        """Everything an exact resume needs (plain values)."""
        return {"window": list(self.window), "tripped": self.tripped, "rung": self.rung,
                "changes": dict(self.changes), "wall_skipped": self.wall_skipped,
                "stop_reason": self.stop_reason}

    def load_state_dict(self, state: dict[str, Any]) -> Decision:
        """Restore the state; returns the decision that re-applies its escalations
        (:attr:`changes`). A run that the guard had stopped continues with fresh evidence
        (an empty window)."""
        self.window = deque((float(x) for x in state.get("window", [])), maxlen=self.cfg.window)
        self.tripped = bool(state.get("tripped", False))
        self.rung = int(state.get("rung", 0))
        self.changes = dict(state.get("changes", {}))
        self.wall_skipped = int(state.get("wall_skipped", 0))
        if state.get("stop_reason"):
            self.window.clear()
            self.tripped = False
        self.stop_reason = None
        return Decision(changes=dict(self.changes))

