"""Metrics: ``metrics.jsonl`` (one JSON object per logged step) and the progress line.

Record keys written by the trainer (a missing key means "not measured at this step"):

- ``step``: updates done; ``time``: seconds of training so far; ``step_time``.
- ``train_ce``: CE at the free equilibrium of the batch; ``lr``; ``grad_norm``.
- ``res_max``, ``res_mean``: free-phase final relative residual ``‖F‖/‖z‖`` over samples.
- ``nfe``: ``{phase: mean NFE per sample}`` (``free``, ``nudged+``, ``nudged-``, ``adjoint``,
  ``unroll``); ``nfe_total``.
- ``status``: free-phase ``{label: count}``; ``status_frac``: the same as fractions;
  ``nudge_status``: counts over the nudged phases.
- ``skipped``: true when the update was skipped; ``skip_reason``: ``nonfinite`` (loss,
  gradient or penalty NaN/Inf), ``rejected`` (failed relaxations or an absurd gradient
  norm, see :mod:`~eqprop.train.update_filter`; ``skip_detail`` says which) or ``wall``
  (the wall guard's ``skip`` policy).
- ``guard_fail``: the wall guard's failed fraction of free relaxations, averaged over
  its window (see :class:`~eqprop.train.config.GuardConfig`).
- ``val_*`` / ``ref_*``: validation (see :func:`eqprop.train.evaluation.evaluate`), of
  the parameters' moving average when ``optim.ema_decay`` is set; then ``val_raw_ce`` and
  ``val_raw_ce_ref`` are those of the raw parameters.
- ``event``: a record that reports an event: ``nonfinite`` or ``rejected`` (an update
  skipped),
  ``checkpoint_refused``, ``wall`` (the wall guard tripped; ``action`` says what it did,
  ``changes`` which settings an escalation changed), ``wall_cleared``.
"""

from __future__ import annotations

import json
import math
from collections.abc import Iterable
from pathlib import Path
from typing import Any

from torch import Tensor

from ..errors import StorageError
from ..solvers.base import Solution
from ..solvers.status import Status

__all__ = ["MetricsLog", "clean", "format_progress", "read_metrics", "status_counts"]


def clean(value: Any) -> Any:
    """JSON-safe copy: tensors to numbers, non-finite floats to None, recursively."""
    if isinstance(value, Tensor):
        value = value.item() if value.numel() == 1 else value.tolist()
    if isinstance(value, dict):
        return {str(k): clean(v) for k, v in value.items()}
    if isinstance(value, (list, tuple)):
        return [clean(v) for v in value]
    if isinstance(value, float) and not math.isfinite(value):
        return None
    return value


def status_counts(solutions: Iterable[Solution]) -> dict[str, int]:
    """Samples per status label, summed over ``solutions`` (every label present)."""
    counts = {s.label: 0 for s in Status}
    for sol in solutions:
        for label, n in sol.counts().items():
            counts[label] += n
    return counts


def read_metrics(path: str | Path) -> list[dict[str, Any]]:
    """All records of a ``metrics.jsonl`` (a torn last line, from a crash, is ignored)."""
    p = Path(path)
    if not p.exists():
        return []
    records = []
    # errors="replace": a line torn inside a multi-byte character is skipped, not fatal
    for line in p.read_text(encoding="utf-8", errors="replace").splitlines():
        try:
            record = json.loads(line)
        except json.JSONDecodeError:
            continue
        if isinstance(record, dict):
            records.append(record)
    return records


class MetricsLog:
    """Append-only ``metrics.jsonl``.

    A crash in the middle of a write leaves at most one torn last line: readers skip
    it, the next append starts on a fresh line, and a resume rewrites the file.

    Args:
        path: the file (created on the first record).
    """

    def __init__(self, path: str | Path):
        self.path = Path(path)

    def append(self, record: dict[str, Any]) -> None:
        """Write one record as a JSON line and flush it.

        Raises:
            StorageError: the file cannot be written (full disk, permissions).
        """
        line = json.dumps(clean(record), ensure_ascii=False) + "\n"
        try:
            with self.path.open("a+b") as f:
                if f.tell() > 0:  # a torn line from a crash: do not glue this record to it
                    f.seek(-1, 2)
                    if f.read(1) != b"\n":
                        line = "\n" + line
                f.write(line.encode("utf-8"))
        except OSError as e:
            raise StorageError(f"cannot write {str(self.path)!r} ({e.strerror or e}): free "
                               "some space or fix the permissions, then continue with "
                               "--resume") from None

    def truncate_after(self, step: int) -> None:
        """Drop the records of steps after ``step`` (a resumed run rewrites them).

        Raises:
            StorageError: the file cannot be rewritten (it is left as it was).
        """
        kept = [r for r in read_metrics(self.path) if r.get("step", 0) <= step]
        tmp = self.path.with_name(self.path.name + ".tmp")
        try:
            tmp.write_text("".join(json.dumps(r, ensure_ascii=False) + "\n" for r in kept),
                           encoding="utf-8")
            tmp.replace(self.path)
        except OSError as e:
            tmp.unlink(missing_ok=True)
            raise StorageError(f"cannot rewrite {str(self.path)!r} ({e.strerror or e}): free "
                               "some space or fix the permissions") from None

    def read(self) -> list[dict[str, Any]]:
        return read_metrics(self.path)


def format_progress(record: dict[str, Any]) -> str:
    """Short progress-bar text: CE, free-phase residual, NFE per relaxation phase (free /
    nudged ...; the single F(z*) of the residual correction is left out), status counts."""
    parts = []
    if record.get("train_ce") is not None:
        parts.append(f"ce {record['train_ce']:.3f}")
    if record.get("val_ce") is not None:
        parts.append(f"val {record['val_ce']:.3f}")
    if record.get("res_max") is not None:
        parts.append(f"res {record['res_max']:.1e}")
    nfe = {k: v for k, v in (record.get("nfe") or {}).items() if k != "residual"}
    if nfe:
        parts.append("nfe " + "/".join(f"{v:.0f}" for v in nfe.values()))
    status = record.get("status") or {}
    total = sum(status.values())
    if total:
        shown = " ".join(f"{k[:4]} {v}" for k, v in status.items() if v)
        parts.append(f"[{shown}]/{total}")
    if record.get("skipped"):
        parts.append("SKIPPED")
    return " | ".join(parts)
