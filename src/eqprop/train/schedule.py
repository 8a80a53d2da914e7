"""Learning-rate schedule: linear warmup, then cosine decay to a floor."""

from __future__ import annotations

import math

from .config import OptimConfig, ScheduleConfig

__all__ = ["lr_at"]


def lr_at(step: int, optim: OptimConfig, schedule: ScheduleConfig) -> float:
    """Learning rate of update number ``step`` (0-based).

    Args:
        step: updates done so far.
        optim: holds the peak ``lr``.
        schedule: ``warmup`` steps rising linearly to the peak, then a cosine over
            the remaining ``steps - warmup`` down to ``min_lr_ratio × lr``.

    Returns:
        The learning rate (a float).
    """
    if step < schedule.warmup:
        return optim.lr * (step + 1) / (schedule.warmup + 1)
    progress = min(1.0, (step - schedule.warmup) / max(1, schedule.steps - schedule.warmup))
    floor = optim.lr * schedule.min_lr_ratio
    return floor + (optim.lr - floor) * 0.5 * (1.0 + math.cos(math.pi * progress))
