"""The stability controller: keeps the operating point inside a margin while training.

It measures, and decides; the trainer applies its decision (a
:class:`~eqprop.train.decisions.Decision` with the weight; design §4, §7):

- every step, the free phase's mean NFE per sample (how slowly the relaxation
  contracts: it grows as the leading mode approaches the imaginary axis);
- every ``every`` steps, the leading real part ``Re μ`` of the Jacobian at z* on a few
  samples: the rightmost Ritz value of a batched Arnoldi process
  (:func:`~eqprop.solvers.stability.leading_real`).

The decision is the Jacobian penalty's weight ``w``: a multiplicative integral
controller steers the NFE towards ``target_nfe``,
``log w ← log w + gain · log(NFE / target_nfe)``, clamped to ``[w_min, w_max]`` (the
floor keeps a penalty on while things look healthy: a penalty raised only once
relaxations fail arrives too late); and whenever the measured ``Re μ`` is above
``-margin`` the weight is multiplied by ``kick`` at once (an event in
``metrics.jsonl``).

With ``eps_factor < 1`` it also tells the simulator's wall from the hardware's: when,
at a step where ``Re μ`` is measured, fewer than ``converged_min`` of the free
relaxations converged although the measured ``Re μ`` is at or below ``-margin`` (the flow
settles; the explicit map at ε does not follow it), the ε of every phase's solver is
multiplied by ``eps_factor``, not below ``eps_min`` (a ``stability_eps`` event). Where
``Re μ`` is above ``-margin`` it is the dynamics, and only the weight acts. Off a fixed
point the estimate is the Jacobian's at the relaxation's end point, not at the equilibrium
it missed (at a diverged state a saturated layer norm reads ``J ≈ -I``): the rule trusts
it as the best evidence at hand.
"""

from __future__ import annotations

import math
from dataclasses import dataclass
from typing import Any

from torch import Tensor

from ..errors import ConfigError
from ..fields import Field
from ..solvers.stability import leading_real
from ..validate import boolean, integer, interval, positive
from .decisions import Decision

__all__ = ["StabilityConfig", "StabilityController"]


@dataclass
class StabilityConfig:
    """Settings of the stability controller (off by default).

    Args:
        enabled: run the controller (needs ``regularizer.name`` jacreg, homeostasis or
            abscissa, with a fixed weight: the controller sets it).
        target_nfe: free-phase NFE per sample the weight is steered towards.
        gain: change of ``log w`` per unit of ``log(NFE / target_nfe)``, per step.
        w_init: starting weight.
        w_min: the floor of the weight.
        w_max: the ceiling of the weight.
        every: estimate the leading ``Re μ`` every this many steps (0: never).
        samples: samples of the batch the estimate looks at.
        krylov: Arnoldi steps (JVPs) per estimate.
        margin: the weight is kicked when the leading ``Re μ > -margin``.
        kick: factor of that kick (> 1).
        eps_factor: factor on the phases' solver ε at a simulator's wall (1: ε never
            changes).
        eps_min: the smallest ε it sets.
        converged_min: converged fraction of the free relaxations below which a step
            with a stable measured mode counts as the simulator's wall.
    """

    enabled: bool = False
    target_nfe: float = 25.0
    gain: float = 0.05
    w_init: float = 0.01
    w_min: float = 1e-3
    w_max: float = 10.0
    every: int = 10
    samples: int = 4
    krylov: int = 16
    margin: float = 0.05
    kick: float = 2.0
    eps_factor: float = 1.0
    eps_min: float = 0.01
    converged_min: float = 0.9

    def __post_init__(self) -> None:
        boolean("stability", "enabled", self.enabled)
        for name, lo in (("target_nfe", 1.0), ("gain", 0.0), ("w_init", 0.0), ("w_min", 0.0),
                         ("w_max", 0.0), ("margin", 0.0), ("kick", 1.0)):
            interval("stability", name, getattr(self, name), lo, math.inf, hi_open=True)
        if not self.w_min <= self.w_init <= self.w_max:
            raise ConfigError(f"stability: need w_min ≤ w_init ≤ w_max (got {self.w_min}, "
                              f"{self.w_init}, {self.w_max})")
        interval("stability", "eps_factor", self.eps_factor, 0.0, 1.0, lo_open=True)
        positive("stability", "eps_min", self.eps_min)
        interval("stability", "converged_min", self.converged_min, 0.0, 1.0, lo_open=True)
        for name, lo in (("every", 0), ("samples", 1), ("krylov", 2)):
            integer("stability", name, getattr(self, name), lo)


