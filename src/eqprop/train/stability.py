"""The stability controller: keeps the operating point inside a margin while training.

It measures, and decides; the trainer applies its decision (DESIGN §4, §7):

- every step, the free phase's mean NFE per sample (how slowly the relaxation
  contracts: it grows as the leading mode approaches the imaginary axis);
- every ``every`` steps, the leading real part ``Re μ`` of the Jacobian at z* on a few
  samples, by a batched Arnoldi process on GPU-side JVPs (the rightmost Ritz value),
  warm-started from the last rightmost Ritz vector.

The decision is the Jacobian penalty's weight ``w``: a multiplicative integral
controller steers the NFE towards ``target_nfe``,
``log w ← log w + gain · log(NFE / target_nfe)``, clamped to ``[w_min, w_max]`` (the
floor keeps a penalty on while things look healthy: a penalty raised only once
relaxations fail arrives too late); and whenever the measured ``Re μ`` is above
``-margin`` the weight is multiplied by ``kick`` at once (an event in
``metrics.jsonl``).
"""

from __future__ import annotations

import math
from dataclasses import dataclass, field
from typing import Any

import torch
from torch import Tensor

from ..errors import ConfigError
from ..fields import Field

__all__ = ["StabilityConfig", "StabilityController", "StabilityDecision", "leading_real_part"]


