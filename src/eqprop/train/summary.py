"""The outcome of a training run, as printed at the end and saved in ``summary.json``."""

from __future__ import annotations

from collections import Counter
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING, Any

from .metrics import status_counts

if TYPE_CHECKING:
    from .guard import WallGuard

__all__ = ["SUMMARY_WINDOW", "TrainSummary", "summarize"]

#: train CE in the summary: mean over this many last logged steps
SUMMARY_WINDOW = 20
AT_ZSTAR = "at the training solver's z*"


@dataclass
class TrainSummary:
    """The outcome of :func:`train`.

    Attributes:
        run_dir: where everything was written.
        steps: updates done (including skipped ones).
        skipped: updates skipped for non-finite loss or gradient.
        train_ce: mean training CE over the last logged steps.
        val_ce: last validation CE at the training solver's z*.
        val_ce_ref: the same after the tight reference solve.
        unigram_entropy: entropy of the training text's characters (nats): the bar to beat.
        free_converged: fraction of free-phase relaxations that converged, whole run.
        free_nfe: mean free-phase NFE per sample, whole run.
        wall_time: seconds of training (all segments of a resumed run).
        wall_skipped: updates skipped by the wall guard's ``skip`` policy.
        stopped: why the wall guard stopped the run early (None: it ran to the end).
        val_status: status counts of the last validation's relaxations at the training
            solver (None: not measured, or no relaxation).
        ref_status: the same for the reference solve.
        relaxation: False for the feed-forward baseline (trained by backprop), which has
            no equilibrium: no statuses, no NFE, no reference solve.
        skip_reasons: skipped updates by their logged reason (``nonfinite``, ``rejected``
            by the update filter, ``wall``), from ``metrics.jsonl``.
    """

    run_dir: Path
    steps: int
    skipped: int
    train_ce: float | None
    val_ce: float | None
    val_ce_ref: float | None
    unigram_entropy: float
    free_converged: float
    free_nfe: float
    wall_time: float
    wall_skipped: int = 0
    stopped: str | None = None
    val_status: dict[str, int] | None = None
    ref_status: dict[str, int] | None = None
    relaxation: bool = True
    skip_reasons: dict[str, int] | None = None

    def _skipped(self, count: bool = True) -> str:
        """``3 non-finite, 2 rejected by the update filter`` (the logged reasons);
        ``non-finite`` alone (or with its count) when that is the only one."""
        reasons = {k: v for k, v in (self.skip_reasons or {}).items() if k != "wall" and v}
        if not reasons or set(reasons) == {"nonfinite"}:
            return f"{self.skipped} non-finite" if count else "non-finite"
        return ", ".join(f"{v} {_REASONS.get(k, k)}" for k, v in sorted(reasons.items()))

    @property
    def applied(self) -> int:
        """Updates actually applied (steps minus the skipped ones)."""
        return self.steps - self.skipped - self.wall_skipped

    def warnings(self) -> list[str]:
        """What went wrong in the run, one line each (printed on stderr at its end)."""
        out = []
        if self.skipped or self.wall_skipped:
            nothing = ": nothing was learned" if self.applied <= 0 else ""
            out.append(f"{self.skipped + self.wall_skipped} of {self.steps} updates were "
                       f"skipped ({self._skipped()}, {self.wall_skipped} by the wall "
                       f"guard){nothing}")
        for what, status in (("validation", self.val_status), ("reference", self.ref_status)):
            if status and not status.get("converged"):
                out.append(f"no {what} relaxation converged ({_counts(status)}): its CE is "
                           "not measured at a fixed point")
        return out

    def _ce(self, value: float | None, status: dict[str, int] | None, where: str,
            unit: str = " nats") -> str:
        """``2.480 nats at ...``, ``n/a`` when no relaxation converged, the converged count
        when some failed."""
        if value is None:
            return f"n/a {where}"
        if status is None:
            return f"{value:.3f}{unit} {where}"
        total, conv = sum(status.values()), status.get("converged", 0)
        if not conv:
            return f"n/a {where} (no relaxation converged: {_counts(status)})"
        failed = total - conv - status.get("contracting", 0)
        return f"{value:.3f}{unit} {where}" + (f" (converged {conv} of {total})" if failed else "")

    def format(self) -> str:
        """Human-readable summary lines."""
        def f(v: float | None) -> str:
            return "n/a" if v is None else f"{v:.3f}"
        rate = self.steps / self.wall_time if self.wall_time > 0 else float("nan")
        if self.relaxation:
            val = (f"{self._ce(self.val_ce, self.val_status, AT_ZSTAR)}, "
                   f"{self._ce(self.val_ce_ref, self.ref_status, 'after the reference solve', '')}")
            free = (f"{100 * self.free_converged:.1f} % converged, "
                    f"mean NFE {self.free_nfe:.1f}")
        else:
            val = f"{f(self.val_ce)} nats (one forward pass: the backprop baseline)"
            free = "n/a (feed-forward, no relaxation)"
        return "\n".join([
            f"run            {self.run_dir}",
            f"steps          {self.steps} ({self.skipped} skipped: {self._skipped(count=False)}"
            f"{f', {self.wall_skipped} by the wall guard' if self.wall_skipped else ''}) in "
            f"{self.wall_time:.1f} s ({rate:.2f} steps/s)",
            f"train CE       {f(self.train_ce)} nats (last {SUMMARY_WINDOW} steps)"
            if self.train_ce is not None else
            "train CE       n/a (no step had a finite free relaxation)",
            f"val CE         {val}",
            f"unigram        {self.unigram_entropy:.3f} nats (entropy of the characters: the "
            "bar to beat)",
            f"free phase     {free}",
            *([f"stopped        {self.stopped}"] if self.stopped else []),
        ])