class StabilityController:
    """The one place that decides the penalty weight (see the module docstring)."""

    def __init__(self, cfg: StabilityConfig):
        self.cfg = cfg
        self.weight = cfg.w_init
        self.last_re: float | None = None

    def decide(self, step: int, free_nfe: float, field: Field, z_star: Tensor, *,
               converged: float = 1.0, eps: dict[str, float] | None = None) -> Decision:
        """Observe this step and return the decision: the next step's penalty weight, its
        events and metrics, and at a simulator's wall the phases' new ε.

        Args:
            step: the step just taken.
            free_nfe: its free phase's mean NFE per sample.
            field, z_star: its field and free end point ``(B, ...)``.
            converged: the fraction of its free relaxations that converged.
            eps: the phases' solver ε by setting, ``{"solver.anderson.eps": 0.5, ...}``
                (see :func:`~eqprop.train.decisions.phase_eps`).
        """
        c = self.cfg
        events: list[dict[str, Any]] = []
        metrics: dict[str, float] = {}
        changes: dict[str, float] = {}
        if math.isfinite(free_nfe) and free_nfe > 0:
            self.weight *= math.exp(c.gain * math.log(free_nfe / c.target_nfe))
        if c.every and step % c.every == 0:
            s = min(c.samples, z_star.shape[0])
            sub = field.head(s) or field
            s = z_star.shape[0] if sub is field else s
            est = leading_real(sub, z_star[:s].detach(), m=c.krylov)
            # NaN where F was not finite at z*: those samples are the update filter's business
            re = float(est.max_real.nan_to_num(nan=-math.inf).max())
            self.last_re = re
            metrics["stab_re"] = re
            # the two actions this evidence can call for: a kick, or (the flow settles but
            # the relaxations fail) smaller steps for every phase
            kicked = self.weight * c.kick
            smaller = {k: max(v * c.eps_factor, c.eps_min) for k, v in (eps or {}).items()
                       if v > c.eps_min and c.eps_factor < 1}
            failing = converged < c.converged_min
            if re > -c.margin:
                old, self.weight = self.weight, kicked
                events.append({"step": step, "event": "stability_kick", "re_mu": re,
                               "weight": [old, self.weight],
                               "detail": f"leading Re μ {re:+.3f} > -{c.margin}: penalty "
                                         f"weight {old:.3g} -> {self.weight:.3g}"})
            elif failing and smaller:
                changes = smaller
                shown = "; ".join(f"{k} {eps[k]:.3g} -> {v:.3g}" for k, v in changes.items())
                events.append({"step": step, "event": "stability_eps", "re_mu": re,
                               "changes": changes,
                               "detail": f"{converged:.0%} of free relaxations converged while "
                                         f"the leading Re μ is {re:+.3f} ≤ -{c.margin} (the "
                                         f"flow settles, the map at ε does not): {shown}"})
        self.weight = min(max(self.weight, c.w_min), c.w_max)
        metrics["stab_weight_next"] = self.weight  # the weight of the next step
        return Decision(changes=changes, weight=self.weight, events=events, metrics=metrics)

    def state_dict(self) -> dict[str, Any]:
        return {"weight": self.weight, "last_re": self.last_re}

    def load_state_dict(self, state: dict[str, Any]) -> None:
        self.weight = float(state.get("weight", self.cfg.w_init))
        self.last_re = state.get("last_re")
