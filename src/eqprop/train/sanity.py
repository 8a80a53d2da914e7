"""Warnings for settings that are allowed but very likely a mistake.

Validation (``__post_init__`` of each section) rejects what cannot work; this module
names what can run but will almost surely not train: the trainer prints each warning
on stderr at the start, with or without the progress bar.
"""

from __future__ import annotations

from .config import TrainConfig

__all__ = ["LR_SUSPICIOUS", "suspicious_settings"]

#: AdamW learning rates above this rarely train anything
LR_SUSPICIOUS = 0.1
#: an explicit Euler step z + ε(-z + n(z)) = (1 - ε) z + ε n(z) no longer shrinks the state
#: from ε = 2 on (|1 - ε| ≥ 1): relaxations then most likely fail
EULER_EPS_LIMIT = 2.0


def suspicious_settings(cfg: TrainConfig) -> list[str]:
    """One line per setting that is allowed but very likely a mistake.

    Args:
        cfg: the resolved config.

    Returns:
        Warning texts (empty when nothing looks wrong).
    """
    out = []
    if cfg.optim.lr > LR_SUSPICIOUS:
        out.append(f"optim.lr={cfg.optim.lr:g} is far above the usual 1e-4 to 1e-2 of AdamW: "
                   "training will most likely diverge")
    phases = [("solver", cfg.solver)]
    if cfg.estimator.name in ("asymep", "ep", "holoep"):
        phases.append(("estimator.nudge", cfg.estimator.nudge))
    if cfg.estimator.name != "backprop":
        for where, s in phases:
            if s.name == "euler" and s.euler.eps >= EULER_EPS_LIMIT:
                out.append(f"{where}.euler.eps={s.euler.eps:g} ≥ {EULER_EPS_LIMIT:g}: an Euler "
                           "step (1 - ε) z + ε n(z) no longer shrinks z, so relaxations will "
                           "most likely fail")
    return out