#: how a skip reason reads in the summary
_REASONS = {"nonfinite": "non-finite", "rejected": "rejected by the update filter"}


def _counts(status: dict[str, int]) -> str:
    return ", ".join(f"{k} {v}" for k, v in status.items() if v) or "none"


def summarize(records: Sequence[dict[str, Any]], *, run_dir: Path, steps: int, skipped: int,
              val: dict[str, Any], unigram: float, wall_time: float, guard: WallGuard,
              relaxation: bool = True) -> TrainSummary:
    """The summary of a run from its metrics records.

    Args:
        records: ``metrics.jsonl``'s records (event records are left out here).
        run_dir: the run directory.
        steps: updates done.
        skipped: updates skipped for NaN/Inf.
        val: the last validation's metrics (``val_ce``, ``val_status``, ...).
        unigram: the characters' entropy.
        wall_time: seconds of training.
        guard: the wall guard (its skipped count and stop reason).
        relaxation: False for the backprop baseline.

    Returns:
        The :class:`TrainSummary`.
    """
    rows = [r for r in records if "event" not in r]
    # a step whose every free relaxation met NaN/Inf has no CE at any state worth the name
    ces = [r["train_ce"] for r in rows if r.get("train_ce") is not None
           and not (r.get("status") and r["status"].get("nonfinite") == sum(r["status"].values()))]
    counts = status_counts([])
    nfe_sum, n = 0.0, 0
    for r in rows:
        for k, v in (r.get("status") or {}).items():
            counts[k] = counts.get(k, 0) + v
        if (r.get("nfe") or {}).get("free") is not None:
            nfe_sum, n = nfe_sum + r["nfe"]["free"], n + 1
    total = sum(counts.values())
    tail = ces[-SUMMARY_WINDOW:]
    return TrainSummary(
        run_dir=run_dir, steps=steps, skipped=skipped,
        train_ce=sum(tail) / len(tail) if tail else None,
        val_ce=val.get("val_ce"), val_ce_ref=val.get("val_ce_ref"), unigram_entropy=unigram,
        free_converged=counts["converged"] / total if total else 0.0,
        free_nfe=nfe_sum / n if n else 0.0, wall_time=wall_time,
        wall_skipped=guard.wall_skipped, stopped=guard.stop_reason,
        val_status=val.get("val_status"), ref_status=val.get("ref_status"),
        relaxation=relaxation,
        skip_reasons=dict(Counter(str(r.get("skip_reason")) for r in rows if r.get("skipped"))))