@dataclass
class StabilityConfig:
    """Settings of the stability controller (off by default).

    Args:
        enabled: run the controller (needs ``regularizer.name`` jacreg or homeostasis,
            with a fixed weight: the controller sets it).
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

    def __post_init__(self) -> None:
        if not isinstance(self.enabled, bool):
            raise ConfigError(f"stability.enabled={self.enabled!r}: must be true or false")
        for name, lo in (("target_nfe", 1.0), ("gain", 0.0), ("w_init", 0.0), ("w_min", 0.0),
                         ("w_max", 0.0), ("margin", 0.0), ("kick", 1.0)):
            v = getattr(self, name)
            if isinstance(v, bool) or not isinstance(v, (int, float)) or not (
                    lo <= v < math.inf):
                raise ConfigError(f"stability.{name}={v!r}: must be a finite number ≥ {lo}")
        if not self.w_min <= self.w_init <= self.w_max:
            raise ConfigError(f"stability: need w_min ≤ w_init ≤ w_max (got {self.w_min}, "
                              f"{self.w_init}, {self.w_max})")
        for name, lo in (("every", 0), ("samples", 1), ("krylov", 2)):
            v = getattr(self, name)
            if isinstance(v, bool) or not isinstance(v, int) or v < lo:
                raise ConfigError(f"stability.{name}={v!r}: must be an integer ≥ {lo}")


@dataclass
class StabilityDecision:
    """What the trainer applies: the penalty weight, and the events to log."""

    weight: float
    events: list[dict[str, Any]] = field(default_factory=list)
    metrics: dict[str, float] = field(default_factory=dict)


@torch.no_grad()
def leading_real_part(F: Field, z_star: Tensor, krylov: int,
                      v0: Tensor | None = None) -> tuple[Tensor, Tensor]:
    """Rightmost Ritz value of ``J = ∂F/∂z (z*)`` per sample, by ``krylov`` Arnoldi steps.

    Batched over samples, matrix-free (``J v`` from one :meth:`Field.linearize`), no host
    synchronisation. Krylov subspaces approach the outer eigenvalues of J, the rightmost
    one among them; with few steps this is an estimate (tested against dense
    eigenvalues on planted spectra), warm-started by ``v0``.

    Args:
        F: the field (a :class:`~eqprop.fields.Field`).
        z_star: the equilibrium ``(B, ...)``, real.
        krylov: Arnoldi steps m (JVPs).
        v0: starting vectors ``(B, ...)`` (None: random).

    Returns:
        ``(mu, v)``: the rightmost Ritz values ``(B,)`` (complex) and their Ritz vectors'
        real parts ``(B, ...)`` (for the next warm start).
    """
    B = z_star.shape[0]
    lin = F.linearize(z_star)
    v = torch.randn_like(z_star) if v0 is None else v0.clone()
    V = [(v / v.reshape(B, -1).norm(dim=1).clamp_min(1e-30).reshape(-1, *[1] * (v.dim() - 1)))
         .reshape(B, -1)]
    H = z_star.new_zeros(B, krylov + 1, krylov)
    for j in range(krylov):
        w = lin.jvp(V[j].reshape(z_star.shape)).reshape(B, -1)
        Vs = torch.stack(V, 1)  # (B, j+1, N)
        for _ in range(2):  # classical Gram–Schmidt, twice (stable enough for a few steps)
            h = torch.einsum("bkn,bn->bk", Vs, w)
            w = w - torch.einsum("bk,bkn->bn", h, Vs)
            H[:, : j + 1, j] += h
        H[:, j + 1, j] = w.norm(dim=1)
        V.append(w / H[:, j + 1, j].clamp_min(1e-30)[:, None])
    ritz, vecs = torch.linalg.eig(H[:, :krylov, :krylov])  # (B, m), (B, m, m)
    i = ritz.real.argmax(1)  # (B,)
    mu = ritz.gather(1, i[:, None]).squeeze(1)
    y = vecs.gather(2, i[:, None, None].expand(B, krylov, 1)).squeeze(2)  # (B, m)
    x = torch.einsum("bk,bkn->bn", y, torch.stack(V[:krylov], 1).to(y.dtype)).real
    return mu, x.reshape(z_star.shape)


class StabilityController:
    """The one place that decides the penalty weight (see the module docstring)."""

    def __init__(self, cfg: StabilityConfig):
        self.cfg = cfg
        self.weight = cfg.w_init
        self.v: Tensor | None = None  # last rightmost Ritz vectors (warm start)
        self.last_re: float | None = None

    def decide(self, step: int, free_nfe: float, field: Field, z_star: Tensor
               ) -> StabilityDecision:
        """Observe this step (its free NFE; ``Re μ`` when due) and return the decision."""
        c = self.cfg
        events: list[dict[str, Any]] = []
        metrics: dict[str, float] = {}
        if math.isfinite(free_nfe) and free_nfe > 0:
            self.weight *= math.exp(c.gain * math.log(free_nfe / c.target_nfe))
        if c.every and step % c.every == 0:
            s = min(c.samples, z_star.shape[0])
            sub = field.head(s) or field
            s = z_star.shape[0] if sub is field else s
            v0 = self.v if self.v is not None and self.v.shape[0] == s else None
            mu, self.v = leading_real_part(sub, z_star[:s].detach(), c.krylov, v0)
            re = float(mu.real.max())
            self.last_re = re
            metrics.update(stab_re=re, stab_im=float(mu.imag[mu.real.argmax()].abs()))
            if re > -c.margin:
                old = self.weight
                self.weight *= c.kick
                events.append({"step": step, "event": "stability_kick", "re_mu": re,
                               "weight": [old, self.weight],
                               "detail": f"leading Re μ {re:+.3f} > -{c.margin}: penalty "
                                         f"weight {old:.3g} -> {self.weight:.3g}"})
        self.weight = min(max(self.weight, c.w_min), c.w_max)
        metrics["stab_weight_next"] = self.weight  # the weight of the next step
        return StabilityDecision(self.weight, events, metrics)

    def state_dict(self) -> dict[str, Any]:
        return {"weight": self.weight, "last_re": self.last_re,
                "v": None if self.v is None else self.v.detach().cpu()}

    def load_state_dict(self, state: dict[str, Any], device: torch.device) -> None:
        self.weight = float(state.get("weight", self.cfg.w_init))
        self.last_re = state.get("last_re")
        v = state.get("v")
        self.v = None if v is None else v.to(device)
