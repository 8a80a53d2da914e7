"""Reject a finite update whose estimate cannot be trusted (design §2, §3).

A gradient estimate is only as good as the equilibria it was taken at. Relaxations
that diverged, landed on an unstable point or met NaN/Inf give a number, and often
a finite one (measured cases: docs/reliability.md, "Estimates that cannot be trusted");
the optimiser must never see it. The filter
looks at the status counts of the free and the nudged relaxations and the gradient norm,
and answers None (apply) or the reason to reject. The trainer applies the verdict
(skips the step and logs the reason), so a rejected update never reaches the
weights or a checkpoint. Its short history of accepted norms is checkpointed.
"""

from __future__ import annotations

import math
import statistics
from collections import deque
from collections.abc import Iterable
from dataclasses import dataclass, field
from typing import Any

from ..errors import ConfigError
from ..solvers.status import FAILED, Status

__all__ = ["UpdateFilter"]

_LABELS = tuple(s.label for s in Status)


@dataclass
class UpdateFilter:
    """Decides whether a training step's update may be applied.

    A free phase that cycles or diverges is the wall, and what to do about it is
    the wall guard's policy (:mod:`~eqprop.train.guard`: ``warn`` keeps training to
    measure it, ``skip`` rejects those updates); the filter rejects, with any policy,
    the estimates no policy should let through.

    Args:
        reject_free: free-phase statuses that disqualify the estimate (labels of
            :class:`~eqprop.solvers.Status`).
        reject_nudged: statuses of the estimator's nudged relaxations that do.
        max_failed: largest fraction of a phase's samples allowed in those statuses
            (0: any one rejects the update).
        max_dropped: the same for a nudged phase whose failed samples were left out of
            the gradient (``EstimatorConfig.drop_failed``; the larger of the two applies
            there). When it is > 0 the free phase's unstable samples, left out too, reject
            no update: the penalty's gradient in it is what moves them back.
        window: how many accepted gradient norms the history keeps.
        max_ratio: reject a gradient norm above ``max_ratio`` times the median of the
            history (> 1).
        min_history: norms needed in the history before the ratio test applies.
    """

    reject_free: tuple[str, ...] = ("unstable", "nonfinite")
    reject_nudged: tuple[str, ...] = tuple(s.label for s in FAILED)
    max_failed: float = 0.0
    max_dropped: float = 0.0
    window: int = 20
    max_ratio: float = 1e3
    min_history: int = 5
    history: deque[float] = field(init=False, repr=False)

    def __post_init__(self) -> None:
        for name in ("reject_free", "reject_nudged"):
            v = getattr(self, name)
            if isinstance(v, str) or not isinstance(v, tuple) or any(s not in _LABELS
                                                                      for s in v):
                raise ConfigError(f"UpdateFilter({name}={v!r}): must be a tuple of status "
                                  f"labels from {', '.join(_LABELS)}")
        for name in ("max_failed", "max_dropped"):
            v = getattr(self, name)
            if not (isinstance(v, (int, float)) and 0 <= v < 1):
                raise ConfigError(f"UpdateFilter({name}={v!r}): must lie in [0, 1)")
        for name in ("window", "min_history"):
            v = getattr(self, name)
            if isinstance(v, bool) or not isinstance(v, int) or v < 1:
                raise ConfigError(f"UpdateFilter({name}={v!r}): must be an integer ≥ 1")
        if self.min_history > self.window:
            raise ConfigError(f"UpdateFilter(min_history={self.min_history}) > window="
                              f"{self.window}: the history could never fill")
        if not (isinstance(self.max_ratio, (int, float)) and 1 < self.max_ratio):
            raise ConfigError(f"UpdateFilter(max_ratio={self.max_ratio!r}): must be a number > 1")
        self.history = deque(maxlen=self.window)

    def check(self, free: dict[str, int], nudged: Iterable[dict[str, int]],
              grad_norm: float) -> str | None:
        """None when the update may be applied, else why not (one line).

        Args:
            free: the free phase's samples per status label (``Solution.counts()``).
            nudged: the same for each of the estimator's nudged relaxations (empty for
                IFT, BPTT).
            grad_norm: the gradient's norm before clipping.
        """
        free_reject = tuple(s for s in self.reject_free if not (self.max_dropped and
                                                                s == Status.UNSTABLE.label))
        phases = [("free", free, free_reject, self.max_failed)]
        nudged_max = max(self.max_failed, self.max_dropped)
        phases += [(f"nudged #{i + 1}", c, self.reject_nudged, nudged_max)
                   for i, c in enumerate(nudged)]
        for name, counts, reject, most in phases:
            bad = sum(counts.get(s, 0) for s in reject)
            B = sum(counts.values())
            if B and bad / B > most:
                shown = ", ".join(f"{k} {counts[k]}" for k in reject if counts.get(k))
                return f"{name} relaxation failed in {bad}/{B} samples ({shown})"
        if not math.isfinite(grad_norm):
            return f"gradient norm {grad_norm}"
        if len(self.history) >= self.min_history:
            median = statistics.median(self.history)
            if grad_norm > self.max_ratio * median:
                return (f"gradient norm {grad_norm:.3g} is {grad_norm / median:.3g}× the median "
                        f"{median:.3g} of the last {len(self.history)} accepted steps "
                        f"(max_ratio {self.max_ratio:g})")
        return None

    def accept(self, grad_norm: float) -> None:
        """Record the norm of an update that was judged sound."""
        if math.isfinite(grad_norm):
            self.history.append(float(grad_norm))

    def state_dict(self) -> dict[str, Any]:
        """The history, as plain values (for checkpoints)."""
        return {"history": list(self.history)}

    def load_state_dict(self, state: dict[str, Any]) -> None:
        """Restore :meth:`state_dict`'s history."""
        self.history = deque((float(x) for x in state.get("history", [])), maxlen=self.window)
