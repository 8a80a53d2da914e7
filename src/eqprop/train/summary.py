"""The outcome of a training run, as printed at the end and saved in ``summary.json``."""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

__all__ = ["SUMMARY_WINDOW", "TrainSummary"]

#: train CE in the summary: mean over this many last logged steps
SUMMARY_WINDOW = 20


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

    def format(self) -> str:
        """Human-readable summary lines."""
        def f(v: float | None) -> str:
            return "n/a" if v is None else f"{v:.3f}"
        rate = self.steps / self.wall_time if self.wall_time > 0 else float("nan")
        return "\n".join([
            f"run            {self.run_dir}",
            f"steps          {self.steps} ({self.skipped} skipped: non-finite"
            f"{f', {self.wall_skipped} by the wall guard' if self.wall_skipped else ''}) in "
            f"{self.wall_time:.1f} s ({rate:.2f} steps/s)",
            f"train CE       {f(self.train_ce)} nats (last {SUMMARY_WINDOW} steps)",
            f"val CE         {f(self.val_ce)} nats at the training solver's z*, "
            f"{f(self.val_ce_ref)} after the reference solve",
            f"unigram        {self.unigram_entropy:.3f} nats (entropy of the characters: the "
            "bar to beat)",
            f"free phase     {100 * self.free_converged:.1f} % converged, "
            f"mean NFE {self.free_nfe:.1f}",
            *([f"stopped        {self.stopped}"] if self.stopped else []),
        ])
